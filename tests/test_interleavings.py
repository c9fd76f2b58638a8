"""Competing amp calls stepped through fixed interleavings, as PostgreSQL's isolation
tester does (beside the brute-force races of the other test files).

Each scenario has a setup, named steps of two or three sessions (psycopg connections in
autocommit, so ``BEGIN`` ... ``COMMIT`` steps hold a function's locks across steps) and
a final check. A permutation runs its steps in the order given, each in its session's
thread; after starting a step the harness polls ``pg_blocking_pids`` for that backend
until the step has either finished or waits on a lock held by another session (a lock
wait shows there deterministically: the lock manager, not a timing guess). A step that
waits is left running and reported as ``<waiting for sN (locktype)>``; after every
later step the waiting ones are polled the same way and reported ``<... completed>``
when they finish. The transcript (each step's rows, ``ok`` for a command,
``ERROR <sqlstate>``) and the check's rows must equal the permutation's expected lines
exactly.

The clock is the one thing set by hand: a turn is made overdue by moving its deadline
into the past in the setup, as ``tests/test_meetings.py`` does.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
import pytest

#: how long a step may run before it must have finished or be waiting on a lock
STEP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Scenario:
    """Setup statements, the steps (name -> (session, SQL)) and the final check.

    Setup statements run in autocommit on one connection; a statement written
    ``name := SELECT ...`` stores its single value as parameter ``name``. Steps and
    the check bind these parameters (``%(name)s``).
    """

    setup: list[str]
    steps: dict[str, tuple[str, str]]
    check: str
    sessions: tuple[str, ...] = ("s1", "s2")


@dataclass
class Waiting:
    step: str
    future: concurrent.futures.Future[str]


def render(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, UUID):
        return "<uuid>"
    return str(value)


def execute(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> str:
    """Run one statement; its rows as ``a|b; c|d``, ``ok``, or ``ERROR <sqlstate>``."""
    try:
        cur = conn.execute(sql, params)
    except psycopg.Error as error:
        return f"ERROR {error.sqlstate}"
    if cur.description is None:
        return "ok"
    return "; ".join("|".join(render(v) for v in row) for row in cur.fetchall())


@dataclass
class Interleaving:
    """The sessions of one permutation and a connection that watches them."""

    dsn: str
    scenario: Scenario
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.watcher = psycopg.connect(self.dsn, autocommit=True)
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.threads: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        for name in self.scenario.sessions:
            # a lock wait the permutation does not end fails the step, not the run
            conn = psycopg.connect(self.dsn, autocommit=True, options="-c lock_timeout=60s")
            self.conns[name] = conn
            self.threads[name] = concurrent.futures.ThreadPoolExecutor(1, f"amp-{name}")
        self.pid_of = {name: conn.info.backend_pid for name, conn in self.conns.items()}
        self.pids = {pid: name for name, pid in self.pid_of.items()}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.cancel()  # a step still waiting (a failed test) gives up
        for name, thread in self.threads.items():
            thread.shutdown(wait=True)
            self.conns[name].close()
        self.watcher.close()

    def setup(self) -> None:
        for statement in self.scenario.setup:
            name, _, sql = statement.rpartition(":=")
            row = self.watcher.execute(sql, self.params).fetchone()
            if name:
                assert row is not None, statement
                self.params[name.strip()] = row[0]

    def blockers(self, session: str) -> str:
        """What ``session`` waits for now: the sessions of this permutation holding
        the lock and the lock's type (``s1 (advisory)``), or ``""``.

        Other backends are left out: a wait for them is brief (committing a NOTIFY
        takes a lock shared by the whole cluster, for one), so the step goes on.
        """
        row = self.watcher.execute(
            "SELECT pg_blocking_pids(%(pid)s), (SELECT string_agg(DISTINCT locktype, ',')"
            " FROM pg_locks WHERE pid = %(pid)s AND NOT granted)",
            {"pid": self.pid_of[session]},
        ).fetchone()
        assert row is not None
        holders = sorted(self.pids[p] for p in row[0] if p in self.pids)
        return f"{' '.join(holders)} ({row[1]})" if holders else ""

    def settle(self, session: str, future: concurrent.futures.Future[str]) -> str:
        """Wait until the step finished (``""``) or waits on a lock (its blockers)."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                future.result(timeout=0.002)
                return ""
            except concurrent.futures.TimeoutError:
                pass
            blockers = self.blockers(session)
            if blockers and not future.done():
                return blockers
            if time.monotonic() > deadline:
                raise AssertionError(f"{session}: a step neither finished nor waited in time")

    def run(self, steps: list[str]) -> list[str]:
        """The transcript of running these steps in this order, then ``check: ...``."""
        transcript: list[str] = []
        waiting: dict[str, Waiting] = {}
        for step in steps:
            session, sql = self.scenario.steps[step]
            assert session not in waiting, (
                f"{step}: {session} still waits in {waiting[session].step}"
            )
            future = self.threads[session].submit(execute, self.conns[session], sql, self.params)
            blockers = self.settle(session, future)
            if blockers:
                transcript.append(f"{step}: <waiting for {blockers}>")
                waiting[session] = Waiting(step, future)
            else:
                transcript.append(f"{step}: {future.result()}")
            for other in sorted(waiting):
                if other != session and not self.settle(other, waiting[other].future):
                    done = waiting.pop(other)
                    transcript.append(f"{done.step}: <... completed> {done.future.result()}")
        assert not waiting, f"steps still waiting at the end: {transcript}"
        transcript.append(f"check: {execute(self.watcher, self.scenario.check, self.params)}")
        return transcript


