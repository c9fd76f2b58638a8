"""``amp demo``: the four patterns live, between agents in separate OS processes.

This process is ``alice``; ``bob`` and ``carol`` each run in a child process
(``python -m agent_messaging.demo_agent``) on the same database. Alice sends bob a
one-way note, asks carol a sync question and waits for the answer, leaves bob an
async message and later finds his answer in her inbox, and hosts a meeting where
bob and carol speak in turn. Ids carry a per-run suffix, so runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from typing import Any

from rich.console import Console
from rich.table import Table

from .client import AgentMessaging
from .config import Config
from .database import resolve_dsn


class Child:
    """A demo agent process; its JSON lines are read into a queue."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.stderr = b""
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._errors())]

    @classmethod
    async def spawn(cls, name: str, dsn: str, agent: str, host: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent_messaging.demo_agent",
            dsn,
            agent,
            host,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(name, proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put_nowait(json.loads(line))
        self.events.put_nowait(None)

    async def _errors(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    async def expect(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next event named ``event`` (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await asyncio.wait_for(self.events.get(), max(0.01, deadline - loop.time()))
            if found is None:
                await self.proc.wait()
                raise RuntimeError(
                    f"{self.name}'s process exited ({self.proc.returncode}): "
                    f"{self.stderr.decode()[-2000:]}"
                )
            if found["event"] == event:
                return found

    async def stop(self) -> None:
        """Close its stdin (it exits on EOF); kill it if it does not within 10 s."""
        if self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


async def run_demo(config: Config, console: Console) -> None:
    """Run the scenario, narrating it on ``console``."""
    started = time.monotonic()
    suffix = uuid.uuid4().hex[:6]
    org = f"demo-{suffix}"
    alice, bob, carol = (f"{name}-{suffix}" for name in ("alice", "bob", "carol"))
    dsn = await resolve_dsn(config)
    config = config.model_copy(update={"database_url": dsn})
    console.rule("[bold]agent-messaging demo")
    console.print(f"server: [cyan]{_safe(dsn)}[/cyan]")
    async with AgentMessaging[Any](config) as sdk:
        await sdk.register_organization(org, "Demo")
        for agent in (alice, bob, carol):
            await sdk.register_agent(agent, org, agent.split("-")[0].title())
        children: list[Child] = []
        try:
            children = [
                await Child.spawn("bob", dsn, bob, alice),
                await Child.spawn("carol", dsn, carol, alice),
            ]
            b, c = children
            for child in children:
                ready = await child.expect("ready", timeout=60)
                console.print(f"{child.name} is served by a separate process (pid {ready['pid']})")
            await _one_way(sdk, console, alice, bob, b)
            await _sync(sdk, console, alice, carol)
            await _async(sdk, console, alice, bob)
            await _meeting(sdk, console, alice, bob, carol, b, c)
        finally:
            for child in children:
                await child.stop()
    console.rule(f"done in {time.monotonic() - started:.1f} s: all four patterns, three processes")


async def _one_way(
    sdk: AgentMessaging[Any], console: Console, alice: str, bob: str, b: Child
) -> None:
    console.rule("1. one-way")
    await sdk.one_way.send(alice, bob, {"text": "the build is green"})
    console.print("alice -> bob (fire and forget): 'the build is green'")
    got = await b.expect("one_way")
    console.print(
        f"[green]one-way delivered:[/green] bob's handler (pid {got['pid']}) got "
        f"{got['content']['text']!r} from alice"
    )


async def _sync(sdk: AgentMessaging[Any], console: Console, alice: str, carol: str) -> None:
    console.rule("2. sync")
    question = {"text": "can we ship on Friday?"}
    console.print(f"alice asks carol and waits: {question['text']!r}")
    answer = await sdk.sync_conversation.send_and_wait(alice, carol, question, timeout=20)
    console.print(f"[green]sync answer:[/green] {answer['text']}")
    await sdk.sync_conversation.end_conversation(alice, carol)


async def _async(sdk: AgentMessaging[Any], console: Console, alice: str, bob: str) -> None:
    console.rule("3. async")
    await sdk.async_conversation.send(alice, bob, {"text": "review PR 42"})
    console.print("alice leaves 'review PR 42' in bob's inbox and does not wait for him")
    reply = await sdk.async_conversation.wait_for_message(alice, bob, timeout=20)
    if reply is None:
        raise RuntimeError("bob did not answer the async message within 20 s")
    console.print(f"[green]async reply in alice's inbox:[/green] {reply['text']}")


async def _meeting(
    sdk: AgentMessaging[Any],
    console: Console,
    alice: str,
    bob: str,
    carol: str,
    b: Child,
    c: Child,
) -> None:
    console.rule("4. meeting")
    meeting_id = await sdk.meeting.create_meeting(alice, [alice, bob, carol], turn_duration=10)
    console.print(f"alice invites bob and carol to meeting {meeting_id}")
    await sdk.meeting.wait_until_ready(meeting_id, timeout=30)
    console.print("both attended (from their own processes); alice gives carol the first turn")
    await sdk.meeting.start_meeting(
        alice, meeting_id, {"text": "ideas for next week?"}, next_speaker_external_id=carol
    )
    await sdk.meeting.attend_meeting(alice, meeting_id, timeout=60)
    # carol (explicit next speaker), then round robin: alice is after carol, so
    # alice hands the turn to bob, and after bob it comes back to alice
    await sdk.meeting.speak(
        alice, meeting_id, {"text": "bob?"}, next_speaker_external_id=bob, timeout=60
    )
    await sdk.meeting.end_meeting(alice, meeting_id)
    for child in (b, c):
        await child.expect("meeting_ended")
    table = Table(title="meeting history", title_justify="left")
    for column in ("seq", "who", "said"):
        table.add_column(column)
    history = await sdk.meeting.get_meeting_history(meeting_id)
    spoken = [m for m in history if m.message_type == "meeting"]
    for entry in history:
        if entry.content is not None:
            said = str(entry.content.get("text", entry.content))
        else:
            said = f"[dim]{entry.system.text if entry.system else ''}[/dim]"
        table.add_row(str(entry.seq), (entry.sender_external_id or "system").split("-")[0], said)
    console.print(table)
    order = ", ".join((m.sender_external_id or "").split("-")[0] for m in spoken)
    console.print(f"[green]meeting ended:[/green] spoke in turn: {order}")


def _safe(dsn: str) -> str:
    """The URL without a password."""
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return dsn
