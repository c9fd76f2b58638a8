"""``amp mcp``: the protocol as Model Context Protocol tools, for LLM agents.

An MCP host (a coding assistant, a desktop app, an agent framework) launches
``amp mcp --agent alice`` over stdio, or connects to one long-running
``amp mcp --http`` server; the model then talks to other agents with tools
(``send_message``, ``ask``, ``check_inbox``, ``join_meeting``, ...). Everything the
tools do is a call of the SDK's patterns (or of an ``amp.*`` SQL function), so an
MCP agent and a Python, Node or psql agent are peers of the same protocol.

Built on the official ``mcp`` SDK (``FastMCP``), installed with the ``[mcp]`` extra.

Identity: a stdio server acts as the one agent it was started for. An HTTP server
serves many agents: each MCP session states which agent it is (the ``X-AMP-Agent``
header, or ``?agent=`` in the URL) and keeps that identity for its lifetime;
``--allow-agent`` narrows who may be named. See :meth:`AmpMcpServer.authorize`
for where the database's access control (roles bound to organizations) applies.

Inbox: an MCP agent has no handler process that messages are pushed to; the
server serves the agent as a worker (so it shows online) and hands pushed
messages (one-way notes, questions, meeting invitations) to the model when it
checks its inbox: claimed with an already-expired lease and acknowledged only once
they are in the tool's answer, so a server that dies in between loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

try:
    import anyio
    from mcp.server.fastmcp import Context, FastMCP
    from mcp.server.fastmcp.exceptions import ToolError
    from mcp.server.session import ServerSession
    from mcp.types import CallToolResult, ContentBlock, TextContent
    from pydantic import AnyUrl, Field
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("amp mcp needs the MCP SDK: pip install 'agent-messaging[mcp]'") from exc

from . import queries, tasks
from .client import AgentMessaging
from .dispatcher import AnyNotification, Outcome
from .exceptions import (
    AgentAlreadyExistsError,
    AgentMessagingError,
    AgentNotFoundError,
    AgentNotInMeetingError,
    ConversationEndedError,
    ConversationTimeoutError,
    HostCannotLeaveError,
    InvalidInputError,
    InvalidMeetingStateError,
    InvalidSessionStateError,
    MeetingNotFoundError,
    MeetingTimeoutError,
    NotCurrentSpeakerError,
    NotMeetingHostError,
    OrganizationAlreadyExistsError,
    OrganizationNotFoundError,
    SessionNotFoundError,
)
from .meeting_manager import meeting_channel
from .models import MeetingMessage, TurnSignal
from .notifications import MessageStored

log = logging.getLogger("agent_messaging.mcp")

T = TypeVar("T")

#: the header (or URL query parameter ``agent``) naming an HTTP session's agent
AGENT_HEADER = "X-AMP-Agent"
INBOX_URI = "amp://inbox"
TRANSCRIPT_URI = "amp://meetings/{meeting_id}/transcript"
#: pushed messages claimed per inbox check (the rest stay for the next one)
_CLAIM_BATCH = 100
#: a claim made by an inbox check may be retried any number of times: it is not a
#: handler failing, just the model looking
_NO_ATTEMPT_LIMIT = 2**31 - 1
_PUSHED_KINDS = {"one_way": "note", "sync_request": "question", "meeting_invitation": "invitation"}

Content = Annotated[
    str | dict[str, Any],
    Field(description="The message: plain text, or a JSON object for structured data."),
]


@dataclass(frozen=True)
class McpSettings:
    """How an ``amp mcp`` server behaves (the command's options)."""

    #: stdio: the agent this server acts as; ``None``: each session says (HTTP)
    agent: str | None = None
    #: HTTP: the only agents sessions may act as (``None``: any registered agent)
    allowed_agents: frozenset[str] | None = None
    #: seconds a blocking tool waits when the model gives no ``timeout_s``
    default_wait: float = 60.0
    #: no tool blocks longer than this, whatever ``timeout_s`` it is given
    max_wait: float = 300.0
    #: seconds between progress notifications while a tool is blocked
    progress_interval: float = 5.0


class _FastMCP(FastMCP[Any]):
    """FastMCP whose argument errors tell the model how to recover."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any]
    ) -> Sequence[ContentBlock] | dict[str, Any]:
        try:
            return await super().call_tool(name, arguments)
        except ToolError as exc:
            if "validation error" not in str(exc):
                raise
            raise ToolError(
                f"{exc}\nNothing was done: call {name} again with the arguments named above "
                "fixed to match its input schema."
            ) from exc


class ToolRefusal(Exception):
    """A tool call the server refuses; the text tells the model what to do next."""


def _hint(exc: AgentMessagingError) -> str:
    """The error text for the model: what went wrong and what to call next."""
    text = str(exc).rstrip(".")
    if isinstance(exc, AgentNotFoundError):
        return f"{text}. Check the name, or call list_agents to see the registered agents."
    if isinstance(exc, OrganizationNotFoundError):
        return f"{text}. Check the organization's name."
    if isinstance(exc, InvalidInputError):
        if "bytes" in text:
            return f"{text}. Nothing was sent: shorten the content and call again."
        return f"{text}. Nothing was stored: fix the arguments and call again."
    if isinstance(exc, SessionNotFoundError | InvalidSessionStateError):
        return f"{text}. Call pending_questions to see who is waiting for your answer."
    if isinstance(exc, MeetingNotFoundError):
        return f"{text}. Call my_meetings to see your meetings and their ids."
    if isinstance(exc, NotCurrentSpeakerError):
        return f"{text}. It is not your turn: call join_meeting to wait for your turn."
    if isinstance(exc, HostCannotLeaveError):
        return f"{text}. As the host, call end_meeting to close the meeting instead."
    if isinstance(exc, NotMeetingHostError):
        return f"{text}. Only the meeting's host can do this."
    if isinstance(exc, AgentNotInMeetingError):
        return f"{text}. Call my_meetings to see the meetings you are in."
    if isinstance(exc, InvalidMeetingStateError):
        if "ended" in text:
            return f"{text}. The meeting is over: call meeting_history to read what was said."
        if "created" in text or "ready" in text:
            return (
                f"{text}. The meeting has not started yet: call join_meeting, which returns "
                "when it is your turn."
            )
        return f"{text}. Call my_meetings to see the meeting's state."
    return f"{text}."


def _presence(online: bool | None) -> str:
    """How list_agents shows an agent's presence (``None``: not this role's to see)."""
    if online is None:
        return "presence not shown"
    return "online" if online else "offline"


def _result(text: str, data: dict[str, Any], *, error: bool = False) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structuredContent=data,
        isError=error,
    )


def _error(text: str) -> CallToolResult:
    return _result(text, {"error": text}, error=True)


def _show(value: Any, limit: int = 2000) -> str:
    """A short rendering of message content for the text part of a result."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " [...]"


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else None


