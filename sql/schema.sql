-- amp: the Agent Messaging Protocol, tables.
--
-- Everything lives in schema `amp`, so the library can share a database with an
-- application. Tables hold all state; the functions in the other files of this
-- folder are the only writers. Ids are uuids; users name organizations and agents
-- by their own external ids (text).

CREATE SCHEMA IF NOT EXISTS amp;

CREATE TABLE amp.organizations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id text NOT NULL UNIQUE CHECK (external_id <> ''),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE amp.agents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id     text NOT NULL UNIQUE CHECK (external_id <> ''),
    organization_id uuid NOT NULL REFERENCES amp.organizations (id),
    name            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agents_organization_idx ON amp.agents (organization_id);

-- A conversation between two agents. The pair is stored in canonical order
-- (agent_a_id < agent_b_id) so "the session of a pair" is one index lookup.
-- Sync:  active -> waiting (an agent asked and waits) <-> active -> ended.
-- Async: active -> ended.
CREATE TABLE amp.sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_a_id      uuid NOT NULL REFERENCES amp.agents (id),
    agent_b_id      uuid NOT NULL REFERENCES amp.agents (id),
    session_type    text NOT NULL CHECK (session_type IN ('sync', 'async')),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'waiting', 'ended')),
    -- the agent waiting for an answer (one of the pair), and the request it waits on
    locked_agent_id uuid,
    waiting_for     uuid,
    waiting_since   timestamptz,
    -- when the waiter gives up (its timeout): a wait past it is over even if its
    -- process never said so (it died, or lost the database); NULL: never
    wait_deadline   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    CHECK (agent_a_id < agent_b_id),
    CHECK ((status = 'waiting') = (locked_agent_id IS NOT NULL)),
    CONSTRAINT sessions_locked_agent_check CHECK (locked_agent_id IN (agent_a_id, agent_b_id)),
    CONSTRAINT sessions_ended_check CHECK ((status = 'ended') = (ended_at IS NOT NULL))
) WITH (fillfactor = 70);
-- One live session per pair and type; an ended one does not block a new one.
-- A sync conversation goes active -> waiting -> active at every question and answer:
-- no index covers the columns that move (status, locked_agent_id, waiting_for,
-- waiting_since, wait_deadline), so those updates are HOT (no index entry, the old
-- version pruned on the page; fillfactor leaves room), which is why this predicate
-- asks ended_at (set exactly when the session ends) and not the status.
CREATE UNIQUE INDEX sessions_one_live_per_pair
    ON amp.sessions (agent_a_id, agent_b_id, session_type)
    WHERE ended_at IS NULL;
CREATE INDEX sessions_agent_b_idx ON amp.sessions (agent_b_id);

-- Meeting:     created -> ready (all invitees attended) -> active -> ended.
-- Participant: invited -> attending -> waiting <-> speaking -> left.
CREATE TABLE amp.meetings (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    host_id            uuid NOT NULL REFERENCES amp.agents (id),
    status             text NOT NULL DEFAULT 'created'
                       CHECK (status IN ('created', 'ready', 'active', 'ended')),
    current_speaker_id uuid REFERENCES amp.agents (id),
    -- NULL: turns never expire
    turn_duration      interval CHECK (turn_duration > interval '0'),
    turn_started_at    timestamptz,
    -- stored so any process can tell when the turn expires
    turn_deadline      timestamptz,
    -- create_meeting's metadata, stored once (invitations reference the meeting)
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    ended_at           timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meetings_turn_deadline_idx ON amp.meetings (turn_deadline)
    WHERE status = 'active' AND turn_deadline IS NOT NULL;

CREATE TABLE amp.meeting_participants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    meeting_id  uuid NOT NULL REFERENCES amp.meetings (id) ON DELETE CASCADE,
    agent_id    uuid NOT NULL REFERENCES amp.agents (id),
    -- position in the invitation list; the host is 0. Round-robin follows it.
    join_order  integer NOT NULL,
    status      text NOT NULL DEFAULT 'invited'
                CHECK (status IN ('invited', 'attending', 'waiting', 'speaking', 'left')),
    -- seq of the last message this participant spoke (or of the opening
    -- message, for the host): a turn signal carries what was said after it
    last_spoke_seq bigint NOT NULL DEFAULT 0,
    joined_at   timestamptz,
    left_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (meeting_id, agent_id),
    UNIQUE (meeting_id, join_order)
);
CREATE INDEX meeting_participants_agent_idx ON amp.meeting_participants (agent_id);

