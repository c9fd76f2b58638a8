-- amp: synchronous conversations (ask and wait for the answer).
--
-- One sync session per pair: active -> waiting (an agent asked and waits for the answer)
-- <-> active (it got its reply) -> ended. The waiting agent is locked_agent_id and
-- the request it waits on is waiting_for. Whoever waits LISTENs on its own agent
-- channel and reads amp.sync_result(request) after every hint.

-- The two agents of a call and their live sync session, locked. Everything that
-- touches the sync session of a pair goes through here: the advisory lock
-- serialises it even when no session row exists yet (get-or-create), the row lock
-- afterwards. The session is NULL when the pair has none. A wait whose deadline
-- passed is over here, for everyone: its waiter gave up (or died, or lost the
-- database before it could say so), so the pair is unlocked and the waiter woken.
CREATE OR REPLACE FUNCTION amp._lock_sync_session(
    p_agent text, p_other text,
    OUT agent amp.agents, OUT other amp.agents, OUT session amp.sessions,
    OUT other_channel text)
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
BEGIN
    v_pair := amp._resolve_pair(p_agent, p_other);
    agent := v_pair.sender;
    other := v_pair.recipient;
    other_channel := v_pair.recipient_channel;
    PERFORM pg_advisory_xact_lock(hashtextextended(
        'amp.sync:' || least(agent.id, other.id)::text || greatest(agent.id, other.id)::text, 0));
    SELECT * INTO session FROM amp.sessions s
    WHERE s.agent_a_id = least(agent.id, other.id) AND s.agent_b_id = greatest(agent.id, other.id)
      AND s.session_type = 'sync' AND s.ended_at IS NULL
    FOR UPDATE;
    IF session.status = 'waiting' AND session.wait_deadline < now() THEN
        PERFORM amp._unlock_session(session.id);
        PERFORM pg_notify(amp._agent_channel_by_id(session.locked_agent_id), json_build_object(
            'kind', 'session', 'session_id', session.id, 'status', 'active')::text);
        SELECT * INTO session FROM amp.sessions s WHERE s.id = session.id;
    END IF;
END;
$$;

-- The same, for calls that need the session to exist.
CREATE OR REPLACE FUNCTION amp._require_sync_session(
    p_agent text, p_other text,
    OUT agent amp.agents, OUT other amp.agents, OUT session amp.sessions,
    OUT other_channel text)
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    v := amp._lock_sync_session(p_agent, p_other);
    agent := v.agent;
    other := v.other;
    session := v.session;
    other_channel := v.other_channel;
    IF session.id IS NULL THEN
        PERFORM amp._raise_error('AM030', format('no conversation between %L and %L', p_agent, p_other));
    END IF;
END;
$$;

-- Nobody waits in the session any more.
CREATE OR REPLACE FUNCTION amp._unlock_session(p_session_id uuid, p_status text DEFAULT 'active')
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE amp.sessions
    SET status = p_status, locked_agent_id = NULL, waiting_for = NULL, waiting_since = NULL,
        wait_deadline = NULL, ended_at = CASE WHEN p_status = 'ended' THEN now() END
    WHERE id = p_session_id;
END;
$$;

