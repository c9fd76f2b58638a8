"""Version skew, pre-release schemas and schema squatting.

"A newer SDK" is played by a copy of this SDK's alembic directory with one more
revision (made with the revision template), applied with ``script_location``; its
recorded agent-messaging version is set to 0.2.0. This SDK then meets a database
newer than itself, as an SDK one release older would.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, migrations
from agent_messaging.exceptions import (
    IncompatibleSchemaError,
    PrereleaseSchemaError,
    SchemaError,
    SchemaOwnershipError,
)

from .helpers import make_config
from .schema_helpers import add_revision, admin, amp, apply_sql_dir, catalog, copy_scripts

NEWER_SDK = "0.2.0"


def migrate_with_newer_sdk(tmp_path: Path, dsn: str, *, breaking: bool) -> str:
    """Migrate ``dsn`` with "agent-messaging 0.2.0": this SDK's revisions plus one."""
    location = copy_scripts(tmp_path)
    add_revision(
        location,
        "future feature",
        "CREATE TABLE amp.future_feature (id bigint PRIMARY KEY);\n",
        "DROP TABLE amp.future_feature;\n",
        breaking=breaking,
    )
    result = migrations.upgrade(dsn, script_location=location)
    assert result.after is not None and result.after != migrations.head_revision()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE amp.schema_revisions SET sdk_version = %s WHERE revision = %s",
            (NEWER_SDK, result.after),
        )
    return result.after