-- Every message of every pattern. `seq` is the total order (timestamps tie
-- inside one transaction). sender_id, recipient_id, session_id and reply_to are
-- not declared foreign keys: the functions that store messages (the only writers)
-- resolve them first, agents are never deleted, and amp.prune removes a session
-- only once its messages are gone. A declared key cost every insert a lookup of
-- each parent and a row lock on it (a WAL record each, and a multixact on an agent
-- row that concurrent senders share), about a fifth of a send's server time. Push delivery (one-way, sync requests, meeting
-- invitations): delivery_status is 'pending' until the outcome is final, then
-- 'delivered' or 'failed' with attempts, delivered_at and last_error; while it is
-- pending, its live state (leases, attempts, retries) is in amp.deliveries, not
-- here, so claims never rewrite a history row (available_at, claimed_by and
-- claim_expires_at here stay as inserted). Inbox read state (read_at) is
-- independent of push delivery.
CREATE TABLE amp.messages (
    -- a UUID of version 7 (RFC 9562): 48 bits of Unix milliseconds, then random
    -- bits (a version 4 uuid's, the version set to 7). In time order, each new id
    -- goes to the right edge of messages_pkey and deliveries_pkey, whose last pages
    -- stay cached however long the history grows; a random id would land on a random
    -- page of a 10-million-entry index, a read from outside shared_buffers for every
    -- send once the history outgrows them. (PostgreSQL 18 has uuidv7(), 15 to 17 do
    -- not; written out here rather than in a function, whose call cost each insert
    -- more than the expression.)
    id               uuid PRIMARY KEY DEFAULT encode(set_bit(set_bit(
                         overlay(uuid_send(gen_random_uuid())
                                 PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp())
                                                                  * 1000)::bigint) FROM 3)
                                 FROM 1 FOR 6),
                         52, 1), 53, 1), 'hex')::uuid,
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    message_type     text NOT NULL CHECK (message_type IN (
                         'one_way', 'sync_request', 'sync_reply', 'async',
                         'meeting', 'meeting_invitation', 'system')),
    -- NULL sender: a system message (a turn timeout, say)
    sender_id        uuid,
    -- NULL recipient: said to a whole meeting
    recipient_id     uuid,
    session_id       uuid,
    meeting_id       uuid REFERENCES amp.meetings (id) ON DELETE CASCADE,
    -- a sync reply points at the request it answers
    reply_to         uuid,
    content          jsonb NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- a meeting message spoken after its speaker's turn had expired
    is_late          boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    read_at          timestamptz,
    -- push delivery: NULL for messages that are pulled, not pushed
    delivery_status  text CHECK (delivery_status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    available_at     timestamptz NOT NULL DEFAULT now(),
    claimed_by       uuid,
    claim_expires_at timestamptz,
    delivered_at     timestamptz,
    last_error       text,
    -- the sender's key for this send: a repeat with the same key returns this
    -- message instead of storing another (a retry after an unknown outcome)
    idempotency_key  text CHECK (idempotency_key <> '' AND octet_length(idempotency_key) <= 200),
    -- inbox reads under a receipt: an async message handed to a reader that has not
    -- confirmed it yet (read_at still NULL) is held for that reader until
    -- read_lease_until, then it is unread again (the answer may never have arrived)
    read_receipt     uuid,
    read_lease_until timestamptz
);
-- the inbox: unread async messages of one recipient
CREATE INDEX messages_unread_idx ON amp.messages (recipient_id, seq)
    WHERE read_at IS NULL AND message_type = 'async';
-- the inbox read or unread, paged by seq (amp.inbox_messages)
CREATE INDEX messages_inbox_idx ON amp.messages (recipient_id, seq)
    WHERE message_type = 'async';
-- partial: one-way messages (no session, no meeting) skip both on insert
CREATE INDEX messages_session_idx ON amp.messages (session_id, seq)
    WHERE session_id IS NOT NULL;
CREATE INDEX messages_meeting_idx ON amp.messages (meeting_id, seq)
    WHERE meeting_id IS NOT NULL;
