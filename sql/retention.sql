-- amp: retention, removing history older than a horizon.
--
-- The history only grows: every message stays in amp.messages until it is pruned.
-- amp.prune removes, older than the horizon (default amp.retention(): the setting
-- amp.retention, else 30 days):
--   * messages outside meetings that are settled: delivered or failed (pushed), read
--     (async), or never pushed nor read (sync replies, answered requests);
--   * ended meetings (ended before the horizon) with their participants, events and
--     messages;
--   * ended conversations (ended before the horizon) once their messages are gone.
-- It never removes a pending delivery, an unread async message, a message of a
-- meeting that has not ended, the request a conversation waits on, nor a request
-- whose answers must stay (a reply younger than the horizon, or one being waited on:
-- amp.messages.reply_to must keep pointing somewhere). A conversation that has not
-- ended only loses its settled messages older than the horizon: an open pair of
-- agents that talks every day keeps its last horizon's worth, not its whole history.
--
-- Work is done in bounded batches, each one short transaction that locks only old,
-- settled rows (FOR UPDATE SKIP LOCKED: a row someone holds is left for next time),
-- so live traffic, which never touches those rows, is not blocked. Call the
-- procedure amp.prune (it COMMITs between batches, so CALL it outside a transaction
-- block), or drive the batch functions yourself as `amp prune` does.

-- Lookups of the batches below, kept apart from the hot paths' indexes.
-- (The requests conversations wait on have no index: amp.sessions' waiting columns
-- change at every question and answer, and an index on them would make those
-- updates write every index; a batch reads the few waiting sessions once instead.)
CREATE INDEX IF NOT EXISTS sessions_ended_idx ON amp.sessions (ended_at)
    WHERE ended_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS meetings_ended_idx ON amp.meetings (ended_at)
    WHERE status = 'ended';

-- The default horizon: ALTER DATABASE ... SET amp.retention = '90 days', else 30 days.
CREATE OR REPLACE FUNCTION amp.retention()
RETURNS interval
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('amp.retention', true), '')::interval,
                    interval '30 days')
$$;

-- The horizon for "older than p_older_than" (NULL: amp.retention()), validated.
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

-- Whether a request must stay because something that answers it (directly or down a
-- ping-pong chain) stays: it is younger than the horizon, or someone waits on it
-- (p_waited: the requests conversations wait on).
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

-- One batch of messages: looks at the next p_batch_size messages after p_after_seq
-- (in seq order) and deletes those that may go, with the answers to them. Returns
-- how many were deleted and where the next batch starts (NULL: the scan reached the
-- horizon or the end; pass 0 to start). Messages of meetings go with their meeting.
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

-- One batch of meetings: up to p_limit meetings that ended before the horizon and
-- have no pending delivery (an invitation nobody took yet), deleted with their
-- participants, events and messages. Returns how many meetings went.
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

-- One batch of conversations: up to p_limit sessions that ended before the horizon
-- and have no message left. Returns how many went.
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

-- Prune everything older than p_older_than (NULL: amp.retention()) in batches of
-- p_batch_size rows, committing after each. CALL amp.prune('30 days') outside a
-- transaction block; returns how many messages, meetings and sessions went.
-- A procedure that COMMITs cannot be SECURITY DEFINER nor pin its search_path: it
-- runs with the caller's rights and names everything schema-qualified; the batch
-- functions it calls are the checked, pinned ones (administrators only).
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