-- Ask: store the request and mark the sender as waiting for the answer.
-- If the recipient is itself waiting on the sender, this message is the reply to
-- it (the conversation is a ping-pong) and is not pushed to a handler; either
-- way the sender now waits, until p_timeout from now if given (then the wait is
-- over by itself: see lock_sync_session). Returns the session and the request's id.
-- A repeat with the same idempotency key returns the first request, changing nothing.
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
    v := amp._lock_sync_session(p_sender, p_recipient);
    IF p_idempotency_key IS NOT NULL THEN
        v_message := amp._idempotent_message((v.agent).id, p_idempotency_key, 'sync_request',
                                            (v.other).id);
        IF v_message.id IS NOT NULL THEN
            session_id := v_message.session_id;
            request_id := v_message.id;
            RETURN;
        END IF;
    END IF;
    IF p_timeout IS NOT NULL AND NOT p_timeout > interval '0' THEN
        PERFORM amp._raise_error('AM001', 'a wait timeout must be positive');
    END IF;
    v_session := v.session;
    IF v_session.id IS NULL THEN
        v_session := amp._get_or_create_session((v.agent).id, (v.other).id, 'sync');
    END IF;
    IF v_session.status = 'waiting' AND v_session.locked_agent_id = (v.agent).id THEN
        PERFORM amp._raise_error('AM031', format(
            'agent %L is already waiting for a reply from %L', p_sender, p_recipient));
    END IF;
    IF v_session.status = 'waiting' THEN
        v_answers := v_session.waiting_for;  -- the recipient waits on us: this answers it
    END IF;
    v_message := amp._store_message('sync_request', (v.agent).id, (v.other).id,
                                   p_content, p_metadata, p_session_id => v_session.id,
                                   p_reply_to => v_answers, p_push => v_answers IS NULL,
                                   p_idempotency_key => p_idempotency_key,
                                   p_channel => v.other_channel);
    UPDATE amp.sessions
    SET status = 'waiting', locked_agent_id = (v.agent).id,
        waiting_for = v_message.id, waiting_since = now(), wait_deadline = now() + p_timeout
    WHERE id = v_session.id;
    IF v_answers IS NOT NULL THEN
        -- answered: its push delivery is over (no handler will run for it now)
        PERFORM amp._settle_deliveries(ARRAY[v_answers], 'delivered');
    END IF;
    session_id := v_session.id;
    request_id := v_message.id;
END;
$$;

