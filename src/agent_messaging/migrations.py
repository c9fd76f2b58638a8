"""Migrations: frozen alembic revisions, version skew between SDKs and databases.

``sql/`` is the readable current state of the protocol (fresh installs, docs). A
database is built from *frozen revisions* in ``alembic/versions``: revision ``0100``
(the baseline) executes ``versions/sql/0100_baseline.upgrade.sql``, the files of
``sql/`` concatenated in manifest order when the baseline was frozen; every later
revision is a delta (``ALTER TABLE ...``, ``DROP FUNCTION`` of an old signature,
``CREATE OR REPLACE`` of a changed body) in its own frozen file. Frozen files are
never edited once released. Each revision module declares:

``breaking``
    whether an SDK that does not know this revision cannot work with it; such an
    SDK then refuses to start (:class:`IncompatibleSchemaError`) instead of warning;
``sql_hash``
    :func:`sql_state_hash` of ``sql/`` once the revision is applied, so a test can
    tell that ``sql/`` changed without a new revision.

Every applied revision is recorded in ``amp.schema_revisions`` (revision, breaking,
sql_hash, sdk_version, applied_at), so an SDK can read the flag of revisions it does
not know, and announced with ``NOTIFY amp_migrations`` (running SDKs log it).

Until the first release (:data:`RELEASES` is empty and no ``v*`` tag exists) the
baseline is regenerated from ``sql/`` with ``python scripts/migrations.py
freeze-baseline``; after it, changes ship as delta revisions only
(``python scripts/migrations.py revision -m "..." [--breaking]``).

Alembic runs on SQLAlchemy with psycopg 3, for migrations only. Its version table is
``amp.alembic_version`` so that an application's own alembic history is left alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from .exceptions import (
    DatabaseError,
    IncompatibleSchemaError,
    PrereleaseSchemaError,
    SchemaError,
    SchemaOwnershipError,
)

if TYPE_CHECKING:
    from .database import Database

log = logging.getLogger("agent_messaging.migrations")

VERSION_TABLE = "alembic_version"
#: Where applied revisions are recorded (created by the runner, not by a revision).
REVISIONS_TABLE = "schema_revisions"
#: Tables of schema ``amp`` that belong to the migration machinery, not the protocol.
BOOKKEEPING_TABLES = (VERSION_TABLE, REVISIONS_TABLE)
#: Every applied (or reverted) revision is announced on this channel.
MIGRATIONS_CHANNEL = "amp_migrations"
#: pg_advisory_xact_lock key that serialises migrations of concurrent processes.
MIGRATION_LOCK_KEY = 0x616D705F6D6967  # "amp_mig"
#: The first frozen revision: the whole protocol as of the first release.
BASELINE_REVISION = "0100"
#: Development revisions from before the frozen baseline (they re-applied whole
#: ``sql/`` files). A database left at one of them is rebuilt when empty, else the
#: user is told how to recreate it.
LEGACY_REVISIONS = frozenset({"0001", "0002", "0003", "0004"})
#: The head revision of every release, oldest first (``"0.1.0": "0100"``). Revisions
#: up to a release's head are frozen; the upgrade test starts from the last one.
RELEASES: dict[str, str] = {"0.1.0": "0100"}

_PACKAGE_DIR = Path(__file__).resolve().parent
# alembic keeps its context in module globals: one migration at a time per process
# (other processes are serialised by the advisory lock in env.py).
_alembic_lock = threading.Lock()


# -- where things are -----------------------------------------------------------


def _resource_dir(name: str, packaged: str) -> Path:
    """Find ``sql/`` or ``alembic/``: inside an installed wheel, else in the checkout."""
    inside = _PACKAGE_DIR / packaged
    if inside.is_dir():
        return inside
    checkout = _PACKAGE_DIR.parents[1] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"cannot find the {name}/ directory of agent-messaging")


def sql_dir() -> Path:
    """The directory holding the protocol's SQL files."""
    return _resource_dir("sql", "_sql")


def alembic_dir() -> Path:
    """The alembic script directory."""
    return _resource_dir("alembic", "_alembic")


def versions_dir() -> Path:
    """The revision modules (``alembic/versions``)."""
    return alembic_dir() / "versions"


def frozen_sql_dir(versions: Path | None = None) -> Path:
    """Where the frozen SQL of each revision lives (``alembic/versions/sql``)."""
    return (versions or versions_dir()) / "sql"


