"""What every benchmark module shares: child processes, percentiles, databases."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 120.0


class Child:
    """``python -m bench.worker ...`` in its own OS process, JSON lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, module: str = "bench.worker") -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def tell(self, line: str) -> None:
        """Write one line on the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, name: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                err = b""
                if self.proc.stderr is not None:
                    err = await self.proc.stderr.read()
                raise RuntimeError(f"bench worker exited: {err.decode()[-2000:]}")
            event: dict[str, Any] = json.loads(line)
            if event["event"] == name:
                return event

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 10)


def with_database(dsn: str, name: str, application_name: str | None = None) -> str:
    parts = urlsplit(dsn)
    query = parts.query
    if application_name:
        query = (query + "&" if query else "") + f"application_name={application_name}"
    return urlunsplit(parts._replace(path="/" + name, query=query))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def run_senders(tasks: int, n: int, send: Callable[[int], Awaitable[Any]]) -> None:
    counter = iter(range(n))

    async def sender() -> None:
        for i in counter:
            await send(i)

    await asyncio.gather(*(sender() for _ in range(tasks)))


def latency(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(percentile(samples, 0.95), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }
