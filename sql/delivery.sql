-- amp: storing messages, one-way sends, and push delivery to handlers.
--
-- Pushed messages (one-way, sync requests, meeting invitations) are rows with
-- delivery_status = 'pending'. An SDK process (a "worker") that runs the handler of
-- the recipient claims them with a lease (FOR UPDATE SKIP LOCKED), invokes the
-- handler and acknowledges. A failure is retried with backoff until the attempts
-- run out ('failed', visible in amp.failed_deliveries). A worker that dies keeps
-- nothing: its lease expires and any worker serving the agent claims it again.

-- ---------------------------------------------------------------------------
-- Validation shared by every pattern
-- ---------------------------------------------------------------------------

-- Content must be present and at most amp.max_content_bytes (a setting, default
-- 1 MiB: ALTER DATABASE ... SET amp.max_content_bytes = ...).
CREATE OR REPLACE FUNCTION amp.check_content(p_content jsonb)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit bigint := coalesce(nullif(current_setting('amp.max_content_bytes', true), '')::bigint,
                               1048576);
    v_size bigint;
BEGIN
    IF p_content IS NULL THEN
        PERFORM amp.raise_error('AM001', 'message content must not be null');
    END IF;
    v_size := octet_length(p_content::text);
    IF v_size > v_limit THEN
        PERFORM amp.raise_error('AM001', format(
            'message content is %s bytes, more than the limit of %s', v_size, v_limit));
    END IF;
END;
$$;

-- The sender and recipient of a two-party message, validated: both exist, they
-- are not the same agent, the connection may act as the sender (AM060) and the
-- organizations may contact each other (AM061).
CREATE OR REPLACE FUNCTION amp.resolve_pair(
    p_sender text, p_recipient text, OUT sender amp.agents, OUT recipient amp.agents)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    sender := amp.get_agent(p_sender);
    recipient := amp.get_agent(p_recipient);
    IF sender.id = recipient.id THEN
        PERFORM amp.raise_error('AM001', format('agent %L cannot send a message to itself', p_sender));
    END IF;
    PERFORM amp.require_actor(sender), amp.require_contact(sender, recipient);
END;
$$;

-- Insert a message and wake its recipient (the NOTIFY is delivered on commit).
-- Every pattern stores messages through here, so every stored message notifies.
CREATE OR REPLACE FUNCTION amp.store_message(
    p_type       text,
    p_sender_id  uuid,
    p_recipient_id uuid,
    p_content    jsonb,
    p_metadata   jsonb DEFAULT '{}'::jsonb,
    p_session_id uuid DEFAULT NULL,
    p_meeting_id uuid DEFAULT NULL,
    p_reply_to   uuid DEFAULT NULL,
    p_push       boolean DEFAULT false,
    p_is_late    boolean DEFAULT false)
RETURNS amp.messages
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp.check_content(p_content);
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        PERFORM amp.raise_error('AM001', 'message metadata must be a JSON object');
    END IF;
    INSERT INTO amp.messages (message_type, sender_id, recipient_id, content, metadata,
                              session_id, meeting_id, reply_to, is_late, delivery_status)
    VALUES (p_type, p_sender_id, p_recipient_id, p_content, coalesce(p_metadata, '{}'),
            p_session_id, p_meeting_id, p_reply_to, p_is_late,
            CASE WHEN p_push THEN 'pending' END)
    RETURNING * INTO v_message;
    IF p_recipient_id IS NOT NULL THEN
        PERFORM amp.notify_message(v_message);
    END IF;
    RETURN v_message;
END;
$$;

CREATE OR REPLACE FUNCTION amp.notify_message(p_message amp.messages)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(
        amp.agent_channel_by_id(p_message.recipient_id),
        json_strip_nulls(json_build_object(
            'kind', 'message',
            'message_id', p_message.id,
            'message_type', p_message.message_type,
            'session_id', p_message.session_id,
            'meeting_id', p_message.meeting_id))::text)
$$;

-- Tell the sender how a pushed message ended (delivered or failed): a sender,
-- a test or an observer can wait for that instead of polling.
CREATE OR REPLACE FUNCTION amp.notify_delivery(p_message amp.messages)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(
        amp.agent_channel_by_id(p_message.sender_id),
        json_build_object(
            'kind', 'delivery',
            'message_id', p_message.id,
            'status', p_message.delivery_status)::text)
    WHERE p_message.sender_id IS NOT NULL
$$;

-- ---------------------------------------------------------------------------
-- One-way
-- ---------------------------------------------------------------------------

