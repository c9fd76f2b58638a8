"""What the messaging patterns use of an SDK instance: narrow interfaces.

The pattern classes (:class:`OneWayMessenger`, :class:`AsyncConversation`,
:class:`SyncConversation`, :class:`MeetingManager`) and the turn sweeper depend on
these protocols, not on :class:`AgentMessaging`, which satisfies them (and so does
any other object that offers the same members, a test double over a real database
for instance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .agents import Directory
    from .config import Config
    from .content import Codec
    from .database import Database, Statements
    from .delivery import Handler
    from .dispatcher import Dispatcher
    from .turn_sweeper import TurnSweeper


class Connected(Protocol):
    """The connector, the dispatcher and the configuration (what the turn sweeper needs)."""

    @property
    def config(self) -> Config:
        """The SDK's configuration."""
        ...

    @property
    def db(self) -> Database:
        """The connector (raises while not initialized)."""
        ...

    @property
    def dispatcher(self) -> Dispatcher:
        """The notification dispatcher (raises while not initialized)."""
        ...


class PatternContext(Connected, Protocol):
    """What a messaging pattern needs: :class:`Connected`, the content codec, the
    directory of agents (and their channels), the handlers of this process, and
    the hooks of delivery, events and turn deadlines."""

    @property
    def codec(self) -> Codec:
        """``T`` in and out."""
        ...

    @property
    def directory(self) -> Directory:
        """Organizations, agents, and the channel cache."""
        ...

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """The handlers registered in this process, by agent external id."""
        ...

    @property
    def turn_sweeper(self) -> TurnSweeper | None:
        """This process's turn sweeper (``None``: turns are not expired here)."""
        ...

    def poke_delivery(self, recipient_external_id: str) -> None:
        """Something was stored for this agent: deliver now if served here."""
        ...

    async def events_ready(self) -> None:
        """Wait until meeting event handlers (if any) listen."""
        ...


class Pattern:
    """What a messaging pattern class (one-way, inbox, sync) holds: the SDK's parts,
    and where its statements run: a transaction (``sdk.transaction()``), else the
    pool."""

    def __init__(self, sdk: PatternContext, db: Statements | None = None) -> None:
        self._sdk = sdk
        self._tx = db

    @property
    def _db(self) -> Statements:
        return self._tx if self._tx is not None else self._sdk.db
