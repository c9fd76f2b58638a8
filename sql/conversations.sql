-- amp: synchronous conversations (ask and wait for the answer).
--
-- One sync session per pair: active -> waiting (an agent blocks in send_and_wait)
-- <-> active (it got its reply) -> ended. The waiting agent is locked_agent_id and
-- the request it waits on is waiting_for. Whoever waits LISTENs on its own agent
-- channel and reads amp.sync_result(request) after every hint.

-- Serialise everything that touches the sync session of one pair, including its
-- creation, when no row exists yet to lock.
CREATE OR REPLACE FUNCTION amp.lock_pair(p_agent_1 uuid, p_agent_2 uuid)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(
        'amp.sync:' || least(p_agent_1, p_agent_2)::text || greatest(p_agent_1, p_agent_2)::text,
        0))
$$;

-- The live sync session of a pair, locked, or NULL.
CREATE OR REPLACE FUNCTION amp.live_sync_session(p_agent_1 uuid, p_agent_2 uuid)
RETURNS amp.sessions
LANGUAGE sql AS $$
    SELECT * FROM amp.sessions
    WHERE agent_a_id = least(p_agent_1, p_agent_2)
      AND agent_b_id = greatest(p_agent_1, p_agent_2)
      AND session_type = 'sync' AND status <> 'ended'
    FOR UPDATE
$$;

-- Ask: store the request and mark the sender as waiting for the answer.
-- If the recipient is itself waiting on the sender, this message is the reply to
-- it (the conversation is a ping-pong) and is not pushed to a handler; either
-- way the sender now waits. Returns the session and the request's id.
CREATE OR REPLACE FUNCTION amp.sync_send(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    OUT session_id uuid, OUT request_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
    v_session amp.sessions;
    v_answers uuid;
    v_message amp.messages;
BEGIN
    v_pair := amp.resolve_pair(p_sender, p_recipient);
    PERFORM amp.lock_pair((v_pair.sender).id, (v_pair.recipient).id);
    v_session := amp.live_sync_session((v_pair.sender).id, (v_pair.recipient).id);
    IF v_session.id IS NULL THEN
        v_session := amp.get_or_create_session((v_pair.sender).id, (v_pair.recipient).id, 'sync');
    END IF;
    IF v_session.status = 'waiting' AND v_session.locked_agent_id = (v_pair.sender).id THEN
        PERFORM amp.raise_error('AM031', format(
            'agent %L is already waiting for a reply from %L', p_sender, p_recipient));
    END IF;
    IF v_session.status = 'waiting' THEN
        v_answers := v_session.waiting_for;  -- the recipient waits on us: this answers it
    END IF;
    v_message := amp.store_message('sync_request', (v_pair.sender).id, (v_pair.recipient).id,
                                   p_content, p_metadata, p_session_id => v_session.id,
                                   p_reply_to => v_answers, p_push => v_answers IS NULL);
    UPDATE amp.sessions
    SET status = 'waiting', locked_agent_id = (v_pair.sender).id,
        waiting_for = v_message.id, waiting_since = now()
    WHERE id = v_session.id;
    session_id := v_session.id;
    request_id := v_message.id;
END;
$$;

-- Answer the agent that waits on us. p_request, when given, must be the request
-- it waits on (a handler answering a request that was already answered, timed
-- out or ended gets AM031, as does anyone answering an agent that is not waiting).
CREATE OR REPLACE FUNCTION amp.sync_reply(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    p_request uuid DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
    v_session amp.sessions;
BEGIN
    v_pair := amp.resolve_pair(p_sender, p_recipient);
    PERFORM amp.lock_pair((v_pair.sender).id, (v_pair.recipient).id);
    v_session := amp.live_sync_session((v_pair.sender).id, (v_pair.recipient).id);
    IF v_session.id IS NULL THEN
        PERFORM amp.raise_error('AM030', format(
            'no conversation between %L and %L', p_sender, p_recipient));
    END IF;
    IF v_session.status <> 'waiting' OR v_session.locked_agent_id <> (v_pair.recipient).id
       OR v_session.waiting_for <> coalesce(p_request, v_session.waiting_for) THEN
        PERFORM amp.raise_error('AM031', format(
            'agent %L is not waiting for a reply from %L%s', p_recipient, p_sender,
            CASE WHEN p_request IS NULL THEN '' ELSE format(' to request %s', p_request) END));
    END IF;
    UPDATE amp.sessions
    SET status = 'active', locked_agent_id = NULL, waiting_for = NULL, waiting_since = NULL
    WHERE id = v_session.id;
    RETURN (amp.store_message('sync_reply', (v_pair.sender).id, (v_pair.recipient).id,
                              p_content, p_metadata, p_session_id => v_session.id,
                              p_reply_to => v_session.waiting_for)).id;
END;
$$;

-- The waiter gives up (timeout). Returns false if the request was answered (or
-- the conversation ended) first: then the waiter reads that outcome instead.
CREATE OR REPLACE FUNCTION amp.cancel_wait(p_agent text, p_other text, p_request uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
    v_session amp.sessions;
BEGIN
    v_pair := amp.resolve_pair(p_agent, p_other);
    PERFORM amp.lock_pair((v_pair.sender).id, (v_pair.recipient).id);
    v_session := amp.live_sync_session((v_pair.sender).id, (v_pair.recipient).id);
    IF v_session.id IS NULL OR v_session.waiting_for IS DISTINCT FROM p_request THEN
        RETURN false;
    END IF;
    UPDATE amp.sessions
    SET status = 'active', locked_agent_id = NULL, waiting_for = NULL, waiting_since = NULL
    WHERE id = v_session.id;
    PERFORM pg_notify(amp.agent_channel_by_id((v_pair.recipient).id), json_build_object(
        'kind', 'session', 'session_id', v_session.id, 'status', 'active')::text);
    RETURN true;
END;
$$;

-- End the pair's conversation: every waiter wakes with "ended"; nobody stays locked.
CREATE OR REPLACE FUNCTION amp.end_conversation(p_requester text, p_other text)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
    v_session amp.sessions;
    v_payload text;
BEGIN
    v_pair := amp.resolve_pair(p_requester, p_other);
    PERFORM amp.lock_pair((v_pair.sender).id, (v_pair.recipient).id);
    v_session := amp.live_sync_session((v_pair.sender).id, (v_pair.recipient).id);
    IF v_session.id IS NULL THEN
        PERFORM amp.raise_error('AM030', format(
            'no conversation between %L and %L', p_requester, p_other));
    END IF;
    UPDATE amp.sessions
    SET status = 'ended', ended_at = now(),
        locked_agent_id = NULL, waiting_for = NULL, waiting_since = NULL
    WHERE id = v_session.id;
    v_payload := json_build_object(
        'kind', 'session', 'session_id', v_session.id, 'status', 'ended')::text;
    PERFORM pg_notify(amp.agent_channel_by_id((v_pair.sender).id), v_payload);
    PERFORM pg_notify(amp.agent_channel_by_id((v_pair.recipient).id), v_payload);
    RETURN v_session.id;
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
        PERFORM amp.raise_error('AM030', format('no sync request %s', p_request));
    END IF;
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
      AND (amp.get_agent(p_agent)).id IN (s.agent_a_id, s.agent_b_id)
      AND s.locked_agent_id <> (amp.get_agent(p_agent)).id
    ORDER BY s.waiting_since
$$;
