"""The baseline: the whole amp protocol as of the first release (v0.1.0).

Revision ID: 0100
Revises:

Executes versions/sql/0100_baseline.upgrade.sql: the files of sql/ concatenated in
manifest order. Until the release tag it is regenerated from sql/ with `python
scripts/migrations.py freeze-baseline`; after it, it is frozen and every change is a
delta revision. Databases at the development revisions 0001-0004 that preceded it are
rebuilt when empty, else refused with a one-line way to recreate them.
"""

from agent_messaging.migrations import run_downgrade, run_upgrade

revision = "0100"
down_revision = None
branch_labels = None
depends_on = None

#: the first revision: nothing older to break
breaking = False
#: sql/ state hash this revision results in (written by freeze-baseline)
sql_hash = "cf4492284e63389c7bb7e3650e377b975b063588384d16f94c397ee67303531d"


def upgrade() -> None:
    run_upgrade(__file__, revision, breaking=breaking, sql_hash=sql_hash)


def downgrade() -> None:
    run_downgrade(__file__, revision, breaking=breaking)