def _said(message: MeetingMessage[Any]) -> dict[str, Any]:
    if message.message_type == "system":
        system: dict[str, Any] = message.system or {}
        return {
            "seq": message.seq,
            "from": "system",
            "event": system.get("event"),
            "agent": system.get("agent_external_id"),
            "text": system.get("text"),
        }
    return {
        "seq": message.seq,
        "from": message.sender_external_id,
        "content": message.content,
        "late": message.is_late,
    }


def _said_text(items: list[dict[str, Any]]) -> str:
    lines = []
    for item in items:
        if item["from"] == "system":
            lines.append(f"  #{item['seq']} (system) {item['text']}")
        else:
            late = " (late)" if item.get("late") else ""
            lines.append(f"  #{item['seq']} {item['from']}{late}: {_show(item['content'], 500)}")
    return "\n".join(lines) if lines else "  (nothing)"


class Seat:
    """One agent served by this MCP server: presence and its pushed messages.

    The server registers as a worker serving the agent (``amp.register_worker``,
    ``amp.serve_agents``, a heartbeat), so the agent shows in ``amp.online_agents``;
    it never runs a handler: pushed messages wait until the model checks its inbox.
    """

    def __init__(self, sdk: AgentMessaging[Any], agent: str) -> None:
        self.sdk = sdk
        self.agent = agent
        self.worker: UUID | None = None
        self._beat: asyncio.Task[None] | None = None

    async def open(self) -> None:
        db = self.sdk.db
        row = await db.fetch_one(queries.REGISTER_WORKER, [socket.gethostname(), os.getpid()])
        self.worker = UUID(str(row["id"]))
        await db.fetch(queries.SERVE_AGENTS, [self.worker, [self.agent]])
        self._beat = asyncio.create_task(self._heartbeat(), name=f"amp-mcp-beat-{self.agent}")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.sdk.config.heartbeat_interval)
            try:
                await self.sdk.db.execute(queries.HEARTBEAT, [self.worker])
            except Exception as exc:
                log.warning("heartbeat of %s failed: %s", self.agent, exc)

    async def close(self) -> None:
        await tasks.stop(self._beat)
        self._beat = None
        if self.worker is not None:
            with contextlib.suppress(Exception):
                await self.sdk.db.execute(queries.UNREGISTER_WORKER, [self.worker])
            self.worker = None

    async def take(self, sender: str | None, limit: int) -> list[dict[str, Any]]:
        """Take up to ``limit`` messages: unread async ones (marked read) and pushed
        ones (acknowledged), oldest first, only from ``sender`` if given."""
        db = self.sdk.db
        if sender is not None:
            await self.sdk.get_agent(sender)  # an unknown sender is an error, not "none"
        # pushed: leased with a lease that is already over, so whatever is not in
        # this answer is claimable again at once (by this check or a real handler)
        claimed = await db.fetch(
            queries.MCP_CLAIM_INBOX,
            [self.worker, _CLAIM_BATCH, _NO_ATTEMPT_LIMIT],
        )
        pushed = [r for r in claimed if sender is None or r["sender_external_id"] == sender]
        unread = await db.fetch(
            queries.MCP_READ_INBOX,
            [self.agent, sender, limit],
        )
        chosen = pushed[: max(0, limit - len(unread))]
        acked: set[str] = set()
        if chosen:
            rows = await db.fetch(
                queries.ACK_DELIVERIES,
                [self.worker, [UUID(str(r["id"])) for r in chosen]],
            )
            acked = {str(r["id"]) for r in rows}
        items = [_inbox_item("async", r) for r in unread]
        items += [
            _inbox_item(_PUSHED_KINDS.get(r["message_type"], "note"), r)
            for r in chosen
            if str(r["id"]) in acked
        ]
        return sorted(items, key=lambda item: int(item["seq"]))

    async def peek(self, sender: str | None, limit: int) -> list[dict[str, Any]]:
        """The same messages as :meth:`take`, left where they are."""
        db = self.sdk.db
        if sender is not None:
            await self.sdk.get_agent(sender)
        unread = await db.fetch(queries.MCP_PEEK_INBOX, [self.agent, sender])
        pushed = await db.fetch(queries.MCP_PENDING_PUSHED, [self.agent, sender, limit])
        items = [_inbox_item("async", r) for r in unread]
        items += [_inbox_item(_PUSHED_KINDS.get(r["message_type"], "note"), r) for r in pushed]
        return sorted(items, key=lambda item: int(item["seq"]))[:limit]


