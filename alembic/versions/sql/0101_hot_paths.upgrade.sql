-- agent-messaging revision 0101 (upgrade): faster hot paths; internals apart.
-- * Internal SQL-language functions become PL/pgSQL. PostgreSQL before 18 plans a
--   SQL function's body again on every call it cannot inline, and a SECURITY
--   DEFINER function with SET search_path is never inlined: each send paid for
--   planning about ten of them. PL/pgSQL keeps its plans for the session.
-- * amp.sync_result found a request's reply by walking the history in seq order
--   (on (reply_to) alone the planner preferred messages_seq_key for ORDER BY seq
--   LIMIT 1 whenever the statistics lagged): the index is now (reply_to, seq).
-- * amp.claim_deliveries settles expired leases and moot sync requests among its
--   candidates instead of sweeping with two extra statements, so the two indexes
--   of those sweeps go; with no index on the columns a lease changes, a claim is a
--   HOT update, and amp.deliveries gets fillfactor 50 to leave room for it. A worker
--   of a few agents reads each agent's backlog in index order and stops at the limit.
-- * The agents a worker serves are checked against the bindings in one query per
--   claim (it was one PL/pgSQL identity check per agent).
-- * The claim, the acknowledgements, the leases and the settling of deliveries pin
--   plan_cache_mode = force_generic_plan: keyed by arrays of ids, their statements
--   were planned again at every call. A claim asks whether a sync request is still
--   awaited of the conversation (sessions_waiting_for_idx), not of its history.
-- * amp.sync_reply (and amp.sync_send answering a waiting request) settles the
--   answered request's push delivery: the handler that replied needs no separate
--   acknowledgement; an acknowledgement after the reply (as 0.1.0 clients send) is
--   accepted as a no-op.
-- * Internal functions are renamed with a leading underscore (amp._store_message):
--   the old names are dropped (with the triggers on internal trigger functions) and
--   every function is created again from this revision's sql/.
-- * amp.send_one_way_many wakes each recipient once per batch (the hint of its first
--   message, with "count"), not once per message.
-- * Message ids are UUIDs of version 7 (time-ordered): inserts into messages_pkey and
--   deliveries_pkey stay at the right edge of the index, cached however long the
--   history grows.
-- * A sync conversation's question and answer are HOT updates of its session: no
--   index covers the columns that move (sessions_one_live_per_pair asks ended_at,
--   not the status; sessions_waiting_for_idx goes, a claim finds a request's
--   conversation by the request, amp.prune reads the waiting sessions per batch),
--   the locked agent is checked against the pair instead of by a foreign key, and
--   sessions get fillfactor 70.
-- * amp.messages and amp.deliveries keep no foreign keys to agents, sessions and
--   messages (the meeting's stays, for its cascade): the functions resolve every id
--   before they store it, and each declared key cost every insert a lookup and a row
--   lock on its parent. Message ids get their default expression written out.
-- * The hot functions do their common case in fewer statements and calls: the
--   identity and contact checks of a pair in one query, a message's hint written by
--   the insert's own function, a sync reply's answer settled in place; a sync
--   reply's hint carries its content (agent channels are secret; amp.notify_content
--   = off keeps content out).
-- * Direct delivery: amp.hold_worker makes a worker present (an advisory lock held
--   by its LISTEN connection); a pushed message is handed to a present worker of its
--   recipient as it is stored, its hint carrying what the handler needs, and runs
--   without a claim; amp.release_deliveries hands messages back.
-- * New public reads, so that a client logged in as an application role (which may
--   read no table) needs no statement on a table: amp.agent_organization,
--   amp.agent_list (the directory, scoped by the contact policy),
--   amp.peek_deliveries (an agent's pending pushed messages) and amp.agent_meetings.
-- * A meeting turn's new speaker is told on its own agent channel, with what was said
--   since it last spoke when that fits in a payload (amp._meeting_hand_over), so it
--   need not read it back; amp.speak does its hand-off in fewer statements and
--   calls; amp.meeting_turn also returns latest_seq (the newest message it saw), by
--   which a waiter tells a hint given after its read from one given before.
-- Not breaking: no public function changed its parameters, and the one changed
-- result (amp.meeting_turn's) only gained a last column; clients of 0.1.0 call only
-- public functions. Frozen once released: never edit it after the release tag.

DROP INDEX amp.deliveries_leased_idx;
DROP INDEX amp.deliveries_requests_idx;
ALTER TABLE amp.deliveries SET (fillfactor = 50);
-- (building it reads the history once, with writes to amp.messages held meanwhile)
DROP INDEX amp.messages_reply_to_idx;
CREATE INDEX messages_reply_to_idx ON amp.messages (reply_to, seq) WHERE reply_to IS NOT NULL;
-- keys the functions check themselves
ALTER TABLE amp.messages
    DROP CONSTRAINT messages_sender_id_fkey,
    DROP CONSTRAINT messages_recipient_id_fkey,
    DROP CONSTRAINT messages_session_id_fkey,
    DROP CONSTRAINT messages_reply_to_fkey;
ALTER TABLE amp.deliveries DROP CONSTRAINT deliveries_message_id_fkey;
-- direct delivery (amp.hold_worker)
ALTER TABLE amp.workers ADD COLUMN direct_lease interval CHECK (direct_lease > interval '0');
-- a session's waits are HOT updates: ended_at is set exactly when it ended
UPDATE amp.sessions SET ended_at = coalesce(ended_at, updated_at)
WHERE status = 'ended' AND ended_at IS NULL;
UPDATE amp.sessions SET ended_at = NULL WHERE status <> 'ended' AND ended_at IS NOT NULL;
ALTER TABLE amp.sessions
    DROP CONSTRAINT sessions_locked_agent_id_fkey,
    ADD CONSTRAINT sessions_locked_agent_check CHECK (locked_agent_id IN (agent_a_id, agent_b_id)),
    ADD CONSTRAINT sessions_ended_check CHECK ((status = 'ended') = (ended_at IS NOT NULL)),
    SET (fillfactor = 70);
DROP INDEX amp.sessions_one_live_per_pair;
CREATE UNIQUE INDEX sessions_one_live_per_pair
    ON amp.sessions (agent_a_id, agent_b_id, session_type)
    WHERE ended_at IS NULL;
DROP INDEX amp.sessions_waiting_for_idx;
DROP INDEX amp.sessions_ended_idx;
CREATE INDEX sessions_ended_idx ON amp.sessions (ended_at) WHERE ended_at IS NOT NULL;

-- a new result column: created again below
DROP FUNCTION amp.meeting_turn(text,uuid);

-- the old internal names (CASCADE: the triggers on them, created again below)
DROP FUNCTION amp.acting_agent(text) CASCADE;
DROP FUNCTION amp.agent_channel_by_id(uuid) CASCADE;
DROP FUNCTION amp.api_functions() CASCADE;
DROP FUNCTION amp.check_json(text,jsonb,text) CASCADE;
DROP FUNCTION amp.check_message(jsonb,jsonb) CASCADE;
DROP FUNCTION amp.enqueue_delivery() CASCADE;
DROP FUNCTION amp.get_or_create_session(uuid,uuid,text) CASCADE;
DROP FUNCTION amp.idempotent_message(uuid,text,text,uuid) CASCADE;
DROP FUNCTION amp.is_admin() CASCADE;
DROP FUNCTION amp.lease_commit() CASCADE;
DROP FUNCTION amp.lock_sync_session(text,text) CASCADE;
DROP FUNCTION amp.may_act_as(amp.agents) CASCADE;
DROP FUNCTION amp.may_read_message(amp.messages) CASCADE;
DROP FUNCTION amp.meeting_check_ready(amp.meetings) CASCADE;
DROP FUNCTION amp.meeting_expire(amp.meetings) CASCADE;
DROP FUNCTION amp.meeting_give_turn(amp.meetings,uuid) CASCADE;
DROP FUNCTION amp.meeting_lock(uuid) CASCADE;
DROP FUNCTION amp.meeting_lock_as_host(text,uuid,text) CASCADE;
DROP FUNCTION amp.meeting_member(uuid,amp.agents) CASCADE;
DROP FUNCTION amp.meeting_next_after(uuid,uuid) CASCADE;
DROP FUNCTION amp.meeting_pick_next(uuid,uuid,text) CASCADE;
DROP FUNCTION amp.meeting_record_event(amp.meetings,text,uuid,jsonb) CASCADE;
DROP FUNCTION amp.meeting_system_message(uuid,text,uuid,text) CASCADE;
DROP FUNCTION amp.name_agent_channel() CASCADE;
DROP FUNCTION amp.notify_delivery(amp.messages) CASCADE;
DROP FUNCTION amp.notify_message(amp.messages) CASCADE;
DROP FUNCTION amp.organization_bound(uuid) CASCADE;
DROP FUNCTION amp.page_size(integer) CASCADE;
DROP FUNCTION amp.prune_answer_kept(uuid,timestamp with time zone) CASCADE;
DROP FUNCTION amp.raise_error(text,text) CASCADE;
DROP FUNCTION amp.require_actor(amp.agents) CASCADE;
DROP FUNCTION amp.require_admin(text) CASCADE;
DROP FUNCTION amp.require_contact(amp.agents,amp.agents) CASCADE;
DROP FUNCTION amp.require_external_id(text,text) CASCADE;
DROP FUNCTION amp.require_meeting_reader(uuid) CASCADE;
DROP FUNCTION amp.require_message_reader(amp.messages) CASCADE;
DROP FUNCTION amp.require_name(text) CASCADE;
DROP FUNCTION amp.require_organization_actor(amp.organizations) CASCADE;
DROP FUNCTION amp.require_role_exists(name) CASCADE;
DROP FUNCTION amp.require_sync_session(text,text) CASCADE;
DROP FUNCTION amp.require_worker(uuid,boolean) CASCADE;
DROP FUNCTION amp.require_worker_arg(uuid) CASCADE;
DROP FUNCTION amp.resolve_pair(text,text) CASCADE;
DROP FUNCTION amp.role_may_act_as(name,amp.agents) CASCADE;
DROP FUNCTION amp.setting(text) CASCADE;
DROP FUNCTION amp.settings_check() CASCADE;
DROP FUNCTION amp.store_message(text,uuid,uuid,jsonb,jsonb,uuid,uuid,uuid,boolean,boolean,text) CASCADE;
DROP FUNCTION amp.touch_updated_at() CASCADE;
DROP FUNCTION amp.unlock_session(uuid,text) CASCADE;

CREATE OR REPLACE FUNCTION amp._enqueue_delivery() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO amp.deliveries (message_id, recipient_id, seq, message_type, attempts,
                                available_at, claimed_by, claim_expires_at, last_error)
    VALUES (NEW.id, NEW.recipient_id, NEW.seq, NEW.message_type, NEW.attempts,
            NEW.available_at, NEW.claimed_by, NEW.claim_expires_at, NEW.last_error);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION amp._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION amp._name_agent_channel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO amp.agent_channels (agent_id) VALUES (NEW.id);
    RETURN NULL;
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

CREATE OR REPLACE FUNCTION amp.error_codes()
RETURNS TABLE (code text, name text, description text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES
        ('AM001', 'invalid_input',                'an argument is empty, malformed or not allowed'),
        ('AM010', 'organization_not_found',       'no organization has that external id'),
        ('AM011', 'organization_already_exists',  'an organization with that external id exists'),
        ('AM020', 'agent_not_found',              'no agent has that external id'),
        ('AM021', 'agent_already_exists',         'an agent with that external id exists'),
        ('AM030', 'session_not_found',            'no such conversation'),
        ('AM031', 'invalid_session_state',        'the conversation is not in a state that allows this call'),
        ('AM032', 'conversation_ended',           'the conversation has been ended'),
        ('AM040', 'meeting_not_found',            'no meeting has that id'),
        ('AM041', 'not_meeting_host',             'only the host may do this'),
        ('AM042', 'agent_not_in_meeting',         'the agent is not a participant of the meeting'),
        ('AM043', 'invalid_meeting_state',        'the meeting is not in a state that allows this call'),
        ('AM044', 'not_current_speaker',          'only the current speaker may speak'),
        ('AM045', 'host_cannot_leave',            'the host ends a meeting, it cannot leave it'),
        ('AM046', 'invalid_meeting',              'the meeting asked for is invalid (invitation list, turn duration)'),
        ('AM050', 'delivery_not_found',           'no delivery with that id is leased by this worker'),
        ('AM060', 'access_denied',                'the connection''s role may not act as that agent (or do that)'),
        ('AM061', 'contact_not_allowed',          'the two agents'' organizations may not contact each other')
$$;

CREATE OR REPLACE FUNCTION amp._raise_error(p_code text, p_message text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = p_code,
        MESSAGE = p_message,
        HINT = format('amp error %s', p_code);
END;
$$;

CREATE OR REPLACE FUNCTION amp._agent_channel_by_id(p_agent_id uuid)
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

CREATE OR REPLACE FUNCTION amp.listen(p_channels text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_channel text;
BEGIN
    IF p_channels IS NULL OR array_position(p_channels, NULL) IS NOT NULL THEN
        PERFORM amp._raise_error('AM001', 'channels (p_channels) must not be or contain NULL');
    END IF;
    FOREACH v_channel IN ARRAY p_channels LOOP
        EXECUTE format('LISTEN %I', v_channel);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION amp.unlisten(p_channels text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_channel text;
BEGIN
    IF p_channels IS NULL OR array_position(p_channels, NULL) IS NOT NULL THEN
        PERFORM amp._raise_error('AM001', 'channels (p_channels) must not be or contain NULL');
    END IF;
    FOREACH v_channel IN ARRAY p_channels LOOP
        EXECUTE format('UNLISTEN %I', v_channel);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_external_id(p_what text, p_external_id text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_external_id IS NULL OR btrim(p_external_id) = '' THEN
        PERFORM amp._raise_error('AM001', format('%s external id must not be empty', p_what));
    END IF;
    IF char_length(p_external_id) > 255 THEN
        PERFORM amp._raise_error('AM001', format(
            '%s external id is %s characters, more than the limit of 255', p_what,
            char_length(p_external_id)));
    END IF;
    IF p_external_id ~ '[\x01-\x1f\x7f-\x9f]' THEN
        PERFORM amp._raise_error('AM001', format(
            '%s external id %s contains a control character', p_what,
            quote_literal(regexp_replace(p_external_id, '[\x01-\x1f\x7f-\x9f]', '?', 'g'))));
    END IF;
    IF p_external_id ~ '^[ \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]'
       OR p_external_id ~ '[ \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]$' THEN
        PERFORM amp._raise_error('AM001', format(
            '%s external id %L starts or ends with whitespace', p_what, p_external_id));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_name(p_name text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF char_length(p_name) > 1000 THEN
        PERFORM amp._raise_error('AM001', format(
            'name is %s characters, more than the limit of 1000', char_length(p_name)));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.register_organization(p_external_id text, p_name text DEFAULT NULL)
RETURNS amp.organizations
LANGUAGE plpgsql AS $$
DECLARE
    v_org amp.organizations;
BEGIN
    PERFORM amp._require_external_id('organization', p_external_id);
    PERFORM amp._require_name(p_name);
    -- the unique index decides a race between two registrations
    INSERT INTO amp.organizations (external_id, name)
    VALUES (p_external_id, coalesce(nullif(btrim(p_name), ''), p_external_id))
    ON CONFLICT (external_id) DO NOTHING
    RETURNING * INTO v_org;
    IF v_org.id IS NULL THEN
        PERFORM amp._raise_error('AM011',
            format('organization %L already exists', p_external_id));
    END IF;
    RETURN v_org;
END;
$$;

CREATE OR REPLACE FUNCTION amp.get_organization(p_external_id text)
RETURNS amp.organizations
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_org amp.organizations;
BEGIN
    PERFORM amp._require_external_id('organization', p_external_id);
    SELECT * INTO v_org FROM amp.organizations WHERE external_id = p_external_id;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM010', format('organization %L not found', p_external_id));
    END IF;
    RETURN v_org;
END;
$$;

CREATE OR REPLACE FUNCTION amp.register_agent(
    p_external_id text, p_organization_external_id text, p_name text DEFAULT NULL)
RETURNS amp.agents
LANGUAGE plpgsql AS $$
DECLARE
    v_org   amp.organizations;
    v_agent amp.agents;
BEGIN
    PERFORM amp._require_external_id('agent', p_external_id);
    PERFORM amp._require_external_id('organization', p_organization_external_id);
    PERFORM amp._require_name(p_name);
    v_org := amp._require_organization_actor(amp.get_organization(p_organization_external_id));
    INSERT INTO amp.agents (external_id, organization_id, name)
    VALUES (p_external_id, v_org.id, coalesce(nullif(btrim(p_name), ''), p_external_id))
    ON CONFLICT (external_id) DO NOTHING
    RETURNING * INTO v_agent;
    IF v_agent.id IS NULL THEN
        PERFORM amp._raise_error('AM021', format('agent %L already exists', p_external_id));
    END IF;
    RETURN v_agent;
END;
$$;

CREATE OR REPLACE FUNCTION amp.get_agent(p_external_id text)
RETURNS amp.agents
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents;
BEGIN
    PERFORM amp._require_external_id('agent', p_external_id);
    SELECT * INTO v_agent FROM amp.agents WHERE external_id = p_external_id;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM020', format('agent %L not found', p_external_id));
    END IF;
    RETURN v_agent;
END;
$$;

CREATE OR REPLACE FUNCTION amp.agent_organization(p_agent text)
RETURNS amp.organizations
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_org amp.organizations;
BEGIN
    SELECT * INTO v_org FROM amp.organizations o
    WHERE o.id = (amp.get_agent(p_agent)).organization_id;
    RETURN v_org;
END;
$$;

CREATE OR REPLACE FUNCTION amp.agent_list(
    p_organization text DEFAULT NULL, p_after text DEFAULT NULL, p_limit integer DEFAULT NULL)
RETURNS TABLE (
    agent_external_id text, name text, organization_external_id text, online boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_org_id uuid := CASE WHEN p_organization IS NULL THEN NULL
                          ELSE (amp.get_organization(p_organization)).id END;
    v_limit  integer := amp._page_size(p_limit);
    v_admin  boolean := amp._is_admin();
BEGIN
    RETURN QUERY
    WITH acting AS MATERIALIZED (   -- the organizations of the agents the caller acts as
        SELECT DISTINCT a.organization_id AS id,
               amp._organization_bound(a.organization_id) AS bound
        FROM amp.agents a
        WHERE NOT v_admin AND amp._may_act_as(a)
    )
    SELECT a.external_id, a.name, o.external_id,
           CASE WHEN me.mine THEN EXISTS (
               SELECT 1 FROM amp.online_agents w WHERE w.agent = a.external_id) END
    FROM amp.agents a
    JOIN amp.organizations o ON o.id = a.organization_id
    CROSS JOIN LATERAL (SELECT v_admin OR amp._may_act_as(a) AS mine) me
    WHERE (v_org_id IS NULL OR a.organization_id = v_org_id)
      AND (p_after IS NULL OR a.external_id > p_after)
      AND (me.mine OR EXISTS (
          SELECT 1 FROM acting x
          WHERE x.id = a.organization_id
             OR NOT x.bound
             OR NOT amp._organization_bound(a.organization_id)
             OR EXISTS (SELECT 1 FROM amp.contacts c
                        WHERE c.from_organization_id = x.id
                          AND c.to_organization_id = a.organization_id)))
    ORDER BY a.external_id
    LIMIT v_limit;
END;
$$;

CREATE OR REPLACE FUNCTION amp.agent_channel(p_external_id text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._agent_channel_by_id((amp._acting_agent(p_external_id)).id);
END;
$$;

CREATE OR REPLACE FUNCTION amp._is_admin()
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN pg_has_role(session_user, 'amp_admin', 'MEMBER');
END;
$$;

CREATE OR REPLACE FUNCTION amp._role_may_act_as(p_role name, p_agent amp.agents)
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

CREATE OR REPLACE FUNCTION amp._may_act_as(p_agent amp.agents)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._role_may_act_as(session_user, p_agent);
END;
$$;

CREATE OR REPLACE FUNCTION amp.may_act_as_id(p_agent_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents;
BEGIN
    SELECT * INTO v_agent FROM amp.agents a WHERE a.id = p_agent_id;
    RETURN FOUND AND amp._role_may_act_as(session_user, v_agent);
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_actor(p_agent amp.agents)
RETURNS amp.agents
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT amp._role_may_act_as(session_user, p_agent) THEN
        PERFORM amp._raise_error('AM060', format(
            'role %I is not allowed to act as agent %L', session_user, p_agent.external_id));
    END IF;
    RETURN p_agent;
END;
$$;

CREATE OR REPLACE FUNCTION amp._acting_agent(p_external_id text)
RETURNS amp.agents
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v record;
BEGIN
    SELECT a AS agent,
           CASE WHEN NOT EXISTS (SELECT 1 FROM amp.role_bindings b
                                 WHERE b.agent_id = a.id OR b.organization_id = a.organization_id)
                THEN pg_has_role(session_user, 'amp_user', 'MEMBER')
                ELSE EXISTS (SELECT 1 FROM amp.role_bindings b
                             WHERE (b.agent_id = a.id OR b.organization_id = a.organization_id)
                               AND pg_has_role(session_user, to_regrole(quote_ident(b.role_name)),
                                               'MEMBER'))
                     OR pg_has_role(session_user, 'amp_admin', 'MEMBER') END AS may_act
    INTO v
    FROM amp.agents a WHERE a.external_id = p_external_id;
    IF v.may_act THEN
        RETURN v.agent;
    END IF;
    RETURN amp._require_actor(amp.get_agent(p_external_id));
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_organization_actor(p_org amp.organizations)
RETURNS amp.organizations
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM amp.role_bindings b WHERE b.organization_id = p_org.id)
       AND NOT amp._is_admin()
       AND NOT EXISTS (SELECT 1 FROM amp.role_bindings b JOIN pg_roles r ON r.rolname = b.role_name
                       WHERE b.organization_id = p_org.id
                         AND pg_has_role(session_user, r.oid, 'MEMBER')) THEN
        PERFORM amp._raise_error('AM060', format(
            'role %I is not allowed to act for organization %L', session_user, p_org.external_id));
    END IF;
    RETURN p_org;
END;
$$;

CREATE OR REPLACE FUNCTION amp._organization_bound(p_organization_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM amp.role_bindings WHERE organization_id = p_organization_id);
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_contact(p_sender amp.agents, p_recipient amp.agents)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_sender.organization_id = p_recipient.organization_id
       OR NOT amp._organization_bound(p_sender.organization_id)
       OR NOT amp._organization_bound(p_recipient.organization_id)
       OR EXISTS (SELECT 1 FROM amp.contacts c
                  WHERE c.from_organization_id = p_sender.organization_id
                    AND c.to_organization_id = p_recipient.organization_id)
       OR (EXISTS (SELECT 1 FROM amp.contacts c
                   WHERE c.from_organization_id = p_recipient.organization_id
                     AND c.to_organization_id = p_sender.organization_id)
           AND EXISTS (SELECT 1 FROM amp.sessions s
                       WHERE s.agent_a_id = least(p_sender.id, p_recipient.id)
                         AND s.agent_b_id = greatest(p_sender.id, p_recipient.id)
                         AND s.ended_at IS NULL)) THEN
        RETURN;
    END IF;
    PERFORM amp._raise_error('AM061', format(
        'agent %L may not contact agent %L: organization %L has no contact with organization %L '
        '(amp.allow_contact)', p_sender.external_id, p_recipient.external_id,
        (SELECT external_id FROM amp.organizations WHERE id = p_sender.organization_id),
        (SELECT external_id FROM amp.organizations WHERE id = p_recipient.organization_id)));
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_admin(p_what text)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT amp._is_admin() THEN
        PERFORM amp._raise_error('AM060', format(
            'role %I may not %s: only a superuser or a member of amp_admin may',
            session_user, p_what));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_worker(p_worker uuid, p_check_agents boolean DEFAULT false)
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
    IF v_role <> session_user AND NOT amp._is_admin() THEN
        PERFORM amp._raise_error('AM060', format(
            'role %I may not use worker %s (registered by role %I)', session_user, p_worker, v_role));
    END IF;
    IF p_check_agents THEN
        -- amp._role_may_act_as for every agent served, as one query (a worker may serve
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
            PERFORM amp._require_actor(v_agent);  -- raises AM060 naming the agent
        END IF;
    END IF;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION amp.may_read_meeting(p_meeting uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._is_admin() OR EXISTS (
        SELECT 1 FROM amp.meeting_participants p JOIN amp.agents a ON a.id = p.agent_id
        WHERE p.meeting_id = p_meeting AND amp._may_act_as(a));
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_meeting_reader(p_meeting uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM amp.meetings WHERE id = p_meeting)
       AND NOT amp.may_read_meeting(p_meeting) THEN
        PERFORM amp._raise_error('AM060', format(
            'role %I is not allowed to read meeting %s: it acts as none of its participants',
            session_user, p_meeting));
    END IF;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION amp._may_read_message(p_message amp.messages)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (p_message.sender_id IS NOT NULL AND amp.may_act_as_id(p_message.sender_id))
        OR (p_message.recipient_id IS NOT NULL AND amp.may_act_as_id(p_message.recipient_id))
        OR (p_message.meeting_id IS NOT NULL AND amp.may_read_meeting(p_message.meeting_id));
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_message_reader(p_message amp.messages)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT amp._may_read_message(p_message) THEN
        PERFORM amp._raise_error('AM060', format(
            'role %I is not allowed to read message %s', session_user, p_message.id));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp._require_role_exists(p_role name)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_role IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
        PERFORM amp._raise_error('AM001', format('role %L does not exist', p_role));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.bind_organization(p_organization text, p_role name)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_org amp.organizations;
BEGIN
    PERFORM amp._require_admin('bind roles');
    v_org := amp.get_organization(p_organization);
    PERFORM amp._require_role_exists(p_role);
    INSERT INTO amp.role_bindings (organization_id, role_name) VALUES (v_org.id, p_role)
    ON CONFLICT (organization_id) DO UPDATE SET role_name = excluded.role_name;
END;
$$;

CREATE OR REPLACE FUNCTION amp.bind_agent(p_agent text, p_role name)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_agent amp.agents;
BEGIN
    PERFORM amp._require_admin('bind roles');
    v_agent := amp.get_agent(p_agent);
    PERFORM amp._require_role_exists(p_role);
    INSERT INTO amp.role_bindings (agent_id, role_name) VALUES (v_agent.id, p_role)
    ON CONFLICT (agent_id) DO UPDATE SET role_name = excluded.role_name;
END;
$$;

CREATE OR REPLACE FUNCTION amp.unbind_organization(p_organization text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM amp._require_admin('unbind roles');
    DELETE FROM amp.role_bindings
    WHERE organization_id = (amp.get_organization(p_organization)).id;
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION amp.unbind_agent(p_agent text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM amp._require_admin('unbind roles');
    DELETE FROM amp.role_bindings WHERE agent_id = (amp.get_agent(p_agent)).id;
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION amp.allow_contact(
    p_from text, p_to text, p_both_ways boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_from amp.organizations;
    v_to   amp.organizations;
BEGIN
    PERFORM amp._require_admin('allow contact');
    v_from := amp.get_organization(p_from);
    v_to := amp.get_organization(p_to);
    IF v_from.id = v_to.id THEN
        PERFORM amp._raise_error('AM001', 'an organization is always in contact with itself');
    END IF;
    INSERT INTO amp.contacts (from_organization_id, to_organization_id)
    VALUES (v_from.id, v_to.id) ON CONFLICT DO NOTHING;
    IF p_both_ways THEN
        INSERT INTO amp.contacts (from_organization_id, to_organization_id)
        VALUES (v_to.id, v_from.id) ON CONFLICT DO NOTHING;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.revoke_contact(
    p_from text, p_to text, p_both_ways boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_from amp.organizations;
    v_to   amp.organizations;
BEGIN
    PERFORM amp._require_admin('revoke contact');
    v_from := amp.get_organization(p_from);
    v_to := amp.get_organization(p_to);
    DELETE FROM amp.contacts
    WHERE (from_organization_id = v_from.id AND to_organization_id = v_to.id)
       OR (p_both_ways AND from_organization_id = v_to.id AND to_organization_id = v_from.id);
END;
$$;

CREATE OR REPLACE FUNCTION amp.can_act_as(p_agent text)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._may_act_as(amp.get_agent(p_agent));
END;
$$;

CREATE OR REPLACE FUNCTION amp.role_map()
RETURNS TABLE (
    organization_external_id text, agent_external_id text, bound_role name, bound_by text,
    login_roles name[])
LANGUAGE sql STABLE AS $$
    SELECT o.external_id, a.external_id,
           coalesce(ba.role_name, bo.role_name),
           CASE WHEN ba.role_name IS NOT NULL THEN 'agent'
                WHEN bo.role_name IS NOT NULL THEN 'organization'
                ELSE 'open' END,
           ARRAY(SELECT r.rolname FROM pg_roles r
                 WHERE r.rolcanlogin AND amp._role_may_act_as(r.rolname, a)
                 ORDER BY r.rolname)
    FROM amp.agents a
    JOIN amp.organizations o ON o.id = a.organization_id
    LEFT JOIN amp.role_bindings ba ON ba.agent_id = a.id
    LEFT JOIN amp.role_bindings bo ON bo.organization_id = a.organization_id
    WHERE amp._may_act_as(a)
    ORDER BY o.external_id, a.external_id
$$;

CREATE OR REPLACE FUNCTION amp.contact_list()
RETURNS TABLE (from_organization text, to_organization text, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM amp._require_admin('list contacts');
    RETURN QUERY
    SELECT f.external_id, t.external_id, c.created_at
    FROM amp.contacts c
    JOIN amp.organizations f ON f.id = c.from_organization_id
    JOIN amp.organizations t ON t.id = c.to_organization_id
    ORDER BY 1, 2;
END;
$$;

CREATE OR REPLACE FUNCTION amp.agent_channels()
RETURNS TABLE (agent_external_id text, channel text)
LANGUAGE sql STABLE AS $$
    SELECT a.external_id, c.channel
    FROM amp.agents a JOIN amp.agent_channels c ON c.agent_id = a.id
    WHERE amp._may_act_as(a)
    ORDER BY a.external_id
$$;

CREATE OR REPLACE FUNCTION amp.get_message(p_message uuid)
RETURNS TABLE (
    id uuid, seq bigint, message_type text, sender_id uuid, sender_external_id text,
    recipient_id uuid, recipient_external_id text, session_id uuid, meeting_id uuid,
    content jsonb, metadata jsonb, read_at timestamptz, created_at timestamptz,
    delivery_status text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_message amp.messages;
BEGIN
    SELECT * INTO v_message FROM amp.messages m WHERE m.id = p_message;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM001', format('no message has id %s', p_message));
    END IF;
    PERFORM amp._require_message_reader(v_message);
    RETURN QUERY
    SELECT v_message.id, v_message.seq, v_message.message_type, v_message.sender_id,
           (SELECT a.external_id FROM amp.agents a WHERE a.id = v_message.sender_id),
           v_message.recipient_id,
           (SELECT a.external_id FROM amp.agents a WHERE a.id = v_message.recipient_id),
           v_message.session_id, v_message.meeting_id, v_message.content, v_message.metadata,
           v_message.read_at, v_message.created_at, v_message.delivery_status;
END;
$$;

CREATE OR REPLACE FUNCTION amp.schema_version()
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_version text;
BEGIN
    IF to_regclass('amp.alembic_version') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT version_num FROM amp.alembic_version LIMIT 1' INTO v_version;
    RETURN v_version;
END;
$$;

CREATE OR REPLACE FUNCTION amp.schema_state(OUT current text, OUT applied text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    current := amp.schema_version();
    applied := '[]';
    IF to_regclass('amp.schema_revisions') IS NOT NULL THEN
        EXECUTE $q$
            SELECT coalesce(json_agg(json_build_object(
                       'revision', revision, 'breaking', breaking,
                       'sql_hash', sql_hash, 'sdk_version', sdk_version)), '[]')::text
            FROM amp.schema_revisions$q$ INTO applied;
    END IF;
END;
$$;

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

CREATE OR REPLACE FUNCTION amp._require_worker_arg(p_worker uuid)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_worker IS NULL THEN
        PERFORM amp._raise_error('AM001', 'worker id (p_worker) must not be null');
    END IF;
END;
$$;

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

CREATE OR REPLACE FUNCTION amp._answered_request(p_message_id uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM amp.messages m
                   WHERE m.id = p_message_id AND m.message_type = 'sync_request'
                     AND m.delivery_status = 'delivered');
END;
$$;

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

CREATE OR REPLACE FUNCTION amp._meeting_lock(p_meeting uuid)
RETURNS amp.meetings
LANGUAGE plpgsql AS $$
DECLARE
    v_meeting amp.meetings;
BEGIN
    IF p_meeting IS NULL THEN
        PERFORM amp._raise_error('AM001', 'meeting id must not be null');
    END IF;
    SELECT * INTO v_meeting FROM amp.meetings WHERE id = p_meeting FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM040', format('meeting %s not found', p_meeting));
    END IF;
    RETURN v_meeting;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_lock_as_host(
    p_host text, p_meeting uuid, p_verb text, OUT host amp.agents, OUT meeting amp.meetings)
LANGUAGE plpgsql AS $$
BEGIN
    host := amp._acting_agent(p_host);
    meeting := amp._meeting_lock(p_meeting);
    IF meeting.host_id <> host.id THEN
        PERFORM amp._raise_error('AM041', format(
            'only the host may %s meeting %s, not %L', p_verb, p_meeting, p_host));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_member(p_meeting uuid, p_agent amp.agents)
RETURNS amp.meeting_participants
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_part amp.meeting_participants;
BEGIN
    SELECT * INTO v_part FROM amp.meeting_participants
    WHERE meeting_id = p_meeting AND agent_id = p_agent.id;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM042', format(
            'agent %L is not a participant of meeting %s', p_agent.external_id, p_meeting));
    END IF;
    IF v_part.status = 'left' THEN
        PERFORM amp._raise_error('AM042', format(
            'agent %L has left meeting %s', p_agent.external_id, p_meeting));
    END IF;
    RETURN v_part;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_record_event(
    p_meeting amp.meetings, p_event text, p_agent_id uuid, p_data jsonb DEFAULT '{}'::jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    INSERT INTO amp.meeting_events (meeting_id, event_type, agent_id, data)
    VALUES (p_meeting.id, p_event, p_agent_id, coalesce(p_data, '{}'))
    RETURNING seq INTO v_seq;
    -- turn_seconds: how long the current turn has left, so that every process that
    -- hears of a turn knows when it expires without a query (its clock may differ)
    PERFORM pg_notify(amp.meeting_channel(p_meeting.id), json_strip_nulls(json_build_object(
        'kind', 'meeting', 'meeting_id', p_meeting.id, 'status', p_meeting.status,
        'event', p_event, 'speaker_id', p_meeting.current_speaker_id,
        'turn_seconds', CASE WHEN p_meeting.status = 'active' THEN
            extract(epoch FROM p_meeting.turn_deadline - clock_timestamp()) END))::text);
    PERFORM pg_notify('amp_meeting_events', json_strip_nulls(json_build_object(
        'kind', 'meeting_event', 'meeting_id', p_meeting.id, 'seq', v_seq,
        'event', p_event, 'agent_id', p_agent_id))::text);
    RETURN v_seq;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_system_message(
    p_meeting uuid, p_event text, p_agent_id uuid, p_text text)
RETURNS amp.messages
LANGUAGE plpgsql AS $$
BEGIN
    RETURN amp._store_message('system', NULL, NULL, jsonb_build_object(
        'event', p_event,
        'agent_external_id', (SELECT external_id FROM amp.agents WHERE id = p_agent_id),
        'text', p_text), p_meeting_id => p_meeting);
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_next_after(p_meeting uuid, p_agent_id uuid)
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

CREATE OR REPLACE FUNCTION amp._meeting_pick_next(
    p_meeting uuid, p_after uuid, p_next_speaker text)
RETURNS uuid
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_next_speaker IS NULL THEN
        RETURN amp._meeting_next_after(p_meeting, p_after);
    END IF;
    RETURN (amp._meeting_member(p_meeting, amp.get_agent(p_next_speaker))).agent_id;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_give_turn(p_meeting amp.meetings, p_agent_id uuid)
RETURNS amp.meetings
LANGUAGE plpgsql AS $$
DECLARE
    v_meeting amp.meetings;
BEGIN
    UPDATE amp.meeting_participants
    SET status = CASE WHEN agent_id = p_agent_id THEN 'speaking' ELSE 'waiting' END
    WHERE meeting_id = p_meeting.id AND (status = 'speaking' OR agent_id = p_agent_id);
    UPDATE amp.meetings
    SET current_speaker_id = p_agent_id, turn_started_at = now(),
        turn_deadline = now() + turn_duration
    WHERE id = p_meeting.id
    RETURNING * INTO v_meeting;
    RETURN v_meeting;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_hand_over(
    p_meeting amp.meetings, p_channel text DEFAULT NULL, p_since bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_channel text := p_channel;
    v_since   bigint := p_since;
    v_items   json;
    v_cut     boolean;
    v_payload text;
BEGIN
    IF v_channel IS NULL THEN
        SELECT c.channel, p.last_spoke_seq INTO v_channel, v_since
        FROM amp.meeting_participants p JOIN amp.agent_channels c ON c.agent_id = p.agent_id
        WHERE p.meeting_id = p_meeting.id AND p.agent_id = p_meeting.current_speaker_id;
    END IF;
    IF v_channel IS NULL THEN  -- no speaker (an ended meeting), or no channel
        RETURN NULL;
    END IF;
    IF current_setting('amp.notify_content', true) IS DISTINCT FROM 'off' THEN
        -- at most 40 messages, and only while their stored size stays well under the
        -- 8000 bytes of a payload; else the hint goes without them (the speaker reads)
        SELECT count(*) > 40 OR coalesce(sum(pg_column_size(m.content) + 160), 0) > 6000
        INTO v_cut
        FROM (SELECT m.content FROM amp.messages m
              WHERE m.meeting_id = p_meeting.id AND m.seq >= coalesce(v_since, 0)
                AND m.message_type IN ('meeting', 'system')
              ORDER BY m.seq
              LIMIT 41) m;
        IF NOT v_cut THEN
            SELECT json_agg(r ORDER BY r.seq) INTO v_items
            FROM amp.messages h
            LEFT JOIN amp.agents a ON a.id = h.sender_id,
            -- the row as it goes out (json_agg of a row: half the work of
            -- json_build_object)
            LATERAL (SELECT h.seq, h.id AS message_id, h.message_type,
                            a.external_id AS sender_external_id, h.content::text AS content,
                            h.is_late, h.created_at) r
            WHERE h.meeting_id = p_meeting.id AND h.seq >= coalesce(v_since, 0)
              AND h.message_type IN ('meeting', 'system');
            v_payload := json_build_object('kind', 'turn', 'meeting_id', p_meeting.id,
                                           'messages', coalesce(v_items, '[]'))::text;
        END IF;
    END IF;
    IF v_payload IS NULL OR octet_length(v_payload) >= 8000 THEN
        v_payload := json_build_object('kind', 'turn', 'meeting_id', p_meeting.id)::text;
    END IF;
    PERFORM pg_notify(v_channel, v_payload);
    RETURN octet_length(v_payload);
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_expire(p_meeting amp.meetings, p_hand_over boolean)
RETURNS amp.meetings
LANGUAGE plpgsql AS $$
DECLARE
    v_speaker uuid := p_meeting.current_speaker_id;
    v_message amp.messages;
    v_meeting amp.meetings;
BEGIN
    v_message := amp._meeting_system_message(p_meeting.id, 'agent_timed_out', v_speaker,
        format('turn of %s s expired without a message',
               round(extract(epoch FROM p_meeting.turn_duration), 3)));
    v_meeting := amp._meeting_give_turn(p_meeting, amp._meeting_next_after(p_meeting.id, v_speaker));
    IF p_hand_over THEN
        PERFORM amp._meeting_hand_over(v_meeting);
    END IF;
    PERFORM amp._meeting_record_event(v_meeting, 'agent_timed_out', v_speaker, jsonb_build_object(
        'message_id', v_message.id, 'seq', v_message.seq,
        'turn_deadline', p_meeting.turn_deadline,
        'next_speaker_external_id',
        (SELECT external_id FROM amp.agents WHERE id = v_meeting.current_speaker_id)));
    RETURN v_meeting;
END;
$$;

CREATE OR REPLACE FUNCTION amp._meeting_check_ready(p_meeting amp.meetings)
RETURNS amp.meetings
LANGUAGE plpgsql AS $$
DECLARE
    v_meeting amp.meetings := p_meeting;
BEGIN
    IF p_meeting.status = 'created' AND NOT EXISTS (
        SELECT 1 FROM amp.meeting_participants
        WHERE meeting_id = p_meeting.id AND status = 'invited')
    THEN
        UPDATE amp.meetings SET status = 'ready' WHERE id = p_meeting.id
        RETURNING * INTO v_meeting;
    END IF;
    RETURN v_meeting;
END;
$$;

CREATE OR REPLACE FUNCTION amp.create_meeting(
    p_host text, p_agents text[], p_turn_duration interval DEFAULT NULL,
    p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_host    amp.agents;
    v_agent   amp.agents;
    v_meeting amp.meetings;
    v_order   text[];
    v_i       integer;
BEGIN
    v_host := amp._acting_agent(p_host);
    IF p_agents IS NULL OR cardinality(p_agents) = 0 THEN
        PERFORM amp._raise_error('AM046', 'a meeting needs at least one invited agent');
    END IF;
    IF array_position(p_agents, NULL) IS NOT NULL THEN
        PERFORM amp._raise_error('AM001', 'agent external id must not be empty');
    END IF;
    IF (SELECT count(DISTINCT a) FROM unnest(p_agents) a) <> cardinality(p_agents) THEN
        PERFORM amp._raise_error('AM046', 'the invitation list names an agent twice');
    END IF;
    v_order := CASE WHEN p_host = ANY (p_agents) THEN p_agents ELSE p_host || p_agents END;
    IF cardinality(v_order) < 2 THEN
        PERFORM amp._raise_error('AM046', 'a meeting needs at least one agent besides the host');
    END IF;
    IF p_turn_duration IS NOT NULL AND p_turn_duration <= interval '0' THEN
        PERFORM amp._raise_error('AM046', 'turn duration must be positive');
    END IF;
    IF p_turn_duration > make_interval(secs => amp._setting('max_turn_duration_seconds')) THEN
        PERFORM amp._raise_error('AM001', format(
            'turn duration %s is longer than the limit of %s seconds', p_turn_duration,
            amp._setting('max_turn_duration_seconds')));
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        PERFORM amp._raise_error('AM001', 'meeting metadata must be a JSON object');
    END IF;
    PERFORM amp._check_message('{}', p_metadata);

    -- the metadata is stored once, on the meeting: an invitation only names the
    -- meeting, so it stays small whatever the meeting's size
    INSERT INTO amp.meetings (host_id, turn_duration, metadata)
    VALUES (v_host.id, p_turn_duration, coalesce(p_metadata, '{}'))
    RETURNING * INTO v_meeting;
    FOR v_i IN 1 .. cardinality(v_order) LOOP
        v_agent := amp.get_agent(v_order[v_i]);
        PERFORM amp._require_contact(v_host, v_agent);
        INSERT INTO amp.meeting_participants (meeting_id, agent_id, join_order, status, joined_at)
        VALUES (v_meeting.id, v_agent.id, v_i - 1,
                CASE WHEN v_agent.id = v_host.id THEN 'attending' ELSE 'invited' END,
                CASE WHEN v_agent.id = v_host.id THEN now() END);
        IF v_agent.id <> v_host.id OR p_host = ANY (p_agents) THEN
            PERFORM amp._store_message('meeting_invitation', v_host.id, v_agent.id,
                jsonb_build_object(
                    'meeting_id', v_meeting.id, 'host_external_id', v_host.external_id,
                    'participant_count', cardinality(v_order),
                    'turn_duration_seconds', extract(epoch FROM p_turn_duration)),
                '{}', p_meeting_id => v_meeting.id, p_push => true);
        END IF;
    END LOOP;
    PERFORM amp._meeting_system_message(v_meeting.id, 'agent_joined', v_host.id,
        format('%s created the meeting', v_host.external_id));
    PERFORM amp._meeting_record_event(v_meeting, 'agent_joined', v_host.id,
        jsonb_build_object('host', true));
    RETURN v_meeting.id;
END;
$$;

CREATE OR REPLACE FUNCTION amp.attend_meeting(p_agent text, p_meeting uuid)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_agent   amp.agents;
    v_meeting amp.meetings;
    v_part    amp.meeting_participants;
BEGIN
    v_agent := amp._acting_agent(p_agent);
    v_meeting := amp._meeting_lock(p_meeting);
    v_part := amp._meeting_member(p_meeting, v_agent);
    IF v_meeting.status = 'ended' OR v_part.status <> 'invited' THEN
        RETURN v_meeting.status;
    END IF;
    UPDATE amp.meeting_participants SET status = 'attending', joined_at = now()
    WHERE id = v_part.id;
    PERFORM amp._meeting_system_message(p_meeting, 'agent_joined', v_agent.id,
        format('%s joined', v_agent.external_id));
    v_meeting := amp._meeting_check_ready(v_meeting);
    PERFORM amp._meeting_record_event(v_meeting, 'agent_joined', v_agent.id, '{}');
    RETURN v_meeting.status;
END;
$$;

CREATE OR REPLACE FUNCTION amp.start_meeting(
    p_host text, p_meeting uuid, p_content jsonb, p_next_speaker text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_locked  record;
    v_host    amp.agents;
    v_meeting amp.meetings;
    v_next    uuid;
    v_message amp.messages;
BEGIN
    v_locked := amp._meeting_lock_as_host(p_host, p_meeting, 'start');
    v_host := v_locked.host;
    v_meeting := v_locked.meeting;
    IF v_meeting.status <> 'ready' THEN
        PERFORM amp._raise_error('AM043', format(
            'meeting %s is %s; it starts when ready (every invitee attended)',
            p_meeting, v_meeting.status));
    END IF;
    v_next := amp._meeting_pick_next(p_meeting, v_host.id, p_next_speaker);
    v_message := amp._store_message('meeting', v_host.id, NULL, p_content,
                                   p_meeting_id => p_meeting);
    UPDATE amp.meeting_participants
    SET status = 'waiting',
        last_spoke_seq = CASE WHEN agent_id = v_host.id THEN v_message.seq ELSE last_spoke_seq END
    WHERE meeting_id = p_meeting AND status = 'attending';
    UPDATE amp.meetings SET status = 'active', started_at = now() WHERE id = p_meeting
    RETURNING * INTO v_meeting;
    v_meeting := amp._meeting_give_turn(v_meeting, v_next);
    PERFORM amp._meeting_hand_over(v_meeting);
    PERFORM amp._meeting_record_event(v_meeting, 'meeting_started', v_host.id, jsonb_build_object(
        'message_id', v_message.id, 'seq', v_message.seq,
        'next_speaker_external_id', (SELECT external_id FROM amp.agents WHERE id = v_next)));
    RETURN v_message.id;
END;
$$;

CREATE OR REPLACE FUNCTION amp.speak(
    p_agent text, p_meeting uuid, p_content jsonb, p_next_speaker text DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_agent    amp.agents;
    v_meeting  amp.meetings;
    v_speaker  uuid;
    v_status   text;
    v_next     uuid;
    v_next_ext text;
    v_channel  text;
    v_since    bigint;
    v_message  amp.messages;
    v_seq      bigint;
    v_deadline timestamptz;
    v_items    json;
    v_cut      boolean;
    v_carry    boolean;
    v_payload  text;
    v_ignored  text;
    v_late     boolean;
BEGIN
    v_agent := amp._acting_agent(p_agent);
    -- amp._meeting_lock, written out like the rest of this hand-off (one statement a
    -- step, no nested call): keep the two alike
    IF p_meeting IS NULL THEN
        PERFORM amp._raise_error('AM001', 'meeting id must not be null');
    END IF;
    SELECT * INTO v_meeting FROM amp.meetings WHERE id = p_meeting FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM040', format('meeting %s not found', p_meeting));
    END IF;
    -- the speaker's participant row and, unless one is named, the next speaker
    -- round-robin (the first after the speaker in join order who has not left,
    -- wrapping around), with what its hand-over needs: its channel and the seq of
    -- its last message
    SELECT me.status, nx.agent_id, a.external_id, c.channel, nx.last_spoke_seq
    INTO v_status, v_next, v_next_ext, v_channel, v_since
    FROM amp.meeting_participants me
    LEFT JOIN LATERAL (
        SELECT p.agent_id, p.last_spoke_seq FROM amp.meeting_participants p
        WHERE p.meeting_id = me.meeting_id AND p.status <> 'left'
        ORDER BY p.join_order <= me.join_order, p.join_order
        LIMIT 1) nx ON p_next_speaker IS NULL
    LEFT JOIN amp.agents a ON a.id = nx.agent_id
    LEFT JOIN amp.agent_channels c ON c.agent_id = nx.agent_id
    WHERE me.meeting_id = p_meeting AND me.agent_id = v_agent.id;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM042', format(
            'agent %L is not a participant of meeting %s', v_agent.external_id, p_meeting));
    END IF;
    IF v_status = 'left' THEN
        PERFORM amp._raise_error('AM042', format(
            'agent %L has left meeting %s', v_agent.external_id, p_meeting));
    END IF;
    IF v_meeting.status <> 'active' THEN
        PERFORM amp._raise_error('AM043', format(
            'meeting %s is %s, not active', p_meeting, v_meeting.status));
    END IF;
    v_speaker := v_meeting.current_speaker_id;
    IF v_meeting.turn_deadline <= now() THEN
        v_meeting := amp._meeting_expire(v_meeting, false);
    END IF;

    IF v_meeting.current_speaker_id = v_agent.id THEN
        IF p_next_speaker IS NOT NULL THEN
            v_next := (amp._meeting_member(p_meeting, amp.get_agent(p_next_speaker))).agent_id;
            SELECT a.external_id, c.channel, p.last_spoke_seq
            INTO v_next_ext, v_channel, v_since
            FROM amp.meeting_participants p
            JOIN amp.agents a ON a.id = p.agent_id
            LEFT JOIN amp.agent_channels c ON c.agent_id = p.agent_id
            WHERE p.meeting_id = p_meeting AND p.agent_id = v_next;
        END IF;
        v_message := amp._store_message('meeting', v_agent.id, NULL, p_content,
                                       p_meeting_id => p_meeting);
        IF v_next = v_agent.id THEN
            v_since := v_message.seq;
        END IF;
        -- content travels in the hint unless the database keeps it out of payloads
        v_carry := current_setting('amp.notify_content', true) IS DISTINCT FROM 'off';
        -- one statement: the speaker waits (its last message is this one), the next
        -- one speaks, the turn's deadline, the event, and what the next speaker
        -- hears with its turn (the history of amp._meeting_hand_over)
        WITH parts AS (
            UPDATE amp.meeting_participants
            SET status = CASE WHEN agent_id = v_next THEN 'speaking' ELSE 'waiting' END,
                last_spoke_seq = CASE WHEN agent_id = v_agent.id THEN v_message.seq
                                      ELSE last_spoke_seq END
            WHERE meeting_id = p_meeting
              AND (status = 'speaking' OR agent_id = v_next OR agent_id = v_agent.id)
        ), turn AS (
            UPDATE amp.meetings
            SET current_speaker_id = v_next, turn_started_at = now(),
                turn_deadline = now() + turn_duration
            WHERE id = p_meeting
            RETURNING turn_deadline
        ), event AS (
            INSERT INTO amp.meeting_events (meeting_id, event_type, agent_id, data)
            VALUES (p_meeting, 'agent_spoke', v_agent.id, jsonb_build_object(
                'message_id', v_message.id, 'seq', v_message.seq, 'is_late', false,
                'next_speaker_external_id', v_next_ext))
            RETURNING seq
        )
        SELECT event.seq, turn.turn_deadline, NOT said.fits,
               -- built only when it fits (a subquery in CASE runs only if reached)
               CASE WHEN said.fits THEN (
                   SELECT json_agg(r ORDER BY r.seq)
                   FROM amp.messages h
                   LEFT JOIN amp.agents a ON a.id = h.sender_id,
                   LATERAL (SELECT h.seq, h.id AS message_id, h.message_type,
                                   a.external_id AS sender_external_id,
                                   h.content::text AS content, h.is_late, h.created_at) r
                   WHERE h.meeting_id = p_meeting AND h.seq >= coalesce(v_since, 0)
                     AND h.message_type IN ('meeting', 'system')) END
        INTO v_seq, v_deadline, v_cut, v_items
        FROM event, turn, (
            -- at most 40 messages, and only while their stored size stays well under
            -- the 8000 bytes of a payload
            SELECT v_carry AND count(*) <= 40
                   AND coalesce(sum(pg_column_size(m.content) + 160), 0) <= 6000 AS fits
            FROM (SELECT m.content FROM amp.messages m
                  WHERE v_carry AND m.meeting_id = p_meeting
                    AND m.seq >= coalesce(v_since, 0)
                    AND m.message_type IN ('meeting', 'system')
                  ORDER BY m.seq
                  LIMIT 41) m) said;
        -- the hints of amp._meeting_hand_over and amp._meeting_record_event, the
        -- next speaker's own first (assignments: cheaper than PERFORM)
        IF v_channel IS NOT NULL THEN
            IF NOT v_cut THEN
                v_payload := json_build_object('kind', 'turn', 'meeting_id', p_meeting,
                                               'messages', coalesce(v_items, '[]'))::text;
            END IF;
            IF v_payload IS NULL OR octet_length(v_payload) >= 8000 THEN
                v_payload := json_build_object('kind', 'turn', 'meeting_id', p_meeting)::text;
            END IF;
            v_ignored := pg_notify(v_channel, v_payload);
        END IF;
        v_ignored := pg_notify('amp_meeting_' || replace(p_meeting::text, '-', ''),
            json_strip_nulls(json_build_object(
                'kind', 'meeting', 'meeting_id', p_meeting, 'status', 'active',
                'event', 'agent_spoke', 'speaker_id', v_next,
                'turn_seconds', extract(epoch FROM v_deadline - clock_timestamp())))::text);
        v_ignored := pg_notify('amp_meeting_events', json_strip_nulls(json_build_object(
            'kind', 'meeting_event', 'meeting_id', p_meeting, 'seq', v_seq,
            'event', 'agent_spoke', 'agent_id', v_agent.id))::text);
        RETURN v_message.id;
    END IF;

    SELECT e.event_type = 'agent_timed_out' INTO v_late
    FROM amp.meeting_events e
    WHERE e.meeting_id = p_meeting AND e.agent_id = v_agent.id
      AND e.event_type IN ('agent_timed_out', 'agent_spoke')
    ORDER BY e.seq DESC LIMIT 1;
    IF NOT coalesce(v_late, false) THEN
        PERFORM amp._raise_error('AM044', format(
            'agent %L is not the current speaker of meeting %s', p_agent, p_meeting));
    END IF;
    v_message := amp._store_message('meeting', v_agent.id, NULL, p_content,
                                   p_meeting_id => p_meeting, p_is_late => true);
    IF v_meeting.current_speaker_id IS DISTINCT FROM v_speaker THEN
        -- the overdue turn expired above: its new speaker hears of it now, with
        -- this late message
        PERFORM amp._meeting_hand_over(v_meeting);
    END IF;
    PERFORM amp._meeting_record_event(v_meeting, 'agent_spoke', v_agent.id, jsonb_build_object(
        'message_id', v_message.id, 'seq', v_message.seq, 'is_late', true));
    RETURN v_message.id;
END;
$$;

CREATE OR REPLACE FUNCTION amp.leave_meeting(p_agent text, p_meeting uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_agent   amp.agents;
    v_meeting amp.meetings;
    v_part    amp.meeting_participants;
BEGIN
    v_agent := amp._acting_agent(p_agent);
    v_meeting := amp._meeting_lock(p_meeting);
    v_part := amp._meeting_member(p_meeting, v_agent);
    IF v_meeting.host_id = v_agent.id THEN
        PERFORM amp._raise_error('AM045', format(
            'the host %L cannot leave meeting %s; it ends it', p_agent, p_meeting));
    END IF;
    IF v_meeting.status = 'ended' THEN
        PERFORM amp._raise_error('AM043', format('meeting %s has ended', p_meeting));
    END IF;
    UPDATE amp.meeting_participants SET status = 'left', left_at = now() WHERE id = v_part.id;
    PERFORM amp._meeting_system_message(p_meeting, 'agent_left', v_agent.id,
        format('%s left', v_agent.external_id));
    IF v_meeting.current_speaker_id = v_agent.id THEN
        v_meeting := amp._meeting_give_turn(v_meeting,
                                           amp._meeting_next_after(p_meeting, v_agent.id));
        PERFORM amp._meeting_hand_over(v_meeting);
    END IF;
    v_meeting := amp._meeting_check_ready(v_meeting);
    PERFORM amp._meeting_record_event(v_meeting, 'agent_left', v_agent.id, '{}');
END;
$$;

CREATE OR REPLACE FUNCTION amp.end_meeting(p_host text, p_meeting uuid)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_locked  record;
    v_host    amp.agents;
    v_meeting amp.meetings;
BEGIN
    v_locked := amp._meeting_lock_as_host(p_host, p_meeting, 'end');
    v_host := v_locked.host;
    v_meeting := v_locked.meeting;
    IF v_meeting.status = 'ended' THEN
        PERFORM amp._raise_error('AM043', format('meeting %s has already ended', p_meeting));
    END IF;
    UPDATE amp.meeting_participants SET status = 'waiting'
    WHERE meeting_id = p_meeting AND status = 'speaking';
    UPDATE amp.meetings
    SET status = 'ended', ended_at = now(), current_speaker_id = NULL,
        turn_started_at = NULL, turn_deadline = NULL
    WHERE id = p_meeting
    RETURNING * INTO v_meeting;
    PERFORM amp._meeting_system_message(p_meeting, 'meeting_ended', v_host.id,
        format('%s ended the meeting', v_host.external_id));
    PERFORM amp._meeting_record_event(v_meeting, 'meeting_ended', v_host.id, '{}');
END;
$$;

CREATE OR REPLACE FUNCTION amp.expire_turns()
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_meeting amp.meetings;
    v_count   integer := 0;
BEGIN
    FOR v_meeting IN
        SELECT * FROM amp.meetings
        WHERE status = 'active' AND turn_deadline <= now()
        ORDER BY turn_deadline
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM amp._meeting_expire(v_meeting, true);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
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

CREATE OR REPLACE FUNCTION amp.get_meeting(p_meeting uuid)
RETURNS SETOF amp.meetings
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM amp._require_meeting_reader(p_meeting);
    RETURN QUERY SELECT * FROM amp.meetings WHERE id = p_meeting;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM040', format('meeting %s not found', p_meeting));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_status(p_meeting uuid)
RETURNS TABLE (
    meeting_id uuid, status text, host_external_id text,
    current_speaker_external_id text, turn_duration_seconds double precision,
    turn_deadline timestamptz, seconds_left double precision, participant_count integer,
    created_at timestamptz, started_at timestamptz, ended_at timestamptz,
    turn_started_at timestamptz, metadata jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM amp._require_meeting_reader(p_meeting);
    RETURN QUERY
    SELECT m.id, m.status, h.external_id, s.external_id,
           extract(epoch FROM m.turn_duration)::double precision, m.turn_deadline,
           extract(epoch FROM m.turn_deadline - clock_timestamp())::double precision,
           (SELECT count(*)::integer FROM amp.meeting_participants p
             WHERE p.meeting_id = m.id AND p.status <> 'left'),
           m.created_at, m.started_at, m.ended_at, m.turn_started_at, m.metadata
    FROM amp.meetings m
    JOIN amp.agents h ON h.id = m.host_id
    LEFT JOIN amp.agents s ON s.id = m.current_speaker_id
    WHERE m.id = p_meeting;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM040', format('meeting %s not found', p_meeting));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_participant_list(p_meeting uuid)
RETURNS TABLE (
    agent_external_id text, join_order integer, status text, is_host boolean,
    last_spoke_seq bigint, joined_at timestamptz, left_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT a.external_id, p.join_order, p.status, p.agent_id = m.host_id,
           p.last_spoke_seq, p.joined_at, p.left_at
    FROM amp.meeting_participants p
    JOIN amp.meetings m ON m.id = p.meeting_id
    JOIN amp.agents a ON a.id = p.agent_id
    WHERE p.meeting_id = p_meeting AND amp._require_meeting_reader(p_meeting)
    ORDER BY p.join_order
$$;

CREATE OR REPLACE FUNCTION amp.meeting_history(p_meeting uuid, p_after_seq bigint DEFAULT 0)
RETURNS TABLE (
    seq bigint, message_id uuid, message_type text, sender_external_id text,
    content jsonb, is_late boolean, created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM amp.meetings WHERE id = p_meeting) THEN
        PERFORM amp._raise_error('AM040', format('meeting %s not found', p_meeting));
    END IF;
    PERFORM amp._require_meeting_reader(p_meeting);
    RETURN QUERY
    SELECT m.seq, m.id, m.message_type, a.external_id, m.content, m.is_late, m.created_at
    FROM amp.messages m
    LEFT JOIN amp.agents a ON a.id = m.sender_id
    WHERE m.meeting_id = p_meeting AND m.seq > coalesce(p_after_seq, 0)
      AND m.message_type IN ('meeting', 'system')
    ORDER BY m.seq;
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_turn(p_agent text, p_meeting uuid)
RETURNS TABLE (
    agent_id uuid, meeting_status text, participant_status text,
    current_speaker_external_id text, your_turn boolean, meeting_ended boolean,
    last_spoke_seq bigint, seconds_left double precision, latest_seq bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents;
BEGIN
    v_agent := amp._acting_agent(p_agent);
    RETURN QUERY
    SELECT v_agent.id, m.status, p.status, s.external_id,
           m.status = 'active' AND m.current_speaker_id = v_agent.id,
           m.status = 'ended', p.last_spoke_seq,
           extract(epoch FROM m.turn_deadline - clock_timestamp())::double precision,
           CASE WHEN p.id IS NOT NULL THEN
               (SELECT max(x.seq) FROM amp.messages x WHERE x.meeting_id = m.id) END
    FROM amp.meetings m
    LEFT JOIN amp.meeting_participants p ON p.meeting_id = m.id AND p.agent_id = v_agent.id
    LEFT JOIN amp.agents s ON s.id = m.current_speaker_id
    WHERE m.id = p_meeting;
    IF NOT FOUND THEN
        PERFORM amp._raise_error('AM040', format('meeting %s not found', p_meeting));
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION amp.agent_meetings(
    p_agent text, p_include_ended boolean DEFAULT false, p_limit integer DEFAULT NULL)
RETURNS TABLE (
    meeting_id uuid, status text, host_external_id text,
    current_speaker_external_id text, participant_status text, created_at timestamptz,
    started_at timestamptz, ended_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_agent amp.agents := amp._acting_agent(p_agent);
    v_limit integer := amp._page_size(p_limit);
BEGIN
    IF p_include_ended IS NULL THEN
        PERFORM amp._raise_error('AM001', 'include_ended (p_include_ended) must not be null');
    END IF;
    RETURN QUERY
    SELECT m.id, m.status, h.external_id, s.external_id, p.status, m.created_at,
           m.started_at, m.ended_at
    FROM amp.meeting_participants p
    JOIN amp.meetings m ON m.id = p.meeting_id
    JOIN amp.agents h ON h.id = m.host_id
    LEFT JOIN amp.agents s ON s.id = m.current_speaker_id
    WHERE p.agent_id = v_agent.id AND (p_include_ended OR m.status <> 'ended')
    ORDER BY m.created_at DESC, m.id
    LIMIT v_limit;
END;
$$;

CREATE OR REPLACE FUNCTION amp.meeting_events_after(p_after_seq bigint, p_limit integer DEFAULT 1000)
RETURNS TABLE (
    seq bigint, meeting_id uuid, event_type text, agent_external_id text, data jsonb,
    created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT e.seq, e.meeting_id, e.event_type, a.external_id,
           CASE WHEN e.event_type = 'agent_spoke'
                THEN e.data || jsonb_build_object('message', m.content)
                ELSE e.data END,
           e.created_at
    FROM amp.meeting_events e
    LEFT JOIN amp.agents a ON a.id = e.agent_id
    LEFT JOIN amp.messages m ON m.id = (e.data ->> 'message_id')::uuid
    WHERE e.seq > p_after_seq
      AND ((SELECT amp._is_admin()) OR amp.may_read_meeting(e.meeting_id))
    ORDER BY e.seq
    LIMIT p_limit
$$;

CREATE OR REPLACE FUNCTION amp.meeting_events_max_seq()
RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(max(seq), 0) FROM amp.meeting_events
$$;

CREATE OR REPLACE FUNCTION amp.retention()
RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('amp.retention', true), '')::interval,
                    interval '30 days')
$$;

CREATE OR REPLACE FUNCTION amp.prune_horizon(p_older_than interval DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_older_than interval := coalesce(p_older_than, amp.retention());
BEGIN
    IF v_older_than < interval '0' THEN
        PERFORM amp._raise_error('AM001', format(
            'retention must not be negative, got %s', v_older_than));
    END IF;
    RETURN now() - v_older_than;
END;
$$;

CREATE OR REPLACE FUNCTION amp._prune_answer_kept(
    p_request uuid, p_horizon timestamptz, p_waited uuid[])
RETURNS boolean
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE answers AS (
        SELECT r.id, r.created_at FROM amp.messages r WHERE r.reply_to = p_request
        UNION ALL
        SELECT r.id, r.created_at FROM amp.messages r JOIN answers a ON r.reply_to = a.id
    )
    SELECT EXISTS (
        SELECT 1 FROM answers a
        WHERE a.created_at >= p_horizon OR a.id = ANY (p_waited))
$$;

CREATE OR REPLACE FUNCTION amp.prune_messages(
    p_horizon timestamptz, p_batch_size integer DEFAULT 1000, p_after_seq bigint DEFAULT 0,
    OUT removed bigint, OUT next_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_seen bigint;
    v_reached boolean;
    v_waited uuid[];
BEGIN
    PERFORM amp._require_admin('prune the history');  -- it spans every organization
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        PERFORM amp._raise_error('AM001', 'batch size must be at least 1');
    END IF;
    SELECT max(w.seq), count(*), coalesce(bool_or(w.created_at >= p_horizon), false)
    INTO v_last, v_seen, v_reached
    FROM (SELECT m.seq, m.created_at FROM amp.messages m
          WHERE m.seq > coalesce(p_after_seq, 0)
          ORDER BY m.seq LIMIT p_batch_size) w;
    IF v_seen = 0 THEN
        removed := 0;
        next_seq := NULL;
        RETURN;
    END IF;

    -- the requests conversations wait on (few: one per waiting conversation)
    v_waited := ARRAY(SELECT s.waiting_for FROM amp.sessions s WHERE s.waiting_for IS NOT NULL);
    WITH RECURSIVE candidates AS (
        SELECT m.id FROM amp.messages m
        WHERE m.seq > coalesce(p_after_seq, 0) AND m.seq <= v_last
          AND m.created_at < p_horizon
          AND m.meeting_id IS NULL
          AND m.delivery_status IS DISTINCT FROM 'pending'
          AND (m.message_type <> 'async' OR m.read_at IS NOT NULL)
          AND m.id <> ALL (v_waited)
          AND (m.message_type <> 'sync_request'
               OR NOT amp._prune_answer_kept(m.id, p_horizon, v_waited))
        FOR UPDATE OF m SKIP LOCKED
    ), doomed AS (
        -- the answers to a request go with it (they may lie past this batch)
        SELECT c.id FROM candidates c
        UNION
        SELECT r.id FROM amp.messages r JOIN doomed d ON r.reply_to = d.id
    ), gone AS (
        DELETE FROM amp.messages m USING doomed d WHERE m.id = d.id RETURNING 1
    )
    SELECT count(*) INTO removed FROM gone;
    next_seq := CASE WHEN v_reached OR v_seen < p_batch_size THEN NULL ELSE v_last END;
END;
$$;

CREATE OR REPLACE FUNCTION amp.prune_meetings(p_horizon timestamptz, p_limit integer DEFAULT 20)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT amp._require_admin('prune the history');
    WITH doomed AS (
        SELECT mt.id FROM amp.meetings mt
        WHERE mt.status = 'ended' AND mt.ended_at < p_horizon
          AND NOT EXISTS (SELECT 1 FROM amp.messages m
                          WHERE m.meeting_id = mt.id AND m.delivery_status = 'pending')
        ORDER BY mt.ended_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM amp.meetings mt USING doomed d WHERE mt.id = d.id RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

CREATE OR REPLACE FUNCTION amp.prune_sessions(p_horizon timestamptz, p_limit integer DEFAULT 1000)
RETURNS bigint
LANGUAGE sql AS $$
    SELECT amp._require_admin('prune the history');
    WITH doomed AS (
        SELECT s.id FROM amp.sessions s
        WHERE s.status = 'ended' AND s.ended_at < p_horizon
          AND NOT EXISTS (SELECT 1 FROM amp.messages m WHERE m.session_id = s.id)
        ORDER BY s.ended_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM amp.sessions s USING doomed d WHERE s.id = d.id RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

CREATE OR REPLACE PROCEDURE amp.prune(
    p_older_than interval DEFAULT NULL, p_batch_size integer DEFAULT 1000,
    INOUT messages bigint DEFAULT 0, INOUT meetings bigint DEFAULT 0,
    INOUT sessions bigint DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    v_horizon timestamptz := amp.prune_horizon(p_older_than);
    v_seq bigint := 0;
    v_batch record;
    v_n bigint;
BEGIN
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'AM001', MESSAGE = 'batch size must be at least 1',
            HINT = 'amp error AM001';
    END IF;
    messages := 0;
    meetings := 0;
    sessions := 0;
    LOOP
        v_n := amp.prune_meetings(v_horizon, greatest(1, p_batch_size / 50));
        meetings := meetings + v_n;
        COMMIT;
        EXIT WHEN v_n = 0;
    END LOOP;
    WHILE v_seq IS NOT NULL LOOP
        v_batch := amp.prune_messages(v_horizon, p_batch_size, v_seq);
        messages := messages + v_batch.removed;
        v_seq := v_batch.next_seq;
        COMMIT;
    END LOOP;
    LOOP
        v_n := amp.prune_sessions(v_horizon, p_batch_size);
        sessions := sessions + v_n;
        COMMIT;
        EXIT WHEN v_n = 0;
    END LOOP;
END;
$$;

CREATE TRIGGER messages_enqueue_delivery AFTER INSERT ON amp.messages
    FOR EACH ROW WHEN (NEW.delivery_status = 'pending' AND NEW.recipient_id IS NOT NULL)
    EXECUTE FUNCTION amp._enqueue_delivery();
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
CREATE TRIGGER agents_channel AFTER INSERT ON amp.agents
    FOR EACH ROW EXECUTE FUNCTION amp._name_agent_channel();
CREATE TRIGGER settings_check BEFORE INSERT OR UPDATE ON amp.settings
    FOR EACH ROW EXECUTE FUNCTION amp._settings_check();
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

-- message ids in time order (see sql/schema.sql)
ALTER TABLE amp.messages ALTER COLUMN id SET DEFAULT encode(set_bit(set_bit(
                         overlay(uuid_send(gen_random_uuid())
                                 PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp())
                                                                  * 1000)::bigint) FROM 3)
                                 FROM 1 FOR 6),
                         52, 1), 53, 1), 'hex')::uuid;

-- CREATE OR REPLACE resets SECURITY DEFINER and SET search_path, and new functions
-- have neither: the security file of this revision (a frozen copy of
-- sql/security.sql) applies them, the owner and the grants.
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
--     listed in amp._api_functions() (the functions documented in sql/README.md).
-- Tables and views are owned by amp_owner; amp_user may SELECT the views only
-- (they show each role its own rows, see views.sql) and use the schema.
--
-- Inside a SECURITY DEFINER function current_user is amp_owner; the identity
-- checks of access.sql look at session_user, the role the client logged in as.

-- Every amp function, public or internal. A new function goes in one list; a test
-- checks that each function is listed, that the public ones are the documented
-- ones, and that every internal name starts with an underscore (amp._store_message):
-- the boundary is visible in every call, and EXECUTE on internals is revoked.
CREATE OR REPLACE FUNCTION amp._api_functions()
RETURNS TABLE (name text, public boolean)
LANGUAGE sql IMMUTABLE AS $$
    SELECT name, true FROM unnest(ARRAY[
        -- errors, channels, LISTEN
        'error_codes', 'agent_channel', 'meeting_channel', 'listen', 'unlisten',
        -- organizations and agents
        'register_organization', 'get_organization', 'register_agent', 'get_agent',
        'agent_organization', 'agent_list',
        -- one-way and push delivery (workers)
        'send_one_way', 'send_one_way_many', 'delivery_outcome', 'register_worker', 'serve_agents', 'heartbeat', 'claim_deliveries',
        'ack_delivery', 'ack_deliveries', 'fail_delivery', 'next_delivery_at',
        'unregister_worker', 'extend_leases', 'peek_deliveries', 'hold_worker',
        'release_worker', 'release_deliveries',
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
        'get_meeting', 'next_turn_deadline', 'agent_meetings',
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
        '_raise_error', '_agent_channel_by_id', '_require_external_id', '_require_name',
        '_touch_updated_at', '_name_agent_channel', '_enqueue_delivery', '_setting', '_settings_check', '_page_size',
        -- delivery.sql
        '_check_message', '_check_json', '_resolve_pair', '_store_message', '_idempotent_message',
        '_notify_message', '_notify_recipients', '_notify_delivery', '_require_worker_arg', '_worker_key', '_holds_worker',
        '_answered_request', '_settle_deliveries',
        -- retention.sql
        '_prune_answer_kept',
        -- inbox.sql, conversations.sql
        '_get_or_create_session', '_lock_sync_session', '_require_sync_session', '_unlock_session',
        -- meetings.sql
        '_meeting_lock', '_meeting_lock_as_host', '_meeting_member', '_meeting_record_event',
        '_meeting_system_message', '_meeting_next_after', '_meeting_pick_next',
        '_meeting_give_turn', '_meeting_hand_over', '_meeting_expire', '_meeting_check_ready',
        -- access.sql
        '_is_admin', '_role_may_act_as', '_may_act_as', '_require_actor',
        '_acting_agent', '_require_organization_actor', '_organization_bound', '_require_contact',
        '_require_admin', '_require_worker', '_require_meeting_reader',
        '_may_read_message', '_require_message_reader', '_require_role_exists',
        -- this file
        '_api_functions'
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
               coalesce((SELECT f.public FROM amp._api_functions() f WHERE f.name = p.proname),
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
