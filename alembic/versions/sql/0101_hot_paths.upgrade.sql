-- agent-messaging revision 0101 (upgrade): faster hot paths.
-- * Internal SQL-language functions become PL/pgSQL. PostgreSQL before 18 plans a
--   SQL function's body again on every call it cannot inline, and a SECURITY
--   DEFINER function with SET search_path is never inlined: each send paid for
--   planning about ten of them. PL/pgSQL keeps its plans for the session. Same
--   signatures, same results.
-- * amp.sync_result found a request's reply by walking the history in seq order
--   (on (reply_to) alone the planner preferred messages_seq_key for ORDER BY seq
--   LIMIT 1): the index is now (reply_to, seq), one probe.
-- * amp.claim_deliveries settles expired leases and moot sync requests among its
--   candidates instead of sweeping with two extra statements, so the two indexes
--   of those sweeps go; with no index on the columns a lease changes, a claim is a
--   HOT update, and amp.deliveries gets fillfactor 50 to leave room for it.
-- * amp.sync_reply (and amp.sync_send answering a waiting request) settles the
--   answered request's push delivery (new internal amp.settle_answered): the
--   handler that replied needs no separate acknowledgement; an acknowledgement
--   after the reply (as 0.1.0 clients send) is accepted as a no-op (new internal
--   amp.answered_request).
-- * amp.require_worker checks every agent a worker serves in one query (it ran a
--   PL/pgSQL identity check per agent at every claim: 1000 agents, 1000 calls).
-- Frozen once released: never edit it after the release tag.

DROP INDEX amp.deliveries_leased_idx;
DROP INDEX amp.deliveries_requests_idx;
ALTER TABLE amp.deliveries SET (fillfactor = 50);
-- (building it reads the history once, with writes to amp.messages held meanwhile)
DROP INDEX amp.messages_reply_to_idx;
CREATE INDEX messages_reply_to_idx ON amp.messages (reply_to, seq) WHERE reply_to IS NOT NULL;

