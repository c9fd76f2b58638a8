"""Retention: amp.prune and its batch functions, with the indexes they use.

Revision ID: 0005
Revises: 0004
"""

from agent_messaging.migrations import apply_sql_files, drop_functions_of

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
FILES = ("retention.sql",)


def upgrade() -> None:
    apply_sql_files(*FILES)


def downgrade() -> None:
    from alembic import op

    op.execute("DROP PROCEDURE IF EXISTS amp.prune(interval, integer, bigint, bigint, bigint)")
    drop_functions_of(*FILES)
    op.execute(
        "DROP INDEX IF EXISTS amp.sessions_waiting_for_idx, amp.sessions_ended_idx, "
        "amp.meetings_ended_idx"
    )