class Records(logging.Handler):
    """Collects records of ``agent_messaging.migrations``; an event per arrival."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()

    async def wait_for(self, text: str, timeout: float = 30.0) -> logging.LogRecord:
        async def found() -> logging.LogRecord:
            while True:
                for record in self.records:
                    if text in record.getMessage():
                        return record
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(found(), timeout)


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("agent_messaging.migrations")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def revision_of(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version_num FROM amp.alembic_version").fetchone()
    assert row is not None
    return str(row[0])


# -- an SDK on a database newer than itself ---------------------------------------------


@pytest.mark.parametrize("apply_migrations", [True, False])
async def test_older_sdk_runs_with_a_warning_on_a_non_breaking_newer_database(
    tmp_path: Path, dsn: str, records: Records, apply_migrations: bool
) -> None:
    newer = migrate_with_newer_sdk(tmp_path, dsn, breaking=False)
    config = make_config(dsn, apply_migrations=apply_migrations)
    async with AgentMessaging[Any](config) as sdk:
        warning = await records.wait_for(f"at revision {newer}")
        assert warning.levelno == logging.WARNING
        text = warning.getMessage()
        assert f"agent-messaging {NEWER_SDK}" in text
        assert f"this agent-messaging {migrations.sdk_version()} knows revisions up to" in text
        assert "not breaking" in text
        await sdk.register_organization("org1")
        await sdk.register_agent("alice", "org1")
        await sdk.register_agent("bob", "org1")
        await sdk.async_conversation.send("alice", "bob", {"hello": 1})
        assert await sdk.async_conversation.get_unread_messages("bob") == [{"hello": 1}]
    assert revision_of(dsn) == newer  # never migrated downward

    done = amp("migrate", "--database-url", dsn)
    assert done.returncode == 0, done.stderr
    assert f"at revision {newer}" in done.stdout and "not breaking" in done.stdout
    assert revision_of(dsn) == newer


@pytest.mark.parametrize("apply_migrations", [True, False])
async def test_older_sdk_refuses_a_database_with_a_breaking_newer_revision(
    tmp_path: Path, dsn: str, apply_migrations: bool
) -> None:
    newer = migrate_with_newer_sdk(tmp_path, dsn, breaking=True)
    sdk = AgentMessaging[Any](make_config(dsn, apply_migrations=apply_migrations))
    with pytest.raises(IncompatibleSchemaError) as raised:
        await sdk.initialize()
    text = str(raised.value)
    head = migrations.head_revision()
    assert f"revision {newer} (installed by agent-messaging {NEWER_SDK})" in text
    assert f"this agent-messaging {migrations.sdk_version()} knows revisions up to {head}" in (text)
    assert f"revision {newer} is breaking: upgrade agent-messaging" in text
    with pytest.raises(RuntimeError, match="not initialized"):
        _ = sdk.db  # nothing left open

    done = amp("migrate", "--database-url", dsn)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line
    assert f"revision {newer} is breaking" in done.stderr
    assert revision_of(dsn) == newer


async def test_running_sdk_logs_a_migration_by_a_newer_sdk(
    tmp_path: Path, dsn: str, records: Records
) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        # a serving process hears migrations (a send-only one holds no listener at all)
        await sdk.register_organization("org1")
        await sdk.register_agent("bob", "org1")

        @sdk.register_handler("bob")
        async def bob(message: Any, context: Any) -> None:
            return None

        await sdk.serve_handlers()
        assert sdk.dispatcher.subscribed(migrations.MIGRATIONS_CHANNEL)
        newer = await asyncio.to_thread(migrate_with_newer_sdk, tmp_path, dsn, breaking=True)
        record = await records.wait_for(f"migrated to revision {newer}")
    assert record.levelno == logging.ERROR
    assert "does not know it and it is breaking" in record.getMessage()


def test_assess_never_plans_a_downgrade() -> None:
    chain = migrations.revision_chain()
    head = chain[-1].revision
    state = migrations.DatabaseState(
        "9999", {"9999": migrations.AppliedRevision("9999", False, "x", NEWER_SDK)}
    )
    found = migrations.assess(state)
    assert found.verdict == "newer" and not found.breaking and found.head == head
    # a revision that is not even recorded counts as breaking
    assert migrations.assess(migrations.DatabaseState("9999")).breaking
    assert migrations.assess(migrations.DatabaseState(None)).verdict == "behind"


def test_a_released_revision_applied_from_other_sql_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    baseline = migrations.BASELINE_REVISION
    state = migrations.DatabaseState(
        baseline, {baseline: migrations.AppliedRevision(baseline, False, "0" * 64, "0.1.0")}
    )
    monkeypatch.setattr(migrations, "RELEASES", {})
    assert migrations.assess(state).verdict == "prerelease"
    monkeypatch.setattr(migrations, "RELEASES", {"0.1.0": baseline})
    with pytest.raises(SchemaError, match="a frozen revision was edited"):
        migrations.assess(state)


# -- databases from before the first release -----------------------------------------------


def make_legacy(dsn: str, revision: str = "0004") -> None:
    """What the development revisions 0001-0004 left: sql/ applied, version 0004."""
    apply_sql_dir(dsn)
    admin(
        dsn,
        "CREATE TABLE amp.alembic_version (version_num varchar(32) PRIMARY KEY)",
        f"INSERT INTO amp.alembic_version VALUES ('{revision}')",
    )


def test_empty_legacy_database_is_rebuilt(empty_dsn: str, dsn: str) -> None:
    make_legacy(empty_dsn)
    done = amp("migrate", "--database-url", empty_dsn)
    assert done.returncode == 0, done.stderr
    assert "pre-release schema (0004) was dropped and rebuilt" in done.stdout, done.stdout
    assert revision_of(empty_dsn) == migrations.head_revision()
    assert catalog(empty_dsn) == catalog(dsn)


async def test_legacy_database_with_data_is_refused_with_one_line(empty_dsn: str, dsn: str) -> None:
    make_legacy(empty_dsn, "0003")
    admin(empty_dsn, "SELECT amp.register_organization('org1', 'Org One')")

    done = amp("migrate", "--database-url", empty_dsn)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert "revision 0003" in line and "amp migrate --drop-prerelease" in line, line
    with pytest.raises(PrereleaseSchemaError, match="--drop-prerelease"):
        await AgentMessaging[Any](make_config(empty_dsn)).initialize()
    with psycopg.connect(empty_dsn) as conn:  # untouched
        assert conn.execute("SELECT count(*) FROM amp.organizations").fetchone() == (1,)
        assert conn.execute("SELECT version_num FROM amp.alembic_version").fetchone() == ("0003",)

    done = amp("migrate", "--database-url", empty_dsn, "--drop-prerelease")
    assert done.returncode == 0, done.stderr
    assert revision_of(empty_dsn) == migrations.head_revision()
    assert catalog(empty_dsn) == catalog(dsn)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM amp.organizations").fetchone() == (0,)


def test_schema_installed_by_hand_is_not_migrated_over(empty_dsn: str) -> None:
    apply_sql_dir(empty_dsn)
    before = catalog(empty_dsn)
    done = amp("migrate", "--database-url", empty_dsn)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert "no migration is recorded in it" in line and "DROP SCHEMA amp CASCADE" in line
    assert catalog(empty_dsn) == before


async def test_database_from_an_earlier_unreleased_baseline(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the release the baseline is regenerated: a database built from an
    earlier one is told apart by its recorded sql/ hash."""
    monkeypatch.setattr(migrations, "RELEASES", {})
    admin(dsn, "UPDATE amp.schema_revisions SET sql_hash = 'earlier'")
    admin(dsn, "SELECT amp.register_organization('org1', 'Org One')")
    with pytest.raises(PrereleaseSchemaError, match="earlier, unreleased state"):
        await AgentMessaging[Any](make_config(dsn)).initialize()
    admin(dsn, "DELETE FROM amp.organizations")
    async with AgentMessaging[Any](make_config(dsn)) as sdk:  # empty: rebuilt
        await sdk.register_organization("org1")
    with psycopg.connect(dsn) as conn:
        head = migrations.revision_chain()[-1]
        assert conn.execute(
            "SELECT sql_hash FROM amp.schema_revisions WHERE revision = %s", (head.revision,)
        ).fetchone() == (head.sql_hash,)