-- the reply to a request, oldest first (amp.sync_result): with seq in the index the
-- lookup is one probe; on (reply_to) alone the planner walked the history in seq
-- order looking for it, a cost that grew with every message ever stored
CREATE INDEX messages_reply_to_idx ON amp.messages (reply_to, seq) WHERE reply_to IS NOT NULL;
CREATE UNIQUE INDEX messages_idempotency_idx ON amp.messages (sender_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Push delivery's hot state: one small row per pending pushed message, made by the
-- trigger below whenever a message is stored with delivery_status = 'pending'
-- (whoever inserts it), deleted when the outcome is final (the message row then
-- gets its final delivery_status, attempts and last_error, its only update).
-- Claims, lease extensions and retries update this table, whose size is the
-- backlog, never the history: a claim reads (recipient_id, seq) here, not a walk
-- of amp.messages, and leaves no dead version of a wide history row behind.
-- seq and message_type are copies (immutable in amp.messages) for the claim's order
-- and its check of sync requests.
CREATE TABLE amp.deliveries (
    -- (not a declared foreign key, like the ids of amp.messages: a message is
    -- removed only once settled, when its row here is gone)
    message_id       uuid PRIMARY KEY,
    recipient_id     uuid NOT NULL,
    seq              bigint NOT NULL,
    message_type     text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    available_at     timestamptz NOT NULL DEFAULT now(),
    claimed_by       uuid,
    claim_expires_at timestamptz,
    last_error       text
);
-- the claim query: pending work of one recipient, oldest first. No index covers
-- the columns a claim, a lease extension or a retry changes (claimed_by,
-- claim_expires_at, attempts, available_at, last_error): those updates are HOT,
-- adding no index entry, and the page's dead versions are pruned as it is read,
-- so the table stays the size of its backlog between vacuums. (fillfactor below
-- leaves each page room for them.)
CREATE INDEX deliveries_recipient_idx ON amp.deliveries (recipient_id, seq);

CREATE FUNCTION amp._enqueue_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO amp.deliveries (message_id, recipient_id, seq, message_type, attempts,
                                available_at, claimed_by, claim_expires_at, last_error)
    VALUES (NEW.id, NEW.recipient_id, NEW.seq, NEW.message_type, NEW.attempts,
            NEW.available_at, NEW.claimed_by, NEW.claim_expires_at, NEW.last_error);
    RETURN NULL;
END;
$$;

CREATE TRIGGER messages_enqueue_delivery AFTER INSERT ON amp.messages
    FOR EACH ROW WHEN (NEW.delivery_status = 'pending' AND NEW.recipient_id IS NOT NULL)
    EXECUTE FUNCTION amp._enqueue_delivery();

-- Autovacuum (the defaults wait until 20 % of a table is dead, which for a history
-- of millions of rows is millions of dead versions that every scan steps over):
-- * amp.messages is append-mostly (each pushed message is updated once, when its
--   outcome is final; inbox reads set read_at): vacuum and analyze after 1 % / 2 %
--   of it changed, and after 1 % inserted (keeps the visibility map current for
--   index-only scans and freezes in small steps);
-- * amp.deliveries is tiny and churns (every pushed message inserts, updates and
--   deletes a row): vacuum it whenever a few hundred versions are dead, without the
--   cost-based pause, so it stays the size of the backlog; its pages are filled to
--   half, leaving room for HOT updates (a claim's lease, a retry).
ALTER TABLE amp.messages SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE amp.deliveries SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 500,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 50);

CREATE TABLE amp.meeting_events (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    meeting_id  uuid NOT NULL REFERENCES amp.meetings (id) ON DELETE CASCADE,
    event_type  text NOT NULL CHECK (event_type IN (
                    'agent_joined', 'agent_spoke', 'agent_left', 'agent_timed_out',
                    'meeting_started', 'meeting_ended')),
    agent_id    uuid REFERENCES amp.agents (id),
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX meeting_events_meeting_idx ON amp.meeting_events (meeting_id, seq);

-- Presence: each SDK process registers itself and the agents whose handlers it
-- runs, and beats a heartbeat. Powers "who is online" and `amp status`.
CREATE TABLE amp.workers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    -- the login role that registered it: only that role (or an admin) may use it
    login_role   name NOT NULL DEFAULT session_user,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    -- direct delivery (amp.hold_worker): the lease a message handed to this worker as
    -- it is stored gets; NULL: the worker only claims
    direct_lease interval CHECK (direct_lease > interval '0')
);

CREATE TABLE amp.worker_agents (
    worker_id  uuid NOT NULL REFERENCES amp.workers (id) ON DELETE CASCADE,
    agent_id   uuid NOT NULL REFERENCES amp.agents (id),
    since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, agent_id)
);
CREATE INDEX worker_agents_agent_idx ON amp.worker_agents (agent_id);

-- Each agent's notification channel is named at random ('amp_agent_' and 32 hex
-- digits), so that only those allowed to act as the agent learn it
-- (amp.agent_channel); the notifying functions look it up here.
CREATE TABLE amp.agent_channels (
    agent_id uuid PRIMARY KEY REFERENCES amp.agents (id) ON DELETE CASCADE,
    channel  text NOT NULL DEFAULT 'amp_agent_' || replace(gen_random_uuid()::text, '-', '')
);

-- updated_at is kept by the database, not by each caller.
CREATE FUNCTION amp._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER organizations_touch BEFORE UPDATE ON amp.organizations
    FOR EACH ROW EXECUTE FUNCTION amp._touch_updated_at();
