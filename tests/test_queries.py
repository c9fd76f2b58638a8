"""The SDK's statements live in one file of named queries (``queries.sql``).

- Every statement loads, names are unique, and each has its constant in
  ``queries.py`` (and each constant its statement), used somewhere in the SDK.
- The casting convention of the file's header holds: JSON goes in as text
  (``$n::text::jsonb``), durations as ``make_interval(secs => $n)``, nothing is
  formatted in; and, asked of the server, no statement takes a ``jsonb`` parameter
  and only the listed exceptions return ``jsonb``.
- No module of the SDK writes a statement inline, except the ones the file's
  header names (a grep of the modules' string literals, so the rule holds).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq

from agent_messaging import queries

PACKAGE = Path(queries.__file__).parent

#: statements that return jsonb for the driver to decode (the header says why)
DRIVER_DECODED = {
    "get_message",
    "get_meeting",
    "meeting_status",
    "mcp_claim_inbox",
    "mcp_read_inbox",
    "mcp_peek_inbox",
    "mcp_pending_pushed",
    "mcp_pending_questions",
}

#: string literals that are statements, outside queries.sql, by module (the header
#: of queries.sql says why); ``None``: the whole module (migrations)
ALLOWED_INLINE: dict[str, set[str] | None] = {
    "database.py": {
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SELECT pg_cancel_backend($1)",
        "SELECT pg_backend_pid() AS pid, set_config('statement_timeout', $1, false) AS s, "
        "set_config('lock_timeout', $2, false) AS l",
    },
    "roles.py": {
        "CREATE ROLE %I NOLOGIN",
        "CREATE ROLE %I LOGIN PASSWORD %L",
        "CREATE ROLE %I LOGIN",
        "GRANT amp_user TO %I",
        "GRANT %I TO %I",
    },
    "migrations.py": None,
}

_STATEMENT = re.compile(
    r"^\s*(SELECT|WITH|INSERT|UPDATE|DELETE|CREATE|GRANT|REVOKE|DROP|ALTER|BEGIN|COMMIT"
    r"|ROLLBACK|DO|CALL|TRUNCATE|COPY|LOCK)\b"
    r"|\b(SELECT|FROM|JOIN|INTO|UPDATE)\s+amp\."
)


def constants() -> dict[str, str]:
    """The statement constants of ``queries.py``: NAME -> statement."""
    return {
        name: value
        for name, value in vars(queries).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
    }


def test_every_statement_loads_once_with_its_constant() -> None:
    assert len(queries.QUERIES) > 50
    parsed = queries.parse(queries.PATH.read_text(encoding="utf-8"))
    assert parsed == dict(queries.QUERIES)
    for name, statement in parsed.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
        assert statement.strip() and "--" not in statement, name
    assert constants() == {name.upper(): text for name, text in parsed.items()}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "defined twice"),
        ("-- name: a\n-- only a comment\n\n-- name: b\nSELECT 2\n", "has no statement"),
        ("-- name: Bad-Name\nSELECT 1\n", "bad name"),
        ("-- name: a b\nSELECT 1\n", "bad name"),
        ("SELECT 1\n-- name: a\nSELECT 2\n", "without a name"),
    ],
)
def test_a_malformed_file_is_refused(text: str, error: str) -> None:
    with pytest.raises(queries.QueryFileError, match=error):
        queries.parse(text)


def test_comments_and_blank_lines_are_not_sent() -> None:
    text = "-- header\n\n-- name: a\n-- what it does\nSELECT 1,\n  -- why\n       2\n\n"
    assert queries.parse(text) == {"a": "SELECT 1,\n       2"}


def test_every_statement_is_used_by_the_sdk() -> None:
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name != "queries.py"
    )
    unused = [name for name in constants() if not re.search(rf"\bqueries\.{name}\b", sources)]
    assert unused == []


def test_the_casting_convention_holds() -> None:
    for name, statement in queries.QUERIES.items():
        # JSON in: bound text cast by the server; JSON the server builds (json_agg of
        # json_build_object) goes out as text, like every other JSON value
        rest = re.sub(r"\$\d+::text::jsonb|\$\d+::text\[\]::jsonb\[\]", "", statement)
        built = re.sub(r"json_agg\(json_build_object\(", "", rest)
        assert "json" not in built, name
        if built != rest:
            assert re.search(r"'\[\]'\)::text", rest), name
        # durations: seconds
        for call in re.finditer(r"make_interval\(([^)]*)\)", statement):
            assert re.fullmatch(r"(secs => \$\d+)?", call.group(1)), (name, call.group(0))
        # bound, never formatted in (format's %I is the server's own quoting)
        assert not re.search(r"\{|\}|%s|%\(", statement), name


def _inline_statements(path: Path) -> list[tuple[int, str]]:
    """String literals of ``path`` that are (or contain) statements, docstrings aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and _STATEMENT.search(node.value)
        ):
            found.append((node.lineno, node.value))
    return found


