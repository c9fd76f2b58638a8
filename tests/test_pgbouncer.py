"""The SDK behind a real PgBouncer, its listener on a direct connection (AMP_LISTEN_URL).

PgBouncer in transaction mode hands each transaction to any server connection, so a
LISTEN cannot live there (hence ``listen_url``), and named prepared statements only
survive from one transaction to the next with PgBouncer >= 1.21 and
``max_prepared_statements`` (protocol-level prepared statements). psqlpy names every
statement it runs (tokio-postgres prepares ``s0``, ``s1``... even with
``prepared=False``), so older PgBouncers break it in transaction mode: shown below
with Debian 12's 1.18, while the SDK runs in transaction mode through 1.24 (built from
Debian 13's source by scripts/build-pgbouncer.sh, named by AMP_TEST_PGBOUNCER).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psqlpy
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from agent_messaging import AgentMessaging, MessageContext

from .helpers import make_config


def pgbouncer_binaries() -> list[str]:
    """Every pgbouncer at hand: AMP_TEST_PGBOUNCER (.ci/run builds 1.24 there), then
    the system's (Debian 12's is 1.18)."""
    found: list[str] = []
    for candidate in (
        os.environ.get("AMP_TEST_PGBOUNCER"),
        shutil.which("pgbouncer"),
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
    ):
        if candidate and os.path.exists(candidate):
            real = os.path.realpath(candidate)
            if real not in found:
                found.append(real)
    return found


def pgbouncer_binary(older_than: tuple[int, int] | None = None) -> str | None:
    """The newest pgbouncer at hand, or the newest one older than ``older_than``."""
    usable = [
        (pgbouncer_version(b), b)
        for b in pgbouncer_binaries()
        if older_than is None or pgbouncer_version(b) < older_than
    ]
    return max(usable)[1] if usable else None


def pgbouncer_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    assert found, out
    return int(found[1]), int(found[2])


PROTOCOL_PREPARED = (1, 21)  # first PgBouncer with max_prepared_statements


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bouncer:
    """A pgbouncer process in front of the test server, in one pool mode."""

    def __init__(self, binary: str, server_dsn: str, mode: str, pool_size: int) -> None:
        self.version = pgbouncer_version(binary)
        server = conninfo_to_dict(server_dsn)
        self.user = str(server.get("user") or "postgres")
        password = str(server.get("password") or "")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="amp-pgbouncer-"))
        (self.dir / "users.txt").write_text(f'"{self.user}" "{password}"\n')
        prepared = "max_prepared_statements = 200\n" if self.version >= PROTOCOL_PREPARED else ""
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.get('host') or '127.0.0.1'} port={server.get('port') or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"admin_users = {self.user}\n"
            f"pool_mode = {mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            f"{prepared}"
        )
        command = [binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no 'postgres' account for pgbouncer -u")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            for name in ("users.txt", "pgbouncer.ini"):
                os.chown(self.dir / name, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", "postgres"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        last: Exception | None = None
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=2):
                    return
            except psycopg.Error as exc:
                last = exc
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.1)  # not sleeping: returns early if it exits
        out = self.proc.stdout.read().decode() if self.proc.poll() is not None else ""
        log = self.dir / "pgbouncer.log"
        raise RuntimeError(
            f"pgbouncer did not start: {last} {out} {log.read_text() if log.exists() else ''}"
        )

    @property
    def admin_url(self) -> str:
        return f"{self.url}/pgbouncer"

    def database_url(self, database_dsn: str) -> str:
        return f"{self.url}/{conninfo_to_dict(database_dsn)['dbname']}"

    def server_pids(self) -> set[int]:
        """Backend pids of PgBouncer's server connections (SHOW SERVERS)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            cur = conn.execute("SHOW SERVERS")
            assert cur.description is not None
            column = [d.name for d in cur.description].index("remote_pid")
            return {int(row[column]) for row in cur.fetchall()}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_bouncer(
    server_dsn: str, mode: str, pool_size: int = 4, older_than: tuple[int, int] | None = None
) -> Bouncer:
    host = str(conninfo_to_dict(server_dsn).get("host") or "")
    if host.startswith("/"):
        pytest.skip(
            "the test server listens on a private unix socket (the embedded one); the "
            "PgBouncer tests run against a TCP server (the PostgreSQL service in .ci/run)"
        )
    binary = pgbouncer_binary(older_than)
    if binary is None:
        if older_than is not None:
            pytest.skip(f"no pgbouncer older than {older_than[0]}.{older_than[1]} at hand")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does it)")
    return Bouncer(binary, server_dsn, mode, pool_size)


@pytest.fixture
def transaction_bouncer(server_dsn: str) -> Iterator[Bouncer]:
    # two server connections for a pool of up to ten: transactions of different SDK
    # connections must take turns on them
    bouncer = start_bouncer(server_dsn, "transaction", pool_size=2)
    yield bouncer
    bouncer.stop()


