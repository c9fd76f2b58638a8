"""Configuration: a pydantic settings object read from the environment.

The server is named by ``AMP_DATABASE_URL``, else by the planning's ``POSTGRES_*``
variables (used when ``POSTGRES_HOST`` is set), else an embedded PostgreSQL is started
in ``AMP_EMBEDDED_DATA_DIR`` (see :mod:`agent_messaging.embedded`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent-messaging" / "pgdata"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Config(BaseSettings):
    """Settings of one SDK process. Every field can be set by an ``AMP_*`` variable."""

    model_config = SettingsConfigDict(env_prefix="AMP_", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        default=None, description="libpq URL of the server; unset: POSTGRES_* or embedded"
    )
    postgres_host: str | None = Field(default=None, validation_alias=_env("POSTGRES_HOST"))
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
    apply_migrations: bool = Field(
        default=True, description="apply pending migrations in initialize()"
    )

    default_conversation_timeout: float = Field(default=300.0, gt=0)
    default_meeting_timeout: float = Field(default=600.0, gt=0)
    default_turn_duration: float | None = Field(
        default=60.0, description="seconds a meeting turn lasts; None: turns never expire"
    )
    max_message_bytes: int = Field(
        default=1_048_576, ge=1, description="largest serialised message content accepted"
    )

    delivery_max_attempts: int = Field(default=5, ge=1)
    delivery_backoff_base: float = Field(default=0.5, ge=0, description="first retry delay, s")
    delivery_backoff_max: float = Field(default=30.0, ge=0)
    delivery_lease: float = Field(default=30.0, gt=0, description="seconds a claim is held")
    handler_concurrency: int = Field(default=16, ge=1)

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

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str | None) -> str | None:
        if value is not None:
            from .retention import parse_duration

            parse_duration(value)
        return value

    def explicit_dsn(self) -> str | None:
        """The DSN named by the environment, or ``None`` when embedded should be used."""
        if self.database_url:
            return self.database_url
        if self.postgres_host:
            user = quote(self.postgres_user, safe="")
            password = quote(self.postgres_password, safe="")
            auth = f"{user}:{password}" if password else user
            return (
                f"postgresql://{auth}@{self.postgres_host}:{self.postgres_port}/"
                f"{quote(self.postgres_db, safe='')}"
            )
        return None
