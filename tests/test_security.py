"""Identity and access control enforced by PostgreSQL roles.

Every test uses real login roles (made per test, dropped afterwards). Organization
``acme`` (alice, carol) is bound to one role and ``globex`` (bob, dave) to another;
``mallory`` is an ordinary application role (granted ``amp_user``, bound to nothing).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from agent_messaging import (
    AccessDeniedError,
    AgentMessaging,
    ContactNotAllowedError,
    migrations,
)
from agent_messaging.exceptions import SQLSTATE_EXCEPTIONS

from .conftest import admin_execute, with_database
from .helpers import REPO, AgentProcess, make_config, psql
from .roles import Roles, as_role

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class World:
    """The test database, as the superuser and as each organization's login role."""

    admin: str
    acme: str
    globex: str
    mallory: str
    acme_role: str
    globex_role: str

    def connect(self, who: str) -> Conn:
        return psycopg.connect(getattr(self, who), autocommit=True)

    def one(self, who: str, query: str, params: tuple[Any, ...] = ()) -> Any:
        with self.connect(who) as conn:
            row = conn.execute(query, params).fetchone()
            assert row is not None
            return row[0]


@pytest.fixture
def world(dsn: str, roles: Roles) -> Iterator[World]:
    acme_role, acme_login = roles.organization("acme")
    globex_role, globex_login = roles.organization("globex")
    mallory = roles.create("mallory", member_of=["amp_user"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        for org in ("acme", "globex"):
            conn.execute("SELECT amp.register_organization(%s)", (org,))
        for agent, org in (
            ("alice", "acme"),
            ("carol", "acme"),
            ("bob", "globex"),
            ("dave", "globex"),
        ):
            conn.execute("SELECT amp.register_agent(%s, %s)", (agent, org))
        conn.execute("SELECT amp.bind_organization('acme', %s)", (acme_role,))
        conn.execute("SELECT amp.bind_organization('globex', %s)", (globex_role,))
    yield World(
        admin=dsn,
        acme=as_role(dsn, acme_login),
        globex=as_role(dsn, globex_login),
        mallory=as_role(dsn, mallory),
        acme_role=acme_role,
        globex_role=globex_role,
    )


def snapshot(dsn: str) -> dict[str, str]:
    """A digest of every row of every amp table."""
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'amp'::regnamespace "
                "AND relkind = 'r' ORDER BY 1"
            )
        ]
        digest = {}
        for table in tables:
            row = conn.execute(
                sql.SQL(
                    "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t"
                ).format(sql.Identifier("amp", table))
            ).fetchone()
            assert row is not None
            digest[table] = row[0]
        return digest


@dataclass
class Live:
    """Live state of every pattern between acme and globex, made by the entitled roles."""

    one_way: UUID
    request: UUID
    bob_worker: UUID
    mallory_worker: UUID
    meeting: UUID


