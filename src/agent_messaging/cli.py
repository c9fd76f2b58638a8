"""The ``amp`` command line.

A failure is reported in one or two lines on stderr (what is wrong, what to do) with
exit code 1; ``amp --debug ...`` (or ``AMP_DEBUG=1``) shows the traceback too.
Passwords are never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import traceback
from typing import Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from . import queries
from .config import Config
from .database import Database
from .exceptions import AgentMessagingError


class _App(typer.Typer):
    """Typer, with every failure turned into a short message (see :func:`explain`)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if _debug():
                traceback.print_exc()
            what, todo = explain(exc, _state.get("database_url"))
            print(f"amp: {what}", file=sys.stderr)
            if todo:
                print(f"  {todo}", file=sys.stderr)
            sys.exit(1)


app = _App(
    pretty_exceptions_enable=False,
    help="agent-messaging: the PostgreSQL-native protocol for talking agents.",
)
console = Console()
_state: dict[str, Any] = {}


class NotMigrated(Exception):
    """The database has no amp schema."""


async def _probe(dsn: str, *, migrated: bool) -> None:
    """Connect once and, if ``migrated``, check the amp schema is there: a failure
    surfaces here, before anything starts (listeners, child processes)."""
    db = Database.connect(dsn, 2)
    try:
        found = await db.fetch_value(queries.SCHEMA_PRESENT)
        if migrated and not found:
            raise NotMigrated("the amp schema is not there")
    finally:
        await db.close()


def _debug() -> bool:
    return bool(_state.get("debug")) or os.environ.get("AMP_DEBUG", "") not in ("", "0")


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="show the traceback of a failure"),
) -> None:
    """agent-messaging: the PostgreSQL-native protocol for talking agents."""
    _state["debug"] = debug


def redact(text: str) -> str:
    """``text`` with every password of a URL or key/value DSN replaced by ``***``."""
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)


def _where(url: str | None) -> tuple[str, str, str]:
    """(host:port, database, user) of a URL, as far as it can be parsed."""
    if not url:
        return "the embedded server", "", ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        return f"{host}:{port}", parts.path.lstrip("/"), parts.username or ""
    except ValueError:
        return "the server", "", ""


def explain(exc: BaseException, url: str | None) -> tuple[str, str]:
    """What went wrong (one line) and what to do about it (one line, may be empty).

    Looks at the exception and its causes; never shows a password.
    """
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    low = text.lower()
    server, database, user = _where(url)
    check_url = "check --database-url (or AMP_DATABASE_URL)"
    first = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    if isinstance(exc, NotMigrated) or (
        re.search(r'(relation|schema|function) "?amp[."]', low) and "does not exist" in low
    ):
        return (
            f"the database {database or ''} has no amp schema: it was never migrated".replace(
                "database  has", "database has"
            ),
            "run 'amp migrate' with the same --database-url, then try again",
        )
    if "database" in low and "does not exist" in low:
        name = re.search(r'database "([^"]*)" does not exist', text)
        return (
            f"database {name.group(1) if name else database!r} does not exist on {server}"
            if name
            else f"the database does not exist on {server}",
            f"create it (createdb), or {check_url}",
        )
    if "password authentication failed" in low or "no password supplied" in low:
        return (
            f"{server} refused the password of user {user or '?'}",
            f"check the user and password in the URL; {check_url}",
        )
    if "no pg_hba.conf entry" in low:
        return (
            f"{server} does not accept connections for user {user or '?'} from this host",
            "ask the server's administrator (pg_hba.conf), or " + check_url,
        )
    if (
        "lookup address" in low
        or "could not translate host name" in low
        or ("name or service not known" in low)
    ):
        return (f"cannot resolve the host of {server}", f"{check_url}: is the host name right?")
    if "connection refused" in low:
        return (
            f"cannot connect to {server}: connection refused",
            f"is PostgreSQL running there? {check_url}",
        )
    if (
        "invalid connection string" in low
        or "cannot parse configuration from dsn" in low
        or "invalid dsn" in low
        or 'missing "="' in low
    ):
        detail = re.search(r"invalid connection string: ([^|]*)", text)
        reason = detail.group(1).strip().rstrip(".") if detail else first
        return (
            f"the database URL is malformed: {redact(reason)}",
            "expected postgresql://user:password@host:port/database; " + check_url,
        )
    if "timeout" in low or "timed out" in low:
        return (f"{server} did not answer in time", f"is the server up and reachable? {check_url}")
    if isinstance(exc, AgentMessagingError):
        return (first, "")
    return (f"{type(exc).__name__}: {first}", "run 'amp --debug ...' to see the traceback")


DatabaseUrl = typer.Option(
    None, "--database-url", envvar="AMP_DATABASE_URL", help="PostgreSQL URL (default: embedded)"
)


def _config(database_url: str | None) -> Config:
    _state["database_url"] = database_url
    if database_url:
        os.environ["AMP_DATABASE_URL"] = database_url
    return Config(database_url=database_url) if database_url else Config()


