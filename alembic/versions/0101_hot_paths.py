"""Faster hot paths (PL/pgSQL internals, HOT leases, index-ordered claims, the reply
index, answers settle requests), internals renamed with a leading underscore, and
public reads for the MCP server (agent_organization, agent_list, peek_deliveries,
agent_meetings).

Revision ID: 0101
Revises: 0100
Create Date: 2026-11-25 14:27:46.843528

A delta: it executes versions/sql/<this file's stem>.upgrade.sql (and .downgrade.sql),
frozen once released. Create revisions with `python scripts/migrations.py revision -m
"..." [--breaking]`, which also writes those two files.
"""

from agent_messaging.migrations import run_downgrade, run_upgrade

revision = "0101"
down_revision = "0100"
branch_labels = None
depends_on = None

#: True when an SDK that does not know this revision cannot work on a database that
#: has it (it drops or changes something released SDKs call): such SDKs then refuse
#: to start instead of running with a warning.
breaking = False
#: sql/ state hash once this revision is applied (`python scripts/migrations.py hash`);
#: tests/test_migrations.py checks the head's against sql/.
sql_hash = "bf3af29fb9f80dd1872bf208100d4a104f67921b62c06a5021974bee017cab03"


def upgrade() -> None:
    run_upgrade(__file__, revision, breaking=breaking, sql_hash=sql_hash)


def downgrade() -> None:
    run_downgrade(__file__, revision, breaking=breaking)