def make_live(w: World) -> Live:
    with psycopg.connect(w.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex')")
    with w.connect("acme") as acme, w.connect("globex") as globex:
        one_way = acme.execute("SELECT amp.send_one_way('alice', 'bob', '\"hi bob\"')").fetchone()
        acme.execute("SELECT amp.async_send('alice', 'bob', '\"in your inbox\"')")
        request = acme.execute(
            "SELECT request_id FROM amp.sync_send('alice', 'bob', '\"2+2?\"')"
        ).fetchone()
        bob_worker = globex.execute("SELECT amp.register_worker('globex-host', 1)").fetchone()
        assert bob_worker is not None and one_way is not None and request is not None
        globex.execute("SELECT amp.serve_agents(%s, ARRAY['bob'])", (bob_worker[0],))
        claimed = globex.execute(
            "SELECT id FROM amp.claim_deliveries(%s, 1, '1 hour', 5)", (bob_worker[0],)
        ).fetchall()
        assert [r[0] for r in claimed] == [one_way[0]]
        meeting = acme.execute(
            "SELECT amp.create_meeting('alice', ARRAY['alice', 'bob', 'carol'], '1 hour')"
        ).fetchone()
        assert meeting is not None
        globex.execute("SELECT amp.attend_meeting('bob', %s)", (meeting[0],))
        acme.execute("SELECT amp.attend_meeting('carol', %s)", (meeting[0],))
        acme.execute("SELECT amp.start_meeting('alice', %s, '\"agenda\"', 'bob')", (meeting[0],))
    mallory_worker = w.one("mallory", "SELECT amp.register_worker('evil-host', 2)")
    return Live(one_way[0], request[0], bob_worker[0], mallory_worker, meeting[0])


def attacks(live: Live) -> list[tuple[str, str, tuple[Any, ...], str]]:
    """(role, statement, parameters, the SQLSTATE it must fail with)."""
    m, w, msg, req = live.meeting, live.bob_worker, live.one_way, live.request
    denied, no_privilege = "AM060", "42501"
    return [
        # sending as someone else
        ("mallory", "SELECT amp.send_one_way('alice', 'bob', '\"forged\"')", (), denied),
        ("globex", "SELECT amp.send_one_way('alice', 'bob', '\"forged\"')", (), denied),
        ("mallory", "SELECT amp.async_send('alice', 'bob', '\"forged\"')", (), denied),
        ("mallory", "SELECT * FROM amp.sync_send('alice', 'bob', '\"forged\"')", (), denied),
        # reading and emptying bob's inbox
        ("mallory", "SELECT * FROM amp.read_unread('bob')", (), denied),
        ("acme", "SELECT * FROM amp.read_unread('bob')", (), denied),
        ("mallory", "SELECT * FROM amp.peek_unread('bob')", (), denied),
        # the pushed messages waiting for bob, bob's meetings
        ("mallory", "SELECT * FROM amp.peek_deliveries('bob')", (), denied),
        ("acme", "SELECT * FROM amp.peek_deliveries('bob')", (), denied),
        ("mallory", "SELECT * FROM amp.agent_meetings('bob')", (), denied),
        ("acme", "SELECT * FROM amp.agent_meetings('bob', true)", (), denied),
        ("mallory", "SELECT amp.mark_unread('bob', %s)", (msg,), denied),
        # answering alice's request as bob, ending their conversation
        ("mallory", "SELECT amp.sync_reply('bob', 'alice', '\"5\"')", (), denied),
        ("acme", "SELECT amp.sync_reply('bob', 'alice', '\"5\"')", (), denied),
        ("mallory", "SELECT amp.end_conversation('bob', 'alice')", (), denied),
        ("mallory", "SELECT amp.end_conversation('alice', 'bob')", (), denied),
        ("mallory", "SELECT amp.cancel_wait('alice', 'bob', %s)", (req,), denied),
        ("mallory", "SELECT * FROM amp.sync_result(%s)", (req,), denied),
        ("mallory", "SELECT * FROM amp.awaiting_reply('bob')", (), denied),
        # serving bob: a worker of one's own, or bob's worker
        ("mallory", "SELECT amp.serve_agents(%s, ARRAY['bob'])", (live.mallory_worker,), denied),
        ("mallory", "SELECT * FROM amp.claim_deliveries(%s, 10, '1 hour', 5)", (w,), denied),
        ("acme", "SELECT * FROM amp.claim_deliveries(%s, 10, '1 hour', 5)", (w,), denied),
        ("mallory", "SELECT amp.ack_delivery(%s, %s)", (w, msg), denied),
        ("mallory", "SELECT * FROM amp.ack_deliveries(%s, ARRAY[%s]::uuid[])", (w, msg), denied),
        ("mallory", "SELECT amp.fail_delivery(%s, %s, 'x', '0', 5)", (w, msg), denied),
        ("mallory", "SELECT amp.heartbeat(%s)", (w,), denied),
        ("mallory", "SELECT amp.next_delivery_at(%s)", (w,), denied),
        ("mallory", "SELECT amp.unregister_worker(%s)", (w,), denied),
        # taking bob's worker's direct deliveries, handing its messages back
        ("mallory", "SELECT amp.hold_worker(%s, '1 hour')", (w,), denied),
        ("mallory", "SELECT * FROM amp.release_deliveries(%s)", (w,), denied),
        # the meeting: host, speaker, participants
        ("mallory", "SELECT amp.create_meeting('alice', ARRAY['alice', 'bob'])", (), denied),
        ("mallory", "SELECT amp.start_meeting('alice', %s, '\"x\"')", (m,), denied),
        ("mallory", "SELECT amp.attend_meeting('bob', %s)", (m,), denied),
        ("mallory", "SELECT amp.speak('bob', %s, '\"forged\"')", (m,), denied),
        ("acme", "SELECT amp.speak('bob', %s, '\"forged\"')", (m,), denied),
        ("mallory", "SELECT amp.leave_meeting('carol', %s)", (m,), denied),
        ("globex", "SELECT amp.leave_meeting('carol', %s)", (m,), denied),
        ("mallory", "SELECT amp.end_meeting('alice', %s)", (m,), denied),
        ("globex", "SELECT amp.end_meeting('alice', %s)", (m,), denied),
        ("mallory", "SELECT * FROM amp.meeting_turn('bob', %s)", (m,), denied),
        ("mallory", "SELECT * FROM amp.meeting_status(%s)", (m,), denied),
        ("mallory", "SELECT * FROM amp.meeting_history(%s)", (m,), denied),
        ("mallory", "SELECT * FROM amp.meeting_participant_list(%s)", (m,), denied),
        # channels, messages, registrations, the policy itself
        ("mallory", "SELECT amp.agent_channel('bob')", (), denied),
        ("mallory", "SELECT * FROM amp.get_message(%s)", (msg,), denied),
        ("mallory", "SELECT amp.register_agent('eve', 'acme')", (), denied),
        ("mallory", "SELECT amp.bind_organization('acme', current_user)", (), denied),
        ("globex", "SELECT amp.bind_agent('alice', current_user)", (), denied),
        ("mallory", "SELECT amp.unbind_organization('acme')", (), denied),
        ("mallory", "SELECT amp.allow_contact('acme', 'globex')", (), denied),
        ("mallory", "SELECT amp.revoke_contact('acme', 'globex')", (), denied),
        ("mallory", "SELECT * FROM amp.contact_list()", (), denied),
        # internals and tables: no privilege at all
        (
            "mallory",
            "SELECT amp._store_message('one_way', (amp.get_agent('alice')).id, "
            "(amp.get_agent('bob')).id, '\"forged\"', p_push => true)",
            (),
            no_privilege,
        ),
        ("mallory", "SELECT amp._agent_channel_by_id((amp.get_agent('bob')).id)", (), no_privilege),
        ("mallory", "SELECT amp._unlock_session(%s)", (m,), no_privilege),
        ("mallory", "SELECT amp._meeting_give_turn(NULL::amp.meetings, NULL)", (), no_privilege),
        ("mallory", "SELECT count(*) FROM amp.messages", (), no_privilege),
        (
            "mallory",
            "INSERT INTO amp.messages (message_type, content) VALUES ('one_way', '{}')",
            (),
            no_privilege,
        ),
        ("acme", "UPDATE amp.messages SET content = '\"rewritten\"'", (), no_privilege),
        ("globex", "DELETE FROM amp.role_bindings", (), no_privilege),
        ("acme", "INSERT INTO amp.contacts SELECT id, id FROM amp.organizations", (), no_privilege),
        ("mallory", "SELECT * FROM amp.alembic_version", (), no_privilege),
    ]


def test_every_attack_fails_and_changes_no_row(world: World) -> None:
    live = make_live(world)
    before = snapshot(world.admin)
    for who, statement, params, code in attacks(live):
        with world.connect(who) as conn, pytest.raises(psycopg.Error) as caught:
            conn.execute(statement, params)
        assert caught.value.sqlstate == code, (who, statement, caught.value)
        assert snapshot(world.admin) == before, (who, statement)
    # reads that are not refused but filtered: nothing of acme's or globex's
    with world.connect("mallory") as conn:
        assert conn.execute("SELECT count(*) FROM amp.meeting_events_after(0)").fetchone() == (0,)
        for view in (
            "active_conversations",
            "active_meetings",
            "agent_inbox",
            "meeting_timeline",
            "online_agents",
            "failed_deliveries",
        ):
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("amp", view))
            )
            assert row.fetchone() == (0,), view
        assert conn.execute("SELECT count(*) FROM amp.agent_channels()").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM amp.role_map()").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM amp.agent_list()").fetchone() == (0,)


