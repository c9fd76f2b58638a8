"""Every example runs green (with a short time budget) so none can rot."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from .helpers import REPO

EXAMPLES = REPO / "examples"


def run_example(dsn: str, name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env={**os.environ, "AMP_DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notifications.py", "[critical] db: replica lag 45 s (from build-monitor)"),
        ("interview.py", "(the candidate heard: Monday.)"),
        ("task_processing.py", "task 8: sum=45 by worker-3"),
        ("support_desk.py", "Refund for order A-1042 approved. [specialist (escalated)]"),
    ],
)
def test_example(dsn: str, name: str, expected: str) -> None:
    assert expected in run_example(dsn, name)


def test_brainstorming_example(dsn: str) -> None:
    """Turns of 2 s: the silent skeptic's turn times out, the rest is round robin."""
    for _ in range(2):  # a fresh meeting per run, on the same agents
        out = run_example(dsn, "brainstorming.py", "2")
        history = out[out.index("history:") :].splitlines()[5:]
        assert [line.strip() for line in history] == [
            "facilitator: How should agents talk?",
            "designer: a live meeting view",
            "[timeout] skeptic: turn of 2.000 s expired without a message",
            "facilitator: One more round.",
            "engineer: store everything in PostgreSQL",
            "designer: colour the speaker's row",
            "skeptic: what if the database is down?",
            "[system] facilitator ended the meeting",
        ]
        assert "(event: skeptic's turn timed out)" in out


def test_examples_can_run_twice_on_one_database(dsn: str) -> None:
    run_example(dsn, "interview.py")
    assert "(the candidate heard: Monday.)" in run_example(dsn, "interview.py")


async def test_cross_process_example(dsn: str) -> None:
    env = {**os.environ, "AMP_DATABASE_URL": dsn}
    bob = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "cross_process" / "bob.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert bob.stdout is not None
    try:
        assert (await asyncio.wait_for(bob.stdout.readline(), 60)).strip() == b"bob is listening"
        alice = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "cross_process" / "alice.py"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(alice.communicate(), 60)
        assert alice.returncode == 0, err.decode()[-3000:]
        bob_out, _ = await asyncio.wait_for(bob.communicate(), 60)
    finally:
        if bob.returncode is None:
            bob.kill()
            await bob.wait()
    assert out.decode().splitlines() == [
        "alice asked 'hello', bob answered 'olleh'",
        "alice asked 'stressed', bob answered 'desserts'",
        "alice asked 'racecar', bob answered 'racecar'",
    ]
    assert bob.returncode == 0
    assert "bob got 'bye' from alice" in bob_out.decode()
