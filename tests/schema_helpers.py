"""Helpers of the migration tests: the catalog of schema ``amp``, a database built
straight from ``sql/``, a newer SDK's scripts, the ``amp`` command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

from agent_messaging import migrations

# One row per object of schema amp, in a form that does not depend on how it was
# made: a database migrated by the revision chain must give exactly the rows of one
# built from sql/. Column positions count (a delta's ADD COLUMN appends, so sql/
# must add new columns at the end of the table too); the bookkeeping tables of the
# migration runner are left out.
CATALOG = """
WITH rel AS (
    SELECT c.* FROM pg_class c
    WHERE c.relnamespace = 'amp'::regnamespace
      AND c.relname NOT IN ('alembic_version', 'schema_revisions')
      AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                      WHERE i.indexrelid = c.oid
                        AND t.relname IN ('alembic_version', 'schema_revisions'))
),
cols AS (
    SELECT c.relname, a.*, row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS pos
    FROM pg_attribute a JOIN rel c ON c.oid = a.attrelid
    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'c')
)
SELECT 'schema', n.nspname || ' owner=' || n.nspowner::regrole::text
       || ' acl=' || coalesce(n.nspacl::text, '-')
       || ' comment=' || coalesce(obj_description(n.oid, 'pg_namespace'), '-')
FROM pg_namespace n WHERE n.nspname = 'amp'
UNION ALL
SELECT 'relation', c.relname || ' kind=' || c.relkind::text
       || ' persistence=' || c.relpersistence::text
       || ' owner=' || c.relowner::regrole::text || ' acl=' || coalesce(c.relacl::text, '-')
       || ' rls=' || c.relrowsecurity || '/' || c.relforcerowsecurity
       || ' options=' || coalesce(c.reloptions::text, '-')
       || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '-')
FROM rel c WHERE c.relkind <> 'i'
UNION ALL
SELECT 'column', c.relname || '.' || c.attname || ' #' || c.pos || ' '
       || format_type(c.atttypid, c.atttypmod)
       || CASE WHEN c.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
       || ' identity=' || c.attidentity::text || ' generated=' || c.attgenerated::text
       || ' collation=' || coalesce(NULLIF(c.attcollation, 0)::regcollation::text, '-')
       || ' acl=' || coalesce(c.attacl::text, '-')
       || ' comment=' || coalesce(col_description(c.attrelid, c.attnum), '-')
FROM cols c LEFT JOIN pg_attrdef d ON d.adrelid = c.attrelid AND d.adnum = c.attnum
UNION ALL
SELECT 'constraint', co.conrelid::regclass::text || ' ' || co.conname || ' '
       || pg_get_constraintdef(co.oid) || ' validated=' || co.convalidated
FROM pg_constraint co
WHERE co.connamespace = 'amp'::regnamespace
  AND co.conrelid NOT IN (SELECT oid FROM pg_class WHERE relnamespace = 'amp'::regnamespace
                          AND relname IN ('alembic_version', 'schema_revisions'))
UNION ALL
SELECT 'index', pg_get_indexdef(c.oid) FROM rel c WHERE c.relkind = 'i'
UNION ALL
SELECT 'function', p.oid::regprocedure::text
       || ' owner=' || p.proowner::regrole::text || ' acl=' || coalesce(p.proacl::text, '-')
       || ' secdef=' || p.prosecdef || ' config=' || coalesce(p.proconfig::text, '-')
       || ' volatile=' || p.provolatile::text || ' strict=' || p.proisstrict
       || ' parallel=' || p.proparallel::text || ' leakproof=' || p.proleakproof
       || ' cost=' || p.procost || ' rows=' || p.prorows
       || ' returns=' || pg_get_function_result(p.oid)
       || ' args=' || pg_get_function_arguments(p.oid)
       || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
       || E'\n' || p.prosrc
FROM pg_proc p WHERE p.pronamespace = 'amp'::regnamespace
UNION ALL
SELECT 'view', c.relname || ' ' || pg_get_viewdef(c.oid) FROM rel c WHERE c.relkind IN ('v', 'm')
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
FROM pg_trigger t JOIN rel c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'type', t.typname || ' ' || t.typtype::text || ' owner=' || t.typowner::regrole::text
       || ' acl=' || coalesce(t.typacl::text, '-')
       || coalesce(' labels=' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                  FROM pg_enum e WHERE e.enumtypid = t.oid), '')
       || coalesce(' base=' || NULLIF(t.typbasetype, 0)::regtype::text, '')
FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid
WHERE t.typnamespace = 'amp'::regnamespace AND t.typelem = 0
  AND (t.typtype IN ('e', 'd', 'r') OR c.relkind = 'c')
UNION ALL
SELECT 'policy', pol.schemaname || '.' || pol.tablename || ' ' || pol.policyname || ' '
       || pol.permissive || ' ' || pol.roles::text || ' ' || pol.cmd
       || ' using=' || coalesce(pol.qual, '-') || ' check=' || coalesce(pol.with_check, '-')
FROM pg_policies pol WHERE pol.schemaname = 'amp'
UNION ALL
SELECT 'default acl', d.defaclrole::regrole::text || ' ' || d.defaclobjtype::text || ' '
       || d.defaclacl::text
FROM pg_default_acl d WHERE d.defaclnamespace = 'amp'::regnamespace
"""


def catalog(dsn: str) -> set[tuple[str, str]]:
    """The catalog rows of schema ``amp`` (empty when there is no such schema)."""
    with psycopg.connect(dsn) as conn:
        present = conn.execute("SELECT to_regnamespace('amp')").fetchone()
        if present is None or present[0] is None:
            return set()
        return {(kind, text) for kind, text in conn.execute(CATALOG)}


def catalog_difference(left: set[tuple[str, str]], right: set[tuple[str, str]]) -> str:
    """A readable account of how two catalogs differ."""
    lines = [f"- only left:  {kind}: {text[:300]}" for kind, text in sorted(left - right)]
    lines += [f"- only right: {kind}: {text[:300]}" for kind, text in sorted(right - left)]
    return "\n".join(lines)


def apply_sql_dir(dsn: str) -> None:
    """Build schema ``amp`` straight from ``sql/`` (what a fresh install reads)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in migrations.sql_manifest():
            conn.execute((migrations.sql_dir() / name).read_text())


def copy_scripts(target: Path) -> Path:
    """A copy of this SDK's alembic directory, to play a newer SDK with more revisions."""
    location = target / "alembic"
    shutil.copytree(
        migrations.alembic_dir(), location, ignore=shutil.ignore_patterns("__pycache__")
    )
    return location


def add_revision(
    location: Path, message: str, upgrade_sql: str, downgrade_sql: str, *, breaking: bool = False
) -> Path:
    """Add a delta revision to the scripts at ``location`` with the maintainer
    command's function (so the revision template is what is exercised)."""
    path = migrations.new_revision(message, breaking=breaking, script_location=location)
    frozen = migrations.frozen_sql_dir(path.parent)
    for direction, text in (("upgrade", upgrade_sql), ("downgrade", downgrade_sql)):
        file = frozen / f"{path.stem}.{direction}.sql"
        file.write_text(file.read_text() + text)
    return path


def amp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``amp`` command line in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "agent_messaging.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def admin(dsn: str, *statements: str) -> None:
    """Run statements with autocommit (roles, schemas, database settings)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
