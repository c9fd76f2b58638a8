"""Task processing (asynchronous conversations with a worker pool).

A dispatcher drops tasks into the inboxes of three workers without waiting. Each
worker pulls its own inbox (reading marks messages read atomically, so nothing is
processed twice), does the work, and sends the result back asynchronously; the
dispatcher collects results with wait_for_message.

    python examples/task_processing.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import ensure_agents

from agent_messaging import AgentMessaging

WORKERS = ["worker-1", "worker-2", "worker-3"]
TASKS = [{"task": i, "numbers": list(range(i + 2))} for i in range(9)]


async def worker(sdk: AgentMessaging[Any], name: str, expected: int) -> None:
    done = 0
    while done < expected:
        task = await sdk.async_conversation.wait_for_message(name, "dispatcher", timeout=30)
        if task is None:
            raise TimeoutError(f"{name} got no task")
        result = {"task": task["task"], "sum": sum(task["numbers"]), "by": name}
        await sdk.async_conversation.send(name, "dispatcher", result)
        done += 1


async def main() -> None:
    async with AgentMessaging[dict[str, Any]]() as sdk:
        await ensure_agents(sdk, "factory", "dispatcher", *WORKERS)
        for i, task in enumerate(TASKS):  # round-robin into the inboxes; never blocks
            await sdk.async_conversation.send("dispatcher", WORKERS[i % len(WORKERS)], task)
        print(
            f"dispatched {len(TASKS)} tasks; inboxes:",
            await sdk.db.fetch("SELECT agent, unread FROM amp.agent_inbox ORDER BY agent"),
        )
        pool = [asyncio.create_task(worker(sdk, w, len(TASKS) // len(WORKERS))) for w in WORKERS]
        results = []
        while len(results) < len(TASKS):  # from any worker (sender None), oldest first
            result = await sdk.async_conversation.wait_for_message("dispatcher", None, timeout=30)
            if result is None:
                raise TimeoutError("a result is missing")
            results.append(result)
        await asyncio.gather(*pool)
        for result in sorted(results, key=lambda r: r["task"]):
            print(f"task {result['task']}: sum={result['sum']} by {result['by']}")


if __name__ == "__main__":
    asyncio.run(main())
