"""Retention: amp.prune and its batch functions, with the indexes they use.

Revision ID: 0006
Revises: 0005
"""

from agent_messaging.migrations import apply_sql_files, drop_functions_of

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
FILES = ("retention.sql",)


def upgrade() -> None:
    apply_sql_files(*FILES, "security.sql")  # every revision re-applies security.sql


def downgrade() -> None:
    from alembic import op

    op.execute("DROP PROCEDURE IF EXISTS amp.prune(interval, integer, bigint, bigint, bigint)")
    drop_functions_of(*FILES)
    op.execute(
        "DROP INDEX IF EXISTS amp.sessions_waiting_for_idx, amp.sessions_ended_idx, "
        "amp.meetings_ended_idx"
    )