def sql_manifest() -> list[str]:
    """The SQL files in the order they are applied (``sql/manifest.txt``)."""
    lines = (sql_dir() / "manifest.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def sdk_version() -> str:
    """The installed agent-messaging version (recorded with each applied revision)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-messaging")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def sqlalchemy_url(dsn: str) -> str:
    """Turn a libpq-style DSN into a SQLAlchemy URL for the psycopg 3 driver."""
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg://", dsn)


def _read_sql(path: Path) -> str:
    # normalised line endings: a Windows checkout hashes and freezes the same
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def sql_state_hash() -> str:
    """SHA-256 of ``sql/`` as a migration sees it: the manifest's files, in order."""
    digest = hashlib.sha256()
    for name in sql_manifest():
        digest.update(f"{name}\n".encode())
        digest.update(_read_sql(sql_dir() / name).encode())
        digest.update(b"\0")
    return digest.hexdigest()


# -- the revision chain ------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """One revision module of ``alembic/versions``, as this SDK knows it."""

    revision: str
    down_revision: str | None
    breaking: bool
    sql_hash: str
    path: Path

    @property
    def stem(self) -> str:
        """File name without ``.py``; the frozen SQL files are ``<stem>.upgrade.sql``
        and ``<stem>.downgrade.sql`` in ``versions/sql``."""
        return self.path.stem


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_amp_revision_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=8)
def revision_chain(versions: Path | None = None) -> tuple[Revision, ...]:
    """The revisions of ``versions`` (default: this SDK's), oldest first.

    Read without alembic (cheap enough for every SDK start). Raises when the
    revisions do not form one linear chain.
    """
    directory = versions or versions_dir()
    by_down: dict[str | None, Revision] = {}
    count = 0
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _load_module(path)
        rev = Revision(
            revision=str(module.revision),
            down_revision=module.down_revision,
            breaking=bool(module.breaking),
            sql_hash=str(module.sql_hash),
            path=path,
        )
        if rev.down_revision in by_down:
            raise SchemaError(
                f"revisions {by_down[rev.down_revision].revision} and {rev.revision} "
                f"both follow {rev.down_revision}: the chain must stay linear"
            )
        by_down[rev.down_revision] = rev
        count += 1
    chain: list[Revision] = []
    current: str | None = None
    while current in by_down:
        rev = by_down[current]
        chain.append(rev)
        current = rev.revision
    if len(chain) != count:
        raise SchemaError(f"the revisions in {directory} do not form one chain from the base")
    return tuple(chain)


def head_revision() -> str:
    """The newest revision this SDK ships."""
    return revision_chain()[-1].revision


def released_revisions() -> set[str]:
    """Revisions that belong to a release (frozen for good)."""
    chain = [r.revision for r in revision_chain()]
    heads = [chain.index(head) for head in RELEASES.values() if head in chain]
    return set(chain[: max(heads) + 1]) if heads else set()


# -- what the database holds, and what to do about it -------------------------------------


@dataclass(frozen=True)
class AppliedRevision:
    """A row of ``amp.schema_revisions``."""

    revision: str
    breaking: bool
    sql_hash: str
    sdk_version: str


@dataclass(frozen=True)
class DatabaseState:
    """The migration state of one database."""

    #: ``amp.alembic_version``; None when never migrated (or migrated down to base)
    revision: str | None
    #: ``amp.schema_revisions`` by revision
    applied: Mapping[str, AppliedRevision] = field(default_factory=dict)


Verdict = Literal["current", "behind", "newer", "prerelease"]


@dataclass(frozen=True)
class Assessment:
    """What an SDK that knows ``chain`` makes of a database."""

    verdict: Verdict
    state: DatabaseState
    head: str
    #: for ``newer``: the database's revisions this SDK does not know
    unknown: tuple[AppliedRevision, ...] = ()
    #: for ``prerelease``: why
    reason: str = ""

    @property
    def breaking(self) -> tuple[AppliedRevision, ...]:
        """Unknown revisions marked breaking."""
        return tuple(r for r in self.unknown if r.breaking)

    def newer_message(self) -> str:
        """One line for a database newer than this SDK (both versions named)."""
        rev = self.state.revision
        installed = self.state.applied.get(rev or "")
        by = f" (installed by agent-messaging {installed.sdk_version})" if installed else ""
        names = ", ".join(r.revision for r in self.breaking)
        head = (
            f"this agent-messaging {sdk_version()} knows revisions up to {self.head}"
            if self.head
            else f"this agent-messaging {sdk_version()}"
        )
        if self.breaking:
            return (
                f"the amp schema is at revision {rev}{by}, newer than {head}, and "
                f"revision {names} is breaking: upgrade agent-messaging (the database "
                "is never migrated downward)"
            )
        return (
            f"the amp schema is at revision {rev}{by}, newer than {head}; its newer "
            "revisions are not breaking, so this SDK runs on it (upgrade it soon)"
        )


