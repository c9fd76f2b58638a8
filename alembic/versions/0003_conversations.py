"""Synchronous conversations.

Revision ID: 0003
Revises: 0002
"""

from agent_messaging.migrations import apply_sql_files, drop_functions_of

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
FILES = ("conversations.sql",)


def upgrade() -> None:
    apply_sql_files(*FILES)


def downgrade() -> None:
    drop_functions_of(*FILES)
