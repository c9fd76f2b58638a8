"""Meetings: turn-based talks of many agents, hosted by one.

All state transitions are ``amp.*`` SQL functions (``sql/meetings.sql``); this module
calls them and waits. Waiting follows listen -> check -> wait -> re-check: subscribe
to the meeting's channel and the agent's own, read the turn from the table (or, after
a ``speak``, take the speak itself as that check), wait for a notification (or the
fallback poll), read again. The turn's hint to its new speaker, on that agent's
channel, carries what was said since it last spoke: a wait returns it without a read
when the hint is provably of a turn given after the wait's own ``speak`` (its history
holds the message that speak stored) or after its last read (its newest message is
newer than any that read saw); any other hint only wakes the wait to read.

Turn deadlines are kept by :class:`~agent_messaging.turn_sweeper.TurnSweeper`, one
per SDK process; waits hand it the deadlines they read.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar
from uuid import UUID

from . import content, queries, validation
from .database import Row
from .dispatcher import AnyNotification, Check, Outcome, Wait, Wanted
from .exceptions import (
    AgentNotInMeetingError,
    InvalidInputError,
    InvalidMeetingError,
    InvalidMeetingStateError,
    MeetingTimeoutError,
    SpeakingTimeoutError,
)
from .models import (
    Meeting,
    MeetingMessage,
    MeetingParticipant,
    MeetingStatus,
    MeetingStatusResponse,
    SystemMessage,
    TurnSignal,
)
from .notifications import (
    DeliveryFinished,
    MeetingChanged,
    MessageStored,
    SessionChanged,
    TurnGiven,
)

if TYPE_CHECKING:
    from .context import PatternContext

T = TypeVar("T")
log = logging.getLogger("agent_messaging.meeting_manager")

#: the longest turn_duration the SDK sends (seconds, one year): the server's own
#: limit, ``amp._setting('max_turn_duration_seconds')`` (default one week), is lower
MAX_TURN_DURATION = 31_536_000.0


class _Default(enum.Enum):
    TOKEN = "default"


#: ``create_meeting(turn_duration=...)`` not given: the config's default applies
DEFAULT: Literal[_Default.TOKEN] = _Default.TOKEN


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

    def __init__(self, sdk: PatternContext) -> None:
        self._sdk = sdk

    # -- helpers -------------------------------------------------------------

    async def _watch(self, meeting_id: UUID) -> None:
        """Let this process's turn sweeper hear of every turn of the meeting."""
        sweeper = self._sdk.turn_sweeper
        if sweeper is not None:
            await sweeper.watch(meeting_id)

    async def _unwatch(self, meeting_id: UUID) -> None:
        """The meeting ended: the sweeper stops listening to it."""
        sweeper = self._sdk.turn_sweeper
        if sweeper is not None:
            await sweeper.unwatch(meeting_id)

    def _note(self, seconds_left: float) -> None:
        """A turn deadline read just now: the sweeper expires the turn then."""
        sweeper = self._sdk.turn_sweeper
        if sweeper is not None:
            sweeper.note(seconds_left)

    def _dump(self, message: T) -> str:
        sdk = self._sdk
        return content.encode(sdk.codec.adapter, message, sdk.config.max_message_bytes)

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
                value = content.decode_text(self._sdk.codec.adapter, row["content"])
        except content.UndecodableContent as exc:
            error = str(exc)
            log.warning("meeting message %s cannot be decoded: %s", row["message_id"], exc)
        return MeetingMessage[T](
            seq=row["seq"],
            message_id=row["message_id"],
            message_type=row["message_type"],
            sender_external_id=row["sender_external_id"],
            content=None if system else value,
            system=SystemMessage(value) if system and isinstance(value, dict) else None,
            is_late=row["is_late"],
            created_at=row["created_at"],
            error=error,
        )

    async def _history(self, meeting: str, after_seq: int = 0) -> list[MeetingMessage[T]]:
        rows = await self._sdk.db.fetch(
            # content as text, decoded row by row: one undecodable message must not
            # break the history (or every participant's turn wait)
            queries.MEETING_HISTORY,
            [meeting, after_seq],
        )
        return [self._message(row) for row in rows]

    async def expire_turns(self) -> int:
        """Expire every meeting turn whose deadline passed (any process may call it)."""
        return int(await self._sdk.db.fetch_value(queries.EXPIRE_TURNS))

    # -- transitions -----------------------------------------------------------

    async def create_meeting(
        self,
        host_external_id: str,
        agent_external_ids: list[str],
        turn_duration: float | Literal[_Default.TOKEN] | None = DEFAULT,
    ) -> UUID:
        """Create a meeting hosted by ``host_external_id``; returns its id.

        ``agent_external_ids`` is the invitation list and the round-robin order (the
        host may be in it; if not, it goes first). Every agent of the list gets an
        invitation pushed to its handler (a :class:`MeetingInvitation`, with
        ``context.is_meeting_message``), the host too when it is listed.
        ``turn_duration``: seconds per turn; ``None``: turns never expire; omitted:
        ``config.default_turn_duration`` (``None`` when ``config.enable_turn_timeout``
        is false). Raises :class:`AgentNotFoundError`, :class:`InvalidMeetingError`
        (empty list, duplicates, no one but the host, a non-positive duration),
        :class:`InvalidInputError` (empty ids).
        """
        sdk = self._sdk
        validation.external_id("host external id", host_external_id)
        if isinstance(agent_external_ids, str) or not isinstance(agent_external_ids, list | tuple):
            raise InvalidInputError("agent_external_ids must be a list of agent external ids")
        for agent in agent_external_ids:
            validation.external_id("agent external id", agent)
        duration: float | None
        if turn_duration is DEFAULT:
            config = sdk.config
            duration = config.default_turn_duration if config.enable_turn_timeout else None
        else:
            duration = turn_duration
        if duration is not None:
            try:
                duration = validation.seconds(
                    "turn_duration", duration, allow_zero=False, maximum=MAX_TURN_DURATION
                )
            except InvalidInputError as exc:
                raise InvalidMeetingError(str(exc)) from None
        await sdk.events_ready()
        value = await sdk.db.fetch_value(
            queries.CREATE_MEETING,
            [host_external_id, list(agent_external_ids), duration],
        )
        meeting_id = UUID(str(value))
        await self._watch(meeting_id)
        for agent in agent_external_ids:
            sdk.poke_delivery(agent)
        return meeting_id

    async def attend_meeting(
        self, agent_external_id: str, meeting_id: UUID, timeout: float | None = None
    ) -> TurnSignal[T]:
        """Attend the meeting (idempotent) and wait for the caller's turn or its end.

        Raises :class:`AgentNotFoundError`, :class:`MeetingNotFoundError`,
        :class:`AgentNotInMeetingError`, :class:`MeetingTimeoutError`.
        """
        validation.external_id("agent external id", agent_external_id)
        timeout = validation.timeout("timeout", timeout)
        sdk = self._sdk
        await sdk.events_ready()
        meeting = _meeting_id(meeting_id)
        row = await sdk.db.fetch_one(queries.ATTEND_MEETING, [agent_external_id, meeting])
        sdk.directory.remember_channel(agent_external_id, str(row["channel"]))
        return await self._wait_for_turn(agent_external_id, meeting_id, timeout)

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
        Called before every invitee attended (right after :meth:`create_meeting`,
        while invitees attend from their handlers), it first waits until they have,
        for at most ``config.start_meeting_wait`` seconds.

        Raises :class:`NotMeetingHostError`, :class:`InvalidMeetingStateError` (not
        ready in time, already started or ended), :class:`AgentNotInMeetingError`
        (next speaker), :class:`MeetingNotFoundError`.
        """
        sdk = self._sdk
        validation.external_id("host external id", host_external_id)
        validation.optional_external_id("next speaker external id", next_speaker_external_id)
        await sdk.events_ready()
        meeting = _meeting_id(meeting_id)
        args = [host_external_id, meeting, self._dump(initial_message), next_speaker_external_id]
        await self._watch(UUID(meeting))
        try:
            await sdk.db.fetch_value(queries.START_MEETING, args)
            return
        except InvalidMeetingStateError:
            wait = sdk.config.start_meeting_wait
            status = await self.get_meeting_status(UUID(meeting))
            if status.status not in (MeetingStatus.CREATED, MeetingStatus.READY) or (
                status.status == MeetingStatus.CREATED and wait <= 0
            ):
                raise
        # invitees are still attending (in their handlers, as the planning's example
        # has it): wait, bounded, until every one has (at once if it became ready)
        try:
            await self.wait_until_ready(UUID(meeting), timeout=wait)
        except MeetingTimeoutError:
            raise InvalidMeetingStateError(
                f"meeting {meeting} is not ready: not every invitee attended within "
                f"{wait} s (config.start_meeting_wait)"
            ) from None
        await sdk.db.fetch_value(queries.START_MEETING, args)

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
        :class:`MeetingNotFoundError`, and :class:`SpeakingTimeoutError` (a
        :class:`MeetingTimeoutError`) if the next turn does not come within ``timeout``.
        """
        validation.external_id("speaker external id", speaker_external_id)
        validation.optional_external_id("next speaker external id", next_speaker_external_id)
        timeout = validation.timeout("timeout", timeout)
        sdk = self._sdk
        await sdk.events_ready()
        meeting = _meeting_id(meeting_id)
        args = [speaker_external_id, meeting, self._dump(message), next_speaker_external_id]
        turn = _Turn(speaker_external_id, meeting)
        # listen before speaking: the turn cannot come back unheard between the speak
        # and the wait, so the speak itself is the wait's first check
        channels = [meeting_channel(turn.meeting_id)]
        channels.append(await sdk.directory.agent_channel(speaker_external_id))
        async with sdk.dispatcher.waiting(channels, turn.wanted) as wait:
            spoken = await sdk.db.fetch_value(queries.SPEAK, args)
            # the turn's hint to this speaker is taken as it stands only if it was
            # given after this message (it then carries this message)
            turn.spoke = str(spoken)
            return await self._wait_turn(wait, turn, timeout, SpeakingTimeoutError)

    async def leave_meeting(self, agent_external_id: str, meeting_id: UUID) -> None:
        """Leave (not the host); a held turn passes on. Raises
        :class:`HostCannotLeaveError`, :class:`AgentNotInMeetingError`,
        :class:`MeetingNotFoundError`."""
        validation.external_id("agent external id", agent_external_id)
        await self._sdk.events_ready()
        await self._sdk.db.execute(
            queries.LEAVE_MEETING,
            [agent_external_id, _meeting_id(meeting_id)],
        )

    async def end_meeting(self, host_external_id: str, meeting_id: UUID) -> None:
        """End the meeting (host only); every waiter wakes with ``meeting_ended``.
        Raises :class:`NotMeetingHostError`, :class:`MeetingNotFoundError`,
        :class:`InvalidMeetingStateError` (already ended)."""
        validation.external_id("host external id", host_external_id)
        await self._sdk.events_ready()
        meeting = _meeting_id(meeting_id)
        await self._sdk.db.execute(queries.END_MEETING, [host_external_id, meeting])
        await self._unwatch(UUID(meeting))

    # -- reading -------------------------------------------------------------

    async def get_meeting_status(self, meeting_id: UUID) -> MeetingStatusResponse:
        """The meeting's state and participants. Raises :class:`MeetingNotFoundError`."""
        meeting = _meeting_id(meeting_id)
        row = await self._sdk.db.fetch_one(queries.MEETING_STATUS, [meeting])
        parts = await self._sdk.db.fetch(queries.MEETING_PARTICIPANT_LIST, [meeting])
        return MeetingStatusResponse(
            meeting_id=row["meeting_id"],
            status=row["status"],
            host_external_id=row["host_external_id"],
            current_speaker_external_id=row["current_speaker_external_id"],
            turn_duration=row["turn_duration_seconds"],
            turn_started_at=row["turn_started_at"],
            turn_deadline=row["turn_deadline"],
            participant_count=row["participant_count"],
            participants=[MeetingParticipant.model_validate(p) for p in parts],
            created_at=row["created_at"],
            started_at=row["started_at"],
            ended_at=row["ended_at"],
        )

    async def get_meeting(self, meeting_id: UUID) -> Meeting:
        """The meeting's row (the planning's ``Meeting``). Raises
        :class:`MeetingNotFoundError`."""
        row = await self._sdk.db.fetch_one(
            queries.GET_MEETING,
            [_meeting_id(meeting_id)],
        )
        return Meeting.model_validate(row | {"turn_duration": row["seconds"]})

    async def get_meeting_history(self, meeting_id: UUID) -> list[MeetingMessage[T]]:
        """Everything said in the meeting, system messages (joins, leaves, timeouts,
        the end) included, in order. Raises :class:`MeetingNotFoundError`."""
        return await self._history(_meeting_id(meeting_id))

    # -- waiting ---------------------------------------------------------------

    async def wait_for_turn(
        self, agent_external_id: str, meeting_id: UUID, timeout: float | None = None
    ) -> TurnSignal[T]:
        """Wait until it is ``agent_external_id``'s turn or the meeting has ended."""
        validation.external_id("agent external id", agent_external_id)
        timeout = validation.timeout("timeout", timeout)
        return await self._wait_for_turn(agent_external_id, meeting_id, timeout)

    async def _wait_for_turn(
        self,
        agent_external_id: str,
        meeting_id: UUID,
        timeout: float | None,
        timeout_error: type[MeetingTimeoutError] = MeetingTimeoutError,
    ) -> TurnSignal[T]:
        sdk = self._sdk
        turn = _Turn(agent_external_id, _meeting_id(meeting_id))
        channels = [meeting_channel(turn.meeting_id)]
        channels.append(await sdk.directory.agent_channel(agent_external_id))
        async with sdk.dispatcher.waiting(channels, turn.wanted) as wait:
            return await self._wait_turn(wait, turn, timeout, timeout_error, check_first=True)

    async def _wait_turn(
        self,
        wait: Wait,
        turn: _Turn,
        timeout: float | None,
        timeout_error: type[MeetingTimeoutError],
        check_first: bool = False,
    ) -> TurnSignal[T]:
        """Wait (already listening on the meeting's and the agent's channels) until
        it is the agent's turn or the meeting has ended: the turn's hint when it
        carries what was said and is known to be newer than the wait, else a read
        (``queries.MEETING_TURN``)."""
        sdk = self._sdk
        agent, meeting = turn.agent, turn.meeting

        async def check(remaining: float | None) -> Outcome[TurnSignal[T]] | None:
            carried = turn.take_carried()
            if carried is not None:
                # committed (a hint is sent on commit) and given after this wait began
                return Outcome(self._signal(turn, True, False, agent, carried))
            row = await sdk.db.fetch_one(
                queries.MEETING_TURN,
                [agent, meeting],
                timeout=remaining,
            )
            turn.agent_id = str(row["agent_id"])
            if turn.agent_id in turn.speakers:
                # the turn came to us while we read, maybe after the read's snapshot
                wait.wake()
            turn.speakers.clear()
            if row["participant_status"] is None or row["participant_status"] == "left":
                raise AgentNotInMeetingError(f"agent {agent!r} is not in meeting {meeting}")
            if row["your_turn"] or row["meeting_ended"]:
                return Outcome(
                    self._signal(
                        turn,
                        bool(row["your_turn"]),
                        bool(row["meeting_ended"]),
                        row["current_speaker_external_id"],
                        json.loads(row["history"] or "[]"),
                    )
                )
            # a turn given after this read carries a newer message than this
            turn.read_seq = row["latest_seq"]
            if row["meeting_status"] == "active" and row["seconds_left"] is not None:
                # hand the deadline to the turn sweeper, which expires it on time
                self._note(float(row["seconds_left"]))
            return None

        limit = asyncio.get_running_loop().time() + (
            sdk.config.default_meeting_timeout if timeout is None else timeout
        )
        await self._watch(turn.meeting_id)
        outcome = await wait.until(check, limit, sdk.config.poll_interval, check_first=check_first)
        if outcome is None:
            raise timeout_error(f"waited too long for the turn in meeting {meeting}")
        if outcome.value.meeting_ended:
            await self._unwatch(turn.meeting_id)
            # an ended meeting's channel is of no further use: UNLISTEN it
            wait.done_with.add(meeting_channel(turn.meeting_id))
        return outcome.value

    def _signal(
        self,
        turn: _Turn,
        your_turn: bool,
        ended: bool,
        speaker: str | None,
        history: list[dict[str, Any]],
    ) -> TurnSignal[T]:
        """The turn signal: what others said since the agent last spoke."""
        agent = turn.agent
        return TurnSignal[T](
            meeting_id=turn.meeting_id,
            your_turn=your_turn,
            meeting_ended=ended,
            current_speaker_external_id=speaker,
            messages=[
                self._message(item) for item in history if item["sender_external_id"] != agent
            ],
        )

    async def wait_until_ready(
        self, meeting_id: UUID, timeout: float | None = None
    ) -> MeetingStatusResponse:
        """Wait until every invitee attended (status ``ready``), for a host about to
        start. Returns at once if the meeting is already past ``created``."""
        timeout = validation.timeout("timeout", timeout)
        meeting = _meeting_id(meeting_id)

        async def check(remaining: float | None) -> Outcome[Row] | None:
            row = await self._sdk.db.fetch_one(queries.MEETING_STATUS, [meeting], timeout=remaining)
            return Outcome(row) if row["status"] != "created" else None

        await self._wait(meeting, None, check, timeout, "the meeting to be ready")
        return await self.get_meeting_status(UUID(meeting))

    async def _wait(
        self,
        meeting: str,
        wanted: Wanted | None,
        check: Check[Row],
        timeout: float | None,
        what: str,
    ) -> Row:
        """The dispatcher's wait on the meeting's channel, until ``check`` returns
        an outcome; raises :class:`MeetingTimeoutError` after ``timeout`` seconds
        (``None``: ``config.default_meeting_timeout``). The process's turn sweeper
        watches the meeting meanwhile."""
        sdk = self._sdk
        loop = asyncio.get_running_loop()
        limit = loop.time() + (sdk.config.default_meeting_timeout if timeout is None else timeout)
        async with sdk.dispatcher.waiting([meeting_channel(UUID(meeting))], wanted) as wait:
            await self._watch(UUID(meeting))
            outcome = await wait.until(check, limit, sdk.config.poll_interval)
            if outcome is None:
                raise MeetingTimeoutError(f"waited too long for {what} in meeting {meeting}")
            return outcome.value