@pytest.fixture
def session_bouncer(server_dsn: str) -> Iterator[Bouncer]:
    bouncer = start_bouncer(server_dsn, "session")
    yield bouncer
    bouncer.stop()


async def exercise(sdk: AgentMessaging[Any]) -> None:
    """One-way to a handler, a sync round trip, the inbox: every path the pool takes."""
    await sdk.register_organization("org1")
    for name in ("alice", "bob"):
        await sdk.register_agent(name, "org1", name)
    got: asyncio.Queue[Any] = asyncio.Queue()

    @sdk.register_handler("bob")
    async def bob(message: Any, context: MessageContext) -> Any:
        if context.requires_reply:
            return {"answer": message["q"] * 2}
        await got.put(message)
        return None

    await sdk.serve_handlers()
    for i in range(20):
        await sdk.one_way.send("alice", "bob", {"i": i})
    received = [await asyncio.wait_for(got.get(), 30) for _ in range(20)]
    assert sorted(m["i"] for m in received) == list(range(20))
    for q in range(5):
        answer = await sdk.sync_conversation.send_and_wait("alice", "bob", {"q": q}, timeout=30)
        assert answer == {"answer": q * 2}
    await sdk.async_conversation.send("bob", "alice", {"note": "done"})
    assert await sdk.async_conversation.get_unread_messages("alice") == [{"note": "done"}]


async def assert_listener_direct(sdk: AgentMessaging[Any], bouncer: Bouncer) -> None:
    listener_pid = await sdk.dispatcher.backend_pid()
    pool_pid = int(await sdk.db.fetch_value("SELECT pg_backend_pid() AS pid"))
    servers = bouncer.server_pids()
    assert listener_pid is not None and listener_pid not in servers
    assert pool_pid in servers


async def test_sdk_through_pgbouncer_transaction_mode(
    dsn: str, transaction_bouncer: Bouncer
) -> None:
    if transaction_bouncer.version < PROTOCOL_PREPARED:
        major, minor = transaction_bouncer.version
        pytest.skip(
            f"PgBouncer {major}.{minor} < 1.21 has no protocol-level prepared statements "
            "(max_prepared_statements): psqlpy cannot run through it in transaction mode "
            "(test_old_pgbouncer_transaction_mode_breaks_psqlpy shows how it fails); "
            "see test_sdk_through_pgbouncer_session_mode"
        )
    config = make_config(transaction_bouncer.database_url(dsn), listen_url=dsn)
    async with AgentMessaging[Any](config) as sdk:
        await exercise(sdk)
        # many statements at once, with the handler's claims and acks: they share the
        # bouncer's two server connections, one transaction at a time
        sent = await asyncio.gather(
            *(sdk.one_way.send("alice", "bob", {"burst": i}) for i in range(30))
        )
        assert len(set(sent)) == 30
        servers = transaction_bouncer.server_pids()
        assert 0 < len(servers) <= 2
        listener_pid = await sdk.dispatcher.backend_pid()
        assert listener_pid is not None
        assert listener_pid not in servers


async def test_old_pgbouncer_transaction_mode_breaks_psqlpy(dsn: str, server_dsn: str) -> None:
    """What breaks without protocol-level prepared statements: a statement prepared
    in one transaction is executed in the next on another server connection."""
    bouncer = start_bouncer(server_dsn, "transaction", pool_size=3, older_than=PROTOCOL_PREPARED)
    try:
        pool = psqlpy.ConnectionPool(dsn=bouncer.database_url(dsn), max_db_pool_size=6)

        async def query(i: int) -> None:
            conn = await pool.connection()
            await conn.execute("SELECT $1::int AS i", [i])

        results: list[Any] = []
        for _ in range(10):  # stops at the first round that fails
            results = await asyncio.wait_for(
                asyncio.gather(*(query(i) for i in range(6)), return_exceptions=True), 60
            )
            if any(isinstance(r, BaseException) for r in results):
                break
        pool.close()
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        assert any(
            re.search(r'prepared statement "s\d+" (already exists|does not exist)', e)
            for e in errors
        ), results
    finally:
        bouncer.stop()


async def test_sdk_through_pgbouncer_session_mode(dsn: str, session_bouncer: Bouncer) -> None:
    """The pool through PgBouncer, the listener direct (``listen_url``)."""
    config = make_config(session_bouncer.database_url(dsn), listen_url=dsn)
    async with AgentMessaging[Any](config) as sdk:
        await exercise(sdk)  # serves a handler: the (lazy) listener is up from then on
        await assert_listener_direct(sdk, session_bouncer)


async def test_listen_url_defaults_to_the_main_url(dsn: str) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        assert sdk.config.listen_url is None and sdk.db.listen_dsn == sdk.db.dsn
        await sdk.dispatcher.start()  # listen now (it is lazy otherwise)
        assert await sdk.dispatcher.backend_pid() is not None