# --- scenarios ------------------------------------------------------------------------

AGENTS = [
    "SELECT amp.register_organization('org1')",
    "SELECT amp.register_agent('alice', 'org1')",
    "SELECT amp.register_agent('bob', 'org1')",
    "SELECT amp.register_agent('carol', 'org1')",
]

# A meeting alice hosts, carol's turn (join order alice, bob, carol: after carol the
# turn wraps to alice); the check shows the speaker and what the steps added to the
# history.
MEETING = [
    *AGENTS,
    "m := SELECT amp.create_meeting('alice', ARRAY['alice', 'bob', 'carol'], '1 hour')",
    "SELECT amp.attend_meeting('bob', %(m)s)",
    "SELECT amp.attend_meeting('carol', %(m)s)",
    "SELECT amp.start_meeting('alice', %(m)s, '\"agenda\"', 'carol')",
    "seq := SELECT max(seq) FROM amp.meeting_history(%(m)s)",
]
MEETING_CHECK = """
SELECT (SELECT current_speaker_external_id FROM amp.meeting_status(%(m)s)),
       (SELECT string_agg(CASE message_type
                  WHEN 'system' THEN (content->>'event') || ' ' || (content->>'agent_external_id')
                  ELSE sender_external_id || CASE WHEN is_late THEN ' spoke late' ELSE ' spoke' END
                  END, ', ' ORDER BY seq)
        FROM amp.meeting_history(%(m)s, %(seq)s))
"""
OVERDUE = (
    "WITH overdue AS (UPDATE amp.meetings SET turn_deadline = now() - interval '1 second'"
    " WHERE id = %(m)s RETURNING id) SELECT count(*) FROM overdue"
)

SPEAK_VS_EXPIRE = Scenario(
    setup=[*MEETING, OVERDUE],
    steps={
        "begin1": ("s1", "BEGIN"),
        "speak": ("s1", "SELECT amp.speak('carol', %(m)s, '\"sorry, late\"') IS NOT NULL"),
        "commit1": ("s1", "COMMIT"),
        "rollback1": ("s1", "ROLLBACK"),
        "begin2": ("s2", "BEGIN"),
        "expire": ("s2", "SELECT amp.expire_turns()"),
        "commit2": ("s2", "COMMIT"),
        "rollback2": ("s2", "ROLLBACK"),
    },
    check=MEETING_CHECK,
)

# carol's turn, in time: she passes it to bob while bob tries to speak
SPEAK_VS_SPEAK = Scenario(
    setup=MEETING,
    steps={
        "begin1": ("s1", "BEGIN"),
        "carol": ("s1", "SELECT amp.speak('carol', %(m)s, '\"bob?\"', 'bob') IS NOT NULL"),
        "commit1": ("s1", "COMMIT"),
        "rollback1": ("s1", "ROLLBACK"),
        "bob": ("s2", "SELECT amp.speak('bob', %(m)s, '\"me\"') IS NOT NULL"),
        "expire": ("s2", "SELECT amp.expire_turns()"),
    },
    check=MEETING_CHECK,
)

