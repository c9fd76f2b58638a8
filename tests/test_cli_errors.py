"""The CLI on a bad day: one or two lines on stderr, a non-zero exit, no password;
and untrusted text (agent ids, content) never reaches the terminal raw."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from agent_messaging import AgentMessaging

from .conftest import admin_execute, with_database
from .helpers import make_config

SECRET = "s3cr3t-pw"


def amp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_messaging.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "400"},  # tables not wrapped
    )


def assert_short_failure(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 1, at most two lines on stderr, each expected fragment there, no password."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done
    assert 1 <= len(lines) <= 2, done.stderr
    for fragment in expected:
        assert fragment in done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout
    return done.stderr


@pytest.fixture
def unmigrated(server_dsn: str) -> Iterator[str]:
    name = f"amp_empty_{uuid.uuid4().hex[:10]}"
    admin_execute(server_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(server_dsn, name)
    admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_password(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or ""  # a socket directory may be given as ?host=
    host = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest.mark.parametrize("command", ["status", "watch"])
def test_never_migrated(unmigrated: str, command: str) -> None:
    done = amp(command, "--database-url", unmigrated)
    assert_short_failure(done, "has no amp schema", "amp migrate")


def test_missing_database(server_dsn: str) -> None:
    url = with_database(server_dsn, "amp_no_such_db")
    for command in ("status", "migrate"):
        done = amp(command, "--database-url", url)
        assert_short_failure(done, "database 'amp_no_such_db' does not exist")


def test_connection_refused() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/postgres"
    for command in ("status", "watch", "migrate"):
        done = amp(command, "--database-url", url)
        assert_short_failure(done, f"cannot connect to 127.0.0.1:{port}: connection refused")


def test_unresolvable_host() -> None:
    url = f"postgresql://postgres:{SECRET}@no-such-host.invalid:5432/postgres"
    done = amp("status", "--database-url", url)
    assert_short_failure(done, "cannot resolve the host of no-such-host.invalid:5432")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/postgres",
        "not a url at all",
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432/postgres?sslmode=bogus",
    ],
)
def test_malformed_url(url: str) -> None:
    for command in ("status", "migrate"):
        done = amp(command, "--database-url", url)
        assert_short_failure(done, "the database URL is malformed", "expected postgresql://")


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A private embedded server that checks passwords (scram) for the role amp_pw
    (the shared test server trusts every local connection)."""
    from agent_messaging import embedded

    data_dir = Path(tempfile.mkdtemp(prefix="amp-test-pw-")) / "pg"
    server = embedded.start(data_dir, cleanup_mode="delete")
    admin = str(server.get_uri(database="postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE amp_pw LOGIN PASSWORD 'right-{SECRET}'")
        hba_row = conn.execute("SHOW hba_file").fetchone()
        assert hba_row is not None
        hba = Path(str(hba_row[0]))
        rules = "".join(
            f"{rule} all amp_pw {address} scram-sha-256\n"
            for rule, address in (("local", ""), ("host", "0.0.0.0/0"), ("host", "::/0"))
        )
        hba.write_text(rules + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    yield admin
    server.cleanup()


def test_wrong_password(password_server: str) -> None:
    right = with_password(password_server, "amp_pw", f"right-{SECRET}")
    with psycopg.connect(right) as conn:  # the role and the rule work
        conn.execute("SELECT 1")
    url = with_password(password_server, "amp_pw", SECRET)
    for command in ("status", "migrate"):
        done = amp(command, "--database-url", url)
        assert_short_failure(done, "refused the password of user amp_pw")


def test_debug_shows_the_traceback(unmigrated: str) -> None:
    done = amp("--debug", "status", "--database-url", unmigrated)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "has no amp schema" in done.stderr


# -- untrusted text in the terminal (#11.7) ---------------------------------------

HOSTILE = ["[/oops]", "[link=https://evil.example]bob[/link]", "eve\x1b[2J\x1b[31m", "rtl\u202egnp"]


async def test_status_and_watch_escape_markup_and_control_characters(dsn: str) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        await sdk.register_agent("alice", "org1")
        # ids with control characters are refused today; an older or hand-made row
        # may still hold one, so they are put in directly
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in HOSTILE:
                conn.execute(
                    "INSERT INTO amp.agents (external_id, organization_id, name) "
                    "SELECT %s, id, %s FROM amp.organizations",
                    [name, name],
                )
        for name in HOSTILE[:2]:  # valid ids: rich markup is not forbidden in an id
            await sdk.async_conversation.send("alice", name, "hi")
        done = await asyncio.to_thread(amp, "status", "--database-url", dsn)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "[/oops]" in out and "[link=https://evil.example]bob[/link]" in out
        assert "\x1b" not in out and "\u202e" not in out
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent_messaging.cli",
            "watch",
            "--seconds",
            "60",
            "--database-url",
            dsn,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.decode().startswith("watching")
            with psycopg.connect(dsn, autocommit=True) as conn:
                for name in HOSTILE[2:]:
                    # a message from an agent with a hostile id, carrying a C1 CSI
                    conn.execute(
                        "SELECT amp._store_message('async', s.id, r.id, %s::jsonb) "
                        "FROM amp.agents s, amp.agents r "
                        "WHERE s.external_id = %s AND r.external_id = 'alice'",
                        ['"x\u009b2Jy"', name],
                    )
            seen = []
            while len(seen) < 2:
                raw = await asyncio.wait_for(proc.stdout.readline(), 30)
                if raw.startswith(b"message"):
                    seen.append(raw.decode())
        finally:
            proc.kill()
            await proc.wait()
        text = "".join(seen)
        assert "\x1b" not in text and "\u202e" not in text and "\u009b" not in text
        assert "eve\\x1b[2J\\x1b[31m -> alice" in text and "\\x9b2Jy" in text
        assert "rtl\\u202egnp -> alice" in text