CREATE OR REPLACE FUNCTION amp.require_worker(p_worker uuid, p_check_agents boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_role  name;
    v_agent amp.agents;
BEGIN
    SELECT login_role INTO v_role FROM amp.workers WHERE id = p_worker;
    IF NOT FOUND THEN
        RETURN true;
    END IF;
    IF v_role <> session_user AND NOT amp.is_admin() THEN
        PERFORM amp.raise_error('AM060', format(
            'role %I may not use worker %s (registered by role %I)', session_user, p_worker, v_role));
    END IF;
    IF p_check_agents THEN
        -- amp.role_may_act_as for every agent served, as one query (a worker may serve
        -- thousands of agents, and this runs at every claim): an agent with no
        -- binding takes amp_user, a bound one a member of a bound role or amp_admin
        WITH binding AS MATERIALIZED (
            SELECT b.agent_id, b.organization_id,
                   coalesce(pg_has_role(session_user, to_regrole(quote_ident(b.role_name)),
                                        'MEMBER'), false) AS member
            FROM amp.role_bindings b
        )
        SELECT a.* INTO v_agent
        FROM amp.worker_agents wa JOIN amp.agents a ON a.id = wa.agent_id
        WHERE wa.worker_id = p_worker
          AND NOT CASE
              WHEN NOT EXISTS (SELECT 1 FROM binding x
                               WHERE x.agent_id = a.id OR x.organization_id = a.organization_id)
                  THEN pg_has_role(session_user, 'amp_user', 'MEMBER')
              ELSE EXISTS (SELECT 1 FROM binding x
                           WHERE (x.agent_id = a.id OR x.organization_id = a.organization_id)
                             AND x.member)
                   OR pg_has_role(session_user, 'amp_admin', 'MEMBER')
          END
        LIMIT 1;
        IF FOUND THEN
            PERFORM amp.require_actor(v_agent);  -- raises AM060 naming the agent
        END IF;
    END IF;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION amp.is_admin()
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN pg_has_role(session_user, 'amp_admin', 'MEMBER');
END;
$$;

CREATE OR REPLACE FUNCTION amp.role_may_act_as(p_role name, p_agent amp.agents)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_bindings bigint;
    v_member boolean;
BEGIN
    SELECT count(*),
           coalesce(bool_or(pg_has_role(p_role, to_regrole(quote_ident(b.role_name)), 'MEMBER')),
                    false)
    INTO v_bindings, v_member
    FROM amp.role_bindings b
    WHERE b.agent_id = p_agent.id OR b.organization_id = p_agent.organization_id;
    IF v_bindings = 0 THEN   -- open: every member of amp_user
        RETURN pg_has_role(p_role, 'amp_user', 'MEMBER');
    END IF;
    RETURN v_member OR pg_has_role(p_role, 'amp_admin', 'MEMBER');
END;
$$;

CREATE OR REPLACE FUNCTION amp.may_act_as(p_agent amp.agents)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp.role_may_act_as(session_user, p_agent);
END;
$$;

CREATE OR REPLACE FUNCTION amp.may_act_as_id(p_agent_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents;
BEGIN
    SELECT * INTO v_agent FROM amp.agents a WHERE a.id = p_agent_id;
    RETURN FOUND AND amp.role_may_act_as(session_user, v_agent);
END;
$$;

CREATE OR REPLACE FUNCTION amp.organization_bound(p_organization_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM amp.role_bindings WHERE organization_id = p_organization_id);
END;
$$;

CREATE OR REPLACE FUNCTION amp.may_read_meeting(p_meeting uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp.is_admin() OR EXISTS (
        SELECT 1 FROM amp.meeting_participants p JOIN amp.agents a ON a.id = p.agent_id
        WHERE p.meeting_id = p_meeting AND amp.may_act_as(a));
END;
$$;

CREATE OR REPLACE FUNCTION amp.may_read_message(p_message amp.messages)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (p_message.sender_id IS NOT NULL AND amp.may_act_as_id(p_message.sender_id))
        OR (p_message.recipient_id IS NOT NULL AND amp.may_act_as_id(p_message.recipient_id))
        OR (p_message.meeting_id IS NOT NULL AND amp.may_read_meeting(p_message.meeting_id));
END;
$$;

CREATE OR REPLACE FUNCTION amp.agent_channel_by_id(p_agent_id uuid)
RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $$
BEGIN
    RETURN (SELECT channel FROM amp.agent_channels WHERE agent_id = p_agent_id);
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_channel(p_meeting_id uuid)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    RETURN 'amp_meeting_' || replace(p_meeting_id::text, '-', '');
END;
$$;

CREATE OR REPLACE FUNCTION amp.unlock_session(p_session_id uuid, p_status text DEFAULT 'active')
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE amp.sessions
    SET status = p_status, locked_agent_id = NULL, waiting_for = NULL, waiting_since = NULL,
        wait_deadline = NULL, ended_at = CASE WHEN p_status = 'ended' THEN now() END
    WHERE id = p_session_id;
END;
$$;

CREATE OR REPLACE FUNCTION amp.sync_send(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    p_idempotency_key text DEFAULT NULL, p_timeout interval DEFAULT NULL,
    OUT session_id uuid, OUT request_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_session amp.sessions;
    v_answers uuid;
    v_message amp.messages;
BEGIN
    v := amp.lock_sync_session(p_sender, p_recipient);
    IF p_idempotency_key IS NOT NULL THEN
        v_message := amp.idempotent_message((v.agent).id, p_idempotency_key, 'sync_request',
                                            (v.other).id);
        IF v_message.id IS NOT NULL THEN
            session_id := v_message.session_id;
            request_id := v_message.id;
            RETURN;
        END IF;
    END IF;
    IF p_timeout IS NOT NULL AND NOT p_timeout > interval '0' THEN
        PERFORM amp.raise_error('AM001', 'a wait timeout must be positive');
    END IF;
    v_session := v.session;
    IF v_session.id IS NULL THEN
        v_session := amp.get_or_create_session((v.agent).id, (v.other).id, 'sync');
    END IF;
    IF v_session.status = 'waiting' AND v_session.locked_agent_id = (v.agent).id THEN
        PERFORM amp.raise_error('AM031', format(
            'agent %L is already waiting for a reply from %L', p_sender, p_recipient));
    END IF;
    IF v_session.status = 'waiting' THEN
        v_answers := v_session.waiting_for;  -- the recipient waits on us: this answers it
    END IF;
    v_message := amp.store_message('sync_request', (v.agent).id, (v.other).id,
                                   p_content, p_metadata, p_session_id => v_session.id,
                                   p_reply_to => v_answers, p_push => v_answers IS NULL,
                                   p_idempotency_key => p_idempotency_key);
    UPDATE amp.sessions
    SET status = 'waiting', locked_agent_id = (v.agent).id,
        waiting_for = v_message.id, waiting_since = now(), wait_deadline = now() + p_timeout
    WHERE id = v_session.id;
    IF v_answers IS NOT NULL THEN
        PERFORM amp.settle_answered(v_answers);
    END IF;
    session_id := v_session.id;
    request_id := v_message.id;
END;
$$;

CREATE OR REPLACE FUNCTION amp.sync_reply(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    p_request uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_reply amp.messages;
BEGIN
    v := amp.require_sync_session(p_sender, p_recipient);
    IF (v.session).status <> 'waiting' OR (v.session).locked_agent_id <> (v.other).id
       OR (v.session).waiting_for <> coalesce(p_request, (v.session).waiting_for) THEN
        PERFORM amp.raise_error('AM031', format(
            'agent %L is not waiting for a reply from %L%s', p_recipient, p_sender,
            CASE WHEN p_request IS NULL THEN '' ELSE format(' to request %s', p_request) END));
    END IF;
    PERFORM amp.unlock_session((v.session).id);
    v_reply := amp.store_message('sync_reply', (v.agent).id, (v.other).id,
                                 p_content, p_metadata, p_session_id => (v.session).id,
                                 p_reply_to => (v.session).waiting_for);
    -- answering is handling: the handler that replied needs no acknowledgement
    PERFORM amp.settle_answered((v.session).waiting_for);
    RETURN v_reply.id;
END;
$$;

CREATE OR REPLACE FUNCTION amp.notify_message(p_message amp.messages)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        amp.agent_channel_by_id(p_message.recipient_id),
        (json_strip_nulls(json_build_object(
            'kind', 'message',
            'message_id', p_message.id,
            'message_type', p_message.message_type,
            'session_id', p_message.session_id,
            'meeting_id', p_message.meeting_id,
            'reply_to', p_message.reply_to))::jsonb
         || CASE WHEN p_message.message_type = 'sync_reply'
                  AND current_setting('amp.notify_content', true) = 'on'
                  AND octet_length(p_message.content::text) <= coalesce(nullif(
                      current_setting('amp.notify_content_bytes', true), '')::int, 4000)
             THEN jsonb_build_object('reply', jsonb_build_object('content', p_message.content))
             ELSE '{}'::jsonb END)::text);
END;
$$;

CREATE OR REPLACE FUNCTION amp.notify_delivery(p_message amp.messages)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_message.sender_id IS NOT NULL THEN
        PERFORM pg_notify(
            amp.agent_channel_by_id(p_message.sender_id),
            json_build_object(
                'kind', 'delivery',
                'message_id', p_message.id,
                'status', p_message.delivery_status)::text);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.heartbeat(p_worker uuid)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM amp.require_worker(p_worker);
    UPDATE amp.workers SET heartbeat_at = now() WHERE id = p_worker;
    -- workers silent for an hour are gone; their claims expire on their own
    DELETE FROM amp.workers WHERE heartbeat_at < now() - interval '1 hour';
END;
$$;

CREATE OR REPLACE FUNCTION amp.lease_commit()
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
END;
$$;

CREATE OR REPLACE FUNCTION amp.next_delivery_at(p_worker uuid)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM amp.require_worker(p_worker);
    RETURN (
        SELECT min(CASE WHEN d.claim_expires_at IS NOT NULL
                        THEN greatest(d.claim_expires_at, d.available_at)
                        ELSE d.available_at END)
        FROM amp.deliveries d
        JOIN amp.worker_agents wa ON wa.agent_id = d.recipient_id AND wa.worker_id = p_worker);
END;
$$;

CREATE OR REPLACE FUNCTION amp.claim_deliveries(
    p_worker uuid, p_limit integer, p_lease interval, p_max_attempts integer)
RETURNS TABLE (
    id uuid, seq bigint, message_type text, content jsonb, metadata jsonb,
    session_id uuid, meeting_id uuid, attempts integer,
    sender_external_id text, sender_name text,
    recipient_external_id text, recipient_name text)
LANGUAGE plpgsql AS $$
DECLARE
    v_candidates uuid[];
    v_candidate record;
    v_ids uuid[] := '{}';      -- to lease
    v_expired uuid[] := '{}';  -- lease expired, attempts used up: failed
    v_moot uuid[] := '{}';     -- sync requests no longer awaited
    v_settled amp.messages;
BEGIN
    PERFORM amp.require_worker(p_worker, true);
    PERFORM amp.lease_commit();
    -- The oldest deliverable messages, locked (SKIP LOCKED: rows another worker is
    -- claiming right now are its own). A worker of a few agents reads each agent's
    -- backlog in seq order from deliveries_recipient_idx and stops at p_limit; one
    -- of many agents (a process serving thousands, mostly idle) joins the whole,
    -- usually small, table instead of probing the index once per agent.
    IF (SELECT count(*) FROM (SELECT 1 FROM amp.worker_agents wa
                              WHERE wa.worker_id = p_worker LIMIT 33) few) <= 32 THEN
        v_candidates := ARRAY(
            SELECT c.message_id
            FROM amp.worker_agents wa
            CROSS JOIN LATERAL (
                SELECT d.message_id, d.seq FROM amp.deliveries d
                WHERE d.recipient_id = wa.agent_id AND d.available_at <= now()
                  AND (d.claim_expires_at IS NULL OR d.claim_expires_at < now())
                ORDER BY d.seq
                LIMIT p_limit
                FOR UPDATE OF d SKIP LOCKED
            ) c
            WHERE wa.worker_id = p_worker
            ORDER BY c.seq
            LIMIT p_limit);
    ELSE
        v_candidates := ARRAY(
            SELECT d.message_id
            FROM amp.deliveries d
            JOIN amp.worker_agents wa ON wa.agent_id = d.recipient_id AND wa.worker_id = p_worker
            WHERE d.available_at <= now()
              AND (d.claim_expires_at IS NULL OR d.claim_expires_at < now())
            ORDER BY d.seq
            LIMIT p_limit
            FOR UPDATE OF d SKIP LOCKED);
    END IF;
    FOR v_candidate IN
        SELECT d.message_id, d.message_type, d.attempts, d.claim_expires_at
        FROM amp.deliveries d WHERE d.message_id = ANY (v_candidates)
    LOOP
        IF v_candidate.claim_expires_at IS NOT NULL AND v_candidate.attempts >= p_max_attempts THEN
            v_expired := v_expired || v_candidate.message_id;
        ELSIF v_candidate.message_type = 'sync_request' AND NOT EXISTS (
                SELECT 1 FROM amp.messages m JOIN amp.sessions s ON s.id = m.session_id
                WHERE m.id = v_candidate.message_id AND s.waiting_for = m.id
                  AND (s.wait_deadline IS NULL OR s.wait_deadline > now())) THEN
            v_moot := v_moot || v_candidate.message_id;
        ELSE
            v_ids := v_ids || v_candidate.message_id;
        END IF;
    END LOOP;

    IF cardinality(v_expired) > 0 THEN
        FOR v_settled IN
            WITH gone AS (
                DELETE FROM amp.deliveries d WHERE d.message_id = ANY (v_expired)
                RETURNING d.*
            )
            UPDATE amp.messages m
            SET delivery_status = 'failed', attempts = g.attempts,
                last_error = coalesce(g.last_error, 'lease expired: the handler process stopped')
            FROM gone g
            WHERE m.id = g.message_id
            RETURNING m.*
        LOOP
            PERFORM amp.notify_delivery(v_settled);
        END LOOP;
    END IF;
    IF cardinality(v_moot) > 0 THEN
        FOR v_settled IN
            WITH gone AS (
                DELETE FROM amp.deliveries d WHERE d.message_id = ANY (v_moot)
                RETURNING d.*
            )
            UPDATE amp.messages m
            SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
                last_error = 'not handled: no longer awaited'
            FROM gone g
            WHERE m.id = g.message_id
            RETURNING m.*
        LOOP
            PERFORM amp.notify_delivery(v_settled);
        END LOOP;
    END IF;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    -- the lease by primary key (no indexed column changes: a HOT update)
    RETURN QUERY
    WITH claimed AS (
        UPDATE amp.deliveries d
        SET claimed_by = p_worker, claim_expires_at = now() + p_lease, attempts = d.attempts + 1
        WHERE d.message_id = ANY (v_ids)
        RETURNING d.message_id, d.attempts
    )
    SELECT m.id, m.seq, m.message_type, m.content, m.metadata, m.session_id, m.meeting_id,
           c.attempts, s.external_id, s.name, r.external_id, r.name
    FROM claimed c
    JOIN amp.messages m ON m.id = c.message_id
    LEFT JOIN amp.agents s ON s.id = m.sender_id
    JOIN amp.agents r ON r.id = m.recipient_id
    ORDER BY m.seq;
END;
$$;

CREATE OR REPLACE FUNCTION amp.ack_delivery(p_worker uuid, p_message_id uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp.require_worker(p_worker);
    WITH gone AS (
        DELETE FROM amp.deliveries d
        WHERE d.message_id = p_message_id AND d.claimed_by = p_worker
        RETURNING d.message_id, d.attempts, d.last_error
    )
    UPDATE amp.messages m
    SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
        last_error = g.last_error
    FROM gone g
    WHERE m.id = g.message_id
    RETURNING m.* INTO v_message;
    IF v_message.id IS NULL THEN
        IF amp.answered_request(p_message_id) THEN
            RETURN;  -- settled by its answer (amp.sync_reply): nothing left to acknowledge
        END IF;
        PERFORM amp.raise_error('AM050', format(
            'message %s is not leased by worker %s (lease expired?)', p_message_id, p_worker));
    END IF;
    PERFORM amp.notify_delivery(v_message);
END;
$$;

CREATE OR REPLACE FUNCTION amp.ack_deliveries(p_worker uuid, p_message_ids uuid[])
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_acked uuid[];
    v_sender record;
BEGIN
    PERFORM amp.require_worker(p_worker);
    PERFORM amp.lease_commit();
    WITH gone AS (
        DELETE FROM amp.deliveries d
        WHERE d.message_id = ANY (p_message_ids) AND d.claimed_by = p_worker
        RETURNING d.message_id, d.attempts, d.last_error
    ), acked AS (
        UPDATE amp.messages m
        SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
            last_error = g.last_error
        FROM gone g
        WHERE m.id = g.message_id
        RETURNING m.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO v_acked FROM acked;
    FOR v_sender IN
        SELECT sender_id, count(*) AS n FROM amp.messages
        WHERE id = ANY (v_acked) AND sender_id IS NOT NULL
        GROUP BY sender_id
    LOOP
        PERFORM pg_notify(amp.agent_channel_by_id(v_sender.sender_id), json_build_object(
            'kind', 'delivery', 'status', 'delivered', 'count', v_sender.n)::text);
    END LOOP;
    IF cardinality(v_acked) < cardinality(p_message_ids) THEN
        -- sync requests their answers settled count as acknowledged
        v_acked := v_acked || ARRAY(
            SELECT x.id FROM unnest(p_message_ids) AS x(id)
            WHERE x.id <> ALL (v_acked) AND amp.answered_request(x.id));
    END IF;
    RETURN QUERY SELECT unnest(v_acked);
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_system_message(
    p_meeting uuid, p_event text, p_agent_id uuid, p_text text)
RETURNS amp.messages
LANGUAGE plpgsql AS $$
BEGIN
    RETURN amp.store_message('system', NULL, NULL, jsonb_build_object(
        'event', p_event,
        'agent_external_id', (SELECT external_id FROM amp.agents WHERE id = p_agent_id),
        'text', p_text), p_meeting_id => p_meeting);
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_next_after(p_meeting uuid, p_agent_id uuid)
RETURNS uuid
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH me AS (
            SELECT join_order FROM amp.meeting_participants
            WHERE meeting_id = p_meeting AND agent_id = p_agent_id)
        SELECT p.agent_id FROM amp.meeting_participants p, me
        WHERE p.meeting_id = p_meeting AND p.status <> 'left'
        ORDER BY p.join_order <= me.join_order, p.join_order
        LIMIT 1);
END;
$$;

CREATE OR REPLACE FUNCTION amp.next_turn_deadline()
RETURNS double precision
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT extract(epoch FROM min(turn_deadline) - clock_timestamp())::double precision
        FROM amp.meetings
        WHERE status = 'active' AND turn_deadline IS NOT NULL);
END;
$$;

CREATE OR REPLACE FUNCTION amp.settings_spec()
RETURNS TABLE (key text, default_value bigint, min_value bigint, max_value bigint,
               description text)
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN QUERY VALUES
        ('max_message_bytes', 1048576::bigint, 64::bigint, 268435455::bigint,
         'largest message: bytes of content plus metadata as JSON text'),
        ('default_page_size', 100, 1, 100000,
         'messages an inbox read returns when no limit is given'),
        ('max_page_size', 1000, 1, 100000,
         'largest limit an inbox read accepts'),
        ('max_turn_duration_seconds', 604800, 1, 31536000,
         'longest meeting turn duration (default one week)');
END;
$$;

CREATE OR REPLACE FUNCTION amp.settle_answered(p_request uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_settled amp.messages;
BEGIN
    FOR v_settled IN
        WITH gone AS (
            DELETE FROM amp.deliveries d WHERE d.message_id = p_request
            RETURNING d.message_id, d.attempts, d.last_error
        )
        UPDATE amp.messages m
        SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
            last_error = g.last_error
        FROM gone g
        WHERE m.id = g.message_id
        RETURNING m.*
    LOOP
        PERFORM amp.notify_delivery(v_settled);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION amp.answered_request(p_message_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM amp.messages m
                   WHERE m.id = p_message_id AND m.message_type = 'sync_request'
                     AND m.delivery_status = 'delivered');
END;
$$;

-- CREATE OR REPLACE resets SECURITY DEFINER and SET search_path: the security file
-- of this revision (a frozen copy of sql/security.sql) applies them again.
-- amp: the public SQL API boundary. Applied after every other file (manifest.txt)
-- and idempotent: whatever (re)creates amp functions applies this file again.
--
-- For every function of schema amp it
--   - makes it SECURITY DEFINER, owned by amp_owner (NOLOGIN), so application
--     roles need no privilege on any table: the functions are the only writers;
--   - pins SET search_path = pg_catalog, amp, pg_temp, so a function or operator
--     planted in another schema (or a temporary one) is never called instead of a
--     built-in;
--   - revokes EXECUTE from PUBLIC and grants it to amp_user only for the public API
--     listed in amp.api_functions() (the functions documented in sql/README.md).
-- Tables and views are owned by amp_owner; amp_user may SELECT the views only
-- (they show each role its own rows, see views.sql) and use the schema.
--
-- Inside a SECURITY DEFINER function current_user is amp_owner; the identity
-- checks of access.sql look at session_user, the role the client logged in as.

-- Every amp function, public or internal. A new function goes in one list; a test
-- checks that each function is listed and that the public ones are the documented
-- ones. (Internal names will get a leading underscore in a later, mechanical rename.)
CREATE OR REPLACE FUNCTION amp.api_functions()
RETURNS TABLE (name text, public boolean)
LANGUAGE sql IMMUTABLE AS $$
    SELECT name, true FROM unnest(ARRAY[
        -- errors, channels, LISTEN
        'error_codes', 'agent_channel', 'meeting_channel', 'listen', 'unlisten',
        -- organizations and agents
        'register_organization', 'get_organization', 'register_agent', 'get_agent',
        -- one-way and push delivery (workers)
        'send_one_way', 'send_one_way_many', 'delivery_outcome', 'register_worker', 'serve_agents', 'heartbeat', 'claim_deliveries',
        'ack_delivery', 'ack_deliveries', 'fail_delivery', 'next_delivery_at',
        'unregister_worker', 'extend_leases',
        -- asynchronous conversations
        'async_send', 'read_unread', 'confirm_read', 'reject_unread', 'peek_unread',
        'inbox_messages', 'mark_unread',
        -- synchronous conversations
        'sync_send', 'sync_reply', 'cancel_wait', 'end_conversation', 'sync_result',
        'awaiting_reply', 'get_session',
        -- meetings
        'create_meeting', 'attend_meeting', 'start_meeting', 'speak', 'leave_meeting',
        'end_meeting', 'expire_turns', 'meeting_status', 'meeting_participant_list',
        'meeting_history', 'meeting_turn', 'meeting_events_after', 'meeting_events_max_seq',
        'get_meeting', 'next_turn_deadline',
        -- retention (amp.prune is a procedure: CALL amp.prune(...))
        'prune', 'retention', 'prune_horizon', 'prune_messages', 'prune_meetings', 'prune_sessions',
        -- limits (amp.settings, written by the schema owner only)
        'settings_spec', 'effective_settings',
        -- access control
        'bind_organization', 'bind_agent', 'unbind_organization', 'unbind_agent',
        'allow_contact', 'revoke_contact', 'can_act_as', 'role_map', 'contact_list',
        'agent_channels', 'get_message', 'schema_version', 'schema_state',
        -- the views' filters (a view calls functions with its reader's rights)
        'may_act_as_id', 'may_read_meeting'
    ]) AS name
    UNION ALL
    SELECT name, false FROM unnest(ARRAY[
        -- agents.sql, schema.sql
        'raise_error', 'agent_channel_by_id', 'require_external_id', 'require_name',
        'touch_updated_at', 'name_agent_channel', 'enqueue_delivery', 'setting', 'settings_check', 'page_size',
        -- delivery.sql
        'check_message', 'check_json', 'resolve_pair', 'store_message', 'idempotent_message',
        'notify_message', 'notify_delivery', 'lease_commit', 'require_worker_arg',
        'answered_request',
        -- retention.sql
        'prune_answer_kept',
        -- inbox.sql, conversations.sql
        'get_or_create_session', 'lock_sync_session', 'require_sync_session', 'unlock_session',
        'settle_answered',
        -- meetings.sql
        'meeting_lock', 'meeting_lock_as_host', 'meeting_member', 'meeting_record_event',
        'meeting_system_message', 'meeting_next_after', 'meeting_pick_next',
        'meeting_give_turn', 'meeting_expire', 'meeting_check_ready',
        -- access.sql
        'is_admin', 'role_may_act_as', 'may_act_as', 'require_actor',
        'acting_agent', 'require_organization_actor', 'organization_bound', 'require_contact',
        'require_admin', 'require_worker', 'require_meeting_reader',
        'may_read_message', 'require_message_reader', 'require_role_exists',
        -- this file
        'api_functions'
    ]) AS name
$$;

DO $secure$
DECLARE
    r record;
BEGIN
    -- Install only into a schema of our own: `amp migrate` runs as a superuser, the
    -- schema's owner, or a member of it (amp_owner).
    IF NOT pg_has_role(current_user,
                       (SELECT nspowner FROM pg_namespace WHERE nspname = 'amp'), 'USAGE') THEN
        RAISE EXCEPTION 'schema amp is owned by role %, and role % is not a member of it',
            (SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'amp'), current_user
            USING HINT = 'run "amp migrate" as a superuser or a member of amp_owner';
    END IF;
    -- The schema goes to amp_owner where the migrator may hand it over (a
    -- superuser; a member of amp_owner when amp_owner may CREATE in the database).
    IF (SELECT nspowner FROM pg_namespace WHERE nspname = 'amp') <> 'amp_owner'::regrole THEN
        BEGIN
            ALTER SCHEMA amp OWNER TO amp_owner;
        EXCEPTION WHEN insufficient_privilege THEN
            GRANT USAGE, CREATE ON SCHEMA amp TO amp_owner;
        END;
    END IF;
    REVOKE ALL ON SCHEMA amp FROM PUBLIC;
    GRANT USAGE ON SCHEMA amp TO amp_user;

    -- Tables (with their identity sequences) and views: owned by amp_owner, nothing
    -- for PUBLIC or amp_user on tables; the views are granted by views.sql's rule below.
    FOR r IN
        SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
        WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
    LOOP
        IF r.relkind = 'v' THEN
            EXECUTE format('ALTER VIEW %s OWNER TO amp_owner', r.rel);
            EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, amp_user, amp_admin', r.rel);
            EXECUTE format('GRANT SELECT ON %s TO amp_user', r.rel);
        ELSE
            EXECUTE format('ALTER TABLE %s OWNER TO amp_owner', r.rel);
            EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, amp_user, amp_admin', r.rel);
        END IF;
    END LOOP;

    -- Functions.
    FOR r IN
        SELECT p.oid::regprocedure AS fn, p.proname::text AS name, p.prokind AS kind,
               coalesce((SELECT f.public FROM amp.api_functions() f WHERE f.name = p.proname),
                        false) AS public
        FROM pg_proc p WHERE p.pronamespace = 'amp'::regnamespace
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO amp_owner', r.fn);
        -- (a procedure that COMMITs, amp.prune, may be neither: it calls only
        -- schema-qualified, pinned functions)
        IF r.kind = 'f' THEN
            EXECUTE format(
                'ALTER ROUTINE %s SECURITY DEFINER SET search_path = pg_catalog, amp, pg_temp',
                r.fn);
        END IF;
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC, amp_user, amp_admin', r.fn);
        IF r.public THEN
            EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO amp_user', r.fn);
        END IF;
    END LOOP;
END
$secure$;
