"""Migrations: from zero to head equals sql/, downgrade and re-upgrade work."""

from __future__ import annotations

import subprocess
import sys

import psycopg

from agent_messaging import migrations

# One row per object of schema amp, in a form that does not depend on how it was made.
CATALOG = """
SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = 'amp'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname <> 'alembic_version' AND c.relkind IN ('r', 'v')
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'amp'::regnamespace
  AND conrelid <> 'amp.alembic_version'::regclass
UNION ALL
SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relnamespace = 'amp'::regnamespace AND c.relname <> 'alembic_version'
UNION ALL
SELECT 'function', pg_get_functiondef(oid) FROM pg_proc
WHERE pronamespace = 'amp'::regnamespace
UNION ALL
SELECT 'view', c.relname || ' ' || pg_get_viewdef(c.oid) FROM pg_class c
WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'v'
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid) FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'amp'::regnamespace AND NOT t.tgisinternal
"""


def catalog(dsn: str) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        present = conn.execute("SELECT to_regclass('amp.alembic_version')").fetchone()
        if present is None or present[0] is None:
            return set()
        return {(kind, text) for kind, text in conn.execute(CATALOG)}


def apply_sql_dir(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA amp")
        # the version table exists in migrated databases; give the direct one the same
        conn.execute("CREATE TABLE amp.alembic_version (version_num varchar(32) PRIMARY KEY)")
        for name in migrations.sql_manifest():
            conn.execute((migrations.sql_dir() / name).read_text())


def test_head_constant_matches_alembic() -> None:
    assert migrations.script_head() == migrations.HEAD_REVISION


def test_manifest_lists_every_sql_file() -> None:
    on_disk = {p.name for p in migrations.sql_dir().glob("*.sql")}
    assert set(migrations.sql_manifest()) == on_disk


def test_migrations_from_zero_equal_sql_dir(empty_dsn: str, dsn: str) -> None:
    # `dsn` comes from the template, migrated by alembic; build the other directly
    from_sql = empty_dsn
    apply_sql_dir(from_sql)
    migrated = catalog(dsn)
    assert migrated, "the migrated database has no amp objects"
    assert migrated == catalog(from_sql)


def test_downgrade_and_upgrade_again(empty_dsn: str) -> None:
    migrations.upgrade(empty_dsn)
    head = catalog(empty_dsn)
    migrations.downgrade(empty_dsn, "base")
    with psycopg.connect(empty_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'amp'::regnamespace "
            "AND relname NOT LIKE 'alembic_version%'"
        ).fetchone()
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'amp'::regnamespace"
        ).fetchone()
    assert left == (0,) and functions == (0,)
    migrations.upgrade(empty_dsn)
    assert catalog(empty_dsn) == head


def test_each_revision_downgrades_to_what_it_was(empty_dsn: str) -> None:
    from alembic.script import ScriptDirectory

    from agent_messaging.migrations import _alembic_config

    script = ScriptDirectory.from_config(_alembic_config(empty_dsn))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    snapshots = {}
    for revision in revisions:
        migrations.upgrade(empty_dsn, revision)
        snapshots[revision] = catalog(empty_dsn)
    for revision in reversed(revisions[:-1]):
        migrations.downgrade(empty_dsn, revision)
        assert catalog(empty_dsn) == snapshots[revision], revision


def test_amp_migrate_cli_on_empty_database(empty_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_messaging.cli", "migrate", "--database-url", empty_dsn],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(empty_dsn) as conn:
        version = conn.execute("SELECT version_num FROM amp.alembic_version").fetchone()
    assert version == (migrations.HEAD_REVISION,)


async def test_sdk_migrates_on_start(empty_dsn: str) -> None:
    from agent_messaging import AgentMessaging

    from .helpers import make_config

    async with AgentMessaging[str](make_config(empty_dsn)) as sdk:
        await sdk.register_organization("org1")
        assert await migrations.current_revision(sdk.db) == migrations.HEAD_REVISION


def test_concurrent_processes_migrate_once(empty_dsn: str) -> None:
    """Three processes migrating the same empty database at once: the advisory lock
    in env.py serialises them; one migrates, the others find it done."""
    cmd = [sys.executable, "-m", "agent_messaging.cli", "migrate", "--database-url", empty_dsn]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM amp.alembic_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM amp.agents").fetchone() == (0,)
