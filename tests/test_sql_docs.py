"""Golden output of sql/README.md: its ```sql blocks, run in order in one psql session,
print exactly the committed ``sql/README.expected`` (as pg_regress compares a test's
output with its expected file).

The blocks go to ``psql -X -a -q --no-align`` on stdin: every input line is echoed,
then its result (header, rows, ``(n rows)``) or its ``ERROR:`` / ``HINT:`` lines. The
run continues past errors (no ON_ERROR_STOP), so the docs may show a deliberate error:
end the failing statement's line with a ``-- fails`` comment (the test checks that
the number of ``ERROR:`` lines equals the number of these markers, so an accidental
error is not baked into the expected file). Examples must print the same on every
run: order rows (``ORDER BY``) and leave out columns that depend on random ids.
``CONTEXT:`` lines are not shown (``SHOW_CONTEXT=never``): they name internal
functions and differ between versions.

Normalisation (applied to the output before comparing, see ``MASKS``): uuids become
``<uuid>``, 32-digit hex (channel names) ``<hex>``, timestamps ``<timestamp>``,
intervals with fractional seconds ``<duration>``, numbers with 3 or more decimals
(seconds left, ...) ``<float>``, ``PID 1234`` ``PID <pid>``. The format is unaligned
because column widths would otherwise depend on the masked values.

After changing the examples (or the functions they call), regenerate and review:

    AMP_REGENERATE_GOLDEN=1 .venv/bin/pytest -q tests/test_sql_docs.py && git diff sql/
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess

import pytest

from agent_messaging import migrations

from .helpers import psql_binary

BLOCK = re.compile(r"^```sql\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXPECTED = migrations.sql_dir() / "README.expected"
REGENERATE = "AMP_REGENERATE_GOLDEN=1 .venv/bin/pytest -q tests/test_sql_docs.py"

#: (pattern, replacement), applied in order to the whole output
MASKS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"), "<hex>"),
    (
        re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d(?::?\d\d)?)?"),
        "<timestamp>",
    ),
    (re.compile(r"(?<![\d.:])-?\d+:\d\d:\d\d\.\d+(?![\d.])"), "<duration>"),
    (re.compile(r"(?<![\w.])-?\d+\.\d{3,}(?:e[+-]?\d+)?(?![\w.])"), "<float>"),
    (re.compile(r"\bPID \d+"), "PID <pid>"),
]


def normalise(output: str) -> str:
    """The output with every volatile value masked (see the module docstring)."""
    for pattern, replacement in MASKS:
        output = pattern.sub(replacement, output)
    return output


def run_readme(dsn: str) -> tuple[str, str]:
    """The script made of sql/README.md's blocks, and psql's normalised output."""
    text = (migrations.sql_dir() / "README.md").read_text()
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 4
    script = "\n".join(blocks)
    done = subprocess.run(
        [
            psql_binary(),
            "-X",
            "-a",
            "-q",
            "--no-align",
            "-v",
            "VERBOSITY=default",
            "-v",
            "SHOW_CONTEXT=never",
            "-d",
            dsn,
        ],
        input=script,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # errors in place, between the statements
        text=True,
        timeout=120,
        env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC", "PGDATESTYLE": "ISO"},
        check=False,
    )
    assert done.returncode == 0, done.stdout
    return script, normalise(done.stdout)


def test_sql_readme_golden_output(dsn: str) -> None:
    script, output = run_readme(dsn)
    markers = len(re.findall(r"--\s*fails\b", script))
    errors = len(re.findall(r"^ERROR:", output, re.MULTILINE))
    assert errors == markers, (
        f"{errors} ERROR lines but {markers} statements marked '-- fails' in sql/README.md:"
        " a statement fails that should not (or a marked one no longer fails)\n" + output
    )
    if os.environ.get("AMP_REGENERATE_GOLDEN"):
        EXPECTED.write_text(output)
        pytest.skip(f"wrote {EXPECTED}; review it with git diff")
    expected = EXPECTED.read_text() if EXPECTED.exists() else ""
    if output != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                output.splitlines(keepends=True),
                fromfile="sql/README.expected",
                tofile="psql output (normalised)",
            )
        )
        pytest.fail(
            f"sql/README.md's examples print something else than sql/README.expected;"
            f" if the change is intended, regenerate: {REGENERATE}\n{diff}",
            pytrace=False,
        )


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("aed200a3-cc85-43e1-b658-f62ee87bb852|org1", "<uuid>|org1"),
        ("amp_agent_244a78a0a9534108a9c2035fd136e3c5", "amp_agent_<hex>"),
        ("2026-11-25 12:05:00.263047+00|2026-11-25 12:05:00+05:30", "<timestamp>|<timestamp>"),
        ('{"turn_deadline": "2026-11-25T12:05:00.2+00:00"}', '{"turn_deadline": "<timestamp>"}'),
        ("00:00:59.998123|00:01:00", "<duration>|00:01:00"),
        ("alice|59.99812|-0.0031|3599.999|60|1.5", "alice|<float>|<float>|<float>|60|1.5"),
        ("from server process with PID 4242.", "from server process with PID <pid>."),
        ("seq 14|count 2|attempts 1", "seq 14|count 2|attempts 1"),
    ],
)
def test_normalisation(raw: str, masked: str) -> None:
    assert normalise(raw) == masked
