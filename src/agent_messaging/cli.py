"""The ``amp`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import typer
from rich.console import Console

from .config import Config
from .database import Database

app = typer.Typer(
    pretty_exceptions_enable=False,
    help="agent-messaging: the PostgreSQL-native protocol for talking agents.",
)
console = Console()

DatabaseUrl = typer.Option(
    None, "--database-url", envvar="AMP_DATABASE_URL", help="PostgreSQL URL (default: embedded)"
)


def _config(database_url: str | None) -> Config:
    if database_url:
        os.environ["AMP_DATABASE_URL"] = database_url
    return Config(database_url=database_url) if database_url else Config()


@app.command()
def migrate(database_url: str | None = DatabaseUrl) -> None:
    """Apply pending migrations (alembic upgrade head)."""
    from . import migrations
    from .database import resolve_dsn

    dsn = asyncio.run(resolve_dsn(_config(database_url)))
    migrations.upgrade(dsn)
    console.print(f"[green]amp schema at revision {migrations.script_head()}[/green]")


@app.command()
def demo(database_url: str | None = DatabaseUrl) -> None:
    """A live scenario: one-way, sync, async and a meeting across three processes."""
    from .demo import run_demo

    asyncio.run(run_demo(_config(database_url), console))


async def _open(config: Config) -> Database:
    from .database import resolve_dsn

    return Database.connect(await resolve_dsn(config), config.max_pool_size)


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
