"""The thin connector: a psqlpy pool, named ``amp.*`` calls, errors translated.

Every query binds its parameters. Every call of an ``amp.*`` function is one
statement and therefore one transaction (psqlpy connections autocommit).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from typing import Any

import psqlpy

from .config import Config
from .exceptions import from_database_error

Row = dict[str, Any]
_SETTLE_SECONDS = 0.05


class Database:
    """A psqlpy pool plus the helpers every module uses to call ``amp.*``.

    ``listen_pool``, when given, is where LISTEN connections come from (a direct
    server URL while ``pool`` goes through PgBouncer in transaction mode, which
    cannot keep a LISTEN); otherwise they come from ``pool``.
    """

    def __init__(
        self,
        pool: psqlpy.ConnectionPool,
        dsn: str,
        listen_pool: psqlpy.ConnectionPool | None = None,
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.listen_pool = listen_pool

    @classmethod
    def connect(cls, dsn: str, max_pool_size: int, listen_dsn: str | None = None) -> Database:
        """Create the pool (connections are opened lazily), and a separate small one
        for listeners when ``listen_dsn`` names another URL."""
        listen_pool = None
        if listen_dsn and listen_dsn != dsn:
            listen_pool = psqlpy.ConnectionPool(dsn=listen_dsn, max_db_pool_size=2)
        pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=max_pool_size)
        return cls(pool, dsn, listen_pool)

    def listener(self) -> psqlpy.Listener:
        """A new (not yet started) LISTEN connection, from the listen pool if any."""
        return (self.listen_pool or self.pool).listener()

    async def execute(self, query: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement with bound parameters, ignoring its result (``void``)."""
        try:
            conn = await self.pool.connection()
            await conn.execute(query, list(params) if params is not None else None)
        except psqlpy.Error as exc:
            raise from_database_error(exc) from exc

    async def fetch(self, query: str, params: Sequence[Any] | None = None) -> list[Row]:
        """Run one statement with bound parameters; return its rows as dicts."""
        try:
            conn = await self.pool.connection()
            result = await conn.execute(query, list(params) if params is not None else None)
        except psqlpy.Error as exc:
            raise from_database_error(exc) from exc
        rows: list[Row] = result.result()
        return rows

    async def fetch_one(self, query: str, params: Sequence[Any] | None = None) -> Row:
        """Like :meth:`fetch` for a statement that yields exactly one row."""
        rows = await self.fetch(query, params)
        if len(rows) != 1:
            raise RuntimeError(f"expected one row, got {len(rows)}")
        return rows[0]

    async def fetch_value(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """The single column of the single row a statement yields."""
        row = await self.fetch_one(query, params)
        return next(iter(row.values()))

    async def close(self) -> None:
        """Close the pool (and the listen pool)."""
        self.pool.close()
        if self.listen_pool is not None:
            self.listen_pool.close()
        gc.collect()  # drop unreachable psqlpy objects now, not during finalization
        # psqlpy drops its connections on its own (tokio) threads, which take the
        # GIL to do so; if the interpreter finalizes meanwhile the process aborts
        # ("PyGILState_Release: thread state must be current"), in about one exit
        # in five here. A moment for them to finish makes that go away.
        await asyncio.sleep(_SETTLE_SECONDS)


async def resolve_dsn(config: Config) -> str:
    """The server to use: the configured one, else the embedded one (started here)."""
    dsn = config.explicit_dsn()
    if dsn is not None:
        return dsn
    from . import embedded

    admin_dsn = await asyncio.to_thread(embedded.server_dsn, config.embedded_data_dir)
    await create_database_if_missing(admin_dsn, config.embedded_database)
    return await asyncio.to_thread(
        embedded.server_dsn, config.embedded_data_dir, config.embedded_database
    )


async def create_database_if_missing(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE ``name`` unless it exists; safe when processes race."""
    pool = psqlpy.ConnectionPool(dsn=admin_dsn, max_db_pool_size=2)
    try:
        conn = await pool.connection()
        rows = (await conn.execute("SELECT 1 FROM pg_database WHERE datname = $1", [name])).result()
        if not rows:
            # CREATE DATABASE takes an identifier; format('%I') quotes it server-side.
            stmt = (
                await conn.execute("SELECT format('CREATE DATABASE %I', $1::text) AS s", [name])
            ).result()[0]["s"]
            try:
                await conn.execute(stmt)
            except psqlpy.Error as exc:
                if "already exists" not in str(exc):
                    raise
    finally:
        pool.close()
        await asyncio.sleep(_SETTLE_SECONDS)