def assess(state: DatabaseState, chain: Sequence[Revision] | None = None) -> Assessment:
    """Compare a database's state with the revisions an SDK ships (pure)."""
    chain = revision_chain() if chain is None else chain
    known = {r.revision: r for r in chain}
    head = chain[-1].revision if chain else ""
    released = released_revisions()
    current = state.revision
    if current is None:
        return Assessment("behind", state, head)
    if current in LEGACY_REVISIONS:
        return Assessment(
            "prerelease",
            state,
            head,
            reason=f"it is at revision {current}, a development revision from before the "
            f"first release",
        )
    if current not in known:
        recorded = state.applied.get(current)
        unknown = tuple(r for rev, r in state.applied.items() if rev not in known)
        if recorded is None:
            # not even recorded: nothing tells us it is harmless
            unknown += (AppliedRevision(current, True, "", "unknown"),)
        return Assessment("newer", state, head, unknown=unknown)
    for rev in chain:
        applied = state.applied.get(rev.revision)
        if applied is not None and applied.sql_hash != rev.sql_hash:
            if rev.revision in released:
                raise SchemaError(
                    f"revision {rev.revision} in the database was applied from other SQL "
                    f"(sql/ hash {applied.sql_hash[:12]}) than the released revision this "
                    f"SDK ships ({rev.sql_hash[:12]}): a frozen revision was edited"
                )
            return Assessment(
                "prerelease",
                state,
                head,
                reason=f"its revision {rev.revision} was built from an earlier, unreleased "
                f"state of revision {rev.revision}",
            )
        if rev.revision == current:
            break
    return Assessment("current" if current == head else "behind", state, head)


def _state_from_rows(current: Any, applied_json: Any) -> DatabaseState:
    rows = json.loads(applied_json) if isinstance(applied_json, str) else (applied_json or [])
    applied = {
        str(r["revision"]): AppliedRevision(
            str(r["revision"]), bool(r["breaking"]), str(r["sql_hash"]), str(r["sdk_version"])
        )
        for r in rows
    }
    return DatabaseState(None if current is None else str(current), applied)


_PRESENT_SQL = f"""
SELECT to_regclass('amp.{VERSION_TABLE}') IS NOT NULL AS has_version,
       to_regclass('amp.{REVISIONS_TABLE}') IS NOT NULL AS has_revisions,
       to_regprocedure('amp.schema_state()') IS NOT NULL AS has_state_function
"""
_VERSION_SQL = f"SELECT (SELECT version_num FROM amp.{VERSION_TABLE} LIMIT 1) AS current"
_STATE_SQL = f"""
SELECT (SELECT version_num FROM amp.{VERSION_TABLE} LIMIT 1) AS current,
       (SELECT coalesce(json_agg(json_build_object(
                   'revision', revision, 'breaking', breaking,
                   'sql_hash', sql_hash, 'sdk_version', sdk_version)), '[]')::text
        FROM amp.{REVISIONS_TABLE}) AS applied
"""


