"""Smoke test of the benchmark harness: ``python -m bench --smoke`` (every section of
``--quick`` with smaller N) runs and reports.

Speed is never asserted here (SPEC §8): only that every figure is produced.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from .helpers import REPO


def test_bench_quick_reports_positive_figures(dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--database-url", dsn, "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=180,
    )
    result = json.loads(out.read_text())
    for tasks in (1, 4):
        row = result["oneway_throughput"][f"senders_{tasks}"]
        assert row["sdk_msgs_per_s"] > 0 and row["raw_msgs_per_s"] > 0
    for side in ("sdk", "raw"):
        assert result["sync_round_trip"][side]["p50_ms"] > 0
    assert all(fp["rss_mib"] > 0 and fp["connections"] > 0 for fp in result["footprint"])
    meetings = result["meetings"]
    handoff = meetings["handoff_5_agents"]
    assert handoff["n"] > 0 and 0 < handoff["p50_ms"] <= handoff["p99_ms"]
    assert meetings["concurrent"]["seconds"] > 0 and meetings["large"]["seconds"] > 0
    mcp = result["mcp_ask"]  # skipped without the mcp package, else both sides measured
    assert "skipped" in mcp or min(mcp["sdk"]["p50_ms"], mcp["mcp_stdio"]["p50_ms"]) > 0
    ratios = result["ratios"]
    assert set(ratios) >= {
        "oneway_throughput",
        "oneway_throughput_4_senders",
        "sync_p50",
        "meeting_handoff_p50_vs_raw_hop",
    }
    assert all(value > 0 for value in ratios.values())
    assert result["machine"]["cores"] and result["server_version"]
    assert result["mode"] == "smoke"
    start = result["handler_start"]
    for side in ("sdk", "raw_notify_hop"):
        assert 0 < start[side]["p50_ms"] <= start[side]["p95_ms"] <= start[side]["p99_ms"]
    assert ratios["handler_start_p50_vs_notify_hop"] > 0
    assert result["batch_throughput"]["sdk_msgs_per_s"] > 0
    for peer in ("pgqueuer", "procrastinate"):
        figures = result["peers"][peer]
        installed = importlib.util.find_spec(peer) is not None
        if peer == "pgqueuer":
            installed = installed and importlib.util.find_spec("asyncpg") is not None
        if not installed:
            assert figures == {"skipped": f"{peer} is not installed (pip install -e '.[bench]')"}
            continue
        assert figures["version"] == version(peer)
        assert figures["oneway_msgs_per_s"] > 0 and figures["batch_msgs_per_s"] > 0
        assert figures["handler_start"]["p50_ms"] > 0
    attached = result["attached_processes"]["by_processes"]
    assert attached["0"]["ceiling"]["commits_per_s"] > 0
    for k in ("1", "2"):
        row = attached[k]
        assert row["connections"] >= int(k)
        assert row["ceiling"]["commits_per_s"] > 0 and row["oneway_msgs_per_s"] > 0
        assert row["sync"]["p50_ms"] > 0
    assert result["attached_processes"]["oneway_ratio_most_vs_1"] > 0