@app.command()
def migrate(
    database_url: str | None = DatabaseUrl,
    drop_prerelease: bool = typer.Option(
        False,
        "--drop-prerelease",
        help="recreate a schema built before the first release (drops its data)",
    ),
) -> None:
    """Apply pending migrations; print the revision before and after."""
    from . import migrations
    from .database import resolve_dsn
    from .exceptions import SchemaError

    dsn = asyncio.run(resolve_dsn(_config(database_url)))
    asyncio.run(_probe(dsn, migrated=False))
    try:
        result = migrations.upgrade(dsn, drop_prerelease=drop_prerelease)
    except SchemaError as exc:
        Console(stderr=True).print(
            f"amp migrate: {exc}", style="red", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    console.print(
        result.describe(),
        style="yellow" if result.newer is not None else "green",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def demo(database_url: str | None = DatabaseUrl) -> None:
    """A live scenario: one-way, sync, async and a meeting across three processes."""
    from .database import resolve_dsn
    from .demo import run_demo

    config = _config(database_url)
    asyncio.run(_probe(asyncio.run(resolve_dsn(config)), migrated=False))
    asyncio.run(run_demo(config, console))


async def _open(config: Config) -> Database:
    from .database import resolve_dsn

    dsn = await resolve_dsn(config)
    await _probe(dsn, migrated=True)
    return Database.connect(dsn, config.max_pool_size, config)


@app.command()
def status(
    database_url: str | None = DatabaseUrl,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Live conversations, meetings, inboxes, online workers, failed deliveries."""
    from . import status as inspection

    async def run() -> None:
        db = await _open(_config(database_url))
        try:
            found = await inspection.collect(db)
        finally:
            await db.close()
        if as_json:
            print(inspection.to_json(found))
        else:
            inspection.render(found, console)

    asyncio.run(run())


@app.command()
def watch(
    database_url: str | None = DatabaseUrl,
    seconds: float | None = typer.Option(None, help="stop after this many seconds"),
) -> None:
    """Stream messages and meeting events as they happen (LISTEN)."""
    from .dispatcher import Dispatcher
    from .status import Watcher

    async def run() -> None:
        db = await _open(_config(database_url))
        dispatcher = Dispatcher(db)
        await dispatcher.start()
        try:
            await Watcher(db, dispatcher, lambda line: print(line, flush=True)).run(seconds)
        finally:
            await dispatcher.close()
            await db.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@app.command()
def mcp(
    agent: str | None = typer.Option(
        None, "--agent", help="the agent this server acts as (required for stdio)"
    ),
    org: str | None = typer.Option(None, "--org", help="the agent's organization (--register)"),
    name: str | None = typer.Option(None, "--name", help="the agent's display name (--register)"),
    register: bool = typer.Option(
        False, "--register", help="register the organization and agent if missing"
    ),
    http: bool = typer.Option(
        False, "--http", help="serve streamable HTTP (many agents) instead of stdio"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="HTTP: the address to listen on"),
    port: int = typer.Option(8765, "--port", help="HTTP: the port (0: any free port)"),
    allow_agent: list[str] | None = typer.Option(  # noqa: B008
        None, "--allow-agent", help="HTTP: an agent sessions may act as (repeat; default: any)"
    ),
    default_wait: float = typer.Option(60.0, help="seconds a blocking tool waits by default"),
    max_wait: float = typer.Option(300.0, help="no tool blocks longer than this (seconds)"),
    progress_interval: float = typer.Option(5.0, help="seconds between progress notifications"),
    database_url: str | None = DatabaseUrl,
) -> None:
    """An MCP server: LLM agents use the protocol as tools (stdio, or streamable HTTP)."""
    import sys

    try:
        from . import mcp_server
    except ImportError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    settings = mcp_server.McpSettings(
        agent=agent,
        allowed_agents=frozenset(allow_agent) if allow_agent else None,
        default_wait=default_wait,
        max_wait=max_wait,
        progress_interval=progress_interval,
    )

    def announce(url: str) -> None:
        print(f"amp mcp: streamable HTTP on {url}", file=sys.stderr, flush=True)

    import anyio

    try:
        anyio.run(
            lambda: mcp_server.run_server(
                _config(database_url),
                settings,
                organization=org,
                register=register,
                name=name,
                http=http,
                host=host,
                port=port,
                announce=announce,
            )
        )
    except mcp_server.ToolRefusal as exc:
        print(f"amp mcp: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


roles_app = typer.Typer(
    help="Identity = a PostgreSQL role: create the roles, bind organizations, grant logins."
)
app.add_typer(roles_app, name="roles")


def _roles_run(database_url: str | None, work: Any) -> Any:
    async def run() -> Any:
        db = await _open(_config(database_url))
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


@roles_app.command("create")
def roles_create(database_url: str | None = DatabaseUrl) -> None:
    """Create amp_owner, amp_user and amp_admin where missing (as a superuser or CREATEROLE)."""
    from . import roles

    _roles_run(database_url, roles.create_roles)
    console.print("[green]roles amp_owner, amp_user, amp_admin are there[/green]")


@roles_app.command("bind")
def roles_bind(
    target: str = typer.Argument(..., help="organization external id (an agent's with --agent)"),
    role: str = typer.Argument(..., help="the PostgreSQL role its processes act through"),
    agent: bool = typer.Option(False, "--agent", help="bind one agent, not an organization"),
    create: bool = typer.Option(
        False, "--create", help="create the role (NOLOGIN, granted amp_user) if missing"
    ),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Bind an organization (or one agent) to a role: only its members act as its agents."""
    from . import roles

    _roles_run(database_url, lambda db: roles.bind(db, target, role, agent=agent, create=create))
    console.print(f"[green]{'agent' if agent else 'organization'} {target} bound to {role}[/green]")


@roles_app.command("grant")
def roles_grant(
    login: str = typer.Argument(..., help="the login role a process connects as"),
    role: str = typer.Argument(..., help="the organization's (or agent's) role"),
    create: bool = typer.Option(False, "--create", help="create the login role if missing"),
    password_env: str | None = typer.Option(
        None, "--password-env", help="with --create: take its password from this variable"
    ),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Grant an organization's role to a login role."""
    from . import roles

    password = os.environ.get(password_env) if password_env else None
    _roles_run(
        database_url,
        lambda db: roles.grant(db, login, role, create=create, password=password),
    )
    console.print(f"[green]{login} may now act as {role}[/green]")


@roles_app.command("allow")
def roles_allow(
    first: str = typer.Argument(..., help="organization whose agents may start contact"),
    second: str = typer.Argument(..., help="organization they may contact"),
    one_way: bool = typer.Option(False, "--one-way", help="only from FIRST to SECOND"),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Let agents of two bound organizations contact each other (amp.allow_contact)."""
    from . import roles

    _roles_run(database_url, lambda db: roles.allow(db, first, second, both_ways=not one_way))
    console.print(f"[green]{first} {'->' if one_way else '<->'} {second} allowed[/green]")


@roles_app.command("revoke")
def roles_revoke(
    first: str = typer.Argument(...),
    second: str = typer.Argument(...),
    one_way: bool = typer.Option(False, "--one-way", help="only from FIRST to SECOND"),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Close contact between two organizations (amp.revoke_contact)."""
    from . import roles

    _roles_run(database_url, lambda db: roles.revoke(db, first, second, both_ways=not one_way))
    console.print(f"[green]{first} {'->' if one_way else '<->'} {second} revoked[/green]")


@roles_app.command("show")
def roles_show(
    database_url: str | None = DatabaseUrl,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Who may act as whom: each agent you may see, its binding and its login roles."""
    from . import roles
    from . import status as inspection

    found = _roles_run(database_url, roles.show)
    if as_json:
        print(inspection.to_json(found))
    else:
        inspection.render(found, console)


@app.command()
def prune(
    database_url: str | None = DatabaseUrl,
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="horizon such as 30d, 12h, 2w (default: AMP_RETENTION, else the database's "
        "amp.retention setting, else 30 days)",
    ),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="rows per transaction"),
) -> None:
    """Remove ended meetings and conversations and settled messages older than the horizon."""
    from . import retention

    config = _config(database_url)
    text = older_than if older_than is not None else config.retention
    try:
        horizon = retention.parse_duration(text) if text is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--older-than") from exc

    async def run() -> retention.PruneResult:
        db = await _open(config)
        try:
            return await retention.prune(db, horizon, batch_size)
        finally:
            await db.close()

    done = asyncio.run(run())
    console.print(
        f"pruned {done.messages} messages, {done.meetings} meetings, {done.sessions} "
        f"conversations older than {done.horizon.isoformat()} in {done.batches} batches"
    )


def _bench_main() -> Any:
    """``bench.__main__.main`` from the repository (``bench/`` is not in the wheel)."""
    import importlib
    import sys
    from pathlib import Path

    try:
        return importlib.import_module("bench.__main__").main
    except ImportError:
        pass
    repo = Path(__file__).resolve().parents[2]  # an editable install: src/agent_messaging
    if (repo / "bench" / "__main__.py").is_file() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
        with contextlib.suppress(ImportError):
            return importlib.import_module("bench.__main__").main
    return None


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="small N, a few seconds"),
    out: str | None = typer.Option(None, "--out", help="JSON results file"),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Run the benchmark harness (SDK vs raw psqlpy); the same as ``python -m bench``."""
    import sys

    main = _bench_main()
    if main is None:
        console.print(
            "[red]the benchmark harness (the bench/ package) is not importable: it ships "
            "with the repository, not the wheel. Clone the repository and run "
            "'amp bench' (or 'python -m bench') from an editable install there.[/red]"
        )
        raise typer.Exit(1)
    argv = ["python -m bench"]
    if quick:
        argv.append("--quick")
    if out:
        argv += ["--out", out]
    if database_url:
        argv += ["--database-url", database_url]
    saved = sys.argv
    sys.argv = argv
    try:
        main()
    finally:
        sys.argv = saved


if __name__ == "__main__":  # pragma: no cover
    app()