async def read_state(db: Database) -> DatabaseState:
    """The migration state of the SDK's database (two small queries). Read through
    ``amp.schema_state()`` where it exists: application roles may not read the
    bookkeeping tables themselves."""
    present = await db.fetch_one(_PRESENT_SQL)
    if not present["has_version"]:
        return DatabaseState(None)
    if present["has_state_function"]:
        try:
            row = await db.fetch_one("SELECT current, applied FROM amp.schema_state()")
            return _state_from_rows(row["current"], row["applied"])
        except DatabaseError:
            pass  # bookkeeping amp_owner cannot read (a development schema): read it directly
    if not present["has_revisions"]:
        return DatabaseState(await db.fetch_value(_VERSION_SQL))
    row = await db.fetch_one(_STATE_SQL)
    return _state_from_rows(row["current"], row["applied"])


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or ``None`` if it was never migrated."""
    return (await read_state(db)).revision


async def check_compatible(db: Database) -> Assessment:
    """Refuse a database newer than this SDK with a breaking revision; warn about a
    newer non-breaking one or one this SDK would have to migrate (used when
    ``apply_migrations`` is off). Never changes the database."""
    found = assess(await read_state(db))
    if found.verdict == "newer":
        if found.breaking:
            raise IncompatibleSchemaError(found.newer_message())
        log.warning("%s", found.newer_message())
    elif found.verdict == "prerelease":
        log.warning(
            "the amp schema cannot be used by this agent-messaging %s: %s; run `amp "
            "migrate` (`amp migrate --drop-prerelease` if it holds data you can drop)",
            sdk_version(),
            found.reason,
        )
    elif found.verdict != "current":
        log.warning(
            "the amp schema is at revision %s, this agent-messaging %s expects %s: run "
            "`amp migrate`",
            found.state.revision,
            sdk_version(),
            found.head,
        )
    return found


async def ensure_migrated(db: Database) -> bool:
    """Apply pending migrations; returns whether alembic had to run.

    The cheap check on ``amp.schema_revisions`` spares every SDK start the cost of
    alembic. A database newer than this SDK is never migrated: it runs with a
    warning when the newer revisions are not breaking, else raises
    :class:`IncompatibleSchemaError`. Concurrent starters are serialised by the
    advisory lock in ``env.py``, which decides again under that lock.
    """
    found = assess(await read_state(db))
    if found.verdict == "current":
        return False
    if found.verdict == "newer":
        if found.breaking:
            raise IncompatibleSchemaError(found.newer_message())
        log.warning("%s", found.newer_message())
        return False
    result = await asyncio.to_thread(upgrade, db.dsn)
    if result.rebuilt or result.newer is not None:
        log.warning("%s", result.describe())
    return bool(result.applied or result.rebuilt)


def log_migration_notice(channel: str, notification: Any) -> None:
    """Dispatcher callback for :data:`MIGRATIONS_CHANNEL`: log what was migrated."""
    revision = getattr(notification, "revision", None)
    if revision is None:
        return
    breaking = bool(getattr(notification, "breaking", False))
    direction = getattr(notification, "direction", "upgrade")
    by = getattr(notification, "sdk_version", "?")
    known = {r.revision for r in revision_chain()}
    if direction == "upgrade" and revision not in known:
        level = logging.ERROR if breaking else logging.WARNING
        log.log(
            level,
            "the amp schema was migrated to revision %s by agent-messaging %s; this "
            "agent-messaging %s does not know it%s",
            revision,
            by,
            sdk_version(),
            " and it is breaking: restart with a newer agent-messaging"
            if breaking
            else " (not breaking: this process keeps running)",
        )
    else:
        log.info("the amp schema: %s to revision %s by agent-messaging %s", direction, revision, by)


# -- inside a running migration (alembic env.py and the revision modules) -----------------


def _raw_connection() -> Any:
    """The psycopg connection of the running alembic migration."""
    from alembic import op

    return op.get_bind().connection.driver_connection


def _notify(conn: Any, revision: str, breaking: bool, direction: str) -> None:
    payload = json.dumps(
        {
            "kind": "migration",
            "revision": revision,
            "breaking": breaking,
            "direction": direction,
            "sdk_version": sdk_version(),
        }
    )
    conn.execute("SELECT pg_notify(%s, %s)", (MIGRATIONS_CHANNEL, payload))


def run_upgrade(module_file: str, revision: str, *, breaking: bool, sql_hash: str) -> None:
    """A revision's ``upgrade()``: execute its frozen ``<stem>.upgrade.sql``, record the
    revision in ``amp.schema_revisions`` and announce it on :data:`MIGRATIONS_CHANNEL`
    (delivered when the migration commits)."""
    path = Path(module_file)
    frozen = frozen_sql_dir(path.parent) / f"{path.stem}.upgrade.sql"
    conn = _raw_connection()
    # Without parameters psycopg sends the text as is (no %-placeholders, several
    # statements allowed), which is what a SQL file needs.
    conn.execute(_read_sql(frozen))
    conn.execute(
        f"""
        INSERT INTO amp.{REVISIONS_TABLE} (revision, breaking, sql_hash, sdk_version)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (revision) DO UPDATE
        SET breaking = excluded.breaking, sql_hash = excluded.sql_hash,
            sdk_version = excluded.sdk_version, applied_at = now()
        """,
        (revision, breaking, sql_hash, sdk_version()),
    )
    _notify(conn, revision, breaking, "upgrade")


def run_downgrade(module_file: str, revision: str, *, breaking: bool = False) -> None:
    """A revision's ``downgrade()``: execute its frozen ``<stem>.downgrade.sql`` and
    forget the revision."""
    path = Path(module_file)
    frozen = frozen_sql_dir(path.parent) / f"{path.stem}.downgrade.sql"
    conn = _raw_connection()
    conn.execute(_read_sql(frozen))
    conn.execute(f"DELETE FROM amp.{REVISIONS_TABLE} WHERE revision = %s", (revision,))
    _notify(conn, revision, breaking, "downgrade")


#: Drops every object of schema ``amp`` but the bookkeeping tables: the downgrade of
#: the baseline, and the rebuild of a pre-release schema. Names are collected before
#: each DROP, and IF EXISTS covers what a CASCADE took along.
DROP_ALL_SQL = f"""
DO $amp_drop$
DECLARE
    v_names text;
