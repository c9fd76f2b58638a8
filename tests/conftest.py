"""Test harness: every test talks to a real PostgreSQL.

The server is ``AMP_TEST_DATABASE_URL`` when set, else an embedded PostgreSQL started
for this run in a temporary data directory. Migrations are applied once, to a
template database; each test gets its own ``CREATE DATABASE ... TEMPLATE`` copy,
dropped afterwards, so tests are isolated and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from agent_messaging import AgentMessaging, migrations

from .helpers import make_config
from .roles import Roles


def with_database(dsn: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def admin_execute(admin_dsn: str, statement: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session", autouse=True)
def listener_socket_dir() -> Iterator[Path]:
    """The shared listener's sockets and locks of this run (every process it starts
    inherits the variable): a lock file per test database stays behind otherwise."""
    directory = Path(tempfile.mkdtemp(prefix="amp-test-sockets-"))
    saved = os.environ.get("AMP_LISTENER_SOCKET_DIR")
    os.environ["AMP_LISTENER_SOCKET_DIR"] = str(directory)
    yield directory
    if saved is None:
        os.environ.pop("AMP_LISTENER_SOCKET_DIR", None)
    else:
        os.environ["AMP_LISTENER_SOCKET_DIR"] = saved
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """Admin URL of the server this run uses."""
    url = os.environ.get("AMP_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from agent_messaging import embedded

    data_dir = Path(tempfile.mkdtemp(prefix="amp-test-pgdata-"))
    server = embedded.start(data_dir / "pg", cleanup_mode="delete")
    yield str(server.get_uri(database="postgres"))
    server.cleanup()


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """Name of a database migrated to head, used as the template of every test's."""
    name = f"amp_tpl_{uuid.uuid4().hex[:10]}"
    admin_execute(server_dsn, f'CREATE DATABASE "{name}"')
    migrations.upgrade(with_database(server_dsn, name))
    yield name
    admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _new_database(server_dsn: str, template: str) -> str:
    name = f"amp_t_{uuid.uuid4().hex[:12]}"
    admin_execute(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    name = _new_database(server_dsn, template_db)
    yield with_database(server_dsn, name)
    admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """URL of a fresh database with nothing in it (for migration tests)."""
    name = _new_database(server_dsn, "template0")
    yield with_database(server_dsn, name)
    admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def sdk(dsn: str) -> AsyncIterator[AgentMessaging[dict[str, object]]]:
    """An initialized SDK on this test's database."""
    async with AgentMessaging[dict[str, object]](make_config(dsn)) as instance:
        yield instance


@pytest.fixture
async def trio(dsn: str) -> AsyncIterator[AgentMessaging[Any]]:
    """An SDK typed ``Any`` with organization org1 and agents alice, bob and carol."""
    async with AgentMessaging[Any](make_config(dsn)) as instance:
        await instance.register_organization("org1")
        for name in ("alice", "bob", "carol"):
            await instance.register_agent(name, "org1", name.title())
        yield instance


@pytest.fixture
def sql(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain psycopg connection to this test's database, autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def roles(server_dsn: str) -> Iterator[Roles]:
    """Creates real roles for this test (unique names) and drops them afterwards."""
    made = Roles(server_dsn)
    yield made
    made.drop_all()
