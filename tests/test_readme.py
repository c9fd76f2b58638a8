"""The README's Python example runs as written (so it cannot rot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .helpers import REPO


def test_readme_example_runs(dsn: str, tmp_path: object) -> None:
    text = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert example is not None
    done = subprocess.run(
        [sys.executable, "-c", example.group(1)],
        env={**os.environ, "AMP_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "bob got {'note': 'build is green'} from alice",
        "{'answer': 'READY?'}",
        "[{'report': 'done'}]",
        "None",
    ]
