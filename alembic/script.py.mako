<%!
    from agent_messaging.migrations import sql_state_hash
%>"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

A delta: it executes versions/sql/<this file's stem>.upgrade.sql (and .downgrade.sql),
frozen once released. Create revisions with `python scripts/migrations.py revision -m
"..." [--breaking]`, which also writes those two files.
"""

from agent_messaging.migrations import run_downgrade, run_upgrade

revision = "${up_revision}"
down_revision = ${'"%s"' % down_revision if down_revision else "None"}
branch_labels = None
depends_on = None

#: True when an SDK that does not know this revision cannot work on a database that
#: has it (it drops or changes something released SDKs call): such SDKs then refuse
#: to start instead of running with a warning.
breaking = False
#: sql/ state hash once this revision is applied (`python scripts/migrations.py hash`);
#: tests/test_migrations.py checks the head's against sql/.
sql_hash = "${sql_state_hash()}"


def upgrade() -> None:
    run_upgrade(__file__, revision, breaking=breaking, sql_hash=sql_hash)


def downgrade() -> None:
    run_downgrade(__file__, revision, breaking=breaking)