def test_access_error_names_the_role_and_the_agent(world: World) -> None:
    with world.connect("mallory") as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT amp.send_one_way('alice', 'bob', '1')")
    assert caught.value.sqlstate == "AM060"
    assert re.search(r"is not allowed to act as agent 'alice'", str(caught.value))
    assert SQLSTATE_EXCEPTIONS["AM060"] is AccessDeniedError
    assert issubclass(ContactNotAllowedError, AccessDeniedError)


def test_the_entitled_roles_do_the_same(world: World) -> None:
    live = make_live(world)
    m = live.meeting
    with world.connect("acme") as acme, world.connect("globex") as globex:
        # bob's own role empties bob's inbox and serves bob
        assert [r[0] for r in globex.execute("SELECT content FROM amp.peek_unread('bob')")] == [
            "in your inbox"
        ]
        assert len(globex.execute("SELECT * FROM amp.read_unread('bob')").fetchall()) == 1
        globex.execute("SELECT amp.heartbeat(%s)", (live.bob_worker,))
        # what waits for bob's handler (the one-way is leased, still pending), bob's meeting
        pending = globex.execute(
            "SELECT id, message_type, sender_external_id FROM amp.peek_deliveries('bob')"
        ).fetchall()
        assert (live.one_way, "one_way", "alice") in pending
        assert {r[1] for r in pending} == {"one_way", "sync_request", "meeting_invitation"}
        assert globex.execute(
            "SELECT meeting_id, host_external_id, participant_status FROM amp.agent_meetings('bob')"
        ).fetchall() == [(m, "alice", "speaking")]
        globex.execute("SELECT amp.ack_delivery(%s, %s)", (live.bob_worker, live.one_way))
        globex.execute("SELECT amp.next_delivery_at(%s)", (live.bob_worker,))
        assert globex.execute("SELECT amp.agent_channel('bob')").fetchone() == (
            world.one("admin", "SELECT amp.agent_channel('bob')"),
        )
        # both parties may read a request's outcome; bob answers, alice reads it
        globex.execute("SELECT amp.sync_reply('bob', 'alice', '4')")
        assert acme.execute(
            "SELECT status, content FROM amp.sync_result(%s)", (live.request,)
        ).fetchone() == ("replied", 4)
        assert globex.execute(
            "SELECT status FROM amp.sync_result(%s)", (live.request,)
        ).fetchone() == ("replied",)
        acme.execute("SELECT amp.end_conversation('alice', 'bob')")
        # turn hand-off across the two organizations
        globex.execute("SELECT amp.speak('bob', %s, '\"from bob\"', 'carol')", (m,))
        assert acme.execute(
            "SELECT your_turn FROM amp.meeting_turn('carol', %s)", (m,)
        ).fetchone() == (True,)
        acme.execute("SELECT amp.speak('carol', %s, '\"from carol\"', 'bob')", (m,))
        assert globex.execute(
            "SELECT your_turn FROM amp.meeting_turn('bob', %s)", (m,)
        ).fetchone() == (True,)
        for conn in (acme, globex):
            said = [
                r[0]
                for r in conn.execute(
                    "SELECT sender_external_id FROM amp.meeting_history(%s) "
                    "WHERE message_type = 'meeting'",
                    (m,),
                )
            ]
            assert said == ["alice", "bob", "carol"]
            assert (
                conn.execute("SELECT count(*) FROM amp.meeting_events_after(0)").fetchone()[0] > 0
            )
            assert conn.execute(
                "SELECT participant_count FROM amp.meeting_status(%s)", (m,)
            ).fetchone() == (3,)
        acme.execute("SELECT amp.leave_meeting('carol', %s)", (m,))
        acme.execute("SELECT amp.end_meeting('alice', %s)", (m,))
        globex.execute("SELECT amp.unregister_worker(%s)", (live.bob_worker,))
        assert acme.execute("SELECT amp.can_act_as('alice'), amp.can_act_as('bob')").fetchone() == (
            True,
            False,
        )
        # a member of the bound organization's role may register agents in it
        acme.execute("SELECT amp.register_agent('erin', 'acme')")


