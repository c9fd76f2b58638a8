-- amp: asynchronous conversations, the inbox.
--
-- An async message is stored in the async session of its pair (created on first
-- send) and NOTIFYs the recipient; nobody blocks. The recipient pulls its unread
-- messages, which marks them read atomically: two readers never get the same one.

-- The live session of a pair and type, created if there is none. The partial
-- unique index decides a race between two creators; the loser gets the winner's row.
CREATE OR REPLACE FUNCTION amp._get_or_create_session(
    p_agent_1 uuid, p_agent_2 uuid, p_type text)
RETURNS amp.sessions
LANGUAGE plpgsql AS $$
DECLARE
    v_session amp.sessions;
BEGIN
    INSERT INTO amp.sessions (agent_a_id, agent_b_id, session_type)
    VALUES (least(p_agent_1, p_agent_2), greatest(p_agent_1, p_agent_2), p_type)
    ON CONFLICT (agent_a_id, agent_b_id, session_type) WHERE ended_at IS NULL
    DO UPDATE SET updated_at = now()
    RETURNING * INTO v_session;
    RETURN v_session;
END;
$$;

-- Send an async message; returns its id. Never blocks. A repeat with the same
-- idempotency key returns the first message's id, storing nothing.
CREATE OR REPLACE FUNCTION amp.async_send(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    p_idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
    v_session amp.sessions;
BEGIN
    v_pair := amp._resolve_pair(p_sender, p_recipient);
    v_session := amp._get_or_create_session((v_pair.sender).id, (v_pair.recipient).id, 'async');
    RETURN (amp._store_message('async', (v_pair.sender).id, (v_pair.recipient).id,
                              p_content, p_metadata, p_session_id => v_session.id,
                              p_idempotency_key => p_idempotency_key,
                              p_channel => v_pair.recipient_channel)).id;
END;
$$;

-- A page size: NULL means amp._setting('default_page_size'); anything else must be
-- from 1 to amp._setting('max_page_size').
CREATE OR REPLACE FUNCTION amp._page_size(p_limit integer)
RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_max bigint;
BEGIN
    IF p_limit IS NULL THEN
        RETURN amp._setting('default_page_size');
    END IF;
    v_max := amp._setting('max_page_size');
    IF p_limit < 1 OR p_limit > v_max THEN
        PERFORM amp._raise_error('AM001', format(
            'limit must be from 1 to %s, not %s', v_max, p_limit));
    END IF;
    RETURN p_limit;
END;
$$;

-- Take unread async messages of an agent (optionally only those from one sender),
-- oldest first, at most p_limit (NULL: the default page size). Rows locked or held
-- by a concurrent reader are skipped, so concurrent readers split the inbox without
-- overlap. A message whose answer may be lost on the way (the connection drops after
-- the commit) would be lost with it, so there are two ways to read:
--   * p_lease NULL: the messages are marked read at once (simple; a lost answer
--     loses them);
--   * p_lease given: the messages are handed out under a receipt (the `receipt`
--     column, one per call) and held for this reader for p_lease; the reader then
--     calls amp.confirm_read(agent, receipt, ids) for those it got. What is not
--     confirmed within the lease is unread again: nothing is lost.
-- Dead-lettered messages (amp.reject_unread) are never handed out again.
CREATE OR REPLACE FUNCTION amp.read_unread(
    p_agent text, p_sender text DEFAULT NULL, p_limit integer DEFAULT NULL,
    p_lease interval DEFAULT NULL)
RETURNS TABLE (
    id uuid, seq bigint, content jsonb, metadata jsonb, session_id uuid,
    sender_external_id text, sender_name text, created_at timestamptz, receipt uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_agent amp.agents := amp._acting_agent(p_agent);
    v_sender_id uuid := CASE WHEN p_sender IS NULL THEN NULL ELSE (amp.get_agent(p_sender)).id END;
    v_limit integer := amp._page_size(p_limit);
    v_receipt uuid := CASE WHEN p_lease IS NULL THEN NULL ELSE gen_random_uuid() END;
BEGIN
    IF p_lease IS NOT NULL AND (p_lease <= interval '0' OR p_lease > interval '1 day') THEN
        PERFORM amp._raise_error('AM001', format(
            'read lease (p_lease) must be more than 0 and at most 1 day, not %s', p_lease));
    END IF;
    RETURN QUERY
    WITH unread AS (
        SELECT m.seq FROM amp.messages m
        WHERE m.recipient_id = v_agent.id AND m.read_at IS NULL AND m.message_type = 'async'
          AND (v_sender_id IS NULL OR m.sender_id = v_sender_id)
          AND (m.read_lease_until IS NULL OR m.read_lease_until < now())
          AND m.delivery_status IS NULL
        ORDER BY m.seq
        LIMIT v_limit
        FOR UPDATE OF m SKIP LOCKED
    ), taken AS (
        UPDATE amp.messages m
        SET read_at = CASE WHEN p_lease IS NULL THEN now() END,
            read_receipt = v_receipt,
            read_lease_until = now() + p_lease
        FROM unread u WHERE m.seq = u.seq  -- by seq: see amp.claim_deliveries
        RETURNING m.*
    )
    SELECT t.id, t.seq, t.content, t.metadata, t.session_id, s.external_id, s.name,
           t.created_at, v_receipt
    FROM taken t JOIN amp.agents s ON s.id = t.sender_id
    ORDER BY t.seq;
END;
$$;

-- Confirm a read made under a receipt: the messages p_ids (of that receipt, still
-- held by it) are marked read; the receipt's other messages are unread again at
-- once. Returns the ids marked read: a message whose lease ran out and which was
-- taken by another reader meanwhile is not among them (and must not be used).
CREATE OR REPLACE FUNCTION amp.confirm_read(p_agent text, p_receipt uuid, p_ids uuid[])
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_agent amp.agents := amp._acting_agent(p_agent);
BEGIN
    IF p_receipt IS NULL THEN
        PERFORM amp._raise_error('AM001', 'read receipt (p_receipt) must not be null');
    END IF;
    RETURN QUERY
    WITH settled AS (
        UPDATE amp.messages m
        SET read_at = CASE WHEN m.id = ANY (coalesce(p_ids, '{}')) THEN now() END,
            read_receipt = NULL, read_lease_until = NULL
        WHERE m.recipient_id = v_agent.id AND m.read_receipt = p_receipt
          AND m.read_at IS NULL AND m.message_type = 'async'
        RETURNING m.id, m.read_at
    )
    SELECT settled.id FROM settled WHERE settled.read_at IS NOT NULL;
END;
$$;

-- Dead-letter an async message its reader cannot use (content it cannot decode,
-- say): it is never handed out again, and shows in amp.failed_deliveries with the
-- reason. It is not marked read.
CREATE OR REPLACE FUNCTION amp.reject_unread(p_agent text, p_message_id uuid, p_reason text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_message_id IS NULL THEN
        PERFORM amp._raise_error('AM001', 'message id (p_message_id) must not be null');
    END IF;
    UPDATE amp.messages
    SET delivery_status = 'failed', last_error = left(coalesce(p_reason, 'rejected'), 2000),
        read_receipt = NULL, read_lease_until = NULL
    WHERE id = p_message_id AND recipient_id = (amp._acting_agent(p_agent)).id
      AND message_type = 'async' AND read_at IS NULL;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM001', format(
            'message %s is not an unread async message of agent %L', p_message_id, p_agent));
    END IF;
END;
$$;

-- Look at unread async messages without marking them read (at most p_limit, NULL:
-- the default page size).
CREATE OR REPLACE FUNCTION amp.peek_unread(
    p_agent text, p_sender text DEFAULT NULL, p_limit integer DEFAULT NULL)
RETURNS TABLE (
    id uuid, seq bigint, content jsonb, metadata jsonb, session_id uuid,
    sender_external_id text, sender_name text, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents := amp._acting_agent(p_agent);
    v_sender_id uuid := CASE WHEN p_sender IS NULL THEN NULL ELSE (amp.get_agent(p_sender)).id END;
    v_limit integer := amp._page_size(p_limit);
BEGIN
    RETURN QUERY
    SELECT m.id, m.seq, m.content, m.metadata, m.session_id, s.external_id, s.name, m.created_at
    FROM amp.messages m JOIN amp.agents s ON s.id = m.sender_id
    WHERE m.recipient_id = v_agent.id AND m.read_at IS NULL AND m.message_type = 'async'
      AND (v_sender_id IS NULL OR m.sender_id = v_sender_id)
      AND m.delivery_status IS NULL
    ORDER BY m.seq
    LIMIT v_limit;
END;
$$;

-- Page through an agent's inbox, read and unread (a read message can be read again
-- here), oldest first: the messages after p_after_seq, at most p_limit (NULL: the
-- default page size). Pass the last seq of a page to get the next. Marks nothing.
CREATE OR REPLACE FUNCTION amp.inbox_messages(
    p_agent text, p_sender text DEFAULT NULL, p_after_seq bigint DEFAULT 0,
    p_limit integer DEFAULT NULL)
RETURNS TABLE (
    id uuid, seq bigint, content jsonb, metadata jsonb, session_id uuid,
    sender_external_id text, sender_name text, created_at timestamptz,
    read_at timestamptz, delivery_status text, last_error text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents := amp._acting_agent(p_agent);
    v_sender_id uuid := CASE WHEN p_sender IS NULL THEN NULL ELSE (amp.get_agent(p_sender)).id END;
    v_limit integer := amp._page_size(p_limit);
BEGIN
    RETURN QUERY
    SELECT m.id, m.seq, m.content, m.metadata, m.session_id, s.external_id, s.name,
           m.created_at, m.read_at, m.delivery_status, m.last_error
    FROM amp.messages m JOIN amp.agents s ON s.id = m.sender_id
    WHERE m.recipient_id = v_agent.id AND m.message_type = 'async'
      AND m.seq > coalesce(p_after_seq, 0)
      AND (v_sender_id IS NULL OR m.sender_id = v_sender_id)
    ORDER BY m.seq
    LIMIT v_limit;
END;
$$;

-- Put a taken message back: whoever read it could not handle it, so it is unread again.
CREATE OR REPLACE FUNCTION amp.mark_unread(p_agent text, p_message_id uuid)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE amp.messages SET read_at = NULL, read_receipt = NULL, read_lease_until = NULL
    WHERE id = p_message_id AND recipient_id = (amp._acting_agent(p_agent)).id
      AND message_type = 'async';
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM001', format(
            'message %s is not an async message of agent %L', p_message_id, p_agent));
    END IF;
END;
$$;
