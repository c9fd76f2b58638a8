"""Meetings: turn-based talks of many agents, hosted by one.

All state transitions are ``amp.*`` SQL functions (``sql/meetings.sql``); this module
calls them and waits. Waiting follows listen -> check -> wait -> re-check: subscribe
to the meeting's channel, read the turn from the table, wait for a notification (or
the turn's deadline, or the fallback poll), read again. When the current turn's
deadline passes, the waiter calls ``amp.expire_turns()`` itself, so a meeting goes
on even if the speaker's process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content, validation
from .dispatcher import AnyNotification
from .exceptions import AgentNotInMeetingError, InvalidInputError, MeetingTimeoutError
from .models import MeetingMessage, MeetingParticipant, MeetingStatusResponse, TurnSignal
from .notifications import MeetingChanged

if TYPE_CHECKING:
    from .client import AgentMessaging

T = TypeVar("T")
log = logging.getLogger("agent_messaging.meetings")

#: the longest turn_duration the SDK sends (seconds, one year): the server's own
#: limit, ``amp.setting('max_turn_duration_seconds')`` (default one week), is lower
MAX_TURN_DURATION = 31_536_000.0

#: slack added to a turn deadline before expiring it (clock granularity)
_DEADLINE_SLACK = 0.01


def meeting_channel(meeting_id: UUID) -> str:
    """The NOTIFY channel of a meeting (the rule of ``amp.meeting_channel``)."""
    return f"amp_meeting_{meeting_id.hex}"


def _meeting_id(value: UUID | str) -> str:
    try:
        return str(value if isinstance(value, UUID) else UUID(str(value)))
    except ValueError as exc:
        raise InvalidInputError(f"not a meeting id: {value!r}") from exc


class MeetingManager(Generic[T]):
    """The meeting pattern (``sdk.meeting``)."""

    def __init__(self, sdk: AgentMessaging[T]) -> None:
        self._sdk = sdk

    # -- helpers -------------------------------------------------------------

    def _dump(self, message: T) -> str:
        sdk = self._sdk
        return content.encode(sdk.message_adapter, message, sdk.config.max_message_bytes)

    def _message(self, row: dict[str, Any]) -> MeetingMessage[T]:
        """One history row, decoded on its own: a message that cannot be decoded (or
        does not fit ``T``) is reported with ``content=None`` and ``error``, and
        never breaks the history or a turn wait."""
        system = row["message_type"] == "system"
        value: Any = None
        error = None
        try:
            if system:
                value = content.loads(row["content"])
            else:
                value = content.decode_text(self._sdk.message_adapter, row["content"])
        except content.UndecodableContent as exc:
            error = str(exc)
            log.warning("meeting message %s cannot be decoded: %s", row["message_id"], exc)
        return MeetingMessage[T](
            seq=row["seq"],
            message_id=row["message_id"],
            message_type=row["message_type"],
            sender_external_id=row["sender_external_id"],
            content=None if system else value,
            system=value if system and isinstance(value, dict) else None,
            is_late=row["is_late"],
            created_at=row["created_at"],
            error=error,
        )

    async def _history(self, meeting: str, after_seq: int = 0) -> list[MeetingMessage[T]]:
        rows = await self._sdk.db.fetch(
            # content as text, decoded row by row: one undecodable message must not
            # break the history (or every participant's turn wait)
            "SELECT seq, message_id, message_type, sender_external_id, "
            "content::text AS content, is_late, created_at "
            "FROM amp.meeting_history($1::text::uuid, $2::bigint)",
            [meeting, after_seq],
        )
        return [self._message(row) for row in rows]

    async def expire_turns(self) -> int:
        """Expire every meeting turn whose deadline passed (any process may call it)."""
        return int(await self._sdk.db.fetch_value("SELECT amp.expire_turns() AS n"))

    # -- transitions -----------------------------------------------------------

    async def create_meeting(
        self,
        host_external_id: str,
        agent_external_ids: list[str],
        turn_duration: float | None = None,
    ) -> UUID:
        """Create a meeting hosted by ``host_external_id``; returns its id.

        ``agent_external_ids`` is the invitation list and the round-robin order (the
        host may be in it; if not, it goes first). Each invitee gets an invitation
        pushed to its handler. ``turn_duration`` (seconds) defaults to
        ``config.default_turn_duration``. Raises :class:`AgentNotFoundError`,
        :class:`InvalidInputError` (empty list, duplicates, empty ids).
        """
        validation.external_id("host external id", host_external_id)
        if isinstance(agent_external_ids, str) or not isinstance(agent_external_ids, list | tuple):
            raise InvalidInputError("agent_external_ids must be a list of agent external ids")
        for agent in agent_external_ids:
            validation.external_id("agent external id", agent)
        if turn_duration is None:
            turn_duration = self._sdk.config.default_turn_duration
        if turn_duration is not None:
            turn_duration = validation.seconds(
                "turn_duration", turn_duration, allow_zero=False, maximum=MAX_TURN_DURATION
            )
        await self._sdk.events_ready()
        value = await self._sdk.db.fetch_value(
            "SELECT amp.create_meeting($1::text, $2::text[], "
            "make_interval(secs => $3::float8)) AS id",
            [host_external_id, list(agent_external_ids), turn_duration],
        )
        return UUID(str(value))

    async def attend_meeting(
        self, agent_external_id: str, meeting_id: UUID, timeout: float | None = None
    ) -> TurnSignal[T]:
        """Attend the meeting (idempotent) and wait for the caller's turn or its end.

        Raises :class:`AgentNotFoundError`, :class:`MeetingNotFoundError`,
        :class:`AgentNotInMeetingError`, :class:`MeetingTimeoutError`.
        """
        validation.external_id("agent external id", agent_external_id)
        timeout = validation.timeout("timeout", timeout)
        await self._sdk.events_ready()
        meeting = _meeting_id(meeting_id)
        await self._sdk.db.fetch_value(
            "SELECT amp.attend_meeting($1::text, $2::text::uuid) AS status",
            [agent_external_id, meeting],
        )
        return await self.wait_for_turn(agent_external_id, meeting_id, timeout)

    async def start_meeting(
        self,
        host_external_id: str,
        meeting_id: UUID,
        initial_message: T,
        next_speaker_external_id: str | None = None,
    ) -> None:
        """Start a ready meeting with an opening message (host only).

        The first turn goes to ``next_speaker_external_id`` or, if ``None``, to the
        participant after the host. The host then waits with :meth:`attend_meeting`.
        Raises :class:`NotMeetingHostError`, :class:`InvalidMeetingStateError`,
        :class:`AgentNotInMeetingError` (next speaker), :class:`MeetingNotFoundError`.
        """
        validation.external_id("host external id", host_external_id)
        validation.optional_external_id("next speaker external id", next_speaker_external_id)
        await self._sdk.events_ready()
        await self._sdk.db.fetch_value(
            "SELECT amp.start_meeting($1::text, $2::text::uuid, $3::text::jsonb, $4::text) AS id",
            [
                host_external_id,
                _meeting_id(meeting_id),
                self._dump(initial_message),
                next_speaker_external_id,
            ],
        )

    async def speak(
        self,
        speaker_external_id: str,
        meeting_id: UUID,
        message: T,
        next_speaker_external_id: str | None = None,
        timeout: float | None = None,
    ) -> TurnSignal[T]:
        """Say ``message`` and wait for the speaker's next turn or the meeting's end.

        The turn passes to ``next_speaker_external_id`` or round-robin. A speaker
        whose turn expired may still speak: the message is stored late and the turn
        is not taken back. Raises :class:`NotCurrentSpeakerError`,
        :class:`AgentNotInMeetingError`, :class:`InvalidMeetingStateError`,
        :class:`MeetingNotFoundError`, :class:`MeetingTimeoutError`.
        """
        validation.external_id("speaker external id", speaker_external_id)
        validation.optional_external_id("next speaker external id", next_speaker_external_id)
        timeout = validation.timeout("timeout", timeout)
        await self._sdk.events_ready()
        await self._sdk.db.fetch_value(
            "SELECT amp.speak($1::text, $2::text::uuid, $3::text::jsonb, $4::text) AS id",
            [
                speaker_external_id,
                _meeting_id(meeting_id),
                self._dump(message),
                next_speaker_external_id,
            ],
        )
        return await self.wait_for_turn(speaker_external_id, meeting_id, timeout)

    async def leave_meeting(self, agent_external_id: str, meeting_id: UUID) -> None:
        """Leave (not the host); a held turn passes on. Raises
        :class:`HostCannotLeaveError`, :class:`AgentNotInMeetingError`,
        :class:`MeetingNotFoundError`."""
        validation.external_id("agent external id", agent_external_id)
        await self._sdk.events_ready()
        await self._sdk.db.execute(
            "SELECT amp.leave_meeting($1::text, $2::text::uuid)",
            [agent_external_id, _meeting_id(meeting_id)],
        )

    async def end_meeting(self, host_external_id: str, meeting_id: UUID) -> None:
        """End the meeting (host only); every waiter wakes with ``meeting_ended``.
        Raises :class:`NotMeetingHostError`, :class:`MeetingNotFoundError`,
        :class:`InvalidMeetingStateError` (already ended)."""
        validation.external_id("host external id", host_external_id)
        await self._sdk.events_ready()
        await self._sdk.db.execute(
            "SELECT amp.end_meeting($1::text, $2::text::uuid)",
            [host_external_id, _meeting_id(meeting_id)],
        )

    # -- reading -------------------------------------------------------------

    async def get_meeting_status(self, meeting_id: UUID) -> MeetingStatusResponse:
        """The meeting's state and participants. Raises :class:`MeetingNotFoundError`."""
        meeting = _meeting_id(meeting_id)
        row = await self._sdk.db.fetch_one(
            "SELECT * FROM amp.meeting_status($1::text::uuid)", [meeting]
        )
        parts = await self._sdk.db.fetch(
            "SELECT * FROM amp.meeting_participant_list($1::text::uuid)", [meeting]
        )
        return MeetingStatusResponse(
            meeting_id=row["meeting_id"],
            status=row["status"],
            host_external_id=row["host_external_id"],
            current_speaker_external_id=row["current_speaker_external_id"],
            turn_duration=row["turn_duration_seconds"],
            turn_deadline=row["turn_deadline"],
            participant_count=row["participant_count"],
            participants=[MeetingParticipant.model_validate(p) for p in parts],
            created_at=row["created_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
        )

    async def get_meeting_history(self, meeting_id: UUID) -> list[MeetingMessage[T]]:
        """Everything said in the meeting, system messages (joins, leaves, timeouts,
        the end) included, in order. Raises :class:`MeetingNotFoundError`."""
        return await self._history(_meeting_id(meeting_id))

    # -- waiting ---------------------------------------------------------------

    async def wait_for_turn(
        self, agent_external_id: str, meeting_id: UUID, timeout: float | None = None
    ) -> TurnSignal[T]:
        """Wait until it is ``agent_external_id``'s turn or the meeting has ended
        (at most ``timeout`` seconds, default ``config.default_meeting_timeout``)."""
        validation.external_id("agent external id", agent_external_id)
        timeout = validation.timeout("timeout", timeout)
        meeting = _meeting_id(meeting_id)
        state: dict[str, Any] = {}

        def wanted(notification: AnyNotification) -> bool:
            # wake for the turn coming to us, or the end; other turn changes only
            # move the deadline, which the timed re-check picks up anyway
            if not isinstance(notification, MeetingChanged):
                return True
            return notification.status == "ended" or (
                notification.speaker_id is not None
                and str(notification.speaker_id) == state.get("agent_id")
            )

        async def check() -> dict[str, Any] | None:
            row = await self._sdk.db.fetch_one(
                "SELECT * FROM amp.meeting_turn($1::text, $2::text::uuid)",
                [agent_external_id, meeting],
            )
            state["agent_id"] = str(row["agent_id"])
            if row["participant_status"] is None or row["participant_status"] == "left":
                raise AgentNotInMeetingError(
                    f"agent {agent_external_id!r} is not in meeting {meeting}"
                )
            return row if row["your_turn"] or row["meeting_ended"] else row | {"wait": True}

        row = await self._wait(meeting, wanted, check, timeout, "the turn")
        return TurnSignal[T](
            meeting_id=UUID(meeting),
            your_turn=bool(row["your_turn"]),
            meeting_ended=bool(row["meeting_ended"]),
            current_speaker_external_id=row["current_speaker_external_id"],
            messages=[
                m
                for m in await self._history(meeting, int(row["last_spoke_seq"]))
                if m.sender_external_id != agent_external_id
            ],
        )

    async def wait_until_ready(
        self, meeting_id: UUID, timeout: float | None = None
    ) -> MeetingStatusResponse:
        """Wait until every invitee attended (status ``ready``), for a host about to
        start. Returns at once if the meeting is already past ``created``."""
        timeout = validation.timeout("timeout", timeout)
        meeting = _meeting_id(meeting_id)

        async def check() -> dict[str, Any]:
            row = await self._sdk.db.fetch_one(
                "SELECT * FROM amp.meeting_status($1::text::uuid)", [meeting]
            )
            return row if row["status"] != "created" else row | {"wait": True}

        await self._wait(meeting, lambda _: True, check, timeout, "the meeting to be ready")
        return await self.get_meeting_status(UUID(meeting))

    async def _wait(
        self,
        meeting: str,
        wanted: Any,
        check: Any,
        timeout: float | None,
        what: str,
    ) -> dict[str, Any]:
        """listen -> check -> wait -> re-check, until ``check`` returns a row without
        ``wait``; expires the turn itself when the deadline it read passes."""
        sdk = self._sdk
        loop = asyncio.get_running_loop()
        limit = loop.time() + (sdk.config.default_meeting_timeout if timeout is None else timeout)
        woken = asyncio.Event()
        channel = meeting_channel(UUID(meeting))

        def on_notify(_channel: str, notification: AnyNotification) -> None:
            if wanted(notification):
                woken.set()

        async def on_reconnect() -> None:
            woken.set()

        await sdk.dispatcher.subscribe([channel], on_notify)
        sdk.dispatcher.add_catch_up(on_reconnect)
        ended = False
        try:
            while True:
                woken.clear()
                row: dict[str, Any] = await check()
                if not row.get("wait"):
                    ended = bool(row.get("meeting_ended"))
                    return row
                now = loop.time()
                if now >= limit:
                    raise MeetingTimeoutError(f"waited too long for {what} in meeting {meeting}")
                pause = min(limit - now, sdk.config.poll_interval)
                seconds_left = row.get("seconds_left")
                expire_at = None
                if seconds_left is not None and row.get("meeting_status", "active") == "active":
                    expire_at = now + max(float(seconds_left), 0.0) + _DEADLINE_SLACK
                    pause = min(pause, expire_at - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), max(pause, 0.0))
                if expire_at is not None and loop.time() >= expire_at:
                    await self.expire_turns()
        finally:
            sdk.dispatcher.remove_catch_up(on_reconnect)
            # an ended meeting's channel is of no further use: UNLISTEN it
            await sdk.dispatcher.unsubscribe([channel], on_notify, keep_listening=not ended)