BEGIN
    SELECT string_agg(c.oid::regclass::text, ', ') INTO v_names FROM pg_class c
    WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'v';
    IF v_names IS NOT NULL THEN
        EXECUTE 'DROP VIEW IF EXISTS ' || v_names || ' CASCADE';
    END IF;
    SELECT string_agg(c.oid::regclass::text, ', ') INTO v_names FROM pg_class c
    WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'm';
    IF v_names IS NOT NULL THEN
        EXECUTE 'DROP MATERIALIZED VIEW IF EXISTS ' || v_names || ' CASCADE';
    END IF;
    SELECT string_agg(c.oid::regclass::text, ', ') INTO v_names FROM pg_class c
    WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind IN ('r', 'p')
      AND c.relname NOT IN ('{VERSION_TABLE}', '{REVISIONS_TABLE}');
    IF v_names IS NOT NULL THEN
        EXECUTE 'DROP TABLE IF EXISTS ' || v_names || ' CASCADE';
    END IF;
    SELECT string_agg(p.oid::regprocedure::text, ', ') INTO v_names FROM pg_proc p
    WHERE p.pronamespace = 'amp'::regnamespace AND p.prokind IN ('f', 'p');
    IF v_names IS NOT NULL THEN
        EXECUTE 'DROP ROUTINE IF EXISTS ' || v_names || ' CASCADE';
    END IF;
    SELECT string_agg(c.oid::regclass::text, ', ') INTO v_names FROM pg_class c
    WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'S';
    IF v_names IS NOT NULL THEN
        EXECUTE 'DROP SEQUENCE IF EXISTS ' || v_names || ' CASCADE';
    END IF;
    SELECT string_agg(t.oid::regtype::text, ', ') INTO v_names FROM pg_type t
    LEFT JOIN pg_class c ON c.oid = t.typrelid
    WHERE t.typnamespace = 'amp'::regnamespace AND t.typelem = 0
      AND (t.typtype IN ('e', 'd', 'r') OR c.relkind = 'c');
    IF v_names IS NOT NULL THEN
        EXECUTE 'DROP TYPE IF EXISTS ' || v_names || ' CASCADE';
    END IF;
END
$amp_drop$;
"""

_BOOKKEEPING_SQL = f"""
CREATE TABLE IF NOT EXISTS amp.{REVISIONS_TABLE} (
    revision    text PRIMARY KEY,
    breaking    boolean NOT NULL,
    sql_hash    text NOT NULL,
    sdk_version text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass
class MigrationResult:
    """What one ``upgrade`` did (``amp migrate`` prints it)."""

    #: revision before and after (None: never migrated)
    before: str | None = None
    after: str | None = None
    #: the newest revision of the scripts that ran
    head: str = ""
    #: revisions applied, oldest first
    applied: list[str] = field(default_factory=list)
    #: a pre-release schema was dropped and rebuilt
    rebuilt: bool = False
    #: set when the database is newer than the scripts (nothing was done)
    newer: Assessment | None = None

    def describe(self) -> str:
        """One line for a person."""
        if self.newer is not None:
            return self.newer.newer_message()
        target = f"target {self.head}, the head of agent-messaging {sdk_version()}"
        if self.rebuilt:
            return (
                f"amp schema: the pre-release schema ({self.before}) was dropped and "
                f"rebuilt at revision {self.after} ({target})"
            )
        if not self.applied:
            return f"amp schema: at revision {self.after} ({target}); nothing to do"
        return (
            f"amp schema: revision {self.before or 'none'} -> {self.after} ({target}; "
            f"applied {', '.join(self.applied)})"
        )


def _check_owner(conn: Any) -> None:
    """Install only into an ``amp`` schema of our own: the migrator owns it, or it
    belongs to ``amp_owner`` (as once installed, see sql/security.sql) and the
    migrator is a member of that role (a superuser is). Anyone else who owns it could
    replace what is installed into it, a superuser's work included."""
    row = conn.execute(
        """
        SELECT n.nspowner::regrole::text AS owner, current_user AS me,
               n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
               OR (n.nspowner = to_regrole('amp_owner')
                   AND pg_has_role(current_user, 'amp_owner', 'USAGE')) AS ours
        FROM pg_namespace n WHERE n.nspname = 'amp'
        """
    ).fetchone()
    if row is not None and not row[2]:
        raise SchemaOwnershipError(
            f"schema amp exists and belongs to role {row[0]}, of which {row[1]}, who is "
            f"migrating, is not a member: refusing to install into it (drop it, or "
            f"migrate as {row[0]} or a member of it)"
        )


def _holds_data(conn: Any) -> bool:
    from psycopg import sql

    tables = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'amp'::regnamespace "
        "AND c.relkind IN ('r', 'p') AND c.relname <> ALL (%s)",
        (list(BOOKKEEPING_TABLES),),
    ).fetchall()
    for (name,) in tables:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier("amp", name))
        if conn.execute(query).fetchone()[0]:
            return True
    return False


