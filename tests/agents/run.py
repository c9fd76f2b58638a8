"""An agent in its own OS process, for cross-process tests.

    python -m tests.agents.run DSN COMMAND [options]

Commands print JSON lines on stdout ({"event": ...}) that the tests read:
  handle AGENT   serve AGENT's handler; prints "ready" (with how it listens: "role"), then
                 "started"/"handled" per message
  send   SENDER RECIPIENT N   one-way (or --kind async) messages {"n": i}
                              (--stay: then stay connected until killed)
  wait   RECIPIENT SENDER     wait_for_message; prints "waiting", then "got" or "timeout"
  read   AGENT                on NOTIFY amp_test_go, take unread messages one by one until none
  reply  SENDER RECIPIENT TEXT  on NOTIFY amp_test_go, reply; prints "replied" or "refused"
  (handle --reply answers sync requests with {"answer": <request>}; --block-loop-on N blocks
   the whole event loop, not just the handler, at message {"n": N}, until killed)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from typing import Any

from agent_messaging import AgentMessaging, Config, MessageContext


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


def config(args: argparse.Namespace) -> Config:
    return Config(
        database_url=args.dsn,
        delivery_lease=args.lease,
        delivery_max_attempts=args.max_attempts,
        delivery_backoff_base=0.05,
        handler_concurrency=args.concurrency,
        poll_interval=args.poll,
        listener_check_interval=1.0,
        pool_idle_timeout=args.idle_timeout,
    )


async def handle(args: argparse.Namespace) -> None:
    failures: dict[str, int] = {}
    block = asyncio.Event()  # never set: a handler told to block waits until killed

    async with AgentMessaging[Any](config(args)) as sdk:

        @sdk.register_handler(args.agent)
        async def handler(message: Any, context: MessageContext) -> Any:
            key = str(context.message_id)
            emit("started", id=key, content=message, attempt=context.attempt)
            if args.block_on is not None and message == {"n": args.block_on}:
                await block.wait()
            if args.block_loop_on is not None and message == {"n": args.block_loop_on}:
                threading.Event().wait()  # a blocking call: nothing else of the loop runs
            if failures.get(key, 0) < args.fail_first or args.always_fail:
                failures[key] = failures.get(key, 0) + 1
                raise RuntimeError(f"planned failure {failures[key]}")
            emit("handled", id=key, content=message, context=context.model_dump(mode="json"))
            if context.requires_reply and args.reply:
                return {"answer": message}
            return None

        await sdk.serve_handlers()
        emit("ready", role=sdk.dispatcher.listener_role)
        await asyncio.Event().wait()  # serve until killed


async def send(args: argparse.Namespace) -> None:
    async with AgentMessaging[Any](config(args)) as sdk:
        for i in range(args.count):
            if args.kind == "async":
                await sdk.async_conversation.send(args.sender, args.recipient, {"n": i})
            else:
                await sdk.one_way.send(args.sender, args.recipient, {"n": i})
        emit("sent", count=args.count)
        if args.stay:
            await asyncio.Event().wait()  # stay, connected, until killed


async def wait(args: argparse.Namespace) -> None:
    async with AgentMessaging[Any](config(args)) as sdk:
        emit("waiting")
        message = await sdk.async_conversation.wait_for_message(
            args.recipient, args.sender, args.timeout
        )
        emit("timeout" if message is None else "got", content=message)


async def read(args: argparse.Namespace) -> None:
    """Wait for a NOTIFY on amp_test_go, then take messages one at a time until the
    inbox is empty, so that two such readers contend for the same rows."""
    async with AgentMessaging[Any](config(args)) as sdk:
        go = asyncio.Event()
        await sdk.dispatcher.subscribe(["amp_test_go"], lambda _c, _n: go.set())
        emit("ready")
        await go.wait()
        got: list[Any] = []
        while batch := await sdk.async_conversation.get_unread_messages(args.agent, limit=1):
            got += batch
        emit("read", contents=got)


async def reply(args: argparse.Namespace) -> None:
    """On NOTIFY amp_test_go, reply to the agent waiting on us; say if it was taken."""
    from agent_messaging import InvalidSessionStateError

    async with AgentMessaging[Any](config(args)) as sdk:
        go = asyncio.Event()
        await sdk.dispatcher.subscribe(["amp_test_go"], lambda _c, _n: go.set())
        emit("ready")
        await go.wait()
        try:
            await sdk.sync_conversation.reply(args.sender, args.recipient, args.text)
            emit("replied")
        except InvalidSessionStateError as exc:
            emit("refused", error=str(exc))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("handle")
    p.add_argument("agent")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--always-fail", action="store_true")
    p.add_argument("--block-on", type=int, default=None)
    p.add_argument("--block-loop-on", type=int, default=None)
    p.add_argument("--reply", action="store_true")
    p = sub.add_parser("send")
    p.add_argument("sender")
    p.add_argument("recipient")
    p.add_argument("count", type=int)
    p.add_argument("--kind", choices=["one_way", "async"], default="one_way")
    p.add_argument("--stay", action="store_true")
    p = sub.add_parser("wait")
    p.add_argument("recipient")
    p.add_argument("sender")
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("read")
    p.add_argument("agent")
    p = sub.add_parser("reply")
    p.add_argument("sender")
    p.add_argument("recipient")
    p.add_argument("text")
    args = parser.parse_args()
    commands = {"handle": handle, "send": send, "wait": wait, "read": read, "reply": reply}
    command = commands[args.command]
    try:
        asyncio.run(command(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
