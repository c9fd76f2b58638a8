-- amp: meetings, the turn-taking state machine.
--
-- Meeting:     created -> ready (every invitee attended) -> active -> ended.
-- Participant: invited -> attending -> waiting <-> speaking -> left.
--
-- Every transition is one function, one transaction, and starts by locking the
-- meeting row (SELECT ... FOR UPDATE), so transitions of one meeting are totally
-- ordered. Each records an amp.meeting_events row and notifies
--   amp.meeting_channel(id)  {"kind":"meeting","meeting_id","status","event","speaker_id"}
--   amp_meeting_events       {"kind":"meeting_event","meeting_id","seq","event","agent_id"}
-- Joins, leaves, timeouts and the end are also stored as 'system' messages (sender
-- NULL), so the history (amp.meeting_history) tells the whole story by seq.

-- ---------------------------------------------------------------------------
-- Internal helpers
-- ---------------------------------------------------------------------------

-- Lock the meeting row (every transition starts here).
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

-- Lock the meeting for its host, or AM041 for anyone else (p_verb names the call).
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

-- The participant row of an agent who has not left, or AM042.
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

-- Record an event and notify the meeting's channel and the global events channel.
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

-- Store a system message (sender NULL) in the meeting's history.
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

-- Round-robin: the first participant after p_agent_id in join_order who has not
-- left, wrapping around (p_agent_id itself last).
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

-- The next speaker: the named one (a participant who has not left) or round-robin.
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

-- Give the turn to p_agent_id: it speaks, the previous speaker waits, the deadline
-- is set from turn_duration (NULL: never expires). Returns the updated meeting.
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

-- The turn went to p_meeting.current_speaker_id in this transaction: tell it on its
-- own agent channel (random, named only to roles that may act as it; a meeting's
-- channel can be guessed) with everything said in the meeting since it last spoke,
-- its own last message included, when that fits in a payload:
--   {"kind":"turn","meeting_id","messages"?: [{"seq","message_id","message_type",
--    "sender_external_id","content" (JSON text),"is_late","created_at"}, ...]}
-- so that the new speaker need not read it back; never where the database keeps
-- content out of payloads (amp.notify_content = off). Called once per transition,
-- after its last message is stored and before the meeting channel's hint. Returns
-- the payload's size in bytes (NULL: there was nobody to tell).
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

-- The current turn (deadline passed) expires: system message, agent_timed_out
-- event, turn passes round-robin. The caller holds the meeting lock. p_hand_over:
-- this is the transition's last step, so the new speaker is told its turn
-- (amp._meeting_hand_over); amp.speak expires a turn before it speaks and tells
-- the speaker of its final state itself.
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

-- Meeting becomes ready once every invitee who has not left attends.
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

-- ---------------------------------------------------------------------------
-- Transitions
-- ---------------------------------------------------------------------------

-- Create a meeting. p_agents is the invitation list and the round-robin order; if
-- it names the host, the host keeps that position, else the host goes first. The
-- host attends at once; every agent of p_agents gets a pushed 'meeting_invitation'
-- (the host too when it is in the list: its handler is told, and may attend, which
-- for the host is a no-op that waits for its turn). Invalid lists: AM046.
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

-- Attend (accept the invitation). Idempotent: an agent already attending (the host,
-- say) changes nothing. Returns the meeting's status; on an ended meeting it is a
-- no-op returning 'ended'.
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

-- Start (host only, meeting ready): store the opening message, give the first turn
-- to p_next_speaker or, if NULL, the participant after the host. Returns the
-- opening message's id.
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

-- Speak. The current speaker's message is stored and the turn passes to
-- p_next_speaker or round-robin. A turn whose deadline has passed is expired first
-- (so speak and expire_turns agree whoever gets the lock first). A speaker whose
-- last turn expired (its latest agent_spoke/agent_timed_out event is a timeout)
-- may speak once late: stored with is_late, the turn stays where it is. Anyone else:
-- AM044. Returns the stored message's id.
-- The hand-off is the hot path of a meeting: its steps are written out here (the
-- lock, the membership check, the round-robin pick, giving the turn, the event)
-- rather than called, each call of a SECURITY DEFINER function costing its own
-- setup; the other transitions call the helpers above, which do the same.
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

-- Leave (not the host: AM045). The agent is skipped from then on; if it held the
-- turn, the turn passes round-robin. Before the start, leaving can make the
-- meeting ready.
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

-- End (host only). Every waiting participant wakes with "meeting ended".
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

-- Expire every turn whose deadline has passed; returns how many. Idempotent and
-- safe from any number of processes at once: meetings locked by someone else are
-- skipped (that someone is changing the turn anyway, or the next call gets them).
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

-- Seconds (by the server's clock) until the earliest turn deadline of any active
-- meeting, negative if one has passed; NULL when no turn can expire. SDK processes
-- sleep until then (not a fixed interval) before calling amp.expire_turns().
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

-- ---------------------------------------------------------------------------
-- Reading
-- ---------------------------------------------------------------------------

-- One meeting's row (the planning's Meeting model), or AM040.
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

-- Everything said in the meeting after p_after_seq, in order: 'meeting' messages
-- and 'system' messages (joins, leaves, timeouts, the end). Invitations are not part
-- of the history.
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

-- What a waiting participant needs: is it my turn, has the meeting ended, what
-- have I said last, how long until the current turn expires, and the seq of the
-- newest message this read saw (a participant's only): the messages of a later
-- transition are newer, so a turn hint carrying one was given after this read.
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

-- The meetings an agent is in (invited, attending, speaking or waiting, or left),
-- newest first, with whose turn it is and the agent's own status; ended ones too
-- if p_include_ended. At most p_limit (NULL: the default page size). For a role
-- that may act as the agent (AM060), which may therefore read every one of them
-- (amp.may_read_meeting).
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

-- Events after a seq, for observers (SDK event handlers, `amp watch`). An
-- agent_spoke event carries the spoken content as data.message.
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