def _inbox_item(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": kind,
        "from": row.get("sender_external_id"),
        "content": row["content"],
        "message_id": str(row["id"]),
        "seq": int(row["seq"]),
    }
    if row.get("created_at") is not None:
        item["sent_at"] = _iso(row["created_at"])
    return item


_NEXT_STEP = {
    "async": "reply with send_async",
    "note": "a one-way note; no reply expected",
    "question": "the sender is waiting: reply with answer",
    "invitation": "call join_meeting with its meeting_id",
}


def _inbox_text(items: list[dict[str, Any]], peeked: bool) -> str:
    if not items:
        return "Your inbox is empty."
    verb = "waiting (left unread)" if peeked else "taken (marked read)"
    lines = [f"{len(items)} message(s) {verb}:"]
    for item in items:
        lines.append(
            f"- [{item['kind']}] from {item['from']}: {_show(item['content'], 800)}"
            f"  ({_NEXT_STEP.get(item['kind'], '')})"
        )
    return "\n".join(lines)


class AmpMcpServer:
    """The MCP server: tools and resources over one :class:`AgentMessaging`."""

    def __init__(self, sdk: AgentMessaging[Any], settings: McpSettings) -> None:
        self.sdk = sdk
        self.settings = settings
        self._seats: dict[str, Seat] = {}
        self._seat_lock = asyncio.Lock()
        self._identities: weakref.WeakKeyDictionary[ServerSession, str] = (
            weakref.WeakKeyDictionary()
        )
        #: topics of meetings this server created, spoken as the opening message
        self._topics: dict[str, str] = {}
        self._subscriptions: dict[tuple[int, str], Callable[[], Awaitable[None]]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.mcp = _FastMCP(
            name="agent-messaging",
            instructions=(
                "Talk with other agents (LLM or not) through a PostgreSQL-backed protocol. "
                "whoami and list_agents show who you are and who is there. send_message is "
                "a one-way note; ask blocks until the other agent answers; check_inbox and "
                "wait_for_message read what others sent you (questions, notes, "
                "invitations, async messages); pending_questions lists who waits for your "
                "answer. Meetings are turn-based: join_meeting waits for your turn, then "
                "speak, and speak again each time the turn comes back, until it ends."
            ),
            log_level="WARNING",
        )
        self._register_tools()
        self._register_resources()

    # -- identity ---------------------------------------------------------

    async def authorize(self, agent: str) -> None:
        """May this server act as ``agent``? Raises :class:`ToolRefusal` if not.

        Checked here: the ``--allow-agent`` list and that the agent exists. The
        database is the authority on identity: where access control is bound
        (roles bound to organizations or agents, the access-control issue), every
        ``amp.*`` function refuses an agent the server's database role may not act
        as, and that refusal reaches the model as a tool error; a check of
        ``amp._may_act_as`` (or its final name) belongs here once that lands, so a
        session is refused when it names the agent rather than on its first call.
        """
        allowed = self.settings.allowed_agents
        if allowed is not None and agent not in allowed:
            raise ToolRefusal(
                f"This server may not act as agent {agent!r}; it serves only: "
                f"{', '.join(sorted(allowed))}."
            )
        await self.sdk.get_agent(agent)

    async def me(self, ctx: Context[Any, Any, Any] | None = None) -> str:
        """The agent the calling session acts as (seated on first use)."""
        fixed = self.settings.agent
        if fixed is not None:
            return fixed
        ctx = ctx or self.mcp.get_context()
        session: ServerSession = ctx.request_context.session
        request = ctx.request_context.request
        stated: str | None = None
        if request is not None:
            headers = getattr(request, "headers", {})
            query = getattr(request, "query_params", {})
            stated = headers.get(AGENT_HEADER.lower()) or query.get("agent")
        bound = self._identities.get(session)
        if bound is not None:
            if stated and stated != bound:
                raise ToolRefusal(
                    f"This session acts as {bound!r}; it cannot become {stated!r}. "
                    "Open a new session to act as another agent."
                )
            return bound
        if not stated:
            raise ToolRefusal(
                f"This server serves many agents: say which one you are with the "
                f"{AGENT_HEADER} header (or ?agent=NAME in the server URL)."
            )
        await self.authorize(stated)
        await self.seat(stated)
        self._identities[session] = stated
        return stated

    async def seat(self, agent: str) -> Seat:
        """The :class:`Seat` of ``agent``, opened on first use."""
        async with self._seat_lock:
            seat = self._seats.get(agent)
            if seat is None:
                seat = Seat(self.sdk, agent)
                await seat.open()
                self._seats[agent] = seat
            return seat

    async def close(self) -> None:
        """Leave every seat (the agents go offline)."""
        for seat in list(self._seats.values()):
            await seat.close()
        self._seats.clear()

    def _cap(self, timeout_s: float | None) -> float:
        wait = self.settings.default_wait if timeout_s is None else float(timeout_s)
        if wait < 0:
            raise ToolRefusal("timeout_s must not be negative.")
        return min(wait, self.settings.max_wait)

    # -- blocking with progress and cancellation ---------------------------

    async def _block(
        self,
        ctx: Context[Any, Any, Any],
        work: Awaitable[T],
        timeout: float,
        what: str,
        on_cancel: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Await ``work`` (which bounds itself by ``timeout``), reporting progress
        every ``progress_interval`` seconds. If the client cancels the call, the
        work is cancelled and ``on_cancel`` runs (shielded) to undo its waiting."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.settings.progress_interval)
                if done:
                    return task.result()
                elapsed = loop.time() - started
                with contextlib.suppress(Exception):
                    await ctx.report_progress(
                        round(elapsed, 3), timeout, f"{what} ({elapsed:.0f} s of {timeout:.0f} s)"
                    )
        except BaseException:
            if not task.done():
                task.cancel()
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(BaseException):
                        await task
                    if on_cancel is not None:
                        try:
                            await on_cancel()
                        except Exception as exc:
                            log.warning(
                                "cleaning up after a cancelled call (%s) failed: %s", what, exc
                            )
            raise

    # -- tools -------------------------------------------------------------

    def _register_tools(self) -> None:
        tool = self.mcp.tool
        sdk = self.sdk

        def guarded(
            fn: Callable[..., Awaitable[CallToolResult]],
        ) -> Callable[..., Awaitable[CallToolResult]]:
            """Turn refusals and protocol errors into tool errors for the model."""
            import functools

            @functools.wraps(fn)
            async def run(*args: Any, **kwargs: Any) -> CallToolResult:
                try:
                    return await fn(*args, **kwargs)
                except ToolRefusal as exc:
                    return _error(str(exc))
                except AgentMessagingError as exc:
                    return _error(_hint(exc))

            return run

        @tool(description="Who you are in this protocol: your agent id, name and organization.")
        @guarded
        async def whoami(ctx: Context[Any, Any, Any]) -> CallToolResult:
            me = await self.me(ctx)
            agent = await sdk.get_agent(me)
            org = await sdk.db.fetch_value(queries.MCP_AGENT_ORGANIZATION, [me])
            data = {"agent": me, "name": agent.name, "organization": org}
            return _result(f"You are {me} ({agent.name}) of organization {org}.", data)

        @tool(
            description=(
                "List the registered agents you can talk to, with their organization and "
                "whether a process is serving them right now (online; null for an agent this "
                "server's database role may not act as: its presence is not shown). "
                "Offline agents still receive messages; they read them when they come back."
            )
        )
        @guarded
        async def list_agents(
            ctx: Context[Any, Any, Any],
            organization: Annotated[
                str | None, Field(description="Only agents of this organization.")
            ] = None,
            limit: Annotated[int, Field(ge=1, le=1000, description="At most this many.")] = 200,
        ) -> CallToolResult:
            me = await self.me(ctx)
            rows = await sdk.db.fetch(queries.MCP_LIST_AGENTS, [organization, limit])
            agents = [dict(r) | {"you": r["agent"] == me} for r in rows]
            lines = [
                f"- {a['agent']} ({a['name']}, {a['organization']}) {_presence(a['online'])}"
                f"{' <- you' if a['you'] else ''}"
                for a in agents
            ]
            return _result("\n".join(lines) or "No agents.", {"agents": agents})

        @tool(
            description=(
                "Send a one-way note to another agent. It is stored durably and delivered "
                "even if the recipient is offline now; no answer is expected (use ask "
                "for a question you need answered)."
            )
        )
        @guarded
        async def send_message(
            ctx: Context[Any, Any, Any],
            to: Annotated[str, Field(description="The recipient's agent id.")],
            content: Content,
        ) -> CallToolResult:
            me = await self.me(ctx)
            message_id = await sdk.one_way.send(me, to, content)
            return _result(
                f"Sent to {to}.", {"status": "sent", "to": to, "message_id": str(message_id)}
            )

        @tool(
            description=(
                "Ask another agent a question and wait for the answer (a synchronous "
                "conversation). Blocks until the agent answers, timeout_s passes, or the "
                "conversation is ended; the result's status says which. While you wait "
                "the other agent sees your question in pending_questions."
            )
        )
        @guarded
        async def ask(
            ctx: Context[Any, Any, Any],
            to: Annotated[str, Field(description="The agent to ask.")],
            content: Content,
            timeout_s: Annotated[
                float | None,
                Field(description="Seconds to wait for the answer (capped by the server)."),
            ] = None,
        ) -> CallToolResult:
            me = await self.me(ctx)
            timeout = self._cap(timeout_s)

            async def cancel() -> None:
                await self._cancel_ask(me, to)

            try:
                answer = await self._block(
                    ctx,
                    sdk.sync_conversation.send_and_wait(me, to, content, timeout=timeout),
                    timeout,
                    f"waiting for {to}'s answer",
                    on_cancel=cancel,
                )
            except ConversationTimeoutError:
                return _result(
                    f"{to} did not answer within {timeout:g} s; your question was withdrawn. "
                    "Ask again later, or send_async and move on.",
                    {"status": "timeout", "to": to, "timeout_s": timeout},
                )
            except ConversationEndedError:
                return _result(
                    f"The conversation with {to} was ended before an answer came.",
                    {"status": "ended", "to": to},
                )
            return _result(
                f"{to} answered: {_show(answer)}",
                {"status": "answered", "from": to, "answer": answer},
            )

        @tool(
            description=(
                "List the questions other agents asked you and are still waiting on (they "
                "are blocked in ask until you answer). Reply to each with answer."
            )
        )
        @guarded
        async def pending_questions(ctx: Context[Any, Any, Any]) -> CallToolResult:
            me = await self.me(ctx)
            rows = await sdk.db.fetch(queries.MCP_PENDING_QUESTIONS, [me])
            questions = [
                {
                    "from": r["sender_external_id"],
                    "question": r["content"],
                    "waiting_since": _iso(r["waiting_since"]),
                    "request_id": str(r["request_id"]),
                }
                for r in rows
            ]
            if not questions:
                return _result("Nobody is waiting for your answer.", {"questions": []})
            lines = [f"- {q['from']} asks: {_show(q['question'], 800)}" for q in questions]
            text = "Waiting for your answer (reply with answer):\n" + "\n".join(lines)
            return _result(text, {"questions": questions})

        @tool(
            description=(
                "Answer the agent that is waiting on you (it asked you with ask). Fails if "
                "that agent is not waiting for your answer any more (it timed out or was "
                "answered); see pending_questions."
            )
        )
        @guarded
        async def answer(
            ctx: Context[Any, Any, Any],
            to: Annotated[str, Field(description="The agent that asked you.")],
            content: Content,
        ) -> CallToolResult:
            me = await self.me(ctx)
            reply_id = await sdk.sync_conversation.reply(me, to, content)
            return _result(
                f"Answered {to}.", {"status": "answered", "to": to, "message_id": str(reply_id)}
            )

        @tool(
            description=(
                "Send an asynchronous message: it lands in the recipient's inbox "
                "(check_inbox / wait_for_message) and you do not wait for anything."
            )
        )
        @guarded
        async def send_async(
            ctx: Context[Any, Any, Any],
            to: Annotated[str, Field(description="The recipient's agent id.")],
            content: Content,
        ) -> CallToolResult:
            me = await self.me(ctx)
            message_id = await sdk.async_conversation.send(me, to, content)
            return _result(
                f"Sent to {to}'s inbox.",
                {"status": "sent", "to": to, "message_id": str(message_id)},
            )

        @tool(
            description=(
                "Read your inbox: async messages, one-way notes, questions waiting for "
                "your answer and meeting invitations, oldest first. Taken messages are "
                "marked read; peek=true only looks. Does not wait (see wait_for_message)."
            )
        )
        @guarded
        async def check_inbox(
            ctx: Context[Any, Any, Any],
            from_agent: Annotated[
                str | None, Field(description="Only messages from this agent.")
            ] = None,
            limit: Annotated[int, Field(ge=1, le=100, description="At most this many.")] = 20,
            peek: Annotated[bool, Field(description="Look without marking anything read.")] = False,
        ) -> CallToolResult:
            me = await self.me(ctx)
            seat = await self.seat(me)
            if peek:
                items = await seat.peek(from_agent, limit)
            else:
                items = await seat.take(from_agent, limit)
            return _result(_inbox_text(items, peek), {"messages": items, "peeked": peek})

        @tool(
            description=(
                "Wait for the next message to you (async, note, question or invitation), "
                "from one agent or anyone, for up to timeout_s seconds; returns it (marked "
                "read) or status timeout."
            )
        )
        @guarded
        async def wait_for_message(
            ctx: Context[Any, Any, Any],
            from_agent: Annotated[
                str | None, Field(description="Only a message from this agent.")
            ] = None,
            timeout_s: Annotated[
                float | None, Field(description="Seconds to wait (capped by the server).")
            ] = None,
        ) -> CallToolResult:
            me = await self.me(ctx)
            timeout = self._cap(timeout_s)
            seat = await self.seat(me)
            item = await self._block(
                ctx, self._next_message(seat, from_agent, timeout), timeout, "waiting"
            )
            if item is None:
                return _result(
                    f"No message within {timeout:g} s.", {"status": "timeout", "message": None}
                )
            return _result(_inbox_text([item], False), {"status": "received", "message": item})

        # -- meetings --------------------------------------------------------

        @tool(
            description=(
                "Create a turn-based meeting that you host. participants is the invitation "
                "list and the speaking order (you go first if you are not in it). Each "
                "invitee gets an invitation; the meeting starts, with topic as your opening "
                "words, once everyone has joined: call join_meeting to wait for that and "
                "for your turn. A turn not used within turn_duration_s passes on."
            )
        )
        @guarded
        async def create_meeting(
            ctx: Context[Any, Any, Any],
            participants: Annotated[
                list[str], Field(description="Agent ids to invite, in speaking order.")
            ],
            topic: Annotated[str, Field(description="What the meeting is about.")],
            turn_duration_s: Annotated[
                float, Field(gt=0, description="Seconds each speaker has for a turn.")
            ] = 120.0,
        ) -> CallToolResult:
            me = await self.me(ctx)
            meeting = await sdk.meeting.create_meeting(me, participants, turn_duration_s)
            self._topics[str(meeting)] = topic
            data = {
                "meeting_id": str(meeting),
                "status": "created",
                "participants": participants,
                "turn_duration_s": turn_duration_s,
            }
            return _result(
                f"Meeting {meeting} created; invitations sent to "
                f"{', '.join(p for p in participants if p != me)}. Call join_meeting with "
                "this meeting_id: it starts the meeting when everyone has joined and "
                "returns when it is your turn.",
                data,
            )

        @tool(
            description=(
                "Join a meeting you were invited to (or host), and wait until it is your "
                "turn to speak or the meeting ends. Returns what was said since you last "
                "spoke. Call it again if it returns status waiting (your timeout passed)."
            )
        )
        @guarded
        async def join_meeting(
            ctx: Context[Any, Any, Any],
            meeting_id: Annotated[str, Field(description="The meeting's id.")],
            timeout_s: Annotated[
                float | None, Field(description="Seconds to wait (capped by the server).")
            ] = None,
        ) -> CallToolResult:
            me = await self.me(ctx)
            timeout = self._cap(timeout_s)
            work = self._join(me, meeting_id, timeout)
            return await self._block(ctx, work, timeout, "waiting for your turn")

        @tool(
            description=(
                "Say something in a meeting when it is your turn, then wait for your next "
                "turn (or the end) like join_meeting. next_speaker hands the turn to a "
                "given participant; otherwise it goes round-robin."
            )
        )
        @guarded
        async def speak(
            ctx: Context[Any, Any, Any],
            meeting_id: Annotated[str, Field(description="The meeting's id.")],
            content: Content,
            next_speaker: Annotated[
                str | None, Field(description="Who speaks next (default: round-robin).")
            ] = None,
            timeout_s: Annotated[
                float | None,
                Field(description="Seconds to wait for your next turn (capped by the server)."),
            ] = None,
        ) -> CallToolResult:
            me = await self.me(ctx)
            timeout = self._cap(timeout_s)
            work = self._speak(me, meeting_id, content, next_speaker, timeout)
            return await self._block(ctx, work, timeout, "waiting for your next turn")

        @tool(description="Leave a meeting (not as its host); your turns are skipped from now.")
        @guarded
        async def leave_meeting(
            ctx: Context[Any, Any, Any],
            meeting_id: Annotated[str, Field(description="The meeting's id.")],
        ) -> CallToolResult:
            me = await self.me(ctx)
            await sdk.meeting.leave_meeting(me, UUID(await self._meeting(meeting_id)))
            return _result(f"You left meeting {meeting_id}.", {"status": "left"})

        @tool(description="End a meeting you host; everyone waiting in it is told it ended.")
        @guarded
        async def end_meeting(
            ctx: Context[Any, Any, Any],
            meeting_id: Annotated[str, Field(description="The meeting's id.")],
        ) -> CallToolResult:
            me = await self.me(ctx)
            await sdk.meeting.end_meeting(me, UUID(await self._meeting(meeting_id)))
            return _result(f"Meeting {meeting_id} ended.", {"status": "ended"})

        @tool(
            description=(
                "Everything said in a meeting you take part in, with joins, leaves, turn "
                "timeouts and the end, in order."
            )
        )
        @guarded
        async def meeting_history(
            ctx: Context[Any, Any, Any],
            meeting_id: Annotated[str, Field(description="The meeting's id.")],
        ) -> CallToolResult:
            me = await self.me(ctx)
            data = await self._transcript(me, meeting_id)
            text = f"Meeting {meeting_id} ({data['status']}):\n" + _said_text(data["messages"])
            return _result(text, data)

        @tool(
            description=(
                "The meetings you are invited to or take part in, newest first, with their "
                "state and whose turn it is."
            )
        )
        @guarded
        async def my_meetings(
            ctx: Context[Any, Any, Any],
            include_ended: Annotated[
                bool, Field(description="Also list meetings that have ended.")
            ] = False,
        ) -> CallToolResult:
            me = await self.me(ctx)
            rows = await sdk.db.fetch(queries.MCP_MY_MEETINGS, [me, include_ended])
            meetings = [
                {
                    "meeting_id": str(r["meeting_id"]),
                    "status": r["status"],
                    "host": r["host"],
                    "current_speaker": r["current_speaker"],
                    "your_status": r["your_status"],
                    "created_at": _iso(r["created_at"]),
                }
                for r in rows
            ]
            lines = [
                f"- {m['meeting_id']}: {m['status']}, host {m['host']}, you are "
                f"{m['your_status']}"
                + (f", {m['current_speaker']} has the turn" if m["current_speaker"] else "")
                for m in meetings
            ]
            return _result("\n".join(lines) or "You are in no meeting.", {"meetings": meetings})

    # -- tool helpers ------------------------------------------------------

    async def _cancel_ask(self, me: str, to: str) -> None:
        """Withdraw ``me``'s question to ``to`` (a cancelled ask), as a timeout does."""
        rows = await self.sdk.db.fetch(queries.MCP_QUESTIONS_FROM, [to, me])
        for row in rows:
            await self.sdk.db.fetch_value(
                queries.CANCEL_WAIT, [me, to, UUID(str(row["request_id"]))]
            )

    async def _next_message(
        self, seat: Seat, sender: str | None, timeout: float
    ) -> dict[str, Any] | None:
        """The next message for ``seat`` (from ``sender``, if given), taken; ``None``
        if none comes within ``timeout``. The dispatcher's one wait: listen, take,
        wait for a hint (or the poll interval), take again. An error of a take ends
        the wait (the tool reports it)."""
        sdk = self.sdk
        channel = await sdk.agent_channel(seat.agent)

        def wanted(notification: AnyNotification) -> bool:
            return isinstance(notification, MessageStored)

        async def check(_remaining: float | None) -> Outcome[dict[str, Any]] | None:
            items = await seat.take(sender, 1)
            return Outcome(items[0]) if items else None

        deadline = asyncio.get_running_loop().time() + timeout
        outcome = await sdk.dispatcher.wait_until(
            [channel], check, deadline, sdk.config.poll_interval, wanted=wanted, retried=()
        )
        return None if outcome is None else outcome.value

    async def _meeting(self, meeting_id: str) -> str:
        try:
            return str(UUID(str(meeting_id).strip()))
        except ValueError:
            raise ToolRefusal(
                f"{meeting_id!r} is not a meeting id (a UUID). Call my_meetings to see "
                "your meetings and their ids."
            ) from None

    async def _join(self, me: str, meeting_id: str, timeout: float) -> CallToolResult:
        meetings = self.sdk.meeting
        meeting = UUID(await self._meeting(meeting_id))
        status = await meetings.get_meeting_status(meeting)
        if not any(p.agent_external_id == me for p in status.participants):
            raise ToolRefusal(
                f"You are not invited to meeting {meeting}. Call my_meetings to see yours."
            )
        await self.sdk.db.fetch_value(queries.ATTEND_MEETING, [me, str(meeting)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if status.host_external_id == me and status.status in ("created", "ready"):
            try:
                await meetings.wait_until_ready(meeting, timeout)
            except MeetingTimeoutError:
                waiting = [
                    p.agent_external_id
                    for p in (await meetings.get_meeting_status(meeting)).participants
                    if p.status == "invited"
                ]
                return _result(
                    f"Not everyone has joined yet (waiting for {', '.join(waiting)}). "
                    "Call join_meeting again to keep waiting.",
                    {
                        "status": "waiting_for_participants",
                        "meeting_id": str(meeting),
                        "not_joined": waiting,
                    },
                )
            topic = self._topics.get(str(meeting)) or f"{me} opens the meeting."
            with contextlib.suppress(InvalidMeetingStateError):  # started meanwhile
                await meetings.start_meeting(me, meeting, topic)
        try:
            signal = await meetings.wait_for_turn(me, meeting, max(0.0, deadline - loop.time()))
        except MeetingTimeoutError:
            return self._still_waiting(meeting)
        return self._turn(me, signal)

    async def _speak(
        self, me: str, meeting_id: str, content: Any, next_speaker: str | None, timeout: float
    ) -> CallToolResult:
        meeting = UUID(await self._meeting(meeting_id))
        try:
            signal = await self.sdk.meeting.speak(me, meeting, content, next_speaker, timeout)
        except NotCurrentSpeakerError as exc:
            status = await self.sdk.meeting.get_meeting_status(meeting)
            speaker = status.current_speaker_external_id
            raise ToolRefusal(
                f"It is not your turn to speak in meeting {meeting}"
                + (f" ({speaker} has the turn)" if speaker else "")
                + ". Nothing was said: call join_meeting to wait for your turn."
            ) from exc
        except MeetingTimeoutError:
            # the words were stored; only the wait for the next turn ran out
            return self._still_waiting(meeting, spoken=True)
        return self._turn(me, signal)

    def _still_waiting(self, meeting: UUID, spoken: bool = False) -> CallToolResult:
        said = "Your words were recorded. " if spoken else ""
        return _result(
            f"{said}It is not your turn yet in meeting {meeting}; call join_meeting to keep "
            "waiting.",
            {"status": "waiting", "meeting_id": str(meeting), "spoken": spoken},
        )

    def _turn(self, me: str, signal: TurnSignal[Any]) -> CallToolResult:
        said = [_said(m) for m in signal.messages]
        data = {
            "status": "ended" if signal.meeting_ended else "your_turn",
            "meeting_id": str(signal.meeting_id),
            "said_since_you_spoke": said,
        }
        if signal.meeting_ended:
            head = f"Meeting {signal.meeting_id} has ended. Said since you last spoke:"
        else:
            head = (
                f"It is your turn in meeting {signal.meeting_id}, {me}: call speak. "
                "Said since you last spoke:"
            )
        return _result(head + "\n" + _said_text(said), data)

    async def _transcript(self, me: str, meeting_id: str) -> dict[str, Any]:
        meeting = UUID(await self._meeting(meeting_id))
        status = await self.sdk.meeting.get_meeting_status(meeting)
        if not any(p.agent_external_id == me for p in status.participants):
            raise ToolRefusal(
                f"You are not a participant of meeting {meeting}. Call my_meetings to see yours."
            )
        history = await self.sdk.meeting.get_meeting_history(meeting)
        return {
            "meeting_id": str(meeting),
            "status": status.status,
            "host": status.host_external_id,
            "current_speaker": status.current_speaker_external_id,
            "messages": [_said(m) for m in history],
        }

    # -- resources -----------------------------------------------------------

    def _register_resources(self) -> None:
        mcp = self.mcp

        @mcp.resource(
            INBOX_URI,
            name="inbox",
            description=(
                "Your unread messages (async, notes, questions, invitations), without "
                "marking them read. Subscribe to be told when it changes."
            ),
            mime_type="application/json",
        )
        async def inbox() -> str:
            me = await self.me()
            seat = await self.seat(me)
            items = await seat.peek(None, 100)
            return json.dumps({"agent": me, "messages": items}, default=str)

        @mcp.resource(
            TRANSCRIPT_URI,
            name="meeting-transcript",
            description="A meeting's transcript. Subscribe to be told of each change.",
            mime_type="application/json",
        )
        async def transcript(meeting_id: str) -> str:
            me = await self.me()
            try:
                data = await self._transcript(me, meeting_id)
            except AgentMessagingError as exc:
                raise ValueError(_hint(exc)) from exc
            return json.dumps(data, default=str)

        lowlevel = mcp._mcp_server

        @lowlevel.subscribe_resource()  # type: ignore[no-untyped-call,untyped-decorator]
        async def subscribe(uri: AnyUrl) -> None:
            await self._subscribe(str(uri))

        @lowlevel.unsubscribe_resource()  # type: ignore[no-untyped-call,untyped-decorator]
        async def unsubscribe(uri: AnyUrl) -> None:
            session = lowlevel.request_context.session
            stop = self._subscriptions.pop((id(session), str(uri)), None)
            if stop is not None:
                await stop()

        # FastMCP announces resources without subscriptions; these ones have them
        plain = lowlevel.create_initialization_options

        def options(*args: Any, **kwargs: Any) -> Any:
            initialization = plain(*args, **kwargs)
            if initialization.capabilities.resources is not None:
                initialization.capabilities.resources.subscribe = True
            return initialization

        lowlevel.create_initialization_options = options  # type: ignore[method-assign]

    async def _subscribe(self, uri: str) -> None:
        """Send ``resources/updated`` for ``uri`` to this session whenever a
        notification on the agent's (inbox) or meeting's (transcript) channel says
        it changed: the same LISTEN the SDK's waits use."""
        lowlevel = self.mcp._mcp_server
        session = lowlevel.request_context.session
        me = await self.me()
        if uri == INBOX_URI:
            channel = await self.sdk.agent_channel(me)
        else:
            prefix, _, rest = uri.partition("amp://meetings/")
            meeting_id = rest.removesuffix("/transcript")
            if prefix or not rest.endswith("/transcript"):
                raise ValueError(f"no resource {uri}: subscribe to {INBOX_URI} or a transcript")
            await self._transcript(me, meeting_id)  # a participant's meeting, or refused
            channel = meeting_channel(UUID(meeting_id))
        key = (id(session), uri)
        if key in self._subscriptions:
            return
        target = AnyUrl(uri)

        async def send() -> None:
            try:
                await session.send_resource_updated(target)
            except Exception:  # the session is gone
                stop = self._subscriptions.pop(key, None)
                if stop is not None:
                    await stop()

        def hint(_: str, notification: AnyNotification) -> None:
            if uri == INBOX_URI and not isinstance(notification, MessageStored):
                return
            task = asyncio.get_running_loop().create_task(send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

        async def stop() -> None:
            await self.sdk.dispatcher.unsubscribe([channel], hint)

        await self.sdk.dispatcher.subscribe([channel], hint)
        self._subscriptions[key] = stop


# -- running -------------------------------------------------------------------


async def prepare_agent(
    sdk: AgentMessaging[Any], agent: str, organization: str | None, register: bool, name: str | None
) -> None:
    """Check that ``agent`` exists; with ``register``, create it (and its
    organization) first if missing."""
    if register:
        if organization is None:
            raise ToolRefusal("--register needs --org: the agent's organization")
        with contextlib.suppress(OrganizationAlreadyExistsError):
            await sdk.register_organization(organization)
        with contextlib.suppress(AgentAlreadyExistsError):
            await sdk.register_agent(agent, organization, name)
    try:
        await sdk.get_agent(agent)
    except AgentNotFoundError:
        raise ToolRefusal(
            f"agent {agent!r} is not registered: pass --org ORG --register to create it"
        ) from None


async def serve_stdio(sdk: AgentMessaging[Any], settings: McpSettings) -> None:
    """Serve one agent over stdin/stdout until the host closes the pipe."""
    assert settings.agent is not None
    server = AmpMcpServer(sdk, settings)
    await server.seat(settings.agent)
    try:
        await server.mcp.run_stdio_async()
    finally:
        with anyio.CancelScope(shield=True):
            await server.close()


async def serve_http(
    sdk: AgentMessaging[Any],
    settings: McpSettings,
    host: str,
    port: int,
    announce: Callable[[str], None],
) -> None:
    """Serve the streamable-HTTP transport on ``host:port`` (``0``: a free port);
    ``announce`` is told the URL once it listens."""
    import uvicorn

    server = AmpMcpServer(sdk, settings)
    server.mcp.settings.host = host
    app = server.mcp.streamable_http_app()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    http = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{bound}{server.mcp.settings.streamable_http_path}")
    try:
        await http.serve(sockets=[sock])
    finally:
        with anyio.CancelScope(shield=True):
            await server.close()
        sock.close()


async def run_server(
    config: Any,
    settings: McpSettings,
    *,
    organization: str | None = None,
    register: bool = False,
    name: str | None = None,
    http: bool = False,
    host: str = "127.0.0.1",
    port: int = 8765,
    announce: Callable[[str], None] = lambda _: None,
) -> None:
    """What ``amp mcp`` runs: open the SDK, then serve stdio or streamable HTTP."""
    async with AgentMessaging[Any](config) as sdk:
        if settings.agent is not None:
            await prepare_agent(sdk, settings.agent, organization, register, name)
        if http:
            await serve_http(sdk, settings, host, port, announce)
        else:
            if settings.agent is None:
                raise ToolRefusal("a stdio server acts as one agent: pass --agent NAME")
            await serve_stdio(sdk, settings)
