"""The MCP transport's cost: ``ask`` over stdio next to the SDK's sync round trip.

One answering agent (an SDK handler in its own process, ``bench.worker sdk-handle``,
which returns the question as its answer) is asked N times by:

* the SDK: ``sync_conversation.send_and_wait`` from this process;
* an LLM host's path: an ``amp mcp --agent ...`` stdio server in its own process,
  driven by the ``mcp`` client library's ``call_tool("ask", ...)`` from this process.

Both ask the same agent in the same run, so the difference is what the MCP layer
(JSON-RPC over pipes, tool dispatch, argument validation, result rendering) adds.
Skipped, and reported as skipped, when the ``mcp`` package is not installed.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from agent_messaging import AgentMessaging
from bench.common import ROOT, Child, latency


async def mcp_ask(dsn: str, sdk: AgentMessaging[Any], n: int) -> dict[str, Any]:
    """``{"n", "mcp_stdio": {p50_ms...}, "sdk": {...}, "p50_ratio"}``, or
    ``{"skipped": reason}`` without the ``mcp`` package."""
    try:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client
    except ImportError:
        return {"skipped": "the mcp package is not installed (pip install '.[mcp]')"}

    tag = uuid.uuid4().hex[:8]
    asker, answerer = f"bench_mcp_asker_{tag}", f"bench_mcp_answerer_{tag}"
    await sdk.register_agent(asker, "bench")
    await sdk.register_agent(answerer, "bench")
    child = await Child.start("sdk-handle", dsn, answerer, str(10**9))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMP_")}
    env.update(AMP_DATABASE_URL=dsn, AMP_APPLY_MIGRATIONS="false")
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_messaging.cli", "mcp", "--agent", asker],
        env=env,
        cwd=str(ROOT),
    )
    try:
        await child.expect("ready")
        sdk_samples: list[float] = []
        mcp_samples: list[float] = []
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            arguments: dict[str, Any] = {"to": answerer, "timeout_s": 30}

            async def ask_mcp(i: int) -> None:
                result = await session.call_tool(
                    "ask", arguments | {"content": {"n": i}}, timedelta(seconds=60)
                )
                data = result.structuredContent or {}
                if result.isError or data.get("status") != "answered":
                    raise RuntimeError(f"MCP ask failed: {result.content}")

            async def ask_sdk(i: int) -> None:
                await sdk.sync_conversation.send_and_wait(asker, answerer, {"n": i}, 30)

            await ask_mcp(-1)  # warm-up, both ways
            await ask_sdk(-1)
            # interleaved, so both see the same machine load
            for i in range(n):
                start = time.perf_counter()
                await ask_mcp(i)
                mcp_samples.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                await ask_sdk(i)
                sdk_samples.append((time.perf_counter() - start) * 1000)
        mcp_lat, sdk_lat = latency(mcp_samples), latency(sdk_samples)
        return {
            "n": n,
            "mcp_stdio": mcp_lat,
            "sdk": sdk_lat,
            "p50_ratio": round(mcp_lat["p50_ms"] / sdk_lat["p50_ms"], 3),
            "p50_added_ms": round(mcp_lat["p50_ms"] - sdk_lat["p50_ms"], 3),
        }
    finally:
        await child.stop()