-- Fire and forget: stored durably and pushed to the recipient's handler.
CREATE OR REPLACE FUNCTION amp.send_one_way(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
BEGIN
    v_pair := amp.resolve_pair(p_sender, p_recipient);
    RETURN (amp.store_message('one_way', (v_pair.sender).id, (v_pair.recipient).id,
                              p_content, p_metadata, p_push => true)).id;
END;
$$;

-- ---------------------------------------------------------------------------
-- Workers: SDK processes that run handlers
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION amp.register_worker(p_hostname text, p_pid integer)
RETURNS uuid
LANGUAGE sql AS $$
    INSERT INTO amp.workers (hostname, pid) VALUES (p_hostname, p_pid) RETURNING id
$$;

-- Record that this worker runs the handlers of these agents; returns their ids.
CREATE OR REPLACE FUNCTION amp.serve_agents(p_worker uuid, p_agents text[])
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_external_id text;
    v_agent amp.agents;
BEGIN
    PERFORM amp.require_worker(p_worker);
    FOREACH v_external_id IN ARRAY p_agents LOOP
        v_agent := amp.acting_agent(v_external_id);
        INSERT INTO amp.worker_agents (worker_id, agent_id) VALUES (p_worker, v_agent.id)
        ON CONFLICT DO NOTHING;
        RETURN NEXT v_agent.id;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION amp.heartbeat(p_worker uuid)
RETURNS void
LANGUAGE sql AS $$
    SELECT amp.require_worker(p_worker);
    UPDATE amp.workers SET heartbeat_at = now() WHERE id = p_worker;
    -- workers silent for an hour are gone; their claims expire on their own
    DELETE FROM amp.workers WHERE heartbeat_at < now() - interval '1 hour';
$$;

-- A worker shutting down cleanly hands back what it claimed but did not finish.
CREATE OR REPLACE FUNCTION amp.unregister_worker(p_worker uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp.require_worker(p_worker);
    FOR v_message IN
        UPDATE amp.messages SET claimed_by = NULL, claim_expires_at = NULL
        WHERE claimed_by = p_worker AND delivery_status = 'pending'
        RETURNING *
    LOOP
        PERFORM amp.notify_message(v_message);
    END LOOP;
    DELETE FROM amp.workers WHERE id = p_worker;
END;
$$;

-- ---------------------------------------------------------------------------
-- Claim, acknowledge, fail
-- ---------------------------------------------------------------------------

-- Leases and acknowledgements are bookkeeping whose loss only means delivering
-- again (at least once): their transactions commit without waiting for the WAL
-- flush, which takes a disk flush off the critical path of every delivery. The
-- messages themselves (sends, replies) keep the server's durable commit.
CREATE OR REPLACE FUNCTION amp.lease_commit()
RETURNS void
LANGUAGE sql AS $$
    SELECT set_config('synchronous_commit', 'off', true)
$$;

-- Lease up to p_limit deliverable messages of the agents this worker serves,
-- oldest first. A message whose lease expired after its last allowed attempt
-- (its worker died every time) is marked failed instead of claimed again.
CREATE OR REPLACE FUNCTION amp.claim_deliveries(
    p_worker uuid, p_limit integer, p_lease interval, p_max_attempts integer)
RETURNS TABLE (
    id uuid, seq bigint, message_type text, content jsonb, metadata jsonb,
    session_id uuid, meeting_id uuid, attempts integer,
    sender_external_id text, sender_name text,
    recipient_external_id text, recipient_name text)
LANGUAGE plpgsql AS $$
DECLARE
    v_failed amp.messages;  -- a message settled here without a handler
BEGIN
    PERFORM amp.require_worker(p_worker, true);
    PERFORM amp.lease_commit();
    FOR v_failed IN
        UPDATE amp.messages m
        SET delivery_status = 'failed', claimed_by = NULL, claim_expires_at = NULL,
            last_error = coalesce(m.last_error, 'lease expired: the handler process stopped')
        FROM amp.worker_agents wa
        WHERE wa.worker_id = p_worker AND m.recipient_id = wa.agent_id
          AND m.delivery_status = 'pending' AND m.claim_expires_at < now()
          AND m.attempts >= p_max_attempts
        RETURNING m.*
    LOOP
        PERFORM amp.notify_delivery(v_failed);
    END LOOP;

    -- a sync request nobody waits on any more (answered directly, timed out, or
    -- its conversation ended) is moot: do not run a handler for it
    FOR v_failed IN
        UPDATE amp.messages m
        SET delivery_status = 'delivered', delivered_at = now(), claimed_by = NULL,
            claim_expires_at = NULL, last_error = 'not handled: no longer awaited'
        FROM amp.worker_agents wa
        WHERE wa.worker_id = p_worker AND m.recipient_id = wa.agent_id
          AND m.delivery_status = 'pending' AND m.message_type = 'sync_request'
          AND (m.claim_expires_at IS NULL OR m.claim_expires_at < now())
          AND NOT EXISTS (SELECT 1 FROM amp.sessions s WHERE s.waiting_for = m.id)
        RETURNING m.*
    LOOP
        PERFORM amp.notify_delivery(v_failed);
    END LOOP;

    RETURN QUERY
    WITH candidates AS (
        SELECT m.id
        FROM amp.messages m
        JOIN amp.worker_agents wa ON wa.agent_id = m.recipient_id AND wa.worker_id = p_worker
        WHERE m.delivery_status = 'pending'
          AND m.available_at <= now()
          AND (m.claim_expires_at IS NULL OR m.claim_expires_at < now())
        ORDER BY m.seq
        LIMIT p_limit
        FOR UPDATE OF m SKIP LOCKED
    ), claimed AS (
        UPDATE amp.messages m
        SET claimed_by = p_worker, claim_expires_at = now() + p_lease, attempts = m.attempts + 1
        FROM candidates c
        WHERE m.id = c.id
        RETURNING m.*
    )
    SELECT c.id, c.seq, c.message_type, c.content, c.metadata, c.session_id, c.meeting_id,
           c.attempts, s.external_id, s.name, r.external_id, r.name
    FROM claimed c
    LEFT JOIN amp.agents s ON s.id = c.sender_id
    JOIN amp.agents r ON r.id = c.recipient_id
    ORDER BY c.seq;
END;
$$;

-- The handler succeeded. Only the worker holding the lease may acknowledge.
CREATE OR REPLACE FUNCTION amp.ack_delivery(p_worker uuid, p_message_id uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp.require_worker(p_worker);
    UPDATE amp.messages
    SET delivery_status = 'delivered', delivered_at = now(),
        claimed_by = NULL, claim_expires_at = NULL
    WHERE id = p_message_id AND claimed_by = p_worker AND delivery_status = 'pending'
    RETURNING * INTO v_message;
    IF NOT FOUND THEN
        PERFORM amp.raise_error('AM050', format(
            'message %s is not leased by worker %s (lease expired?)', p_message_id, p_worker));
    END IF;
    PERFORM amp.notify_delivery(v_message);
END;
$$;

-- Acknowledge many at once (a worker's group commit): returns the ids that were
-- still leased to this worker and are now delivered; the others lost their lease.
-- Each sender hears one `delivery` hint per batch (with a count, not the ids):
-- NOTIFYing commits are serialised by the server, so one per message would halve
-- the throughput of a busy stream; whoever waits re-reads the rows anyway.
CREATE OR REPLACE FUNCTION amp.ack_deliveries(p_worker uuid, p_message_ids uuid[])
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_acked uuid[];
    v_sender record;
BEGIN
    PERFORM amp.require_worker(p_worker);
    PERFORM amp.lease_commit();
    WITH acked AS (
        UPDATE amp.messages
        SET delivery_status = 'delivered', delivered_at = now(),
            claimed_by = NULL, claim_expires_at = NULL
        WHERE id = ANY (p_message_ids) AND claimed_by = p_worker AND delivery_status = 'pending'
        RETURNING id
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
    RETURN QUERY SELECT unnest(v_acked);
END;
$$;

-- The handler failed: retry after p_retry_in, or mark failed once the attempts
-- are used up. Returns the new delivery_status.
CREATE OR REPLACE FUNCTION amp.fail_delivery(
    p_worker uuid, p_message_id uuid, p_error text, p_retry_in interval,
    p_max_attempts integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp.require_worker(p_worker);
    UPDATE amp.messages
    SET delivery_status = CASE WHEN attempts >= p_max_attempts THEN 'failed' ELSE 'pending' END,
        available_at = now() + p_retry_in,
        claimed_by = NULL, claim_expires_at = NULL, last_error = p_error
    WHERE id = p_message_id AND claimed_by = p_worker AND delivery_status = 'pending'
    RETURNING * INTO v_message;
    IF NOT FOUND THEN
        PERFORM amp.raise_error('AM050', format(
            'message %s is not leased by worker %s (lease expired?)', p_message_id, p_worker));
    END IF;
    IF v_message.delivery_status = 'failed' THEN
        PERFORM amp.notify_delivery(v_message);
    ELSIF p_retry_in <= interval '0' THEN
        PERFORM amp.notify_message(v_message);   -- deliverable again right now
    END IF;
    RETURN v_message.delivery_status;
END;
$$;

-- When this worker next has something to do without being notified: the
-- earliest retry or lease expiry among its agents' pending messages. Its
-- fallback poll sleeps no longer than this.
CREATE OR REPLACE FUNCTION amp.next_delivery_at(p_worker uuid)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT min(CASE WHEN m.claim_expires_at IS NOT NULL
                    THEN greatest(m.claim_expires_at, m.available_at)
                    ELSE m.available_at END)
    FROM amp.messages m
    JOIN amp.worker_agents wa ON wa.agent_id = m.recipient_id AND wa.worker_id = p_worker
    WHERE m.delivery_status = 'pending' AND amp.require_worker(p_worker)
$$;