-- Answer the agent that waits on us. p_request, when given, must be the request
-- it waits on (a handler answering a request that was already answered, timed
-- out or ended gets AM031, as does anyone answering an agent that is not waiting).
-- The request's push delivery ends with the answer (delivered): a handler that
-- replies is not acknowledged separately.
CREATE OR REPLACE FUNCTION amp.sync_reply(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    p_request uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_request uuid;
    v_reply amp.messages;
BEGIN
    v := amp._lock_sync_session(p_sender, p_recipient);
    IF (v.session).id IS NULL THEN
        PERFORM amp._raise_error('AM030', format('no conversation between %L and %L',
                                                 p_sender, p_recipient));
    END IF;
    v_request := (v.session).waiting_for;
    IF (v.session).status <> 'waiting' OR (v.session).locked_agent_id <> (v.other).id
       OR v_request <> coalesce(p_request, v_request) THEN
        PERFORM amp._raise_error('AM031', format(
            'agent %L is not waiting for a reply from %L%s', p_recipient, p_sender,
            CASE WHEN p_request IS NULL THEN '' ELSE format(' to request %s', p_request) END));
    END IF;
    -- (amp._unlock_session and amp._settle_deliveries for this one request, written
    -- out: this is half of every round trip, and the two calls cost 7-14 % of a
    -- question and its answer's server CPU, measured)
    UPDATE amp.sessions
    SET status = 'active', locked_agent_id = NULL, waiting_for = NULL, waiting_since = NULL,
        wait_deadline = NULL
    WHERE id = (v.session).id;
    v_reply := amp._store_message('sync_reply', (v.agent).id, (v.other).id,
                                 p_content, p_metadata, p_session_id => (v.session).id,
                                 p_reply_to => v_request, p_channel => v.other_channel);
    -- answering is handling: the handler that replied needs no acknowledgement, and
    -- the asker hears the answer itself (no delivery hint)
    WITH gone AS (
        DELETE FROM amp.deliveries d WHERE d.message_id = v_request
        RETURNING d.seq, d.attempts, d.last_error
    )
    UPDATE amp.messages m
    SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
        last_error = g.last_error
    FROM gone g WHERE m.seq = g.seq;
    RETURN v_reply.id;
END;
$$;

-- The waiter gives up (timeout). Returns false if the request was answered (or
-- the conversation ended) first: then the waiter reads that outcome instead.
CREATE OR REPLACE FUNCTION amp.cancel_wait(p_agent text, p_other text, p_request uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    v := amp._lock_sync_session(p_agent, p_other);
    IF (v.session).id IS NULL OR (v.session).waiting_for IS DISTINCT FROM p_request THEN
        RETURN false;
    END IF;
    PERFORM amp._unlock_session((v.session).id);
    PERFORM pg_notify(amp._agent_channel_by_id((v.other).id), json_build_object(
        'kind', 'session', 'session_id', (v.session).id, 'status', 'active')::text);
    RETURN true;
END;
$$;

-- End the pair's conversation: every waiter wakes with "ended"; nobody stays locked.
CREATE OR REPLACE FUNCTION amp.end_conversation(p_requester text, p_other text)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_payload text;
BEGIN
    v := amp._require_sync_session(p_requester, p_other);
    PERFORM amp._unlock_session((v.session).id, 'ended');
    v_payload := json_build_object(
        'kind', 'session', 'session_id', (v.session).id, 'status', 'ended')::text;
    PERFORM pg_notify(amp._agent_channel_by_id((v.agent).id), v_payload);
    PERFORM pg_notify(amp._agent_channel_by_id((v.other).id), v_payload);
    RETURN (v.session).id;
END;
$$;

-- What became of a request: 'replied' (with the reply), 'waiting', 'ended' (the
-- conversation was ended first) or 'cancelled' (the wait was given up).
CREATE OR REPLACE FUNCTION amp.sync_result(p_request uuid)
RETURNS TABLE (status text, reply_id uuid, content jsonb, metadata jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_request amp.messages;
    v_session amp.sessions;
    v_reply amp.messages;
BEGIN
    SELECT * INTO v_request FROM amp.messages m
    WHERE m.id = p_request AND m.message_type = 'sync_request';
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM030', format('no sync request %s', p_request));
    END IF;
    PERFORM amp._require_message_reader(v_request);
    SELECT * INTO v_reply FROM amp.messages m WHERE m.reply_to = p_request ORDER BY m.seq LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 'replied', v_reply.id, v_reply.content, v_reply.metadata;
        RETURN;
    END IF;
    SELECT * INTO v_session FROM amp.sessions s WHERE s.id = v_request.session_id;
    RETURN QUERY SELECT CASE
        WHEN v_session.status = 'ended' THEN 'ended'
        WHEN v_session.waiting_for = p_request THEN 'waiting'
        ELSE 'cancelled' END, NULL::uuid, NULL::jsonb, NULL::jsonb;
END;
$$;

-- Requests waiting for this agent's answer (for clients without a handler).
CREATE OR REPLACE FUNCTION amp.awaiting_reply(p_agent text)
RETURNS TABLE (session_id uuid, request_id uuid, sender_external_id text, content jsonb,
               metadata jsonb, waiting_since timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT s.id, m.id, w.external_id, m.content, m.metadata, s.waiting_since
    FROM amp.sessions s
    JOIN amp.messages m ON m.id = s.waiting_for
    JOIN amp.agents w ON w.id = s.locked_agent_id
    WHERE s.session_type = 'sync' AND s.status = 'waiting'
      AND (s.wait_deadline IS NULL OR s.wait_deadline > now())
      AND (amp._acting_agent(p_agent)).id IN (s.agent_a_id, s.agent_b_id)
      AND s.locked_agent_id <> (amp._acting_agent(p_agent)).id
    ORDER BY s.waiting_since
$$;

-- The latest conversation of two agents of one type ('sync' or 'async'), ended or
-- not (the planning's Session model); AM030 if they never had one.
CREATE OR REPLACE FUNCTION amp.get_session(p_agent text, p_other text, p_type text DEFAULT 'sync')
RETURNS SETOF amp.sessions
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_a amp.agents := amp._acting_agent(p_agent);
    v_b amp.agents := amp.get_agent(p_other);
BEGIN
    RETURN QUERY
    SELECT * FROM amp.sessions s
    WHERE s.agent_a_id = least(v_a.id, v_b.id) AND s.agent_b_id = greatest(v_a.id, v_b.id)
      AND s.session_type = p_type
    ORDER BY s.created_at DESC
    LIMIT 1;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM030', format(
            'agents %L and %L have no %s conversation', p_agent, p_other, p_type));
    END IF;
END;
$$;
