"""Alembic environment: runs the frozen revisions of ``versions/`` on one database.

Runs on SQLAlchemy with psycopg 3 (used for migrations only; the SDK talks psqlpy).
All migrations of one run happen in one transaction that first takes an advisory
lock (so processes starting at the same time migrate one after the other), refuses
an ``amp`` schema owned by another role, and decides whether to run at all: a
database newer than these scripts is never migrated downward (see
``agent_messaging.migrations.prepare``).
"""

from pathlib import Path

from sqlalchemy import create_engine, pool

from agent_messaging import migrations
from alembic import context

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "the database url must be set on the alembic config"
    versions = Path(context.script.versions)
    config.attributes.setdefault("amp_versions", str(versions))
    engine = create_engine(migrations.sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                version_table=migrations.VERSION_TABLE,
                version_table_schema="amp",
                transaction_per_migration=False,
            )
            with context.begin_transaction():
                if migrations.prepare(connection, config.attributes, versions):
                    context.run_migrations()
                migrations.finish(connection, config.attributes)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the migrations run SQL files")
run_migrations_online()
