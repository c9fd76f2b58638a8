"""SQLSTATE codes map 1:1 to exception classes."""

from __future__ import annotations

import psycopg

from agent_messaging.exceptions import SQLSTATE_EXCEPTIONS, AgentMessagingError


def test_every_sql_error_code_has_exactly_one_exception(
    sql: psycopg.Connection[tuple[object, ...]],
) -> None:
    codes = {row[0] for row in sql.execute("SELECT code FROM amp.error_codes()")}
    assert codes == set(SQLSTATE_EXCEPTIONS)
    classes = list(SQLSTATE_EXCEPTIONS.values())
    assert len(set(classes)) == len(classes)
    assert all(issubclass(cls, AgentMessagingError) for cls in classes)


def test_sqlstate_reaches_other_drivers(sql: psycopg.Connection[tuple[object, ...]]) -> None:
    """psycopg exposes the real SQLSTATE: a client in any language can switch on it."""
    sql.execute("SELECT amp.register_organization('org1', 'Org One')")
    sql.execute("SELECT amp.register_agent('alice', 'org1', 'Alice')")
    try:
        sql.execute("SELECT amp.register_agent('alice', 'org1', 'Alice')")
    except psycopg.Error as exc:
        assert exc.sqlstate == "AM021"
    else:  # pragma: no cover
        raise AssertionError("duplicate agent was accepted")
