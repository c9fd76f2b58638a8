"""The planning documents' own examples and tests, run against this library.

Read at run time from ``../shared/seed/plan/`` (relative to the repository root:
the planning set this library implements); nothing of it is copied into the
repository. Skipped, with the reason, when that folder is absent.

* ``03-api-design.md``, "Usage Examples": each code block runs unchanged as a
  script; the test only fills the ``# Setup ...`` placeholders (and the other
  ``# ...`` placeholders, each listed in :data:`FILLS`), adds the imports the block
  leaves out and ``asyncio.run(main())``. Agents the example leaves to "similar
  handlers" run in a separate OS process. Each assertion quotes what the plan
  says happens.
* ``05-testing-strategy.md``: each public-API test runs with the plan's fixtures;
  every change a test needs is in :data:`CHANGES`, with the reason.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_messaging import AgentMessaging

from .helpers import REPO, make_config

PLAN = REPO.parent / "shared" / "seed" / "plan"
API = PLAN / "03-api-design.md"
TESTING = PLAN / "05-testing-strategy.md"
ABSENT = f"the planning set is not here ({PLAN}): a clone without ../shared"
WAIT = 60.0


def usage_examples() -> dict[int, str]:
    """``{n: code}`` of the ``### Example n`` blocks under "## Usage Examples"."""
    text = API.read_text()
    section = text[text.index("## Usage Examples") :]
    found = re.findall(r"### Example (\d+):[^\n]*\n+```python\n(.*?)```", section, re.DOTALL)
    return {int(n): code for n, code in found}


def fill(code: str, placeholder: str, lines: str) -> str:
    """Replace the line holding ``placeholder`` by ``lines``, at its indentation."""
    match = re.search(rf"^([ \t]*){re.escape(placeholder)}[^\n]*$", code, re.MULTILINE)
    assert match is not None, f"placeholder {placeholder!r} is no longer in the plan"
    filled = textwrap.indent(textwrap.dedent(lines).strip("\n"), match.group(1))
    return code[: match.start()] + filled + code[match.end() :]


#: What the test puts in place of the examples' placeholders (example, placeholder, code).
FILLS: list[tuple[int, str, str]] = [
    (
        2,
        "# Setup...",
        """
        await sdk.register_organization("org_001", "My Org")
        await sdk.register_agent("agent_alice", "org_001", "Alice")
        await sdk.register_agent("agent_bob", "org_001", "Bob")
        """,
    ),
    (
        3,
        "# Setup agents...",
        """
        await sdk.register_organization("org_001", "My Org")
        for _name in ("alice", "bob", "charlie"):
            await sdk.register_agent(f"agent_{_name}", "org_001", _name.title())
        print("SETUP DONE", flush=True)  # the test starts Bob's and Charlie's process now
        """,
    ),
    # Bob's and Charlie's handlers run in their own process (see BOB_AND_CHARLIE)
    (3, "# Similar handlers for Bob and Charlie...", "pass"),
    (
        3,
        "# Agents speak in their turns...",
        """
        _spoken = asyncio.Event()

        @sdk.register_event_handler(MeetingEvent.AGENT_SPOKE)
        async def _charlie_spoke(meeting_id, agent_id, data):
            if agent_id == "agent_charlie":
                _spoken.set()

        await asyncio.wait_for(_spoken.wait(), 60)
        """,
    ),
]

#: Imports a block leaves out (it shows only the new names).
IMPORTS = {
    2: "from typing import Optional\nfrom pydantic import BaseModel\n"
    "from agent_messaging import AgentMessaging\n",
    3: "import asyncio\nfrom pydantic import BaseModel\n"
    "from agent_messaging import AgentMessaging, MeetingEvent\n",
}

