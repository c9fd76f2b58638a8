"""Maintainer commands for the frozen migrations (see agent_messaging.migrations).

python scripts/migrations.py freeze-baseline   # before v0.1.0 only: baseline := sql/
python scripts/migrations.py revision -m "add x" [--breaking]   # a delta revision
python scripts/migrations.py hash              # sql/ state hash
python scripts/migrations.py heads             # the revision chain
"""

from agent_messaging.migrations import main

if __name__ == "__main__":
    raise SystemExit(main())