# alice waits for bob's answer to her request; bob answers while alice gives up
REPLY_VS_CANCEL = Scenario(
    setup=[
        *AGENTS,
        "request := SELECT request_id FROM amp.sync_send('alice', 'bob', '\"lunch?\"')",
    ],
    steps={
        "begin1": ("s1", "BEGIN"),
        "reply": (
            "s1",
            "SELECT amp.sync_reply('bob', 'alice', '\"yes\"', '{}', %(request)s) IS NOT NULL",
        ),
        "commit1": ("s1", "COMMIT"),
        "rollback1": ("s1", "ROLLBACK"),
        "begin2": ("s2", "BEGIN"),
        "cancel": ("s2", "SELECT amp.cancel_wait('alice', 'bob', %(request)s)"),
        "commit2": ("s2", "COMMIT"),
        "rollback2": ("s2", "ROLLBACK"),
    },
    check="SELECT r.status, r.content::text, (SELECT count(*) FROM amp.awaiting_reply('bob'))"
    " FROM amp.sync_result(%(request)s) r",
)

# three workers serve bob, who has three pushed messages 1, 2, 3
CLAIM = (
    "SELECT string_agg(content::text, ',' ORDER BY seq)"
    " FROM amp.claim_deliveries(%({})s, {}, '30 seconds', 5)"
)
CLAIMERS = Scenario(
    setup=[
        *AGENTS,
        *(f"w{i} := SELECT amp.register_worker('host-{i}', {i})" for i in (1, 2, 3)),
        *(f"SELECT amp.serve_agents(%(w{i})s, ARRAY['bob'])" for i in (1, 2, 3)),
        "SELECT amp.send_one_way_many('alice', ARRAY['bob', 'bob', 'bob'],"
        " ARRAY['1', '2', '3']::jsonb[])",
    ],
    steps={
        "begin1": ("s1", "BEGIN"),
        "claim1": ("s1", CLAIM.format("w1", 2)),
        "claim1one": ("s1", CLAIM.format("w1", 1)),
        "commit1": ("s1", "COMMIT"),
        "rollback1": ("s1", "ROLLBACK"),
        "begin2": ("s2", "BEGIN"),
        "claim2": ("s2", CLAIM.format("w2", 10)),
        "claim2one": ("s2", CLAIM.format("w2", 1)),
        "commit2": ("s2", "COMMIT"),
        "claim3": ("s3", CLAIM.format("w3", 10)),
    },
    check="""
SELECT string_agg(m.content::text || '>' || CASE d.claimed_by WHEN %(w1)s THEN 'w1'
           WHEN %(w2)s THEN 'w2' WHEN %(w3)s THEN 'w3' ELSE '-' END, ' ' ORDER BY m.seq)
FROM amp.messages m LEFT JOIN amp.deliveries d ON d.message_id = m.id
WHERE m.message_type = 'one_way'
""",
    sessions=("s1", "s2", "s3"),
)

# alice and bob both ask first, on a pair that has no conversation yet
FIRST_ASK = Scenario(
    setup=AGENTS,
    steps={
        "begin1": ("s1", "BEGIN"),
        "alice": ("s1", "SELECT amp.sync_send('alice', 'bob', '\"ping\"') IS NOT NULL"),
        "commit1": ("s1", "COMMIT"),
        "rollback1": ("s1", "ROLLBACK"),
        "bob": ("s2", "SELECT amp.sync_send('bob', 'alice', '\"pong\"') IS NOT NULL"),
        "alice_again": ("s2", "SELECT amp.sync_send('alice', 'bob', '\"ping?\"') IS NOT NULL"),
    },
    check="""
SELECT (SELECT count(*) FROM amp.sessions WHERE session_type = 'sync'),
       (SELECT string_agg(status || ' ' || waiting_agent, ', ') FROM amp.active_conversations),
       (SELECT string_agg(s.external_id || ' ' || m.content::text
                          || coalesce(' answers ' || q.content::text, ''), ', ' ORDER BY m.seq)
        FROM amp.messages m JOIN amp.agents s ON s.id = m.sender_id
        LEFT JOIN amp.messages q ON q.id = m.reply_to
        WHERE m.message_type = 'sync_request')
""",
)