#: Example 3's "Similar handlers for Bob and Charlie", in their own process: attend
#: from the handler, speak on each turn, until the meeting ends. Typed with the
#: example's own MeetingMessage (taken from the plan at run time).
BOB_AND_CHARLIE = """
import asyncio
from pydantic import BaseModel
from agent_messaging import AgentMessaging

{message_class}

async def main():
    async with AgentMessaging[MeetingMessage]() as sdk:
        for agent in ("agent_bob", "agent_charlie"):

            @sdk.register_handler(agent)
            async def handler(message, context, agent=agent):
                if context.is_meeting_message:
                    signal = await sdk.meeting.attend_meeting(agent, context.meeting_id)
                    print(agent, "attended", flush=True)
                    while not signal.meeting_ended:
                        signal = await sdk.meeting.speak(
                            agent, context.meeting_id,
                            MeetingMessage(speaker=agent, content=f"{{agent}} has a point"),
                        )
                    print(agent, "saw the meeting end", flush=True)

        await sdk.serve_handlers()
        print("READY", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def example_script(n: int) -> str:
    code = usage_examples()[n]
    for number, placeholder, lines in FILLS:
        if number == n:
            code = fill(code, placeholder, lines)
    return IMPORTS.get(n, "") + code + "\n\nimport asyncio\nasyncio.run(main())\n"


class Script:
    """A Python script in its own process, its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, path: Path, dsn: str) -> Script:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(path),
            env={**os.environ, "AMP_DATABASE_URL": dsn},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line_with(self, text: str, timeout: float = WAIT) -> str:
        """The first line holding ``text``, read before or now."""
        assert self.proc.stdout is not None
        for line in self.lines:
            if text in line:
                return line
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                raise AssertionError(f"exited before printing {text!r}: {await self.errors()}")
            self.lines.append(raw.decode().rstrip("\n"))
            if text in self.lines[-1]:
                return self.lines[-1]

    async def finish(self, timeout: float = WAIT) -> str:
        """Wait for the exit; all of stdout."""
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        self.lines += rest.decode().splitlines()
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        assert code == 0, await self.errors()
        return "\n".join(self.lines)

    async def errors(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()[-3000:]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


needs_plan = pytest.mark.skipif(not API.exists(), reason=ABSENT)


@needs_plan
async def test_example_1_one_way_notification(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "example1.py"
    path.write_text(example_script(1))
    out = await (await Script.start(path, dsn)).finish()
    assert "Bob received: Server restart in 5 minutes (Priority: high)" in out, (
        "03-api-design: 'The recipient's handler will be invoked immediately (if registered).'"
    )


@needs_plan
async def test_example_2_synchronous_interview(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "example2.py"
    path.write_text(example_script(2))
    out = await (await Script.start(path, dsn)).finish()
    answers = [line for line in out.splitlines() if line.startswith("Bob: ")]
    assert answers == [
        "Bob: My answer to 'What's your experience?' is...",
        "Bob: My answer to 'Why this role?' is...",
        "Bob: My answer to 'Any questions for us?' is...",
    ], "03-api-design: 'The sender will be blocked until: 1. The recipient replies'"


@needs_plan
async def test_example_3_meeting_with_turn_based_speaking(dsn: str, tmp_path: Path) -> None:
    """Alice (host, typed SDK) runs the example as written; Bob and Charlie attend
    from their handlers in another process with the same typed SDK."""
    code = usage_examples()[3]
    tree = ast.parse(code)
    message_class = next(
        ast.get_source_segment(code, node)
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "MeetingMessage"
    )
    (tmp_path / "alice.py").write_text(example_script(3))
    (tmp_path / "others.py").write_text(BOB_AND_CHARLIE.format(message_class=message_class))
    alice = await Script.start(tmp_path / "alice.py", dsn)
    others: Script | None = None
    try:
        await alice.line_with("SETUP DONE")
        others = await Script.start(tmp_path / "others.py", dsn)
        await others.line_with("READY")
        out = await alice.finish()
        for agent in ("agent_bob", "agent_charlie"):
            await others.line_with(f"{agent} saw the meeting end")
    finally:
        await alice.stop()
        if others is not None:
            await others.stop()
    spoke = [line for line in out.splitlines() if line.startswith("agent_bob spoke: ")]
    assert spoke and "'content': 'agent_bob has a point'" in spoke[0], (
        "03-api-design: '@sdk.register_event_handler(MeetingEvent.AGENT_SPOKE)' "
        "prints '{agent_id} spoke: ...' as 'Agents speak in their turns'"
    )
    assert "agent_charlie spoke:" in out, "03-api-design: 'Agents speak in their turns...'"
    assert {line for line in others.lines if "attended" in line} == {
        "agent_bob attended",
        "agent_charlie attended",
    }, "03-api-design: 'All agents' handlers will be invoked to notify them of the meeting.'"


# -- 05-testing-strategy.md -----------------------------------------------------


def plan_testing_blocks() -> list[tuple[str, str]]:
    """``(file, code)`` of each ``**File:** `...` `` block of the testing strategy."""
    text = TESTING.read_text()
    return re.findall(r"\*\*File:\*\* `([^`]+)`\s*\n+```python\n(.*?)```", text, re.DOTALL)


#: Blocks not run, and why.
SKIPPED_FILES = {
    "tests/unit/test_repositories.py": "mocks the database driver (this project tests "
    "against a real PostgreSQL only) and a repository layer that is SQL functions here",
    "tests/conftest.py": "a session event_loop fixture and placeholders; pytest-asyncio "
    "provides the loop",
}

#: Tests not run, and why.
SKIPPED_TESTS = {
    "test_agent_repository_create": SKIPPED_FILES["tests/unit/test_repositories.py"],
    "test_one_way_message_throughput": "asserts >1000 sends/s on whatever machine runs "
    "it; throughput is measured by bench/ (README, Performance), not asserted on 2 "
    "shared CI cores",
    "test_meeting_with_many_participants": "the plan leaves the body empty ('# ...'); "
    "50-agent meetings are in bench/",
    "test_customer_support_flow": "the plan leaves the body empty ('# ...'); "
    "examples/support_desk.py is that scenario",
    "test_brainstorming_meeting": "the plan leaves the body empty ('# ...'); "
    "examples/brainstorming.py is that scenario",
}

#: (test or fixture, old text, new text, why) applied to the plan's code before it runs.
CHANGES: list[tuple[str, str, str, str]] = [
    (
        "test_sdk",
        'Config(\n        postgres_db="agent_messaging_test",\n        postgres_port=5433\n    )',
        "_test_config()",
        "the plan's docker database (localhost:5433) becomes this test run's database",
    ),
    (
        "test_one_way_message",
        "await asyncio.sleep(0.1)",
        "await sdk.drain(30)",
        "wait until the handler has run (drain) instead of a fixed 0.1 s: no sleeping "
        "to synchronise, the test must hold on 2 loaded cores",
    ),
    (
        "test_one_way_missing_handler",
        "with pytest.raises(Exception):  # HandlerNotRegisteredError",
        "if True:  # differs on purpose: the message waits for a handler",
        "differs on purpose (README table): a one-way message to an agent with no handler "
        "online is stored and waits for one, durably; CHECKS asserts it is pending",
    ),
    (
        "test_meeting_lifecycle",
        "attended = []",
        "attended = _Watched()",
        "a list that can be awaited, for the change below",
    ),
    (
        "test_meeting_lifecycle",
        "await asyncio.sleep(0.5)",
        "await attended.wait_len(3)\n"
        "    await sdk.meeting.wait_until_ready(meeting_id, timeout=30)",
        "wait until the three handlers ran and their attendance committed, instead of a "
        "fixed 0.5 s",
    ),
    (
        "test_meeting_speaking_turns",
        "# ... (similar to above)",
        "_attend_in_handlers(sdk)",
        "the plan elides the handlers ('similar to above'): the lifecycle test's "
        "attend-in-the-handler handlers; '# ... wait for attendance ...' needs nothing, "
        "start_meeting waits for the invitees",
    ),
    (
        "test_meeting_speaking_turns",
        'history[0].content["content"]',
        '[m for m in history if m.message_type == "meeting"][0].content["content"]',
        "the history includes system messages, as get_meeting_history's docstring says "
        "('including system messages (timeouts, joins, leaves)'): the joins come first, "
        "so the opening message is the first one an agent said",
    ),
    (
        "test_concurrent_one_way_messages",
        "await asyncio.sleep(1)",
        "await sdk.drain(30)",
        "wait until the 100 handlers ran (drain) instead of a fixed 1 s",
    ),
    (
        "test_connection_pool_exhaustion",
        "async def test_connection_pool_exhaustion(test_sdk):\n"
        '    """Test behavior under connection pool exhaustion."""\n'
        "    sdk = test_sdk",
        "async def test_connection_pool_exhaustion(test_agents):\n"
        '    """Test behavior under connection pool exhaustion."""\n'
        "    sdk = test_agents",
        "it looks up agent_a, which only the test_agents fixture registers",
    ),
]


class _Watched(list[Any]):
    """A list whose length can be awaited (appends wake the waiter)."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def append(self, item: Any) -> None:
        super().append(item)
        self._changed.set()

    async def wait_len(self, n: int, timeout: float = 30.0) -> None:
        async def reached() -> None:
            while len(self) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), timeout)


def _attend_in_handlers(sdk: AgentMessaging[Any]) -> None:
    for agent in ("host", "agent_1", "agent_2"):

        @sdk.register_handler(agent)
        async def handler(message: Any, context: Any, agent: str = agent) -> None:
            if context.meeting_id:
                await sdk.meeting.attend_meeting(agent, context.meeting_id)


async def _check_missing_handler(sdk: AgentMessaging[Any]) -> None:
    status = await sdk.db.fetch_value("SELECT delivery_status FROM amp.messages")
    assert status == "pending", "the message waits for agent_b's handler"


#: Assertions added after a changed test, and why.
CHECKS: dict[str, Callable[[AgentMessaging[Any]], Any]] = {
    "test_one_way_missing_handler": _check_missing_handler,
}


def plan_tests() -> list[Any]:
    if not TESTING.exists():
        return [pytest.param("absent", marks=pytest.mark.skip(reason=ABSENT))]
    names = []
    for _, code in plan_testing_blocks():
        for node in ast.parse(code).body:
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name.startswith("test_")
                and not any("fixture" in ast.unparse(d) for d in node.decorator_list)
            ):
                names.append(node.name)
    return [
        pytest.param(n, marks=pytest.mark.skip(reason=SKIPPED_TESTS[n]))
        if n in SKIPPED_TESTS
        else n
        for n in names
    ]


def plan_namespace(dsn: str) -> dict[str, Any]:
    """Every block (but the skipped files) run into one namespace, with the changes
    applied and decorators removed (fixtures become plain functions)."""
    namespace: dict[str, Any] = {
        "_test_config": lambda: make_config(dsn, shutdown_timeout=5.0),
        "_Watched": _Watched,
        "_attend_in_handlers": _attend_in_handlers,
    }
    applied = set()
    for path, code in plan_testing_blocks():
        if path in SKIPPED_FILES:
            continue
        for where, old, new, _why in CHANGES:
            if old in code:
                code = code.replace(old, new)
                applied.add((where, old))
        tree = ast.parse(code)
        for node in tree.body:  # top level only: handlers keep their decorators
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                node.decorator_list = []
        exec(compile(tree, f"{TESTING.name}:{path}", "exec"), namespace)
    missing = [(w, o) for w, o, _n, _y in CHANGES if (w, o) not in applied]
    assert not missing, f"the plan changed; these changes no longer apply: {missing}"
    return namespace


@pytest.mark.skipif(not TESTING.exists(), reason=ABSENT)
@pytest.mark.parametrize("name", plan_tests())
async def test_planning_test(name: str, dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = plan_namespace(dsn)
    async with contextlib.AsyncExitStack() as stack:
        values: dict[str, Any] = {"monkeypatch": monkeypatch}

        async def resolve(param: str) -> Any:
            if param not in values:
                fixture = namespace[param]
                args = [await resolve(p) for p in inspect.signature(fixture).parameters]
                result = fixture(*args)
                if inspect.isasyncgen(result):
                    values[param] = await anext(result)

                    async def finish(gen: Any = result) -> None:
                        with contextlib.suppress(StopAsyncIteration):
                            await anext(gen)

                    stack.push_async_callback(finish)
                elif inspect.iscoroutine(result):
                    values[param] = await result
                else:
                    values[param] = result
            return values[param]

        test = namespace[name]
        args = [await resolve(p) for p in inspect.signature(test).parameters]
        outcome = test(*args)
        if inspect.iscoroutine(outcome):
            await outcome
        if name in CHECKS:
            sdk = next(v for v in values.values() if isinstance(v, AgentMessaging))
            await CHECKS[name](sdk)
