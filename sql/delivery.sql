-- amp: storing messages, one-way sends, and push delivery to handlers.
--
-- Pushed messages (one-way, sync requests, meeting invitations) are rows with
-- delivery_status = 'pending', each with a row in amp.deliveries (its lease,
-- attempts and retry time) until the outcome is final. An SDK process (a "worker") that runs the handler of
-- the recipient claims them with a lease (FOR UPDATE SKIP LOCKED), invokes the
-- handler and acknowledges. A failure is retried with backoff until the attempts
-- run out ('failed', visible in amp.failed_deliveries). A worker that dies keeps
-- nothing: its lease expires and any worker serving the agent claims it again.

-- ---------------------------------------------------------------------------
-- Validation shared by every pattern
-- ---------------------------------------------------------------------------

-- What every stored message must be, whoever sends it (SDK, psql, another language):
--   * content present (JSON null is fine, SQL NULL is not), metadata a JSON object;
--   * content and metadata together at most amp._setting('max_message_bytes') bytes
--     of JSON text (default 1 MiB; an administrator changes it in amp.settings);
--   * at most 100 levels of nested arrays/objects (measured: psqlpy, the Python
--     driver, decodes up to 127; the margin leaves room for content wrapped in an
--     event's data, for instance);
--   * every number within +-1e308, what a 64-bit float carries (psqlpy fails on a
--     result holding a larger one; JavaScript would read Infinity).
-- NaN, Infinity and \u0000 cannot be stored in jsonb at all.
-- (p_text is p_value::text, which the caller has at hand: short or digit-poor JSON
-- cannot break either rule, so the full walks run only when they could find something)
CREATE OR REPLACE FUNCTION amp._check_json(p_what text, p_value jsonb, p_text text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF octet_length(p_text) > 200 AND jsonb_path_exists(p_value,
            'strict $.**{100} ? (@.type() == "array" || @.type() == "object")') THEN
        PERFORM amp._raise_error('AM001', format(
            '%s nests arrays/objects deeper than the limit of 100 levels', p_what));
    END IF;
    -- PostgreSQL writes numbers without exponent: one beyond 1e308 has 309+ digits
    IF p_text ~ '[0-9]{200}[0-9]{109}' AND jsonb_path_exists(p_value,
            'strict $.** ? (@.type() == "number" && (@ > 1e308 || @ < -1e308))') THEN
        PERFORM amp._raise_error('AM001', format(
            '%s holds a number beyond +-1e308 (more than a 64-bit float carries)', p_what));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp._check_message(p_content jsonb, p_metadata jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_limit bigint := amp._setting('max_message_bytes');
    v_size bigint;
    v_content text := p_content::text;
    v_metadata text := p_metadata::text;
BEGIN
    IF p_content IS NULL THEN
        PERFORM amp._raise_error('AM001', 'message content must not be null');
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        PERFORM amp._raise_error('AM001', 'message metadata must be a JSON object');
    END IF;
    v_size := octet_length(v_content) + coalesce(octet_length(v_metadata), 0);
    IF v_size > v_limit THEN
        PERFORM amp._raise_error('AM001', format(
            'message content and metadata are %s bytes, more than the limit of %s',
            v_size, v_limit));
    END IF;
    PERFORM amp._check_json('message content', p_content, v_content);
    IF p_metadata IS NOT NULL THEN
        PERFORM amp._check_json('message metadata', p_metadata, v_metadata);
    END IF;
END;
$$;

-- The sender and recipient of a two-party message, validated: both exist, they
-- are not the same agent, the connection may act as the sender (AM060) and the
-- organizations may contact each other (AM061); and the recipient's channel.
-- The common case is one query, which asks the rules of amp._role_may_act_as and
-- amp._require_contact in their simplest forms (the sender is open or the
-- connection holds one of its roles; one organization, or one of the two unbound);
-- when it cannot show that every check passes, the checks run one by one, for the
-- pairs the simple forms do not cover (amp.allow_contact, an answer inside a live
-- conversation) and for the error that names what failed.
CREATE OR REPLACE FUNCTION amp._resolve_pair(
    p_sender text, p_recipient text,
    OUT sender amp.agents, OUT recipient amp.agents, OUT recipient_channel text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v record;
BEGIN
    SELECT s AS sender, r AS recipient, c.channel,
           s.id <> r.id
           AND CASE WHEN NOT EXISTS (SELECT 1 FROM amp.role_bindings b
                                     WHERE b.agent_id = s.id OR b.organization_id = s.organization_id)
                    THEN pg_has_role(session_user, 'amp_user', 'MEMBER')
                    ELSE EXISTS (SELECT 1 FROM amp.role_bindings b
                                 WHERE (b.agent_id = s.id OR b.organization_id = s.organization_id)
                                   AND pg_has_role(session_user, to_regrole(quote_ident(b.role_name)),
                                                   'MEMBER'))
                         OR pg_has_role(session_user, 'amp_admin', 'MEMBER') END
           AND (s.organization_id = r.organization_id
                OR NOT EXISTS (SELECT 1 FROM amp.role_bindings b
                               WHERE b.organization_id = s.organization_id)
                OR NOT EXISTS (SELECT 1 FROM amp.role_bindings b
                               WHERE b.organization_id = r.organization_id)) AS passes
    INTO v
    FROM amp.agents s
    JOIN amp.agents r ON r.external_id = p_recipient
    LEFT JOIN amp.agent_channels c ON c.agent_id = r.id
    WHERE s.external_id = p_sender;
    IF v.passes THEN
        sender := v.sender;
        recipient := v.recipient;
        recipient_channel := v.channel;
        RETURN;
    END IF;
    sender := amp.get_agent(p_sender);
    recipient := amp.get_agent(p_recipient);
    IF sender.id = recipient.id THEN
        PERFORM amp._raise_error('AM001', format('agent %L cannot send a message to itself', p_sender));
    END IF;
    PERFORM amp._require_actor(sender), amp._require_contact(sender, recipient);
    recipient_channel := amp._agent_channel_by_id(recipient.id);
END;
$$;

-- The message a sender already stored under an idempotency key, or NULL fields if
-- the key is new. A key names one send: reusing it for another kind of message or
-- another recipient is refused.
CREATE OR REPLACE FUNCTION amp._idempotent_message(
    p_sender_id uuid, p_key text, p_type text, p_recipient_id uuid)
RETURNS amp.messages
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_message amp.messages;
BEGIN
    IF p_key = '' OR octet_length(p_key) > 200 THEN
        PERFORM amp._raise_error('AM001', 'an idempotency key must be 1 to 200 bytes long');
    END IF;
    SELECT * INTO v_message FROM amp.messages m
    WHERE m.sender_id = p_sender_id AND m.idempotency_key = p_key;
    IF FOUND AND (v_message.message_type <> p_type
                  OR v_message.recipient_id IS DISTINCT FROM p_recipient_id) THEN
        PERFORM amp._raise_error('AM001', format(
            'idempotency key %L was already used for another message', p_key));
    END IF;
    RETURN v_message;
END;
$$;

-- Insert a message and wake its recipient (the NOTIFY is delivered on commit).
-- Every pattern stores messages through here, so every stored message notifies
-- (a batch, amp.send_one_way_many, asks for p_notify => false and sends one hint
-- per recipient itself). p_channel: the recipient's channel when the caller has
-- it at hand (amp._resolve_pair returns it), else it is looked up.
-- With an idempotency key, a repeat of a send returns the message stored the first
-- time (and notifies nobody again); two concurrent sends with one key store one.
--
-- Direct delivery: a pushed message for a recipient with nothing else pending is
-- handed, as it is stored, to a worker that serves the recipient and is present
-- (amp.hold_worker: its LISTEN connection holds the worker's advisory lock, which
-- goes with the connection, so a worker whose process died or lost its connection
-- is never chosen). The message is leased to
-- that worker for its direct_lease (attempt 1) and its hint carries everything the
-- handler needs ("worker", the content, the metadata, who sent it): the worker runs
-- the handler without a claim. Only when the hint fits a NOTIFY payload comfortably,
-- and not when the database keeps content out of payloads (amp.notify_content =
-- off); otherwise, or with no such worker, the message waits to be claimed.
CREATE OR REPLACE FUNCTION amp._store_message(
    p_type       text,
    p_sender_id  uuid,
    p_recipient_id uuid,
    p_content    jsonb,
    p_metadata   jsonb DEFAULT '{}'::jsonb,
    p_session_id uuid DEFAULT NULL,
    p_meeting_id uuid DEFAULT NULL,
    p_reply_to   uuid DEFAULT NULL,
    p_push       boolean DEFAULT false,
    p_is_late    boolean DEFAULT false,
    p_idempotency_key text DEFAULT NULL,
    p_notify     boolean DEFAULT true,
    p_channel    text DEFAULT NULL)
RETURNS amp.messages
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
    v_content_size integer := octet_length(p_content::text);
    v_size integer := v_content_size + coalesce(octet_length(p_metadata::text), 0);
    v_worker uuid;           -- direct delivery: the worker it is handed to
    v_lease interval;
    v_sender text;           -- and what its handler is told (names are up to 1000
    v_sender_name text;      -- characters: the hint must fit a payload)
    v_recipient text;
    v_recipient_name text;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        v_message := amp._idempotent_message(p_sender_id, p_idempotency_key, p_type,
                                            p_recipient_id);
        IF v_message.id IS NOT NULL THEN
            RETURN v_message;
        END IF;
    END IF;
    -- amp._check_message's rules all hold for content and metadata of at most 200
    -- bytes each (amp._check_json), an object as metadata, and the default size
    -- limit: only other messages are looked at in full
    IF p_content IS NULL OR jsonb_typeof(p_metadata) IS DISTINCT FROM 'object'
       OR v_content_size > 200 OR v_size - v_content_size > 200
       OR EXISTS (SELECT 1 FROM amp.settings s WHERE s.key = 'max_message_bytes') THEN
        PERFORM amp._check_message(p_content, p_metadata);
    END IF;
    IF p_push AND p_notify AND p_recipient_id IS NOT NULL AND v_size <= 4000
       AND current_setting('amp.notify_content', true) IS DISTINCT FROM 'off'
       -- only to a recipient with nothing pending: a message never overtakes older
       -- ones, and a worker's claims keep bounding what it holds (a backlog is
       -- claimed, in order and in batches). Asked from the newest end of the
       -- recipient's index: a pending message is a recent one, where the oldest end
       -- holds the entries of settled ones until the next vacuum
       AND (SELECT d.seq FROM amp.deliveries d WHERE d.recipient_id = p_recipient_id
            ORDER BY d.seq DESC LIMIT 1) IS NULL THEN
        SELECT w.id, w.direct_lease, s.external_id, s.name, r.external_id, r.name
        INTO v_worker, v_lease, v_sender, v_sender_name, v_recipient, v_recipient_name
        FROM amp.worker_agents wa
        JOIN amp.workers w ON w.id = wa.worker_id
        JOIN amp.agents r ON r.id = wa.agent_id
        LEFT JOIN amp.agents s ON s.id = p_sender_id
        WHERE wa.agent_id = p_recipient_id AND w.direct_lease IS NOT NULL
          -- present: its lock is held (a shared try fails); held by this transaction
          -- to its end where it is not, which only delays a worker taking it anew
          AND NOT pg_try_advisory_xact_lock_shared(
                  hashtextextended('amp.worker:' || w.id::text, 0))  -- amp._worker_key
        ORDER BY random()
        LIMIT 1;
        IF v_worker IS NOT NULL
           AND v_size + octet_length(v_recipient) + octet_length(v_recipient_name)
               + coalesce(octet_length(v_sender) + octet_length(v_sender_name), 0) > 6500 THEN
            v_worker := NULL;  -- its hint would not fit a NOTIFY payload
        END IF;
    END IF;
    IF p_idempotency_key IS NULL THEN
        INSERT INTO amp.messages (message_type, sender_id, recipient_id, content, metadata,
                                  session_id, meeting_id, reply_to, is_late, delivery_status,
                                  attempts, claimed_by, claim_expires_at)
        VALUES (p_type, p_sender_id, p_recipient_id, p_content, coalesce(p_metadata, '{}'),
                p_session_id, p_meeting_id, p_reply_to, p_is_late,
                CASE WHEN p_push THEN 'pending' END,
                CASE WHEN v_worker IS NULL THEN 0 ELSE 1 END, v_worker,
                now() + CASE WHEN v_worker IS NOT NULL THEN v_lease END)
        RETURNING * INTO v_message;
    ELSE
        INSERT INTO amp.messages (message_type, sender_id, recipient_id, content, metadata,
                                  session_id, meeting_id, reply_to, is_late, delivery_status,
                                  attempts, claimed_by, claim_expires_at, idempotency_key)
        VALUES (p_type, p_sender_id, p_recipient_id, p_content, coalesce(p_metadata, '{}'),
                p_session_id, p_meeting_id, p_reply_to, p_is_late,
                CASE WHEN p_push THEN 'pending' END,
                CASE WHEN v_worker IS NULL THEN 0 ELSE 1 END, v_worker,
                now() + CASE WHEN v_worker IS NOT NULL THEN v_lease END, p_idempotency_key)
        ON CONFLICT (sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING * INTO v_message;
        IF v_message.id IS NULL THEN  -- a concurrent send with the same key stored it
            RETURN amp._idempotent_message(p_sender_id, p_idempotency_key, p_type,
                                          p_recipient_id);
        END IF;
    END IF;
    IF p_recipient_id IS NULL OR NOT p_notify THEN
        RETURN v_message;
    END IF;
    IF v_worker IS NOT NULL THEN
        PERFORM pg_notify(
            coalesce(p_channel, (SELECT c.channel FROM amp.agent_channels c
                                 WHERE c.agent_id = p_recipient_id)),
            json_build_object(
                'kind', 'message', 'message_id', v_message.id, 'message_type', p_type,
                'session_id', p_session_id, 'meeting_id', p_meeting_id,
                'worker', v_worker, 'attempt', 1,
                'sender', v_sender, 'sender_name', v_sender_name,
                'recipient', v_recipient, 'recipient_name', v_recipient_name,
                'content', p_content, 'metadata', v_message.metadata)::text);
    ELSIF v_message.message_type = 'sync_reply' THEN
        PERFORM amp._notify_message(v_message, 1, p_channel);  -- it may carry the content
    ELSE
        -- amp._notify_message's payload, written out: the call cost more than the work
        PERFORM pg_notify(
            coalesce(p_channel, (SELECT c.channel FROM amp.agent_channels c
                                 WHERE c.agent_id = p_recipient_id)),
            '{"kind":"message","message_id":"' || v_message.id || '","message_type":"'
            || p_type || coalesce('","session_id":"' || p_session_id, '')
            || coalesce('","meeting_id":"' || p_meeting_id, '')
            || coalesce('","reply_to":"' || p_reply_to, '') || '"}');
    END IF;
    RETURN v_message;
END;
$$;

-- The hint that a message was stored: its id, type and conversation or meeting;
-- with p_count > 1 ("count"), the first of that many stored for the same recipient
-- in one transaction (a batch wakes each recipient once, not once per message).
-- A sync reply's hint also carries the request it answers and, when its content is
-- at most amp.notify_content_bytes (default 4000; NOTIFY payloads are capped at
-- 8000), the content itself ("reply": {"content": ...}), so the waiting asker need
-- not read it back. Agent channels are named at random and given only to roles that
-- may act as the agent (amp.agent_channel), so the content reaches no one who could
-- not read it anyway; amp.notify_content = off (ALTER DATABASE ... SET) keeps
-- content out of every payload all the same.
-- The payload is written as text: every value in it is a uuid, a number, one of the
-- fixed message types or JSON the server made, none needs escaping.
CREATE OR REPLACE FUNCTION amp._notify_message(
    p_message amp.messages, p_count integer DEFAULT 1, p_channel text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_content text;
BEGIN
    IF p_message.message_type = 'sync_reply'
       AND current_setting('amp.notify_content', true) IS DISTINCT FROM 'off' THEN
        v_content := p_message.content::text;
        IF octet_length(v_content) > coalesce(nullif(
               current_setting('amp.notify_content_bytes', true), '')::int, 4000) THEN
            v_content := NULL;
        END IF;
    END IF;
    PERFORM pg_notify(
        coalesce(p_channel, (SELECT c.channel FROM amp.agent_channels c
                             WHERE c.agent_id = p_message.recipient_id)),
        '{"kind":"message","message_id":"' || p_message.id || '","message_type":"'
        || p_message.message_type || coalesce('","session_id":"' || p_message.session_id, '')
        || coalesce('","meeting_id":"' || p_message.meeting_id, '')
        || coalesce('","reply_to":"' || p_message.reply_to, '') || '"'
        || CASE WHEN p_count > 1 THEN ',"count":' || p_count ELSE '' END
        || coalesce(',"reply":{"content":' || v_content || '}', '') || '}');
END;
$$;

-- One hint per recipient of these messages (stored or handed back together): that
-- of its first message, with how many ("count"). A hint per message cost the server
-- a NOTIFY and the recipient's process a wake-up each, where one claim takes them all.
CREATE OR REPLACE FUNCTION amp._notify_recipients(p_ids uuid[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_hint record;
BEGIN
    FOR v_hint IN
        SELECT DISTINCT ON (m.recipient_id) m AS message,
               count(*) OVER (PARTITION BY m.recipient_id) AS n
        FROM amp.messages m WHERE m.id = ANY (p_ids)
        ORDER BY m.recipient_id, m.seq
    LOOP
        PERFORM amp._notify_message(v_hint.message, v_hint.n::integer);
    END LOOP;
END;
$$;

-- Tell the sender how a pushed message ended (delivered or failed): a sender,
-- a test or an observer can wait for that instead of polling.
CREATE OR REPLACE FUNCTION amp._notify_delivery(p_message amp.messages)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_message.sender_id IS NOT NULL THEN
        PERFORM pg_notify(
            amp._agent_channel_by_id(p_message.sender_id),
            json_build_object(
                'kind', 'delivery',
                'message_id', p_message.id,
                'status', p_message.delivery_status)::text);
    END IF;
END;
$$;

-- ---------------------------------------------------------------------------
-- One-way
-- ---------------------------------------------------------------------------

-- Fire and forget: stored durably and pushed to the recipient's handler. A repeat
-- with the same idempotency key returns the first message's id, storing nothing.
CREATE OR REPLACE FUNCTION amp.send_one_way(
    p_sender text, p_recipient text, p_content jsonb, p_metadata jsonb DEFAULT '{}'::jsonb,
    p_idempotency_key text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_pair record;
BEGIN
    v_pair := amp._resolve_pair(p_sender, p_recipient);
    RETURN (amp._store_message('one_way', (v_pair.sender).id, (v_pair.recipient).id,
                              p_content, p_metadata, p_push => true,
                              p_idempotency_key => p_idempotency_key,
                              p_channel => v_pair.recipient_channel)).id;
END;
$$;

-- ---------------------------------------------------------------------------
-- Workers: SDK processes that run handlers
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION amp.register_worker(p_hostname text, p_pid integer)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    IF p_hostname IS NULL THEN
        PERFORM amp._raise_error('AM001', 'worker hostname (p_hostname) must not be null');
    END IF;
    IF p_pid IS NULL THEN
        PERFORM amp._raise_error('AM001', 'worker pid (p_pid) must not be null');
    END IF;
    INSERT INTO amp.workers (hostname, pid) VALUES (left(p_hostname, 255), p_pid)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- The advisory lock (a bigint key) a present worker holds: see amp.hold_worker.
CREATE OR REPLACE FUNCTION amp._worker_key(p_worker uuid)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN hashtextextended('amp.worker:' || p_worker::text, 0);
END;
$$;

-- Direct delivery: messages stored from now on for the agents this worker serves
-- may be handed to it as they are stored (see amp._store_message), leased for
-- p_lease. Call it on the connection that LISTENs on those agents' channels: it
-- takes the worker's advisory lock for the session, and the lock is the worker's
-- presence: it goes when that connection goes (a process that dies, a connection
-- the server lost), and from then on nothing is handed to the worker. Call it again
-- on a new connection after catching up (amp.release_deliveries). Returns false if
-- another connection holds the lock (the worker is present there).
CREATE OR REPLACE FUNCTION amp.hold_worker(p_worker uuid, p_lease interval)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM amp._require_worker_arg(p_worker);
    IF p_lease IS NULL OR NOT p_lease > interval '0' THEN
        PERFORM amp._raise_error('AM001', 'a direct delivery lease (p_lease) must be positive');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM amp.workers WHERE id = p_worker) THEN
        PERFORM amp._raise_error('AM001', format('no worker %s (registered?)', p_worker));
    END IF;
    PERFORM amp._require_worker(p_worker);
    UPDATE amp.workers SET direct_lease = p_lease WHERE id = p_worker;
    -- once per session: the lock counts its holds, and one release must undo it
    RETURN amp._holds_worker(p_worker) OR pg_try_advisory_lock(amp._worker_key(p_worker));
END;
$$;

-- Whether this session holds the worker's lock (amp.hold_worker).
CREATE OR REPLACE FUNCTION amp._holds_worker(p_worker uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((l.classid::bigint << 32) | l.objid::bigint) = amp._worker_key(p_worker));
END;
$$;

-- The worker is present on this connection no more (it gives up the lock
-- amp.hold_worker took here): a hub that held it for a process that went, say.
-- Returns false if this connection did not hold it.
CREATE OR REPLACE FUNCTION amp.release_worker(p_worker uuid)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM amp._require_worker_arg(p_worker);
    PERFORM amp._require_worker(p_worker);
    RETURN amp._holds_worker(p_worker) AND pg_advisory_unlock(amp._worker_key(p_worker));
END;
$$;

-- A worker hands back messages leased to it that it will not run now: p_message_ids
-- (NULL: every message leased to it), except p_keep. Handed to it as they were
-- stored while it was full, or whose hints it never received (they went with a lost
-- LISTEN connection): their recipients are notified and any worker claims them.
-- The attempt they were leased for does not count. Returns the ids handed back.
CREATE OR REPLACE FUNCTION amp.release_deliveries(
    p_worker uuid, p_message_ids uuid[] DEFAULT NULL, p_keep uuid[] DEFAULT '{}')
RETURNS SETOF uuid
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_released uuid[];
BEGIN
    PERFORM amp._require_worker_arg(p_worker);
    PERFORM amp._require_worker(p_worker);
    WITH released AS (
        UPDATE amp.deliveries d
        SET claimed_by = NULL, claim_expires_at = NULL, attempts = greatest(d.attempts - 1, 0)
        WHERE d.claimed_by = p_worker
          AND (p_message_ids IS NULL OR d.message_id = ANY (p_message_ids))
          AND d.message_id <> ALL (coalesce(p_keep, '{}'))
        RETURNING d.message_id
    )
    SELECT coalesce(array_agg(message_id), '{}') INTO v_released FROM released;
    PERFORM amp._notify_recipients(v_released);  -- any worker serving them claims
    RETURN QUERY SELECT unnest(v_released);
END;
$$;

-- AM001 naming the argument when a worker id is NULL.
CREATE OR REPLACE FUNCTION amp._require_worker_arg(p_worker uuid)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_worker IS NULL THEN
        PERFORM amp._raise_error('AM001', 'worker id (p_worker) must not be null');
    END IF;
END;
$$;

-- Record that this worker runs the handlers of these agents; returns their ids.
CREATE OR REPLACE FUNCTION amp.serve_agents(p_worker uuid, p_agents text[])
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_external_id text;
    v_agent amp.agents;
BEGIN
    PERFORM amp._require_worker_arg(p_worker);
    IF p_agents IS NULL THEN
        PERFORM amp._raise_error('AM001', 'agents (p_agents) must not be null');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM amp.workers WHERE id = p_worker) THEN
        PERFORM amp._raise_error('AM001', format('no worker %s (registered?)', p_worker));
    END IF;
    PERFORM amp._require_worker(p_worker);
    FOREACH v_external_id IN ARRAY p_agents LOOP
        v_agent := amp._acting_agent(v_external_id);
        INSERT INTO amp.worker_agents (worker_id, agent_id) VALUES (p_worker, v_agent.id)
        ON CONFLICT DO NOTHING;
        RETURN NEXT v_agent.id;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION amp.heartbeat(p_worker uuid)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM amp._require_worker(p_worker);
    UPDATE amp.workers SET heartbeat_at = now() WHERE id = p_worker;
    -- workers silent for an hour are gone; their claims expire on their own
    DELETE FROM amp.workers WHERE heartbeat_at < now() - interval '1 hour';
END;
$$;

-- A worker shutting down cleanly hands back what it claimed but did not finish.
CREATE OR REPLACE FUNCTION amp.unregister_worker(p_worker uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp._require_worker(p_worker);
    FOR v_message IN
        WITH released AS (
            UPDATE amp.deliveries SET claimed_by = NULL, claim_expires_at = NULL
            WHERE claimed_by = p_worker
            RETURNING message_id
        )
        SELECT m.* FROM amp.messages m JOIN released r ON r.message_id = m.id
    LOOP
        PERFORM amp._notify_message(v_message);
    END LOOP;
    DELETE FROM amp.workers WHERE id = p_worker;
END;
$$;

-- ---------------------------------------------------------------------------
-- Claim, acknowledge, fail
-- ---------------------------------------------------------------------------

-- The functions of this section pin plan_cache_mode = force_generic_plan. Their
-- statements are keyed by arrays of message ids and a limit: the plan cache
-- estimated a generic plan for ten array elements, a custom one for the one or two
-- at hand, found the generic dearer, and so planned every statement again at every
-- call (a claim of one message spent more time planning than claiming). Their
-- generic plans are the index plans (tests/test_hot_paths.py).
--
-- Leases and acknowledgements are bookkeeping whose loss only means delivering
-- again (at least once): their transactions commit without waiting for the WAL
-- flush (set_config('synchronous_commit', 'off', true), local to the transaction),
-- which takes a disk flush off the critical path of every delivery. The messages
-- themselves (sends, replies) keep the server's durable commit.

-- The final outcome of pushed messages: their hot rows go, each history row gets
-- p_status, its attempts and its last error, and each sender hears of it (but
-- the asker of a sync request, which hears its answer). The last
-- error is the hot row's, else p_error; a message delivered without a handler
-- (p_status 'delivered' with p_error) says why instead.
CREATE OR REPLACE FUNCTION amp._settle_deliveries(
    p_ids uuid[], p_status text, p_error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_settled amp.messages;
BEGIN
    FOR v_settled IN
        WITH gone AS (
            DELETE FROM amp.deliveries d WHERE d.message_id = ANY (p_ids)
            RETURNING d.seq, d.attempts, d.last_error
        )
        UPDATE amp.messages m
        SET delivery_status = p_status,
            delivered_at = CASE WHEN p_status = 'delivered' THEN now() END,
            attempts = g.attempts,
            last_error = CASE WHEN p_status = 'delivered' AND p_error IS NOT NULL THEN p_error
                              ELSE coalesce(g.last_error, p_error) END
        FROM gone g
        WHERE m.seq = g.seq  -- by seq: see amp.claim_deliveries
        RETURNING m.*
    LOOP
        -- a sync request settled as delivered without an error was answered: its
        -- asker hears the answer itself, and a second hint would only wake it
        IF NOT (v_settled.message_type = 'sync_request' AND p_status = 'delivered'
                AND p_error IS NULL) THEN
            PERFORM amp._notify_delivery(v_settled);
        END IF;
    END LOOP;
END;
$$;

-- Lease up to p_limit deliverable messages of the agents this worker serves,
-- oldest first. Among them, a message whose lease expired after its last allowed
-- attempt (its worker died every time) is marked failed instead, and a sync
-- request nobody waits on any more (answered directly, timed out, or its
-- conversation ended) is settled without running a handler. Only the candidates
-- are looked at, never the whole backlog.
CREATE OR REPLACE FUNCTION amp.claim_deliveries(
    p_worker uuid, p_limit integer, p_lease interval, p_max_attempts integer)
RETURNS TABLE (
    id uuid, seq bigint, message_type text, content jsonb, metadata jsonb,
    session_id uuid, meeting_id uuid, attempts integer,
    sender_external_id text, sender_name text,
    recipient_external_id text, recipient_name text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_candidates refcursor;
    v_candidate record;
    v_ids uuid[] := '{}';      -- to lease
    v_expired uuid[] := '{}';  -- lease expired, attempts used up: failed
    v_moot uuid[] := '{}';     -- sync requests no longer awaited
BEGIN
    PERFORM amp._require_worker(p_worker, true);
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see above
    -- The oldest deliverable messages, locked (SKIP LOCKED: rows another worker is
    -- claiming right now are its own). A worker of a few agents reads each agent's
    -- backlog in seq order from deliveries_recipient_idx and stops at p_limit; one
    -- of many agents (a process serving thousands, mostly idle) joins the whole,
    -- usually small, table instead of probing the index once per agent.
    IF (SELECT count(*) FROM (SELECT 1 FROM amp.worker_agents wa
                              WHERE wa.worker_id = p_worker LIMIT 33) few) <= 32 THEN
        OPEN v_candidates FOR
            SELECT c.message_id, c.message_type, c.seq, c.attempts, c.claim_expires_at
            FROM amp.worker_agents wa
            CROSS JOIN LATERAL (
                SELECT d.message_id, d.message_type, d.seq, d.attempts, d.claim_expires_at
                FROM amp.deliveries d
                WHERE d.recipient_id = wa.agent_id AND d.available_at <= now()
                  AND (d.claim_expires_at IS NULL OR d.claim_expires_at < now())
                ORDER BY d.seq
                LIMIT p_limit
                FOR UPDATE OF d SKIP LOCKED
            ) c
            WHERE wa.worker_id = p_worker
            ORDER BY c.seq
            LIMIT p_limit;
    ELSE
        OPEN v_candidates FOR
            SELECT d.message_id, d.message_type, d.seq, d.attempts, d.claim_expires_at
            FROM amp.deliveries d
            JOIN amp.worker_agents wa ON wa.agent_id = d.recipient_id AND wa.worker_id = p_worker
            WHERE d.available_at <= now()
              AND (d.claim_expires_at IS NULL OR d.claim_expires_at < now())
            ORDER BY d.seq
            LIMIT p_limit
            FOR UPDATE OF d SKIP LOCKED;
    END IF;
    LOOP
        FETCH v_candidates INTO v_candidate;
        EXIT WHEN NOT FOUND;
        IF v_candidate.claim_expires_at IS NOT NULL AND v_candidate.attempts >= p_max_attempts THEN
            v_expired := v_expired || v_candidate.message_id;
        ELSIF v_candidate.message_type = 'sync_request' AND NOT EXISTS (
                -- its conversation waits on it no more (the request by seq, its
                -- conversation by id: amp.sessions has no index on the request it
                -- waits on, see sessions_one_live_per_pair)
                SELECT 1 FROM amp.messages m JOIN amp.sessions s ON s.id = m.session_id
                WHERE m.seq = v_candidate.seq AND s.waiting_for = v_candidate.message_id
                  AND (s.wait_deadline IS NULL OR s.wait_deadline > now())) THEN
            v_moot := v_moot || v_candidate.message_id;
        ELSE
            v_ids := v_ids || v_candidate.message_id;
        END IF;
    END LOOP;
    CLOSE v_candidates;

    IF cardinality(v_expired) > 0 THEN
        PERFORM amp._settle_deliveries(v_expired, 'failed',
                                       'lease expired: the handler process stopped');
    END IF;
    IF cardinality(v_moot) > 0 THEN
        PERFORM amp._settle_deliveries(v_moot, 'delivered', 'not handled: no longer awaited');
    END IF;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    -- the lease by primary key (no indexed column changes: a HOT update), then each
    -- message by seq: recent seqs sit together at the end of messages_seq_key, where
    -- the random uuids of messages_pkey are spread over the whole history
    RETURN QUERY
    WITH claimed AS (
        UPDATE amp.deliveries d
        SET claimed_by = p_worker, claim_expires_at = now() + p_lease, attempts = d.attempts + 1
        WHERE d.message_id = ANY (v_ids)
        RETURNING d.seq, d.attempts
    )
    SELECT m.id, m.seq, m.message_type, m.content, m.metadata, m.session_id, m.meeting_id,
           c.attempts, s.external_id, s.name, r.external_id, r.name
    FROM claimed c
    JOIN amp.messages m ON m.seq = c.seq
    LEFT JOIN amp.agents s ON s.id = m.sender_id
    JOIN amp.agents r ON r.id = m.recipient_id
    ORDER BY m.seq;
END;
$$;

-- A sync request already delivered: its answer (amp.sync_reply) settled it, so an
-- acknowledgement that follows the reply (as clients of 0.1.0 send) has nothing
-- left to do and is not an error.
CREATE OR REPLACE FUNCTION amp._answered_request(p_message_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM amp.messages m
                   WHERE m.id = p_message_id AND m.message_type = 'sync_request'
                     AND m.delivery_status = 'delivered');
END;
$$;

-- The handler succeeded. Only the worker holding the lease may acknowledge (a
-- sync request its answer settled is acknowledged already, see above).
CREATE OR REPLACE FUNCTION amp.ack_delivery(p_worker uuid, p_message_id uuid)
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_message amp.messages;
BEGIN
    PERFORM amp._require_worker(p_worker);
    WITH gone AS (
        DELETE FROM amp.deliveries d
        WHERE d.message_id = p_message_id AND d.claimed_by = p_worker
        RETURNING d.seq, d.attempts, d.last_error
    )
    UPDATE amp.messages m
    SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
        last_error = g.last_error
    FROM gone g
    WHERE m.seq = g.seq
    RETURNING m.* INTO v_message;
    IF v_message.id IS NULL THEN
        IF amp._answered_request(p_message_id) THEN
            RETURN;  -- settled by its answer (amp.sync_reply): nothing left to acknowledge
        END IF;
        PERFORM amp._raise_error('AM050', format(
            'message %s is not leased by worker %s (lease expired?)', p_message_id, p_worker));
    END IF;
    PERFORM amp._notify_delivery(v_message);
END;
$$;

-- Acknowledge many at once (a worker's group commit): returns the ids that were
-- still leased to this worker and are now delivered (and sync requests their
-- answer settled); the others lost their lease.
-- Each sender hears one `delivery` hint per batch (with a count, not the ids):
-- NOTIFYing commits are serialised by the server, so one per message would halve
-- the throughput of a busy stream; whoever waits re-reads the rows anyway.
CREATE OR REPLACE FUNCTION amp.ack_deliveries(p_worker uuid, p_message_ids uuid[])
RETURNS SETOF uuid
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_acked uuid[];
    v_senders uuid[];
    v_sender record;
BEGIN
    PERFORM amp._require_worker(p_worker);
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see above
    -- the history rows by seq (see amp.claim_deliveries)
    WITH gone AS (
        DELETE FROM amp.deliveries d
        WHERE d.message_id = ANY (p_message_ids) AND d.claimed_by = p_worker
        RETURNING d.seq, d.attempts, d.last_error
    ), acked AS (
        UPDATE amp.messages m
        SET delivery_status = 'delivered', delivered_at = now(), attempts = g.attempts,
            last_error = g.last_error
        FROM gone g
        WHERE m.seq = g.seq
        RETURNING m.id, m.sender_id
    )
    SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(sender_id), '{}')
    INTO v_acked, v_senders FROM acked;
    FOR v_sender IN
        SELECT x.sender_id, count(*) AS n FROM unnest(v_senders) AS x(sender_id)
        WHERE x.sender_id IS NOT NULL
        GROUP BY x.sender_id
    LOOP
        PERFORM pg_notify(amp._agent_channel_by_id(v_sender.sender_id), json_build_object(
            'kind', 'delivery', 'status', 'delivered', 'count', v_sender.n)::text);
    END LOOP;
    IF cardinality(v_acked) < cardinality(p_message_ids) THEN
        -- sync requests their answers settled count as acknowledged
        v_acked := v_acked || ARRAY(
            SELECT x.id FROM unnest(p_message_ids) AS x(id)
            WHERE x.id <> ALL (v_acked) AND amp._answered_request(x.id));
    END IF;
    RETURN QUERY SELECT unnest(v_acked);
END;
$$;

-- The handler failed: retry after p_retry_in, or mark failed once the attempts
-- are used up. Returns the new delivery_status.
CREATE OR REPLACE FUNCTION amp.fail_delivery(
    p_worker uuid, p_message_id uuid, p_error text, p_retry_in interval,
    p_max_attempts integer)
RETURNS text
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_delivery amp.deliveries;
    v_message amp.messages;
BEGIN
    PERFORM amp._require_worker_arg(p_worker);
    IF p_message_id IS NULL THEN
        PERFORM amp._raise_error('AM001', 'message id (p_message_id) must not be null');
    END IF;
    IF p_retry_in IS NULL THEN
        PERFORM amp._raise_error('AM001', 'retry delay (p_retry_in) must not be null');
    END IF;
    IF p_max_attempts IS NULL THEN
        PERFORM amp._raise_error('AM001', 'max attempts (p_max_attempts) must not be null');
    END IF;
    PERFORM amp._require_worker(p_worker);
    UPDATE amp.deliveries d
    SET available_at = now() + p_retry_in,
        claimed_by = NULL, claim_expires_at = NULL, last_error = p_error
    WHERE d.message_id = p_message_id AND d.claimed_by = p_worker
    RETURNING d.* INTO v_delivery;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM050', format(
            'message %s is not leased by worker %s (lease expired?)', p_message_id, p_worker));
    END IF;
    IF v_delivery.attempts >= p_max_attempts THEN
        -- the attempts are used up: final, the hot row goes, the history row says so
        DELETE FROM amp.deliveries d WHERE d.message_id = p_message_id;
        UPDATE amp.messages m
        SET delivery_status = 'failed', attempts = v_delivery.attempts, last_error = p_error
        WHERE m.id = p_message_id
        RETURNING * INTO v_message;
    ELSE
        SELECT * INTO v_message FROM amp.messages m WHERE m.id = p_message_id;
    END IF;
    IF v_message.delivery_status = 'failed' THEN
        PERFORM amp._notify_delivery(v_message);
    ELSIF p_retry_in <= interval '0' THEN
        PERFORM amp._notify_message(v_message);   -- deliverable again right now
    END IF;
    RETURN v_message.delivery_status;
END;
$$;

-- When this worker next has something to do without being notified: the
-- earliest retry or lease expiry among its agents' pending messages. Its
-- fallback poll sleeps no longer than this.
CREATE OR REPLACE FUNCTION amp.next_delivery_at(p_worker uuid)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM amp._require_worker(p_worker);
    RETURN (
        SELECT min(CASE WHEN d.claim_expires_at IS NOT NULL
                        THEN greatest(d.claim_expires_at, d.available_at)
                        ELSE d.available_at END)
        FROM amp.deliveries d
        JOIN amp.worker_agents wa ON wa.agent_id = d.recipient_id AND wa.worker_id = p_worker);
END;
$$;

-- Many one-way messages from one sender in one call and one transaction: element i
-- goes to p_recipients[i] with p_contents[i]. One content (an array of length 1)
-- goes to every recipient (a broadcast). p_metadata applies to every message.
-- Returns the message ids in the order of the recipients. Any bad element refuses
-- the whole batch (nothing is stored), and the error names the element by its
-- 0-based position ("batch element 3: ..."), keeping that element's error code.
CREATE OR REPLACE FUNCTION amp.send_one_way_many(
    p_sender text, p_recipients text[], p_contents jsonb[], p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS SETOF uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_sender amp.agents;
    v_n integer := coalesce(cardinality(p_recipients), 0);
    v_broadcast boolean := cardinality(p_contents) = 1;
    v_index integer := 0;   -- 0-based element being worked on, for the error
    v_recipient amp.agents;
    v_ids uuid[] := '{}';
    v_state text;
    v_text text;
BEGIN
    v_sender := amp._acting_agent(p_sender);
    IF v_n = 0 THEN
        PERFORM amp._raise_error('AM001', 'a batch needs at least one recipient');
    END IF;
    IF NOT v_broadcast AND coalesce(cardinality(p_contents), 0) <> v_n THEN
        PERFORM amp._raise_error('AM001', format(
            'a batch has %s recipients but %s contents (give one content per recipient, or one for all)',
            v_n, coalesce(cardinality(p_contents), 0)));
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        PERFORM amp._raise_error('AM001', 'message metadata must be a JSON object');
    END IF;
    -- one block for the whole batch (one subtransaction, not one per element) that
    -- names the failing element: the first error aborts everything stored so far
    BEGIN
        IF v_broadcast THEN
            PERFORM amp._check_message(p_contents[1], p_metadata);
        END IF;
        FOR i IN 1 .. v_n LOOP
            v_index := i - 1;
            v_recipient := amp.get_agent(p_recipients[i]);
            PERFORM amp._require_contact(v_sender, v_recipient);
            IF v_recipient.id = v_sender.id THEN
                PERFORM amp._raise_error('AM001', format(
                    'agent %L cannot send a message to itself', p_sender));
            END IF;
            v_ids := v_ids || (amp._store_message(
                'one_way', v_sender.id, v_recipient.id,
                CASE WHEN v_broadcast THEN p_contents[1] ELSE p_contents[i] END,
                p_metadata, p_push => true, p_notify => false)).id;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT;
        IF v_state LIKE 'AM%' THEN
            PERFORM amp._raise_error(v_state, format('batch element %s: %s', v_index, v_text));
        END IF;
        RAISE;
    END;
    PERFORM amp._notify_recipients(v_ids);
    RETURN QUERY SELECT unnest(v_ids);
END;
$$;

-- A worker whose handlers are still running keeps their leases: each call moves
-- the lease of these messages (still claimed by this worker and pending) to
-- now() + p_lease. Returns the ids it still holds; a missing id lost its lease
-- (it expired first and another worker may have claimed it). A process that
-- dies stops extending, so its leases expire as before.
CREATE OR REPLACE FUNCTION amp.extend_leases(p_worker uuid, p_message_ids uuid[], p_lease interval)
RETURNS SETOF uuid
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM amp._require_worker_arg(p_worker);
    PERFORM amp._require_worker(p_worker);
    PERFORM set_config('synchronous_commit', 'off', true);  -- bookkeeping: see above
    RETURN QUERY
    UPDATE amp.deliveries d SET claim_expires_at = now() + p_lease
    WHERE d.message_id = ANY (p_message_ids) AND d.claimed_by = p_worker
    RETURNING d.message_id;
END;
$$;

-- How a pushed message's delivery stands, for a sender that waits on it (LISTEN
-- on sender_channel first, then call this, then wait for a `delivery` hint, then
-- call it again). AM001 if there is no pushed message with that id.
CREATE OR REPLACE FUNCTION amp.delivery_outcome(p_message_id uuid)
RETURNS TABLE (delivery_status text, last_error text, attempts integer, sender_channel text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_message amp.messages;
    v_delivery amp.deliveries;
BEGIN
    SELECT * INTO v_message FROM amp.messages m
    WHERE m.id = p_message_id AND m.delivery_status IS NOT NULL;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM001', format('no pushed message has id %s', p_message_id));
    END IF;
    -- the sender's question (its answer names the sender's channel)
    PERFORM amp._require_actor(a) FROM amp.agents a WHERE a.id = v_message.sender_id;
    IF v_message.delivery_status = 'pending' THEN  -- its live attempts are in the hot row
        SELECT * INTO v_delivery FROM amp.deliveries d WHERE d.message_id = p_message_id;
        IF FOUND THEN
            v_message.attempts := v_delivery.attempts;
            v_message.last_error := v_delivery.last_error;
        END IF;
    END IF;
    RETURN QUERY SELECT v_message.delivery_status, v_message.last_error, v_message.attempts,
                        amp._agent_channel_by_id(v_message.sender_id);
END;
$$;

-- The pushed messages (one-way notes, sync requests, meeting invitations) still
-- waiting for an agent, oldest first, leased to a worker or not: what a client that
-- runs no handler (an MCP server, a dashboard) shows before it claims them. Only
-- from p_sender if given; at most p_limit (NULL: the default page size). Claims
-- nothing and changes nothing. For a role that may act as the agent (AM060), like
-- amp.peek_unread for the inbox.
CREATE OR REPLACE FUNCTION amp.peek_deliveries(
    p_agent text, p_sender text DEFAULT NULL, p_limit integer DEFAULT NULL)
RETURNS TABLE (
    id uuid, seq bigint, message_type text, content jsonb, metadata jsonb,
    session_id uuid, meeting_id uuid, attempts integer, sender_external_id text,
    sender_name text, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents := amp._acting_agent(p_agent);
    v_sender_id uuid := CASE WHEN p_sender IS NULL THEN NULL ELSE (amp.get_agent(p_sender)).id END;
    v_limit integer := amp._page_size(p_limit);
BEGIN
    -- pending means a row in amp.deliveries (its hot state); the history row has the rest
    RETURN QUERY
    SELECT m.id, m.seq, m.message_type, m.content, m.metadata, m.session_id, m.meeting_id,
           d.attempts, s.external_id, s.name, m.created_at
    FROM amp.deliveries d
    JOIN amp.messages m ON m.seq = d.seq  -- by seq: see amp.claim_deliveries
    LEFT JOIN amp.agents s ON s.id = m.sender_id
    WHERE d.recipient_id = v_agent.id
      AND (v_sender_id IS NULL OR m.sender_id = v_sender_id)
    ORDER BY d.seq
    LIMIT v_limit;
END;
$$;
