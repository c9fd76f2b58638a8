"""Configuration: a pydantic model whose unset fields are read from the environment.

Which server, in order of precedence (:meth:`Config.explicit_dsn`):

1. ``Config(database_url=...)`` given explicitly;
2. any ``postgres_*`` argument given explicitly (``Config(postgres_db="x")``): that
   server, the other ``postgres_*`` fields from ``POSTGRES_*`` or their defaults
   (host ``localhost``, port 5432, user ``postgres``, database ``agent_messaging``);
3. ``AMP_DATABASE_URL`` in the environment;
4. any ``POSTGRES_*`` variable in the environment (the planning's variables);
5. none of these: an embedded PostgreSQL in ``AMP_EMBEDDED_DATA_DIR`` (see
   :mod:`agent_messaging.embedded`).

Explicit arguments always win over the environment, for every field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, field_validator


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent-messaging" / "pgdata"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def _environment(model: type[BaseModel]) -> dict[str, str]:
    """The fields the environment sets, as strings for pydantic to convert: a field
    with aliases (``POSTGRES_HOST``) from those, any other from ``AMP_<FIELD>``; names
    match whatever their case. (A few lines instead of pydantic-settings, whose import
    alone took 6.7 MiB of every process's memory.)"""
    environ = {key.lower(): value for key, value in os.environ.items()}
    found: dict[str, str] = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        names = (
            [str(choice).lower() for choice in alias.choices]
            if isinstance(alias, AliasChoices)
            else [f"amp_{name}"]
        )
        for env_name in names:
            if env_name in environ:
                found[name] = environ[env_name]
                break
    return found


class Config(BaseModel):
    """Settings of one SDK process. Every field can be set by an ``AMP_*`` variable."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, validate_default=True)

    database_url: str | None = Field(
        default=None, description="libpq URL of the server; unset: POSTGRES_* or embedded"
    )
    postgres_host: str = Field(default="localhost", validation_alias=_env("POSTGRES_HOST"))
    postgres_port: int = Field(default=5432, validation_alias=_env("POSTGRES_PORT"))
    postgres_user: str = Field(default="postgres", validation_alias=_env("POSTGRES_USER"))
    postgres_password: str = Field(default="", validation_alias=_env("POSTGRES_PASSWORD"))
    postgres_db: str = Field(default="agent_messaging", validation_alias=_env("POSTGRES_DB"))

    listen_url: str | None = Field(
        default=None,
        description="libpq URL of the LISTEN connection; unset: the main URL (set it to "
        "a direct server URL when the main one goes through PgBouncer in transaction mode)",
    )

    embedded_data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="data directory of the embedded server, reused across runs",
    )
    embedded_database: str = "amp"

    max_pool_size: int = Field(default=10, ge=2, description="connections in the psqlpy pool")
    connect_timeout: float = Field(
        default=10.0, gt=0, description="seconds to open a connection (TCP, TLS and login)"
    )
    statement_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds one database call may take (server statement_timeout and the "
        "client's deadline, after which the statement is cancelled)",
    )
    lock_timeout: float = Field(
        default=10.0, gt=0, description="seconds a statement may wait for a row or advisory lock"
    )
    pool_timeout: float = Field(
        default=10.0, gt=0, description="seconds a call waits for a free pool connection"
    )
    min_pool_size: int = Field(default=1, ge=0, description="pool connections kept open while idle")
    pool_idle_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds an idle pool connection beyond min_pool_size (and the "
        "control connection used for cancels) stays open",
    )
    application_name: str | None = Field(
        default=None,
        description="application_name of the pool's connections (unset: the URL's "
        "application_name, else 'amp'); the listener's is '<name>-listener', the "
        "control connection's '<name>-control'",
    )
    apply_migrations: bool = Field(
        default=True, description="apply pending migrations in initialize()"
    )

    default_conversation_timeout: float = Field(default=300.0, gt=0)
    default_meeting_timeout: float = Field(default=600.0, gt=0)
    default_turn_duration: float | None = Field(
        default=60.0,
        description="seconds a meeting turn lasts when create_meeting is not given one; "
        "None: turns never expire",
    )
    enable_turn_timeout: bool = Field(
        default=True,
        description="false: meetings created without an explicit turn_duration have none, "
        "and this process never expires turns (no sweeper, waiters do not expire)",
    )
    auto_invoke_handlers: bool = Field(
        default=True,
        description="registering a handler (inside 'async with' or before initialize) "
        "serves it at once; false: handlers run only after serve_handlers()",
    )
    shutdown_timeout: float = Field(
        default=10.0,
        ge=0,
        description="close() first delivers what is claimable for this process's handlers "
        "and lets running handlers finish, for at most this many seconds",
    )
    start_meeting_wait: float = Field(
        default=30.0,
        ge=0,
        description="start_meeting on a meeting not yet ready waits this long for the "
        "invitees to attend before raising InvalidMeetingStateError",
    )
    max_message_bytes: int = Field(
        default=1_048_576, ge=1, description="largest serialised message content accepted"
    )

    delivery_max_attempts: int = Field(default=5, ge=1)
    delivery_backoff_base: float = Field(default=0.5, ge=0, description="first retry delay, s")
    delivery_backoff_max: float = Field(default=30.0, ge=0)
    delivery_lease: float = Field(
        default=30.0,
        gt=0,
        description="seconds a claim is held; a running handler's lease is extended every "
        "third of this while its process is alive",
    )
    handler_concurrency: int = Field(
        default=16, ge=1, description="handlers of this process running at once"
    )
    coalesce_sends: bool = Field(
        default=True,
        description="one_way.send calls of this process made while another is in flight "
        "(no idempotency key, outside a transaction) are stored together when it returns, "
        "in one transaction (amp.send_one_way_many): one commit and one hint per recipient "
        "for the lot, each caller still getting its own id or error; false "
        "(AMP_COALESCE_SENDS=0): one transaction per send",
    )
    delivery_prefetch: int = Field(
        default=16,
        ge=0,
        description="pushed messages claimed ahead of a free handler slot: they wait in "
        "this process, leased (and their leases extended), so the next claim overlaps "
        "with running handlers",
    )

    retention: str | None = Field(
        default=None,
        description="default horizon of 'amp prune' and AgentMessaging.prune, e.g. '30d'; "
        "unset: the database's amp.retention setting, else 30 days",
    )

    poll_interval: float = Field(
        default=5.0, gt=0, description="fallback poll when no notification comes"
    )
    heartbeat_interval: float = Field(default=10.0, gt=0)
    listener_check_interval: float = Field(
        default=5.0, gt=0, description="how often the listener proves it is alive"
    )
    share_listener: bool = Field(
        default=True,
        description="SDK processes of one user on one machine share one LISTEN "
        "connection per server URL: the first that needs to listen runs the host's hub "
        "(on a thread of its own), every process subscribes to it over a Unix socket, "
        "and another takes over when it exits. Costs a Unix-socket hop per "
        "notification; false (AMP_SHARE_LISTENER=0): a LISTEN connection per process",
    )
    listener_socket_dir: Path | None = Field(
        default=None,
        description="directory of the shared listener's socket and lock (unset: "
        "$XDG_RUNTIME_DIR/agent-messaging, else <tmp>/agent-messaging-<uid>)",
    )
    listener_linger: float = Field(
        default=2.0,
        ge=0,
        description="seconds the listener stays after the last subscriber (handler, "
        "wait) is gone; a process that only sends never listens",
    )

    _explicit: frozenset[str] = PrivateAttr(default=frozenset())

    def __init__(self, **values: Any) -> None:
        # what the caller passed, as opposed to what came from the environment
        explicit = frozenset(
            name
            for name, field in type(self).model_fields.items()
            if name in values
            or (
                isinstance(field.validation_alias, AliasChoices)
                and any(alias in values for alias in field.validation_alias.choices)
            )
        )
        from_environment = {
            name: value for name, value in _environment(type(self)).items() if name not in explicit
        }
        super().__init__(**from_environment, **values)
        self._explicit = explicit

    @property
    def explicit_fields(self) -> frozenset[str]:
        """The fields given as arguments (not read from the environment)."""
        return self._explicit

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str | None) -> str | None:
        if value is not None:
            from .retention import parse_duration

            parse_duration(value)
        return value

    def explicit_dsn(self) -> str | None:
        """The server to use (see the module's precedence rules), or ``None`` when
        an embedded server should be started."""
        server_fields = {name for name in type(self).model_fields if name.startswith("postgres_")}
        if "database_url" in self._explicit and self.database_url:
            return self.database_url
        if not server_fields & self._explicit:
            if self.database_url:
                return self.database_url
            if not server_fields & self.model_fields_set:
                return None
        user = quote(self.postgres_user, safe="")
        password = quote(self.postgres_password, safe="")
        auth = f"{user}:{password}" if password else user
        return (
            f"postgresql://{auth}@{self.postgres_host}:{self.postgres_port}/"
            f"{quote(self.postgres_db, safe='')}"
        )
