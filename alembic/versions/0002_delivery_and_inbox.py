"""One-way messages, push delivery to handlers, and the async inbox.

Revision ID: 0002
Revises: 0001
"""

from agent_messaging.migrations import apply_sql_files, drop_functions_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
FILES = ("delivery.sql", "inbox.sql")


def upgrade() -> None:
    apply_sql_files(*FILES)


def downgrade() -> None:
    drop_functions_of(*FILES)
