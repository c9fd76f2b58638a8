-- amp: asynchronous conversations, the inbox.
--
-- An async message is stored in the async session of its pair (created on first
-- send) and NOTIFYs the recipient; nobody blocks. The recipient pulls its unread
-- messages, which marks them read atomically: two readers never get the same one.

-- The live session of a pair and type, created if there is none. The partial
-- unique index decides a race between two creators; the loser gets the winner's row.
CREATE OR REPLACE FUNCTION amp.get_or_create_session(
    p_agent_1 uuid, p_agent_2 uuid, p_type text)
RETURNS amp.sessions
LANGUAGE plpgsql AS $$
DECLARE
    v_session amp.sessions;
BEGIN
    INSERT INTO amp.sessions (agent_a_id, agent_b_id, session_type)
    VALUES (least(p_agent_1, p_agent_2), greatest(p_agent_1, p_agent_2), p_type)
    ON CONFLICT (agent_a_id, agent_b_id, session_type) WHERE status <> 'ended'
    DO UPDATE SET updated_at = now()
    RETURNING * INTO v_session;
    RETURN v_session;
END;
$$;

-- Send an async message; returns its id. Never blocks.
CREATE OR REPLACE FUNCTION amp.async_send(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
    v_session amp.sessions;
BEGIN
    v_pair := amp.resolve_pair(p_sender, p_recipient);
    v_session := amp.get_or_create_session((v_pair.sender).id, (v_pair.recipient).id, 'async');
    RETURN (amp.store_message('async', (v_pair.sender).id, (v_pair.recipient).id,
                              p_content, p_metadata, p_session_id => v_session.id)).id;
END;
$$;

-- Take unread async messages of an agent (optionally only those from one sender),
-- oldest first, marking them read. Rows locked by a concurrent reader are skipped,
-- so concurrent readers split the inbox without overlap.
CREATE OR REPLACE FUNCTION amp.read_unread(
    p_agent text, p_sender text DEFAULT NULL, p_limit integer DEFAULT NULL)
RETURNS TABLE (
    id uuid, seq bigint, content jsonb, metadata jsonb, session_id uuid,
    sender_external_id text, sender_name text, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_agent amp.agents := amp.acting_agent(p_agent);
    v_sender_id uuid := CASE WHEN p_sender IS NULL THEN NULL ELSE (amp.get_agent(p_sender)).id END;
BEGIN
    RETURN QUERY
    WITH unread AS (
        SELECT m.id FROM amp.messages m
        WHERE m.recipient_id = v_agent.id AND m.read_at IS NULL AND m.message_type = 'async'
          AND (v_sender_id IS NULL OR m.sender_id = v_sender_id)
        ORDER BY m.seq
        LIMIT p_limit
        FOR UPDATE OF m SKIP LOCKED
    ), taken AS (
        UPDATE amp.messages m SET read_at = now()
        FROM unread u WHERE m.id = u.id
        RETURNING m.*
    )
    SELECT t.id, t.seq, t.content, t.metadata, t.session_id, s.external_id, s.name, t.created_at
    FROM taken t JOIN amp.agents s ON s.id = t.sender_id
    ORDER BY t.seq;
END;
$$;

-- Look at unread async messages without marking them read.
CREATE OR REPLACE FUNCTION amp.peek_unread(p_agent text, p_sender text DEFAULT NULL)
RETURNS TABLE (
    id uuid, seq bigint, content jsonb, metadata jsonb, session_id uuid,
    sender_external_id text, sender_name text, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents := amp.acting_agent(p_agent);
    v_sender_id uuid := CASE WHEN p_sender IS NULL THEN NULL ELSE (amp.get_agent(p_sender)).id END;
BEGIN
    RETURN QUERY
    SELECT m.id, m.seq, m.content, m.metadata, m.session_id, s.external_id, s.name, m.created_at
    FROM amp.messages m JOIN amp.agents s ON s.id = m.sender_id
    WHERE m.recipient_id = v_agent.id AND m.read_at IS NULL AND m.message_type = 'async'
      AND (v_sender_id IS NULL OR m.sender_id = v_sender_id)
    ORDER BY m.seq;
END;
$$;

-- Put a taken message back (its handler failed in resume_agent_handler).
CREATE OR REPLACE FUNCTION amp.mark_unread(p_agent text, p_message_id uuid)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE amp.messages SET read_at = NULL
    WHERE id = p_message_id AND recipient_id = (amp.acting_agent(p_agent)).id
      AND message_type = 'async';
    IF NOT FOUND THEN
        PERFORM amp.raise_error('AM001', format(
            'message %s is not an async message of agent %L', p_message_id, p_agent));
    END IF;
END;
$$;