def test_no_module_writes_a_statement_inline() -> None:
    stray: list[tuple[str, int, str]] = []
    for path in sorted(PACKAGE.glob("*.py")):
        allowed = ALLOWED_INLINE.get(path.name, set())
        if allowed is None:
            continue
        stray += [
            (path.name, line, text)
            for line, text in _inline_statements(path)
            if text not in allowed
        ]
    assert stray == [], "put these statements in queries.sql"


def test_the_grep_finds_an_inline_statement(tmp_path: Path) -> None:
    module = tmp_path / "example.py"
    module.write_text(
        '"""SELECT * FROM amp.get_agent($1) in a docstring is prose."""\n'
        'A = "SELECT * FROM amp.get_agent($1)"\n'
        'B = f"SELECT {1} FROM x"\n'
        'C = "the value from amp.settings"\n'
        'D = "LISTEN failed, listener will be rebuilt: %s"\n'
    )
    assert [line for line, _ in _inline_statements(module)] == [2, 3]


def test_no_statement_reads_a_table(sql: psycopg.Connection[Any]) -> None:
    """The SDK runs as an application role, which may read no amp table (only the
    views, and the tables through the public functions): no statement names one."""
    tables = {
        str(r[0])
        for r in sql.execute(
            "SELECT relname FROM pg_class "
            "WHERE relnamespace = 'amp'::regnamespace AND relkind IN ('r', 'p')"
        )
    }
    assert "messages" in tables
    named = []
    for name, statement in queries.QUERIES.items():
        code = re.sub(r"'[^']*'", "''", statement)  # a string literal names nothing
        named += [(name, ref) for ref in re.findall(r"\bamp\.(\w+)\b(?!\s*\()", code)]
    assert [(name, ref) for name, ref in named if ref in tables] == []
    assert ("status_online", "online_agents") in named  # views are found, and allowed


def test_the_server_accepts_every_statement(sql: psycopg.Connection[Any]) -> None:
    """Each statement is prepared (parsed and planned against the migrated schema):
    no parameter is jsonb, and only the listed statements return jsonb."""
    conn = sql.pgconn
    jsonb = {114, 3802}  # json, jsonb
    returns_json = set()
    for number, (name, statement) in enumerate(queries.QUERIES.items()):
        handle = f"amp_q{number}".encode()
        prepared = conn.prepare(handle, statement.encode())
        assert prepared.status == pq.ExecStatus.COMMAND_OK, (
            name,
            (prepared.error_message or b"").decode(),
        )
        described = conn.describe_prepared(handle)
        params = [described.param_type(i) for i in range(described.nparams)]
        assert not jsonb.intersection(params), name
        if jsonb.intersection(described.ftype(i) for i in range(described.nfields)):
            returns_json.add(name)
    assert returns_json == DRIVER_DECODED
