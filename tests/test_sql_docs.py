"""Every ```sql block of sql/README.md runs, in order, in one psql session."""

from __future__ import annotations

import re

from agent_messaging import migrations

from .helpers import psql

BLOCK = re.compile(r"^```sql\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_sql_readme_examples_run(dsn: str) -> None:
    text = (migrations.sql_dir() / "README.md").read_text()
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 4
    done = psql(dsn, "\n".join(blocks), check=False)
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr
