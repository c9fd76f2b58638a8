"""Smoke test of ``python -m bench.security``: access control bound vs open, one run.

Speed is not asserted (SPEC §8): only that both modes produce every figure.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import REPO


def test_bench_security_quick_reports_both_modes(dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.security", "--quick", "--rounds", "1", "--database-url", dsn],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout)
    for mode in ("open", "bound"):
        assert result["best"][mode]["oneway_msgs_per_s"] > 0
        assert result["best"][mode]["sync_p50_ms"] > 0
    assert set(result["bound_vs_open"]) == {"oneway_throughput", "sync_p50", "server_time_per_send"}
    # the boundary's own cost: the same send on the shipped functions and on plain ones
    pins = result["pin_cost"]
    assert all(v > 0 for kind in ("pinned", "plain") for v in pins["server_us_per_send"][kind])
    assert pins["pinned_vs_plain"] > 0