CREATE TRIGGER agents_touch BEFORE UPDATE ON amp.agents
    FOR EACH ROW EXECUTE FUNCTION amp._touch_updated_at();
CREATE TRIGGER sessions_touch BEFORE UPDATE ON amp.sessions
    FOR EACH ROW EXECUTE FUNCTION amp._touch_updated_at();
CREATE TRIGGER meetings_touch BEFORE UPDATE ON amp.meetings
    FOR EACH ROW EXECUTE FUNCTION amp._touch_updated_at();
CREATE TRIGGER meeting_participants_touch BEFORE UPDATE ON amp.meeting_participants
    FOR EACH ROW EXECUTE FUNCTION amp._touch_updated_at();

-- Every agent gets its channel however its row was made (register_agent, or an
-- administrator's INSERT), so no notification ever lacks a channel.
CREATE FUNCTION amp._name_agent_channel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO amp.agent_channels (agent_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_channel AFTER INSERT ON amp.agents
    FOR EACH ROW EXECUTE FUNCTION amp._name_agent_channel();

-- ---------------------------------------------------------------------------
-- Settings: limits an administrator sets. Only the owner of the schema (the role
-- that ran the migrations) writes this table; no application role is granted it,
-- unlike a session setting (SET ...), which any caller could raise. The functions
-- read it through amp._setting(), which falls back to the default (with a WARNING)
-- if a value is malformed; the trigger below refuses malformed values up front.
-- ---------------------------------------------------------------------------

CREATE TABLE amp.settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The known settings: default and allowed range (integers).
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

-- The effective value of a setting: amp.settings if well-formed and in range, else
-- the default (a malformed value never breaks a call; it is reported as a WARNING).
CREATE OR REPLACE FUNCTION amp._setting(p_key text)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_spec record;
    v_raw text;
    v_value bigint;
BEGIN
    SELECT * INTO v_spec FROM amp.settings_spec() s WHERE s.key = p_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown amp setting %', p_key;
    END IF;
    SELECT s.value INTO v_raw FROM amp.settings s WHERE s.key = p_key;
    IF v_raw IS NULL THEN
        RETURN v_spec.default_value;
    END IF;
    IF btrim(v_raw) ~ '^[0-9]{1,18}$' THEN
        v_value := btrim(v_raw)::bigint;
        IF v_value BETWEEN v_spec.min_value AND v_spec.max_value THEN
            RETURN v_value;
        END IF;
    END IF;
    RAISE WARNING 'amp.settings: % = % is not an integer from % to %; using the default %',
        p_key, quote_literal(v_raw), v_spec.min_value, v_spec.max_value, v_spec.default_value;
    RETURN v_spec.default_value;
END;
$$;

-- Refuse unknown keys and malformed values when they are written.
CREATE OR REPLACE FUNCTION amp._settings_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_spec record;
BEGIN
    SELECT * INTO v_spec FROM amp.settings_spec() s WHERE s.key = NEW.key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'AM001', HINT = 'amp error AM001',
            MESSAGE = format('unknown amp setting %L (known: %s)', NEW.key,
                (SELECT string_agg(key, ', ') FROM amp.settings_spec()));
    END IF;
    IF NOT (btrim(NEW.value) ~ '^[0-9]{1,18}$'
            AND btrim(NEW.value)::bigint BETWEEN v_spec.min_value AND v_spec.max_value) THEN
        RAISE EXCEPTION USING ERRCODE = 'AM001', HINT = 'amp error AM001',
            MESSAGE = format('amp setting %s must be an integer from %s to %s, not %L',
                NEW.key, v_spec.min_value, v_spec.max_value, NEW.value);
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER settings_check BEFORE INSERT OR UPDATE ON amp.settings
    FOR EACH ROW EXECUTE FUNCTION amp._settings_check();

-- Every setting with its effective value and where it comes from.
CREATE OR REPLACE FUNCTION amp.effective_settings()
RETURNS TABLE (key text, value bigint, source text, default_value bigint,
               min_value bigint, max_value bigint, description text)
LANGUAGE sql STABLE AS $$
    SELECT sp.key, amp._setting(sp.key),
           CASE WHEN s.value IS NULL THEN 'default'
                WHEN amp._setting(sp.key) = sp.default_value
                     AND btrim(s.value) IS DISTINCT FROM sp.default_value::text
                THEN 'invalid in amp.settings: default used'
                ELSE 'amp.settings' END,
           sp.default_value, sp.min_value, sp.max_value, sp.description
    FROM amp.settings_spec() sp
    LEFT JOIN amp.settings s ON s.key = sp.key
$$;
