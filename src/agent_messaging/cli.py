"""The ``amp`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import os

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


if __name__ == "__main__":  # pragma: no cover
    app()
