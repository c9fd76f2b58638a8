"""Revision 0101's hot paths, driven from plain SQL as another language's client would.

- A sync request is settled by its answer: ``amp.sync_reply`` marks it delivered, so
  the handler that replied is not acknowledged separately, and an acknowledgement
  sent after the reply anyway (what 0.1.0 clients do) is a no-op, not AM050.
- A claim's lease is a HOT update (no index covers what it changes).
- The reply lookup of ``amp.sync_result`` is one index probe, not a walk of the
  history in ``seq`` order.
- A claim checks every agent its worker serves against the bindings in one query.
- A claim asks whether a sync request is still awaited of the conversation, not of
  the conversation's history.
- Message ids are time-ordered UUIDs (version 7): inserts stay at the right edge of
  the history's primary key.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from .roles import Roles, as_role


def setup(conn: psycopg.Connection[Any]) -> str:
    conn.execute("SELECT amp.register_organization('org1')")
    for name in ("asker", "helper"):
        conn.execute("SELECT amp.register_agent(%s, 'org1')", (name,))
    worker = conn.execute("SELECT amp.register_worker('test', 1)").fetchone()[0]
    conn.execute("SELECT amp.serve_agents(%s, ARRAY['helper'])", (worker,))
    return str(worker)


def history_writer(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """Stop autovacuum (and so autoanalyze) on the history, as a busy server's
    statistics lag behind; the ids of asker and helper, to write history with."""
    conn.execute("ALTER TABLE amp.messages SET (autovacuum_enabled = off)")
    row = conn.execute(
        "SELECT (SELECT id FROM amp.agents WHERE external_id = 'asker'), "
        "(SELECT id FROM amp.agents WHERE external_id = 'helper')"
    ).fetchone()
    assert row is not None
    return tuple(row)


def delivery_of(conn: psycopg.Connection[Any], message: Any) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT m.delivery_status, d.message_id IS NOT NULL "
        "FROM amp.messages m LEFT JOIN amp.deliveries d ON d.message_id = m.id "
        "WHERE m.id = %s",
        (message,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_answer_settles_the_request_and_a_late_ack_is_a_no_op(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = setup(conn)
        _, request = conn.execute(
            "SELECT * FROM amp.sync_send('asker', 'helper', '{\"q\": 1}')"
        ).fetchone()
        claimed = conn.execute(
            "SELECT id FROM amp.claim_deliveries(%s, 10, interval '30 seconds', 5)", (worker,)
        ).fetchall()
        assert [r[0] for r in claimed] == [request]
        assert delivery_of(conn, request) == ("pending", True)

        channel = conn.execute("SELECT amp.agent_channel('asker')").fetchone()[0]
        conn.execute("SELECT amp.listen(ARRAY[%s])", (channel,))
        conn.execute("SELECT amp.sync_reply('helper', 'asker', '{\"a\": 1}', '{}', %s)", (request,))
        assert delivery_of(conn, request) == ("delivered", False)
        # the asker hears the answer, and no second hint about its request's delivery
        kinds = [json.loads(n.payload)["kind"] for n in conn.notifies(timeout=0.2)]
        assert kinds == ["message"], kinds
        # the 0.1.0 sequence: reply, then acknowledge
        conn.execute("SELECT amp.ack_delivery(%s, %s)", (worker, request))
        acked = conn.execute("SELECT amp.ack_deliveries(%s, %s)", (worker, [request])).fetchall()
        assert [r[0] for r in acked] == [request]
        assert delivery_of(conn, request) == ("delivered", False)
        # a message that was never leased still gets AM050
        note = conn.execute("SELECT amp.send_one_way('asker', 'helper', '{}')").fetchone()[0]
        try:
            conn.execute("SELECT amp.ack_delivery(%s, %s)", (worker, note))
        except psycopg.Error as exc:
            assert exc.sqlstate == "AM050"
        else:
            raise AssertionError("acknowledging an unclaimed message must fail")


def test_an_answer_before_any_handler_ran_means_none_will(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = setup(conn)
        _, request = conn.execute(
            "SELECT * FROM amp.sync_send('asker', 'helper', '{\"q\": 1}')"
        ).fetchone()
        conn.execute("SELECT amp.sync_reply('helper', 'asker', '{\"a\": 1}')")
        assert delivery_of(conn, request) == ("delivered", False)
        claimed = conn.execute(
            "SELECT id FROM amp.claim_deliveries(%s, 10, interval '30 seconds', 5)", (worker,)
        ).fetchall()
        assert claimed == []
        status, _reply, content, _ = conn.execute(
            "SELECT * FROM amp.sync_result(%s)", (request,)
        ).fetchone()
        assert (status, content) == ("replied", {"a": 1})


def test_a_claims_lease_is_a_hot_update(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:  # one transaction: its own table statistics
        worker = setup(conn)
        conn.execute("SELECT amp.send_one_way('asker', 'helper', '{}')")
        before = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
            "WHERE relid = 'amp.deliveries'::regclass"
        ).fetchone()
        claimed = conn.execute(
            "SELECT id FROM amp.claim_deliveries(%s, 10, interval '30 seconds', 5)", (worker,)
        ).fetchall()
        assert len(claimed) == 1
        after = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
            "WHERE relid = 'amp.deliveries'::regclass"
        ).fetchone()
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_the_reply_lookup_does_not_walk_the_history(dsn: str) -> None:
    """A history the statistics have not caught up with yet (autoanalyze runs after
    2 % of the table changed; on a busy history that is most of the time): the
    generic plan of sync_result's lookup still probes the reply index. On the
    0.1.0 index, (reply_to) alone, it walked messages_seq_key instead."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn)
        ids = history_writer(conn)
        conn.execute(
            "INSERT INTO amp.messages (message_type, sender_id, recipient_id, content) "
            "SELECT 'async', %s, %s, jsonb_build_object('n', n) FROM generate_series(1, 20000) n",
            ids,
        )
        for _ in range(3):
            conn.execute("SELECT amp.sync_send('asker', 'helper', '{}')")
            conn.execute("SELECT amp.sync_reply('helper', 'asker', '{}')")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(
            "PREPARE lookup(uuid) AS "
            "SELECT * FROM amp.messages m WHERE m.reply_to = $1 ORDER BY m.seq LIMIT 1"
        )
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN EXECUTE lookup(gen_random_uuid())").fetchall()
        )
        assert "messages_reply_to_idx" in plan, plan


