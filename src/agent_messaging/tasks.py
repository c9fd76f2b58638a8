"""Stopping background tasks reliably.

A task awaiting a psqlpy future can lose a cancellation: the driver's future takes
the cancel, completes normally, and the task carries on (its loop then never ends).
So a background task is stopped by cancelling it again until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(task: asyncio.Task[Any] | None, patience: float = 10.0) -> None:
    """Cancel ``task`` (again and again) until it finishes, for up to ``patience`` s."""
    if task is None or task.done():
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()