# Each permutation is written as its expected transcript: the steps run in the order of
# the lines (a "<... completed>" line is the end of a step started earlier), then the
# check. A wait for a row lock (SELECT ... FOR UPDATE) shows as a wait for the
# holder's transactionid; the sync functions first take the pair's advisory lock.
PERMUTATIONS: list[tuple[str, Scenario, str]] = [
    # carol's turn is overdue. Whoever locks the meeting first, speak and expire_turns
    # agree: carol times out, her message is late and the turn stays with alice
    ("speak-expire", SPEAK_VS_EXPIRE, """
        speak: t
        expire: 0
        check: alice|agent_timed_out carol, carol spoke late
    """),
    ("expire-speak", SPEAK_VS_EXPIRE, """
        expire: 1
        speak: t
        check: alice|agent_timed_out carol, carol spoke late
    """),
    # expire_turns skips a meeting a speak in progress holds (SKIP LOCKED): no wait,
    # and when that speak rolls back, the next expire_turns gets the meeting
    ("speak-holds-expire-skips", SPEAK_VS_EXPIRE, """
        begin1: ok
        speak: t
        expire: 0
        commit1: ok
        check: alice|agent_timed_out carol, carol spoke late
    """),
    ("speak-rolls-back-expire-skips", SPEAK_VS_EXPIRE, """
        begin1: ok
        speak: t
        expire: 0
        rollback1: ok
        expire: 1
        check: alice|agent_timed_out carol
    """),
    # speak waits for the meeting expire_turns holds, then finds the turn moved on ...
    ("expire-holds-speak-waits", SPEAK_VS_EXPIRE, """
        begin2: ok
        expire: 1
        speak: <waiting for s2 (transactionid)>
        commit2: ok
        speak: <... completed> t
        check: alice|agent_timed_out carol, carol spoke late
    """),
    # ... or, when the expiry rolls back, expires the overdue turn itself
    ("expire-rolls-back-speak-waits", SPEAK_VS_EXPIRE, """
        begin2: ok
        expire: 1
        speak: <waiting for s2 (transactionid)>
        rollback2: ok
        speak: <... completed> t
        check: alice|agent_timed_out carol, carol spoke late
    """),
    # a speaker waits for a turn change in progress and acts on its outcome
    ("speak-waits-turn-given", SPEAK_VS_SPEAK, """
        begin1: ok
        carol: t
        bob: <waiting for s1 (transactionid)>
        commit1: ok
        bob: <... completed> t
        check: carol|carol spoke, bob spoke
    """),
    ("speak-waits-turn-kept", SPEAK_VS_SPEAK, """
        begin1: ok
        carol: t
        bob: <waiting for s1 (transactionid)>
        rollback1: ok
        bob: <... completed> ERROR AM044
        check: carol|null
    """),
    ("speak-in-time-expire-nothing", SPEAK_VS_SPEAK, """
        begin1: ok
        carol: t
        expire: 0
        commit1: ok
        check: bob|carol spoke
    """),
    # exactly one of sync_reply and cancel_wait wins; the other learns it
    ("reply-cancel", REPLY_VS_CANCEL, """
        reply: t
        cancel: f
        check: replied|"yes"|0
    """),
    ("cancel-reply", REPLY_VS_CANCEL, """
        cancel: t
        reply: ERROR AM031
        check: cancelled|null|0
    """),
    ("reply-holds-cancel-waits", REPLY_VS_CANCEL, """
        begin1: ok
        reply: t
        cancel: <waiting for s1 (advisory)>
        commit1: ok
        cancel: <... completed> f
        check: replied|"yes"|0
    """),
    ("reply-rolls-back-cancel-waits", REPLY_VS_CANCEL, """
        begin1: ok
        reply: t
        cancel: <waiting for s1 (advisory)>
        rollback1: ok
        cancel: <... completed> t
        check: cancelled|null|0
    """),
    ("cancel-holds-reply-waits", REPLY_VS_CANCEL, """
        begin2: ok
        cancel: t
        reply: <waiting for s2 (advisory)>
        commit2: ok
        reply: <... completed> ERROR AM031
        check: cancelled|null|0
    """),
    ("cancel-rolls-back-reply-waits", REPLY_VS_CANCEL, """
        begin2: ok
        cancel: t
        reply: <waiting for s2 (advisory)>
        rollback2: ok
        reply: <... completed> t
        check: replied|"yes"|0
    """),
    # claimers never wait for each other and never share a message (SKIP LOCKED)
    ("claim-claim", CLAIMERS, """
        claim1: 1,2
        claim2: 3
        check: 1>w1 2>w1 3>w2
    """),
    ("claim-holds-claim-skips", CLAIMERS, """
        begin1: ok
        claim1: 1,2
        claim2: 3
        commit1: ok
        check: 1>w1 2>w1 3>w2
    """),
    ("claim-rolls-back", CLAIMERS, """
        begin1: ok
        claim1: 1,2
        claim2: 3
        rollback1: ok
        claim2: 1,2
        check: 1>w2 2>w2 3>w2
    """),
    ("three-claimers", CLAIMERS, """
        begin1: ok
        claim1one: 1
        begin2: ok
        claim2one: 2
        claim3: 3
        commit2: ok
        commit1: ok
        check: 1>w1 2>w2 3>w3
    """),
    # the first asks of a pair: its advisory lock makes them one conversation
    ("ask-ask-back", FIRST_ASK, """
        alice: t
        bob: t
        check: 1|waiting bob|alice "ping", bob "pong" answers "ping"
    """),
    ("ask-holds-ask-back-waits", FIRST_ASK, """
        begin1: ok
        alice: t
        bob: <waiting for s1 (advisory)>
        commit1: ok
        bob: <... completed> t
        check: 1|waiting bob|alice "ping", bob "pong" answers "ping"
    """),
    ("ask-rolls-back-ask-back-waits", FIRST_ASK, """
        begin1: ok
        alice: t
        bob: <waiting for s1 (advisory)>
        rollback1: ok
        bob: <... completed> t
        check: 1|waiting bob|bob "pong"
    """),
    ("ask-holds-same-ask-waits", FIRST_ASK, """
        begin1: ok
        alice: t
        alice_again: <waiting for s1 (advisory)>
        commit1: ok
        alice_again: <... completed> ERROR AM031
        check: 1|waiting alice|alice "ping"
    """),
]  # fmt: skip


