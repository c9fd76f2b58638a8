"""The ``amp`` command line."""

from __future__ import annotations

import asyncio
import os

import typer
from rich.console import Console

from .config import Config

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
    """Register an organization and two agents, and show them."""
    from .demo import run_demo

    asyncio.run(run_demo(_config(database_url), console))


if __name__ == "__main__":  # pragma: no cover
    app()
