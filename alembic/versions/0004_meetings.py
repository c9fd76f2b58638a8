"""Meetings: the turn-taking state machine (create, attend, start, speak, leave, end,
expire turns) and its read functions.

Revision ID: 0004
Revises: 0003
"""

from agent_messaging.migrations import apply_sql_files, drop_functions_of

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
FILES = ("meetings.sql",)


def upgrade() -> None:
    apply_sql_files(*FILES)


def downgrade() -> None:
    drop_functions_of(*FILES)
