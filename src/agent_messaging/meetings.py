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
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content
from .dispatcher import AnyNotification
from .exceptions import (
    TRANSIENT_ERRORS,
    AgentNotInMeetingError,
    InvalidInputError,
    MeetingTimeoutError,
)
from .models import MeetingMessage, MeetingParticipant, MeetingStatusResponse, TurnSignal
from .notifications import MeetingChanged

if TYPE_CHECKING:
    from .client import AgentMessaging

T = TypeVar("T")

#: what a wait rides out (a check that ran out of time, a lost connection)
_RETRIED: tuple[type[Exception], ...] = (TimeoutError, *TRANSIENT_ERRORS)

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
        system = row["message_type"] == "system"
        return MeetingMessage[T](
            seq=row["seq"],
            message_id=row["message_id"],
            message_type=row["message_type"],
            sender_external_id=row["sender_external_id"],
            content=None if system else self._sdk.message_adapter.validate_python(row["content"]),
            system=row["content"] if system else None,
            is_late=row["is_late"],
            created_at=row["created_at"],
        )

    async def _history(self, meeting: str, after_seq: int = 0) -> list[MeetingMessage[T]]:
        rows = await self._sdk.db.fetch(
            "SELECT * FROM amp.meeting_history($1::text::uuid, $2::bigint)", [meeting, after_seq]
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
        await self._sdk.events_ready()
        if turn_duration is None:
            turn_duration = self._sdk.config.default_turn_duration
        if turn_duration is not None and turn_duration <= 0:
            raise InvalidInputError("turn_duration must be positive")
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
        await self._sdk.events_ready()
        await self._sdk.db.execute(
            "SELECT amp.leave_meeting($1::text, $2::text::uuid)",
            [agent_external_id, _meeting_id(meeting_id)],
        )

    async def end_meeting(self, host_external_id: str, meeting_id: UUID) -> None:
        """End the meeting (host only); every waiter wakes with ``meeting_ended``.
        Raises :class:`NotMeetingHostError`, :class:`MeetingNotFoundError`,
        :class:`InvalidMeetingStateError` (already ended)."""
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
        """Wait until it is ``agent_external_id``'s turn or the meeting has ended."""
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
        retry = 0.05
        try:
            while True:
                woken.clear()
                try:
                    # bounded by the wait's own deadline (a cancelled check is
                    # cancelled on the server too)
                    row: dict[str, Any] = await asyncio.wait_for(
                        check(), max(0.001, limit - loop.time())
                    )
                    retry = 0.05
                except _RETRIED:
                    # ride out a lost connection or a restart: check again soon
                    if loop.time() >= limit:
                        raise MeetingTimeoutError(
                            f"waited too long for {what} in meeting {meeting}"
                        ) from None
                    await asyncio.sleep(max(0.0, min(retry, limit - loop.time())))
                    retry = min(retry * 2, 0.5)
                    continue
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
