"""The amp schema: all tables, organizations and agents, channels, access control
(roles, bindings, contact policy, checks), views.

Revision ID: 0001
Revises:
"""

from agent_messaging.migrations import apply_sql_files, drop_everything

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_sql_files("schema.sql", "agents.sql", "access.sql", "views.sql")


def downgrade() -> None:
    drop_everything()
