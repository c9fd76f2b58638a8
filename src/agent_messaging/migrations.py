"""Migrations: alembic revisions that apply the SQL files of ``sql/``.

``sql/`` is the source of truth. Each alembic revision names the files it applies
(the function files use ``CREATE OR REPLACE``, ``views.sql`` re-creates its views),
so a revision is a few lines and the SQL is never written twice. Until the first
release a revision applies whole files; after it, a change to ``sql/`` ships with a
new revision, and ``tests/test_migrations.py`` checks that migrating from zero gives
exactly the schema that ``sql/`` defines.

Alembic runs on SQLAlchemy with psycopg 3, for migrations only: the SDK itself talks
psqlpy. The version table is ``amp.alembic_version`` so that an application's own
alembic history in the same database is left alone.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .database import Database

#: The newest revision in ``alembic/versions``; a test checks it against alembic.
HEAD_REVISION = "0006"
VERSION_TABLE = "alembic_version"
#: pg_advisory_xact_lock key that serialises migrations of concurrent processes.
MIGRATION_LOCK_KEY = 0x616D705F6D6967  # "amp_mig"

_PACKAGE_DIR = Path(__file__).resolve().parent
# alembic keeps its context in module globals: one migration at a time per process
# (other processes are serialised by the advisory lock in env.py).
_alembic_lock = threading.Lock()


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


def sql_manifest() -> list[str]:
    """The SQL files in the order they are applied (``sql/manifest.txt``)."""
    lines = (sql_dir() / "manifest.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def sqlalchemy_url(dsn: str) -> str:
    """Turn a libpq-style DSN into a SQLAlchemy URL for the psycopg 3 driver."""
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg://", dsn)


def _raw_connection() -> Any:
    """The psycopg connection of the running alembic migration."""
    from alembic import op

    return op.get_bind().connection.driver_connection


def apply_sql_files(*names: str) -> None:
    """Execute whole SQL files from ``sql/`` inside the running migration."""
    conn = _raw_connection()
    for name in names:
        # Without parameters psycopg sends the text as is (no %-placeholders, several
        # statements allowed), which is what a SQL file needs.
        conn.execute((sql_dir() / name).read_text())


_FUNCTION_RE = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+amp\.(\w+)", re.IGNORECASE)


def functions_defined_in(*names: str) -> list[str]:
    """Names of the ``amp`` functions that the given SQL files define."""
    found: list[str] = []
    for name in names:
        found += _FUNCTION_RE.findall((sql_dir() / name).read_text())
    return sorted(set(found))


def drop_functions_of(*names: str) -> None:
    """Drop every overload of each function the given files define (a downgrade)."""
    conn = _raw_connection()
    # DO blocks take no parameters: the names travel in a transaction-local setting.
    conn.execute(
        "SELECT set_config('amp.drop_functions', %s, true)",
        (",".join(functions_defined_in(*names)),),
    )
    conn.execute(
        """
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
                     WHERE p.pronamespace = 'amp'::regnamespace
                       AND p.proname = ANY (string_to_array(
                           current_setting('amp.drop_functions'), ',')) LOOP
                EXECUTE 'DROP FUNCTION IF EXISTS ' || r.signature || ' CASCADE';
            END LOOP;
        END $$;
        """
    )


def drop_everything() -> None:
    """Drop every object of schema ``amp`` except alembic's version table."""
    _raw_connection().execute(
        """
        DO $$
        DECLARE r record;
        BEGIN
            FOR r IN SELECT c.oid::regclass::text AS name FROM pg_class c
                     WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'v' LOOP
                EXECUTE 'DROP VIEW IF EXISTS ' || r.name || ' CASCADE';
            END LOOP;
            FOR r IN SELECT c.oid::regclass::text AS name FROM pg_class c
                     WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'r'
                       AND c.relname <> 'alembic_version' LOOP
                EXECUTE 'DROP TABLE IF EXISTS ' || r.name || ' CASCADE';
            END LOOP;
            FOR r IN SELECT p.oid::regprocedure::text AS name FROM pg_proc p
                     WHERE p.pronamespace = 'amp'::regnamespace LOOP
                EXECUTE 'DROP FUNCTION IF EXISTS ' || r.name || ' CASCADE';
            END LOOP;
        END $$;
        """
    )


def _alembic_config(dsn: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(alembic_dir()))
    # '%' is alembic's interpolation character
    cfg.set_main_option("sqlalchemy.url", dsn.replace("%", "%%"))
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Upgrade the database at ``dsn`` to ``revision`` (blocking; alembic + psycopg)."""
    from alembic import command

    with _alembic_lock:
        command.upgrade(_alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    """Downgrade the database at ``dsn`` to ``revision`` (``base`` removes everything)."""
    from alembic import command

    with _alembic_lock:
        command.downgrade(_alembic_config(dsn), revision)


def script_head() -> str:
    """The head revision according to the alembic scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or ``None`` if it was never migrated."""
    row = await db.fetch_one(
        "SELECT to_regclass('amp.alembic_version') IS NOT NULL AS present, "
        "to_regprocedure('amp.schema_version()') IS NOT NULL AS readable",
        read_only=True,
    )
    if not row["present"]:
        return None
    if row["readable"]:  # an application role may not read the table itself
        version = await db.fetch_value("SELECT amp.schema_version() AS v", read_only=True)
        return None if version is None else str(version)
    rows = await db.fetch("SELECT version_num FROM amp.alembic_version", read_only=True)
    return str(rows[0]["version_num"]) if rows else None


async def ensure_migrated(db: Database, dsn: str) -> bool:
    """Apply pending migrations; returns whether anything had to run.

    The cheap check on ``amp.alembic_version`` spares every SDK start the cost of
    alembic; concurrent starters are serialised by the advisory lock in ``env.py``.
    """
    if await current_revision(db) == HEAD_REVISION:
        return False
    await asyncio.to_thread(upgrade, dsn)
    return True