def test_claiming_a_request_does_not_read_the_conversations_history(dsn: str) -> None:
    """A long conversation whose statistics lag behind (the pair's thousands of
    messages arrived since the last ANALYZE): the claim of its next request reads
    one history row, the request. Its moot check (is the request still awaited?)
    used to join the history on the request's id and the conversation, which such a
    planner ran as a walk of every message of the conversation."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = setup(conn)
        ids = history_writer(conn)
        # last analysed when no message belonged to a conversation yet
        conn.execute(
            "INSERT INTO amp.messages (message_type, sender_id, recipient_id, content) "
            "SELECT 'one_way', %s, %s, '{}' FROM generate_series(1, 1000)",
            ids,
        )
        conn.execute("ANALYZE amp.messages")
        conn.execute("SELECT amp.sync_send('asker', 'helper', '{}')")
        conn.execute("SELECT amp.sync_reply('helper', 'asker', '{}')")
        session = conn.execute("SELECT id FROM amp.sessions").fetchone()[0]
        conn.execute(
            "INSERT INTO amp.messages (message_type, sender_id, recipient_id, content, "
            "session_id) SELECT 'async', %s, %s, jsonb_build_object('n', n), %s "
            "FROM generate_series(1, 20000) n",
            (*ids, session),
        )
        request = conn.execute("SELECT request_id FROM amp.sync_send('asker', 'helper', '{}')")
        request_id = request.fetchone()[0]
    # a new session: its transaction counters hold this transaction's reads only
    # (a backend flushes them to the shared statistics at most once a second)
    with psycopg.connect(dsn) as conn:
        claimed = conn.execute(
            "SELECT id FROM amp.claim_deliveries(%s, 16, '30 seconds', 5)", (worker,)
        ).fetchall()
        read = conn.execute(
            "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
            "WHERE relid = 'amp.messages'::regclass"
        ).fetchone()[0]
    assert [r[0] for r in claimed] == [request_id]
    assert read <= 10, f"the claim read {read} history rows"


def test_a_claim_checks_every_served_agent_against_the_bindings(dsn: str, roles: Roles) -> None:
    """The worker's agents are checked in one query at every claim: re-binding their
    organization to another role after serving began refuses the next claim,
    naming an agent; binding it back lets the worker claim again; an admin passes."""
    group, login = roles.organization("acme")
    other_group, _ = roles.organization("globex")
    admin = roles.create("admin", member_of=["amp_user", "amp_admin"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT amp.register_organization('acme')")
        for name in ("alice", "carol"):
            conn.execute("SELECT amp.register_agent(%s, 'acme')", (name,))
        conn.execute("SELECT amp.bind_organization('acme', %s)", (group,))
    claim = "SELECT id FROM amp.claim_deliveries(%s, 10, interval '30 seconds', 5)"
    for role in (login, admin):
        with psycopg.connect(as_role(dsn, role), autocommit=True) as conn:
            worker = conn.execute("SELECT amp.register_worker('test', 1)").fetchone()[0]
            conn.execute("SELECT amp.serve_agents(%s, ARRAY['alice', 'carol'])", (worker,))
            assert conn.execute(claim, (worker,)).fetchall() == []
            with psycopg.connect(dsn, autocommit=True) as owner:
                owner.execute("SELECT amp.bind_organization('acme', %s)", (other_group,))
            try:
                conn.execute(claim, (worker,))
            except psycopg.Error as exc:
                assert role == login, f"an admin may act as any agent: {exc}"
                assert exc.sqlstate == "AM060" and ("'alice'" in str(exc) or "'carol'" in str(exc))
            else:
                assert role == admin, "a binding made after serving must refuse the claim"
            with psycopg.connect(dsn, autocommit=True) as owner:
                owner.execute("SELECT amp.bind_organization('acme', %s)", (group,))
            assert conn.execute(claim, (worker,)).fetchall() == []


def test_message_ids_are_time_ordered(dsn: str) -> None:
    """Every message id is a version-7 UUID whose first 48 bits are the Unix
    milliseconds of its insert (so new ids sort after old ones, to the millisecond)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        setup(conn)
        ids = [
            conn.execute("SELECT amp.send_one_way('asker', 'helper', '{}')").fetchone()[0],
            conn.execute("SELECT amp.async_send('asker', 'helper', '{}')").fetchone()[0],
            conn.execute(
                "SELECT request_id FROM amp.sync_send('asker', 'helper', '{}')"
            ).fetchone()[0],
        ]
        now_ms = conn.execute(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        ).fetchone()[0]
    for message_id in ids:
        assert message_id.version == 7, message_id
        assert message_id.variant == "specified in RFC 4122"
        stamp = message_id.int >> 80
        assert now_ms - 60_000 < stamp <= now_ms, (message_id, stamp, now_ms)
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)