def test_cross_organization_contact_is_a_policy(world: World) -> None:
    refused = [
        "SELECT amp.send_one_way('alice', 'bob', '1')",
        "SELECT amp.async_send('alice', 'bob', '1')",
        "SELECT * FROM amp.sync_send('alice', 'bob', '1')",
        "SELECT amp.create_meeting('alice', ARRAY['alice', 'bob'])",
    ]
    before = snapshot(world.admin)
    for statement in refused:
        with world.connect("acme") as conn, pytest.raises(psycopg.Error) as caught:
            conn.execute(statement)
        assert caught.value.sqlstate == "AM061", statement
        assert "organization 'acme' has no contact with organization 'globex'" in str(caught.value)
    assert snapshot(world.admin) == before
    # within one organization all is open
    world.one("acme", "SELECT amp.send_one_way('alice', 'carol', '1')")

    # one way: acme may start, globex may answer inside that conversation only
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex', false)")
        assert admin.execute("SELECT * FROM amp.contact_list()").fetchall()[0][:2] == (
            "acme",
            "globex",
        )
    with world.connect("acme") as acme, world.connect("globex") as globex:
        acme.execute("SELECT amp.send_one_way('alice', 'bob', '1')")
        with pytest.raises(psycopg.Error) as caught:
            globex.execute("SELECT amp.send_one_way('dave', 'carol', '1')")
        assert caught.value.sqlstate == "AM061"
        acme.execute("SELECT * FROM amp.sync_send('alice', 'bob', '\"lunch?\"')")
        globex.execute("SELECT amp.sync_reply('bob', 'alice', '\"yes\"')")
        acme.execute("SELECT amp.async_send('alice', 'bob', '\"agenda\"')")
        globex.execute("SELECT amp.async_send('bob', 'alice', '\"thanks\"')")
    # both ways, then revoked: refused again, even inside the live conversations
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex')")
    world.one("globex", "SELECT amp.send_one_way('dave', 'carol', '1')")
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.revoke_contact('globex', 'acme')")
    for who, statement in (
        ("acme", "SELECT amp.send_one_way('alice', 'bob', '1')"),
        ("globex", "SELECT amp.async_send('bob', 'alice', '1')"),
        ("globex", "SELECT amp.send_one_way('dave', 'carol', '1')"),
    ):
        with world.connect(who) as conn, pytest.raises(psycopg.Error) as caught:
            conn.execute(statement)
        assert caught.value.sqlstate == "AM061", statement
    # an organization bound to no role is open to and from everyone
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.register_organization('freelancers')")
        admin.execute("SELECT amp.register_agent('frank', 'freelancers')")
    world.one("mallory", "SELECT amp.send_one_way('frank', 'bob', '1')")
    world.one("globex", "SELECT amp.send_one_way('bob', 'frank', '1')")


