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