@pytest.fixture
def interleaving(dsn: str, request: pytest.FixtureRequest) -> Iterator[Interleaving]:
    scenario: Scenario = request.param
    harness = Interleaving(dsn, scenario)
    try:
        harness.setup()
        yield harness
    finally:
        harness.close()


@pytest.mark.parametrize(
    ("interleaving", "expected"),
    [pytest.param(scenario, expected, id=name) for name, scenario, expected in PERMUTATIONS],
    indirect=["interleaving"],
)
def test_permutation(interleaving: Interleaving, expected: str) -> None:
    lines = [line.strip() for line in expected.strip().splitlines()]
    steps = [
        line.split(":")[0]
        for line in lines
        if not line.startswith("check:") and "<... completed>" not in line
    ]
    assert interleaving.run(steps) == lines


LOCKS = Scenario(
    setup=[],
    steps={
        "begin1": ("s1", "BEGIN"),
        "lock1": ("s1", "SELECT true FROM pg_advisory_xact_lock(1)"),
        "commit1": ("s1", "COMMIT"),
        "lock2": ("s2", "SELECT true FROM pg_advisory_xact_lock(1)"),
    },
    check="SELECT 1",
)


def test_harness_sees_a_wait_and_its_end(dsn: str) -> None:
    """The harness itself, on a plain advisory lock: the wait is reported, then its
    completion; a step still waiting at the end fails the permutation (no hang)."""
    harness = Interleaving(dsn, LOCKS)
    try:
        assert harness.run(["begin1", "lock1", "lock2", "commit1"]) == [
            "begin1: ok",
            "lock1: t",
            "lock2: <waiting for s1 (advisory)>",
            "commit1: ok",
            "lock2: <... completed> t",
            "check: 1",
        ]
        with pytest.raises(AssertionError, match="still waiting at the end"):
            harness.run(["begin1", "lock1", "lock2"])
    finally:
        harness.close()