def test_views_show_each_role_its_own_rows(world: World) -> None:
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex')")
    with world.connect("acme") as acme, world.connect("globex") as globex:
        acme.execute("SELECT amp.async_send('carol', 'alice', '\"acme only\"')")
        acme.execute("SELECT amp.async_send('alice', 'bob', '\"across\"')")
        globex.execute("SELECT amp.async_send('dave', 'bob', '\"globex only\"')")
        globex.execute("SELECT amp.create_meeting('bob', ARRAY['bob', 'dave'])")
        for conn, agent in ((acme, "alice"), (globex, "bob")):
            worker = conn.execute("SELECT amp.register_worker('h', 1)").fetchone()
            assert worker is not None
            conn.execute("SELECT amp.serve_agents(%s, ARRAY[%s])", (worker[0], agent))

    def rows(who: str, query: str) -> list[tuple[Any, ...]]:
        with world.connect(who) as conn:
            return conn.execute(query).fetchall()

    pairs = (
        "SELECT least(agent_a, agent_b), greatest(agent_a, agent_b) "
        "FROM amp.active_conversations ORDER BY 1, 2"
    )
    inbox = "SELECT agent, unread FROM amp.agent_inbox ORDER BY 1"
    online = "SELECT agent FROM amp.online_agents ORDER BY 1"
    meetings = "SELECT host FROM amp.active_meetings"
    timeline = "SELECT DISTINCT agent FROM amp.meeting_timeline WHERE agent IS NOT NULL ORDER BY 1"
    assert rows("acme", pairs) == [("alice", "bob"), ("alice", "carol")]
    assert rows("globex", pairs) == [("alice", "bob"), ("bob", "dave")]
    assert len(rows("admin", pairs)) == 3
    assert rows("acme", inbox) == [("alice", 1)]
    assert rows("globex", inbox) == [("bob", 2)]
    assert rows("acme", online) == [("alice",)]
    assert rows("globex", online) == [("bob",)]
    assert rows("acme", meetings) == [] and rows("globex", meetings) == [("bob",)]
    assert rows("acme", timeline) == [] and rows("globex", timeline) == [("bob",)]
    assert [r[1] for r in rows("acme", "SELECT * FROM amp.role_map()")] == ["alice", "carol"]
    assert {r[1] for r in rows("admin", "SELECT * FROM amp.role_map()")} == {
        "alice",
        "bob",
        "carol",
        "dave",
    }
    # a filter of the caller's own cannot see past the barrier
    leak = "SELECT count(*) FROM amp.agent_inbox WHERE agent = 'bob'"
    assert rows("acme", leak) == [(0,)]


def test_directory_lists_the_agents_a_role_can_reach(world: World) -> None:
    """amp.agent_list: the agents a role may act as or contact (the contact policy),
    presence only for its own; a lookup by id stays open to every role."""

    def listed(who: str, organization: str | None = None) -> list[tuple[Any, ...]]:
        with world.connect(who) as conn:
            return conn.execute(
                "SELECT agent_external_id, organization_external_id, online "
                "FROM amp.agent_list(%s)",
                (organization,),
            ).fetchall()

    worker = world.one("globex", "SELECT amp.register_worker('globex-host', 1)")
    world.one("globex", "SELECT amp.serve_agents(%s, ARRAY['bob'])", (worker,))
    # no contact between the two: each organization sees its own agents only
    assert listed("acme") == [("alice", "acme", False), ("carol", "acme", False)]
    assert listed("globex") == [("bob", "globex", True), ("dave", "globex", False)]
    assert listed("acme", "globex") == []
    assert listed("mallory") == []
    assert [r[0] for r in listed("admin")] == ["alice", "bob", "carol", "dave"]
    assert ("bob", "globex", True) in listed("admin")
    # the organization of an agent one names is no secret (as amp.get_agent)
    assert world.one("acme", "SELECT external_id FROM amp.agent_organization('bob')") == "globex"

    # one way: acme may contact globex's agents (listed, presence not shown); globex's
    # may only answer inside conversations acme started (not listed to it)
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex', false)")
    assert listed("acme", "globex") == [("bob", "globex", None), ("dave", "globex", None)]
    assert [r[0] for r in listed("acme")] == ["alice", "bob", "carol", "dave"]
    assert [r[0] for r in listed("globex")] == ["bob", "dave"]
    # an organization bound to no role may contact anyone, and anyone it: its agents are
    # every role's to act as, so through them a role reaches every agent
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.register_organization('freelancers')")
        admin.execute("SELECT amp.register_agent('frank', 'freelancers')")
    assert ("frank", "freelancers", False) in listed("globex")
    assert [r[0] for r in listed("mallory")] == ["alice", "bob", "carol", "dave", "frank"]
    assert ("alice", "acme", None) in listed("mallory")
    # pages, and the arguments
    with world.connect("acme") as conn:
        page = conn.execute(
            "SELECT agent_external_id FROM amp.agent_list(NULL, 'bob', 2)"
        ).fetchall()
        assert page == [("carol",), ("dave",)]
        for statement, code in (
            ("SELECT * FROM amp.agent_list('nope')", "AM010"),
            ("SELECT * FROM amp.agent_list(NULL, NULL, 0)", "AM001"),
            ("SELECT * FROM amp.agent_organization(NULL)", "AM001"),
            ("SELECT * FROM amp.peek_deliveries('alice', NULL, 100000)", "AM001"),
            ("SELECT * FROM amp.peek_deliveries('alice', 'nobody')", "AM020"),
            ("SELECT * FROM amp.agent_meetings('alice', NULL)", "AM001"),
        ):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement)
            assert caught.value.sqlstate == code, statement