def _unrecorded_objects(conn: Any) -> int:
    """How many relations and functions schema ``amp`` holds besides the bookkeeping."""
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM pg_class c
                WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind <> 'i'
                  AND c.relname <> ALL (%(keep)s)
                  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                  JOIN pg_class t ON t.oid = d.refobjid
                                  WHERE d.objid = c.oid AND t.relname = ANY (%(keep)s)))
             + (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'amp'::regnamespace)
        """,
        {"keep": list(BOOKKEEPING_TABLES)},
    ).fetchone()
    return int(row[0])


def _read_state_sync(conn: Any) -> DatabaseState:
    has_version, has_revisions, _ = conn.execute(_PRESENT_SQL).fetchone()
    if not has_version:
        return DatabaseState(None)
    if not has_revisions:
        return DatabaseState(conn.execute(_VERSION_SQL).fetchone()[0])
    current, applied = conn.execute(_STATE_SQL).fetchone()
    return _state_from_rows(current, applied)


def prepare(connection: Any, attributes: dict[str, Any], versions: Path) -> bool:
    """Called by ``env.py`` inside the migration's transaction, before alembic runs:
    serialise with other migrators, refuse a squatted ``amp`` schema, create the
    bookkeeping, and decide whether to run (False: the database is newer than these
    scripts and not breaking; nothing to do). A database at a pre-release revision is
    rebuilt when it holds no data (or ``drop_prerelease`` was asked for), else
    :class:`PrereleaseSchemaError` says how to recreate it.
    """
    conn = connection.connection.driver_connection
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    _check_owner(conn)
    conn.execute("CREATE SCHEMA IF NOT EXISTS amp")
    conn.execute(_BOOKKEEPING_SQL)
    result: MigrationResult = attributes.setdefault("amp_result", MigrationResult())
    chain = revision_chain(versions)
    state = _read_state_sync(conn)
    result.before = result.after = state.revision
    result.head = chain[-1].revision
    if attributes.get("amp_direction") == "downgrade":
        return True
    if state.revision is None and (objects := _unrecorded_objects(conn)):
        raise SchemaError(
            f"schema amp already holds {objects} objects but no migration is recorded in "
            "it (installed from sql/ by hand?): refusing to migrate over them; drop them "
            "(DROP SCHEMA amp CASCADE) and run `amp migrate`"
        )
    found = assess(state, chain)
    if found.verdict == "newer":
        if found.breaking:
            raise IncompatibleSchemaError(found.newer_message())
        result.newer = found
        return False
    if found.verdict == "prerelease":
        if not attributes.get("drop_prerelease") and _holds_data(conn):
            raise PrereleaseSchemaError(
                f"the amp schema holds data but cannot be upgraded: {found.reason}; "
                "recreate it with `amp migrate --drop-prerelease` (drops schema amp's "
                "tables and their data)"
            )
        conn.execute(DROP_ALL_SQL)
        conn.execute(f"DELETE FROM amp.{VERSION_TABLE}")
        conn.execute(f"DELETE FROM amp.{REVISIONS_TABLE}")
        result.rebuilt = True
    return True


def finish(connection: Any, attributes: dict[str, Any]) -> None:
    """Called by ``env.py`` after alembic ran: record where the database ended up."""
    conn = connection.connection.driver_connection
    result: MigrationResult = attributes["amp_result"]
    result.after = _read_state_sync(conn).revision
    chain = [r.revision for r in revision_chain(Path(attributes["amp_versions"]))]
    if result.after in chain and attributes.get("amp_direction") != "downgrade":
        start = chain.index(result.before) + 1 if result.before in chain else 0
        if result.rebuilt:
            start = 0
        result.applied = chain[start : chain.index(result.after) + 1]


# -- running alembic -----------------------------------------------------------------


def _alembic_config(dsn: str, script_location: Path | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    location = script_location or alembic_dir()
    cfg.set_main_option("script_location", str(location))
    # '%' is alembic's interpolation character
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    cfg.attributes["amp_versions"] = str(location / "versions")
    return cfg


def upgrade(
    dsn: str,
    revision: str = "head",
    *,
    drop_prerelease: bool = False,
    script_location: Path | None = None,
) -> MigrationResult:
    """Upgrade the database at ``dsn`` to ``revision`` (blocking; alembic + psycopg).

    Never migrates downward: a database newer than these scripts is left alone (with
    a warning) or refused (:class:`IncompatibleSchemaError`) when a newer revision
    is breaking. ``script_location`` runs another alembic directory (tests use it to
    play a newer SDK).
    """
    from alembic import command

    cfg = _alembic_config(dsn, script_location)
    cfg.attributes["drop_prerelease"] = drop_prerelease
    with _alembic_lock:
        command.upgrade(cfg, revision)
    result: MigrationResult = cfg.attributes["amp_result"]
    return result


def downgrade(dsn: str, revision: str, *, script_location: Path | None = None) -> None:
    """Downgrade the database at ``dsn`` to ``revision`` (``base`` removes everything)."""
    from alembic import command

    cfg = _alembic_config(dsn, script_location)
    cfg.attributes["amp_direction"] = "downgrade"
    with _alembic_lock:
        command.downgrade(cfg, revision)


def script_head() -> str:
    """The head revision according to alembic (a test checks it against ours)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