class _Turn:
    """One agent's wait for its turn in one meeting: what the notifications told it."""

    __slots__ = (
        "agent",
        "agent_id",
        "carried",
        "meeting",
        "meeting_id",
        "read_seq",
        "speakers",
        "spoke",
    )

    def __init__(self, agent: str, meeting: str) -> None:
        self.agent = agent
        self.meeting = meeting
        self.meeting_id = UUID(meeting)
        #: the agent's id, once read (a meeting hint names the speaker by id)
        self.agent_id: str | None = None
        #: the id of the message the agent spoke just before this wait
        self.spoke: str | None = None
        #: the newest message seq the last read saw (it found no turn)
        self.read_seq: int | None = None
        #: histories carried by the turn hints heard since the last check
        self.carried: list[list[dict[str, Any]]] = []
        #: speakers (ids) the meeting's hints named while the agent's id was unknown
        self.speakers: set[str] = set()

    def wanted(self, notification: AnyNotification) -> bool:
        """Whether a notification wakes the wait (it keeps what a turn hint carries)."""
        if isinstance(notification, TurnGiven):
            if notification.meeting_id != self.meeting_id:
                return False
            if notification.messages is not None:
                self.carried.append(notification.messages)
            return True
        if isinstance(notification, MeetingChanged):
            # the end, or the turn coming to us (a fallback to the agent's own hint,
            # by id); other turn changes only move the deadline, which the timed
            # re-check picks up anyway
            if notification.status == "ended":
                return True
            if notification.speaker_id is None:
                return False
            speaker = str(notification.speaker_id)
            if self.agent_id is None:
                # our id is not known yet: the read that learns it checks these
                self.speakers.add(speaker)
                return False
            return speaker == self.agent_id
        # the agent's channel carries its other traffic too: not ours
        return not isinstance(notification, _AGENT_TRAFFIC)

    def take_carried(self) -> list[dict[str, Any]] | None:
        """The newest carried history that is known to be of a turn given after what
        the wait knows: after the agent's speak (the history holds its message), or
        after the wait's last read (its newest message is newer than any the read
        saw: a meeting's transitions store their messages in the order they commit).
        The others are forgotten: stale, or of a turn a read will see anyway."""
        carried: list[list[dict[str, Any]]] = self.carried
        self.carried = []
        for history in carried[::-1]:
            if self.read_seq is not None and history and history[-1]["seq"] > self.read_seq:
                return history
            if self.spoke is not None and any(
                item.get("message_id") == self.spoke for item in history
            ):
                return history
        return None


_AGENT_TRAFFIC = (MessageStored, DeliveryFinished, SessionChanged)