def test_catalog_boundary(world: World) -> None:
    with psycopg.connect(world.admin) as conn:
        # no application role has any privilege on a table or an internal function
        for role in ("amp_user", "amp_admin", world.acme_role, world.globex_role):
            bad = conn.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'amp'::regnamespace "
                "AND c.relkind = 'r' AND has_table_privilege(%s, c.oid, "
                "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')",
                (role,),
            ).fetchall()
            assert bad == [], (role, bad)
            internal = conn.execute(
                "SELECT p.proname FROM pg_proc p JOIN amp._api_functions() f ON f.name = p.proname "
                "WHERE p.pronamespace = 'amp'::regnamespace AND NOT f.public "
                "AND has_function_privilege(%s, p.oid, 'EXECUTE')",
                (role,),
            ).fetchall()
            assert internal == [], (role, internal)
        # every function: SECURITY DEFINER, pinned search_path, owned by the NOLOGIN owner
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig, "
            "p.proowner::regrole::text, "
            "o.rolcanlogin FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner "
            "WHERE p.pronamespace = 'amp'::regnamespace AND p.prokind = 'f'"
        ).fetchall()
        assert len(rows) > 60
        for name, definer, config, owner, can_login in rows:
            assert definer, name
            # the pin, and for the delivery bookkeeping generic plans (sql/delivery.sql)
            assert config[-1] == "search_path=pg_catalog, amp, pg_temp", (name, config)
            assert set(config[:-1]) <= {"plan_cache_mode=force_generic_plan"}, (name, config)
            assert owner == "amp_owner" and not can_login, (name, owner)
        # the one procedure (it COMMITs, so it may be neither SECURITY DEFINER nor
        # pinned): owned likewise, and everything it calls is schema-qualified
        procedures = conn.execute(
            "SELECT p.proname, p.proowner::regrole::text, p.prosrc FROM pg_proc p "
            "WHERE p.pronamespace = 'amp'::regnamespace AND p.prokind = 'p'"
        ).fetchall()
        assert [name for name, _, _ in procedures] == ["prune"]
        for _, owner, source in procedures:
            assert owner == "amp_owner"
            assert not re.search(r"(?<![.\w])prune_\w+\(", source), source
        # every function is classified, and only the public ones are executable
        unlisted = conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'amp'::regnamespace "
            "AND proname NOT IN (SELECT name FROM amp._api_functions())"
        ).fetchall()
        assert unlisted == []
        # the boundary is visible in the name: internals start with an underscore,
        # public functions never do
        misnamed = conn.execute(
            "SELECT name, public FROM amp._api_functions() WHERE public = starts_with(name, '_')"
        ).fetchall()
        assert misnamed == []
        public = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT p.proname FROM pg_proc p "
                "WHERE p.pronamespace = 'amp'::regnamespace "
                "AND has_function_privilege('amp_user', p.oid, 'EXECUTE')"
            )
        }
        # views: owned by amp_owner, security barriers, readable by amp_user
        views = conn.execute(
            "SELECT c.relname, c.relowner::regrole::text, c.reloptions, "
            "has_table_privilege('amp_user', c.oid, 'SELECT') FROM pg_class c "
            "WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind = 'v'"
        ).fetchall()
        assert len(views) == 6
        for name, owner, options, readable in views:
            assert owner == "amp_owner" and options == ["security_barrier=true"] and readable, name
        assert conn.execute(
            "SELECT has_schema_privilege('amp_user', 'amp', 'USAGE')"
        ).fetchone() == (True,)
        assert conn.execute(
            "SELECT has_schema_privilege('amp_user', 'amp', 'CREATE')"
        ).fetchone() == (False,)
    assert public == documented_functions()


def documented_functions() -> set[str]:
    """Every ``amp.name(`` that sql/README.md mentions."""
    text = (migrations.sql_dir() / "README.md").read_text()
    return set(re.findall(r"\bamp\.(\w+)\(", text))


def test_planted_function_in_public_is_not_called(world: World, roles: Roles) -> None:
    """A function in `public` that matches an unqualified built-in call better than
    the built-in does (hashtextextended(text, int) vs (text, bigint)) would run inside
    amp.sync_send if its search_path were the caller's."""
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION public.hashtextextended(text, int) RETURNS bigint "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted function called'; END $$"
        )
        admin.execute("GRANT EXECUTE ON FUNCTION public.hashtextextended(text, int) TO PUBLIC")
        admin.execute("SELECT amp.allow_contact('acme', 'globex')")
    with world.connect("acme") as conn:
        conn.execute("SET search_path = public, pg_catalog")
        # the plant is effective where the search_path is the caller's...
        with pytest.raises(psycopg.Error, match="planted function called"):
            conn.execute("SELECT hashtextextended('x', 0)")
        # ...and never called by the amp functions
        conn.execute("SELECT * FROM amp.sync_send('alice', 'bob', '1')")
        conn.execute("SELECT amp.cancel_wait('alice', 'bob', NULL)")
        conn.execute("SELECT amp.end_conversation('alice', 'bob')")