# -- #11.12 schema squatting ----------------------------------------------------------------


@pytest.fixture
def squatter(empty_dsn: str) -> Iterator[str]:
    """A real second role that created schema amp in the empty database first."""
    role = f"amp_squatter_{uuid.uuid4().hex[:8]}"
    admin(empty_dsn, f"CREATE ROLE {role} NOLOGIN")
    try:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            database = conn.execute("SELECT current_database()").fetchone()
            assert database is not None
            conn.execute(f'GRANT CREATE ON DATABASE "{database[0]}" TO {role}')
            conn.execute(f"SET ROLE {role}")
            conn.execute("CREATE SCHEMA amp")
            conn.execute("CREATE TABLE amp.trap (id int)")
        yield role
    finally:
        admin(empty_dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_migrate_refuses_a_schema_owned_by_another_role(
    empty_dsn: str, squatter: str
) -> None:
    done = amp("migrate", "--database-url", empty_dsn)
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line, done.stderr
    assert f"schema amp exists and belongs to role {squatter}" in line, line
    assert "refusing to install into it" in line

    with pytest.raises(SchemaOwnershipError, match=f"belongs to role {squatter}"):
        await AgentMessaging[Any](make_config(empty_dsn)).initialize()

    with psycopg.connect(empty_dsn) as conn:  # nothing was installed into it
        names = conn.execute(
            "SELECT array_agg(relname::text ORDER BY relname) FROM pg_class "
            "WHERE relnamespace = 'amp'::regnamespace"
        ).fetchone()
    assert names == (["trap"],)

    # a schema amp made by the migrating role itself is fine
    admin(empty_dsn, "DROP SCHEMA amp CASCADE", "CREATE SCHEMA amp")
    assert migrations.upgrade(empty_dsn).after == migrations.head_revision()