# -- maintainer commands -----------------------------------------------------------------


def _repo_root() -> Path:
    return alembic_dir().parent


def release_tags() -> list[str]:
    """The ``v*`` tags of the git checkout (empty outside one)."""
    try:
        done = subprocess.run(
            ["git", "tag", "--list", "v*"],
            cwd=_repo_root(),
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return []
    return done.stdout.split()


_BASELINE_HEADER = """\
-- agent-messaging revision {revision}, the baseline: the whole protocol, the files of
-- sql/ concatenated in manifest order.
-- Generated by `python scripts/migrations.py freeze-baseline`; frozen once
-- released: never edit it after the release tag (changes ship as delta revisions).
-- sql/ state hash: {sql_hash}
"""

_BASELINE_DOWNGRADE_HEADER = """\
-- agent-messaging revision {revision}, the baseline, downgraded: drop every object of
-- schema amp except the migration bookkeeping (amp.alembic_version and
-- amp.schema_revisions). Generated by `python scripts/migrations.py freeze-baseline`;
-- frozen once released.
"""


def render_baseline(revision: str) -> tuple[str, str]:
    """The baseline's frozen upgrade and downgrade SQL as ``sql/`` defines it now."""
    parts = [_BASELINE_HEADER.format(revision=revision, sql_hash=sql_state_hash())]
    for name in sql_manifest():
        parts.append(f"\n-- {'=' * 70}\n-- sql/{name}\n-- {'=' * 70}\n\n")
        parts.append(_read_sql(sql_dir() / name).rstrip("\n") + "\n")
    downgrade_sql = _BASELINE_DOWNGRADE_HEADER.format(revision=revision) + DROP_ALL_SQL
    return "".join(parts), downgrade_sql


def freeze_baseline(*, force: bool = False) -> Path:
    """Regenerate the baseline revision from ``sql/`` (only before the first release).

    Writes ``versions/sql/<baseline>.upgrade.sql`` (``sql/`` concatenated) and
    ``.downgrade.sql`` and records the new :func:`sql_state_hash` in the baseline
    module. Refuses once a release exists, or when later revisions exist.
    """
    if (RELEASES or release_tags()) and not force:
        raise SchemaError(
            f"the baseline is released ({', '.join(release_tags()) or RELEASES}): change "
            "sql/ and add a delta revision instead (python scripts/migrations.py "
            "revision -m '...')"
        )
    chain = revision_chain()
    if len(chain) != 1 or chain[0].revision != BASELINE_REVISION:
        raise SchemaError(
            "revisions after the baseline exist: fold them into sql/ and delete them "
            "before regenerating the baseline"
        )
    baseline = chain[0]
    digest = sql_state_hash()
    upgrade_sql, downgrade_sql = render_baseline(baseline.revision)
    frozen = frozen_sql_dir(baseline.path.parent)
    frozen.mkdir(exist_ok=True)
    (frozen / f"{baseline.stem}.upgrade.sql").write_text(upgrade_sql, encoding="utf-8")
    (frozen / f"{baseline.stem}.downgrade.sql").write_text(downgrade_sql, encoding="utf-8")
    module = baseline.path.read_text(encoding="utf-8")
    module, count = re.subn(
        r'^sql_hash = "[0-9a-f]*"$', f'sql_hash = "{digest}"', module, flags=re.MULTILINE
    )
    if count != 1:
        raise SchemaError(f'no `sql_hash = "..."` line in {baseline.path}')
    baseline.path.write_text(module, encoding="utf-8")
    revision_chain.cache_clear()
    return frozen / f"{baseline.stem}.upgrade.sql"


_DELTA_HEADER = """\
-- agent-messaging revision {revision} ({direction}): {message}
-- A delta from revision {down} (frozen once released: never edit it after the release
-- tag). Write what takes a database at the previous revision to the sql/ of this one:
-- ALTER TABLE for tables (new columns at the end of the table in sql/ too), DROP
-- FUNCTION of an old signature before creating a changed one (CREATE OR REPLACE
-- cannot change arguments), CREATE OR REPLACE FUNCTION with the body copied from sql/.
-- tests/test_migrations.py checks that the chain equals sql/ and upgrades live data.
"""


def new_revision(
    message: str, *, breaking: bool = False, script_location: Path | None = None
) -> Path:
    """Create a delta revision: the module from ``script.py.mako`` and its two frozen
    SQL files (to be filled in). Returns the module's path."""
    from alembic import command

    chain = revision_chain(script_location / "versions" if script_location else None)
    number = max(int(r.revision) for r in chain) + 1
    rev_id = f"{number:04d}"
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "delta"
    cfg = _alembic_config("postgresql://unused", script_location)
    with _alembic_lock:
        script = command.revision(cfg, message=message, rev_id=rev_id)
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    target = path.with_name(f"{rev_id}_{slug}.py")
    text = path.read_text(encoding="utf-8")
    if breaking:
        text = text.replace("\nbreaking = False\n", "\nbreaking = True\n")
    target.write_text(text, encoding="utf-8")
    if target != path:
        path.unlink()
    frozen = frozen_sql_dir(target.parent)
    for direction in ("upgrade", "downgrade"):
        (frozen / f"{target.stem}.{direction}.sql").write_text(
            _DELTA_HEADER.format(
                revision=rev_id, direction=direction, message=message, down=chain[-1].revision
            ),
            encoding="utf-8",
        )
    revision_chain.cache_clear()
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/migrations.py``: maintainer commands."""
    import argparse  # not loaded by every process that imports this module

    parser = argparse.ArgumentParser(prog="python scripts/migrations.py")
    sub = parser.add_subparsers(dest="command", required=True)
    freeze = sub.add_parser(
        "freeze-baseline", help="regenerate the baseline revision from sql/ (before v0.1.0 only)"
    )
    freeze.add_argument("--force", action="store_true", help="even after a release (don't)")
    rev = sub.add_parser("revision", help="create a delta revision and its frozen SQL files")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--breaking", action="store_true", help="older SDKs must refuse it")
    sub.add_parser("hash", help="print the sql/ state hash a new revision records")
    sub.add_parser("heads", help="print the revision chain")
    args = parser.parse_args(argv)
    try:
        if args.command == "freeze-baseline":
            path = freeze_baseline(force=args.force)
            print(f"wrote {path} (sql/ hash {sql_state_hash()})")
        elif args.command == "revision":
            path = new_revision(args.message, breaking=args.breaking)
            print(f"wrote {path}; fill in {frozen_sql_dir(path.parent)}/{path.stem}.*.sql")
        elif args.command == "hash":
            print(sql_state_hash())
        else:
            for r in revision_chain():
                flag = " (breaking)" if r.breaking else ""
                print(f"{r.revision} <- {r.down_revision or 'base'}{flag}  {r.path.name}")
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