def test_non_superuser_migrator(server_dsn: str, roles: Roles) -> None:
    """`amp migrate` as a role that owns the database and is a member of amp_owner,
    not a superuser; and refusal to install into a schema owned by someone else."""
    migrator = roles.create("migrator", member_of=["amp_owner"])
    stranger = roles.create("stranger", login=False)
    name = f"amp_t_mig_{migrator[-8:]}"
    refused = f"{name}_x"
    admin_execute(server_dsn, f'CREATE DATABASE "{name}" OWNER "{migrator}"')
    admin_execute(server_dsn, f'CREATE DATABASE "{refused}" OWNER "{migrator}"')
    try:
        dsn = as_role(with_database(server_dsn, name), migrator)
        migrations.upgrade(dsn)
        migrations.upgrade(dsn)  # again: nothing to do, still fine
        with psycopg.connect(with_database(server_dsn, name)) as conn:
            assert conn.execute("SELECT amp.schema_version()").fetchone() == (
                migrations.head_revision(),
            )
            owners = conn.execute(
                "SELECT DISTINCT proowner::regrole::text FROM pg_proc "
                "WHERE pronamespace = 'amp'::regnamespace"
            ).fetchall()
            assert owners == [("amp_owner",)]
            assert conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (migrator,)
            ).fetchone() == (False,)
        # the application role works on it through the public API
        app_group, app_login = roles.organization("tenant")
        with psycopg.connect(
            as_role(with_database(server_dsn, name), app_login), autocommit=True
        ) as app:
            app.execute("SELECT amp.register_organization('o')")
            app.execute("SELECT amp.register_agent('a', 'o')")
            app.execute("SELECT amp.register_agent('b', 'o')")
            app.execute("SELECT amp.send_one_way('a', 'b', '1')")
        del app_group

        refused_admin = with_database(server_dsn, refused)
        admin_execute(refused_admin, f'CREATE SCHEMA amp AUTHORIZATION "{stranger}"')
        with pytest.raises(Exception, match="schema amp exists and belongs to role"):
            migrations.upgrade(as_role(refused_admin, migrator))
        with psycopg.connect(refused_admin) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_class WHERE relnamespace = 'amp'::regnamespace"
            ).fetchone() == (0,)
    finally:
        for db in (name, refused):
            admin_execute(server_dsn, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_roles_block_is_idempotent(server_dsn: str, roles: Roles) -> None:
    """Roles are cluster-wide: running the roles block again (as every migration of
    every database does) is harmless; it only creates what is missing. (A true race
    of two creators is handled by catching the duplicate; not provoked here.)"""
    block = (migrations.sql_dir() / "access.sql").read_text()
    roles_block = block.split("-- BEGIN roles", 1)[1].split("-- END roles", 1)[0]
    roles_block = roles_block.split("\n", 1)[1]
    done = [psql(server_dsn, roles_block, check=False) for _ in range(2)]
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    with psycopg.connect(server_dsn) as conn:
        found = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN "
            "('amp_owner', 'amp_user', 'amp_admin') ORDER BY 1"
        ).fetchall()
    assert found == [("amp_admin", False), ("amp_owner", False), ("amp_user", False)]


# ---------------------------------------------------------------------------
# The whole protocol with each organization's processes on their own role
# ---------------------------------------------------------------------------


async def test_full_scenario_on_organization_roles(world: World) -> None:
    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex')")
    # bob's handler in another OS process, logged in as globex's role
    bob = await AgentProcess.start(world.globex, "handle", "bob", "--reply")
    carol_proc: AgentProcess | None = None
    bob_meeting: AgentProcess | None = None
    try:
        await bob.expect("ready")
        async with (
            AgentMessaging[Any](make_config(world.acme)) as acme,
            AgentMessaging[Any](make_config(world.globex)) as globex,
        ):
            # one-way, handled by the other process
            await acme.one_way.send("alice", "bob", {"n": 1})
            handled = await bob.expect("handled")
            assert handled["content"] == {"n": 1}
            # sync across the two processes
            answer = await acme.sync_conversation.send_and_wait(
                "alice", "bob", {"q": 1}, timeout=60
            )
            assert answer == {"answer": {"q": 1}}
            # async: bob reads his inbox as globex
            await acme.async_conversation.send("alice", "bob", "see you at 3")
            got = await globex.async_conversation.get_unread_messages("bob")
            assert got == ["see you at 3"]
            # and may not read alice's, nor speak for her
            with pytest.raises(AccessDeniedError):
                await globex.async_conversation.get_unread_messages("alice")
            with pytest.raises(AccessDeniedError):
                await globex.one_way.send("alice", "carol", "forged")

            # a meeting across organizations: bob (globex) hands the turn to carol (acme),
            # whose turn times out and passes round robin to alice
            meeting = await acme.meeting.create_meeting(
                "alice", ["alice", "bob", "carol"], turn_duration=8
            )
            bob_meeting = await AgentProcess.spawn(
                *participant(world.globex, "bob", meeting, [{"op": "speak", "next": "carol"}])
            )
            carol_proc = await AgentProcess.spawn(
                *participant(world.acme, "carol", meeting, [{"op": "hang"}])
            )
            await bob_meeting.expect("attending")
            await carol_proc.expect("attending")
            await acme.meeting.wait_until_ready(meeting, timeout=60)
            await acme.meeting.start_meeting("alice", meeting, {"text": "agenda"}, "bob")
            await carol_proc.expect("hanging", timeout=60)
            signal = await acme.meeting.attend_meeting("alice", meeting, timeout=60)
            assert signal.your_turn
            await acme.meeting.end_meeting("alice", meeting)
            done = await bob_meeting.expect("done", timeout=60)
            history = await acme.meeting.get_meeting_history(meeting)
            said = [(m.sender_external_id, m.message_type) for m in history]
            assert ("bob", "meeting") in said
            timed_out = [
                m.system["agent_external_id"]
                for m in history
                if m.system is not None and m.system.get("event") == "agent_timed_out"
            ]
            assert timed_out == ["carol"]
            assert [m["seq"] for m in done["history"]] == [m.seq for m in history]
            # bob's organization reads the meeting bob took part in
            seen_by_globex = await globex.meeting.get_meeting_history(meeting)
            assert [m.seq for m in seen_by_globex] == [m.seq for m in history]
    finally:
        for proc in (bob, carol_proc, bob_meeting):
            if proc is not None:
                await proc.stop()


