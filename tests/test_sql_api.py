"""The SQL API driven from psql, exactly as a user or another language would."""

from __future__ import annotations

from .helpers import psql


def test_register_from_psql(dsn: str) -> None:
    out = psql(
        dsn,
        "SELECT external_id, name FROM amp.register_organization('org1', 'Org One');\n"
        "SELECT external_id, name FROM amp.register_agent('alice', 'org1', 'Alice');\n"
        "SELECT amp.agent_channel('alice') LIKE 'amp_agent_%';\n",
    )
    assert out.stdout.split() == ["org1|Org", "One", "alice|Alice", "t"]


def test_duplicate_agent_from_psql_reports_sqlstate(dsn: str) -> None:
    psql(
        dsn,
        "SELECT amp.register_organization('org1', 'Org One');"
        "SELECT amp.register_agent('alice', 'org1', 'Alice');",
    )
    failed = psql(dsn, "SELECT amp.register_agent('alice', 'org1', 'Alice');", check=False)
    assert failed.returncode != 0
    # VERBOSITY verbose prints the SQLSTATE before the message
    assert "ERROR:  AM021: agent 'alice' already exists" in failed.stderr
    assert "HINT:  amp error AM021" in failed.stderr


def test_unknown_organization_from_psql(dsn: str) -> None:
    failed = psql(dsn, "SELECT amp.register_agent('bob', 'nope', 'Bob');", check=False)
    assert "AM010" in failed.stderr
