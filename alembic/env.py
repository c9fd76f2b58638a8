"""Alembic environment: applies the SQL of ``sql/`` to the database named by the config.

Runs on SQLAlchemy with psycopg 3 (used for migrations only; the SDK talks psqlpy).
All migrations of one run happen in one transaction that first takes an advisory
lock, so processes starting at the same time migrate one after the other.
"""

from sqlalchemy import Connection, create_engine, pool, text

from agent_messaging.migrations import MIGRATION_LOCK_KEY, VERSION_TABLE, sqlalchemy_url
from alembic import context

config = context.config


def refuse_foreign_schema(connection: Connection) -> None:
    """Install only into an amp schema of our own: the migrator is a superuser, its
    owner, or a member of the owner (amp_owner, see sql/security.sql)."""
    owner = connection.execute(
        text(
            "SELECT nspowner::regrole::text AS owner, "
            "pg_has_role(current_user, nspowner, 'USAGE') AS ours "
            "FROM pg_namespace WHERE nspname = 'amp'"
        )
    ).one()
    if not owner.ours:
        raise RuntimeError(
            f"schema amp is owned by role {owner.owner}, and this role is not a member of "
            "it: run 'amp migrate' as a superuser or a member of amp_owner"
        )


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "the database url must be set on the alembic config"
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            version_table=VERSION_TABLE,
            version_table_schema="amp",
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            connection.execute(text("CREATE SCHEMA IF NOT EXISTS amp"))
            refuse_foreign_schema(connection)
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the migrations run SQL files")
run_migrations_online()