def participant(dsn: str, agent: str, meeting: UUID, plan: list[dict[str, Any]]) -> list[str]:
    import sys

    return [
        sys.executable,
        str(REPO / "tests" / "agents" / "meeting_participant.py"),
        dsn,
        agent,
        str(meeting),
        json.dumps(plan),
    ]


async def test_status_and_watch_show_the_organization_only(world: World) -> None:
    import subprocess
    import sys

    from agent_messaging.status import collect

    with psycopg.connect(world.admin, autocommit=True) as admin:
        admin.execute("SELECT amp.allow_contact('acme', 'globex')")
    watch = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_messaging.cli",
        "watch",
        "--database-url",
        world.acme,
        "--seconds",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert watch.stdout is not None
        line = await asyncio.wait_for(watch.stdout.readline(), 60)
        assert b"watching" in line, line
        async with (
            AgentMessaging[Any](make_config(world.acme)) as acme,
            AgentMessaging[Any](make_config(world.globex)) as globex,
        ):
            await globex.async_conversation.send("dave", "bob", "globex internal")
            await acme.async_conversation.send("alice", "carol", "acme internal")
            seen = await asyncio.wait_for(watch.stdout.readline(), 60)
            assert b"acme internal" in seen and b"alice -> carol" in seen, seen
            status = await collect(acme.db)
            assert [r["agent"] for r in status["inboxes"]] == ["carol"]
            assert {frozenset((r["agent_a"], r["agent_b"])) for r in status["conversations"]} == {
                frozenset(("alice", "carol"))
            }
    finally:
        watch.terminate()
        out, _ = await watch.communicate()
    assert b"globex internal" not in out
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "agent_messaging.cli",
            "status",
            "--json",
            "--database-url",
            world.globex,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert [r["agent"] for r in json.loads(done.stdout)["inboxes"]] == ["bob"]


def amp_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_messaging.cli", *args, "--database-url", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_roles_cli(dsn: str, roles: Roles) -> None:
    group, login = roles.reserve("cli_org"), roles.reserve("cli_app")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT amp.register_organization('initech')")
        conn.execute("SELECT amp.register_agent('peter', 'initech')")
        conn.execute("SELECT amp.register_organization('other')")
        conn.execute("SELECT amp.register_agent('olga', 'other')")
    for args in (
        ("roles", "create"),
        ("roles", "bind", "initech", group, "--create"),
        ("roles", "grant", login, group, "--create"),
        ("roles", "allow", "initech", "other", "--one-way"),
    ):
        done = amp_cli(dsn, *args)
        assert done.returncode == 0, (args, done.stderr)
    app = as_role(dsn, login)
    with psycopg.connect(app, autocommit=True) as conn:
        assert conn.execute(
            "SELECT amp.can_act_as('peter'), amp.can_act_as('olga')"
        ).fetchone() == (True, True)  # 'other' is bound to no role: open
    shown = amp_cli(dsn, "roles", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    agents = {r["agent"]: r for r in json.loads(shown.stdout)["agents"]}
    assert agents["peter"]["bound_role"] == group and agents["peter"]["bound_by"] == "organization"
    assert login in agents["peter"]["login_roles"].split(", ")
    assert agents["olga"]["bound_by"] == "open"
    assert json.loads(shown.stdout)["contacts"] == [
        {"from_organization": "initech", "to_organization": "other"}
    ]
    # run as the login role: it sees what it may act as, and may not administer
    mine = amp_cli(app, "roles", "show", "--json")
    assert mine.returncode == 0, mine.stderr
    assert {r["agent"] for r in json.loads(mine.stdout)["agents"]} == {"peter", "olga"}
    refused = amp_cli(app, "roles", "allow", "other", "initech")
    assert refused.returncode != 0
    assert "may not allow contact" in refused.stderr
