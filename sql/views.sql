-- amp: views for inspection with plain SQL (`amp status` reads these too).
-- Views are re-created whole, so this file can be applied again after a change.
--
-- Each view shows a role only what it may see (access.sql): rows of agents it may
-- act as, meetings it takes part in; everything for superusers and amp_admin. The
-- views are security barriers (a caller's own WHERE clause cannot run before the
-- filter) owned by amp_owner; amp_user may SELECT them, not the tables beneath.
-- The filters call amp.may_act_as_id and amp.may_read_meeting, which are public
-- because a view calls functions with the rights of whoever selects from it.

DROP VIEW IF EXISTS amp.active_conversations, amp.active_meetings, amp.agent_inbox,
    amp.meeting_timeline, amp.online_agents, amp.failed_deliveries;

-- Live conversations: who talks with whom, and who waits on whom since when.
CREATE VIEW amp.active_conversations WITH (security_barrier) AS
SELECT s.id               AS session_id,
       s.session_type,
       s.status,
       a.external_id      AS agent_a,
       b.external_id      AS agent_b,
       w.external_id      AS waiting_agent,
       CASE WHEN s.locked_agent_id = s.agent_a_id THEN b.external_id
            WHEN s.locked_agent_id = s.agent_b_id THEN a.external_id END AS waiting_on,
       s.waiting_since,
       (SELECT count(*) FROM amp.messages m WHERE m.session_id = s.id) AS messages,
       s.created_at,
       s.updated_at
FROM amp.sessions s
JOIN amp.agents a ON a.id = s.agent_a_id
JOIN amp.agents b ON b.id = s.agent_b_id
LEFT JOIN amp.agents w ON w.id = s.locked_agent_id
WHERE s.status <> 'ended' AND (amp.may_act_as_id(a.id) OR amp.may_act_as_id(b.id));

-- Meetings not yet ended, with the current speaker and when the turn expires.
CREATE VIEW amp.active_meetings WITH (security_barrier) AS
SELECT m.id               AS meeting_id,
       m.status,
       h.external_id      AS host,
       sp.external_id     AS current_speaker,
       m.turn_duration,
       m.turn_deadline,
       (SELECT count(*) FROM amp.meeting_participants p
         WHERE p.meeting_id = m.id AND p.status <> 'left') AS participants,
       (SELECT count(*) FROM amp.messages x WHERE x.meeting_id = m.id
         AND x.message_type IN ('meeting', 'system')) AS messages,
       m.created_at,
       m.started_at
FROM amp.meetings m
JOIN amp.agents h ON h.id = m.host_id
LEFT JOIN amp.agents sp ON sp.id = m.current_speaker_id
WHERE m.status <> 'ended' AND amp.may_read_meeting(m.id);

-- Unread inbox (async conversation messages) per agent.
CREATE VIEW amp.agent_inbox WITH (security_barrier) AS
SELECT a.external_id      AS agent,
       count(*)           AS unread,
       min(m.created_at)  AS oldest_unread_at,
       max(m.created_at)  AS newest_unread_at
FROM amp.messages m
JOIN amp.agents a ON a.id = m.recipient_id
WHERE m.read_at IS NULL AND m.message_type = 'async' AND m.delivery_status IS NULL
  AND amp.may_act_as_id(a.id)
GROUP BY a.external_id;

-- Everything that happened in meetings, messages and events together;
-- order by (meeting_id, at, kind_order, seq).
CREATE VIEW amp.meeting_timeline WITH (security_barrier) AS
SELECT * FROM (
SELECT m.meeting_id,
       m.created_at       AS at,
       'message'          AS kind,
       1                  AS kind_order,
       m.seq,
       m.message_type     AS what,
       s.external_id      AS agent,
       m.content,
       m.is_late
FROM amp.messages m
LEFT JOIN amp.agents s ON s.id = m.sender_id
WHERE m.meeting_id IS NOT NULL AND m.message_type <> 'meeting_invitation'
UNION ALL
SELECT e.meeting_id,
       e.created_at,
       'event',
       0,
       e.seq,
       e.event_type,
       a.external_id,
       e.data,
       false
FROM amp.meeting_events e
LEFT JOIN amp.agents a ON a.id = e.agent_id
) t
WHERE amp.may_read_meeting(t.meeting_id);

-- Agents served by an SDK process whose heartbeat is recent.
CREATE VIEW amp.online_agents WITH (security_barrier) AS
SELECT a.external_id      AS agent,
       w.id               AS worker_id,
       w.hostname,
       w.pid,
       wa.since,
       w.heartbeat_at
FROM amp.worker_agents wa
JOIN amp.workers w ON w.id = wa.worker_id
JOIN amp.agents a ON a.id = wa.agent_id
WHERE w.heartbeat_at > now() - interval '30 seconds' AND amp.may_act_as_id(a.id);

-- Pushed messages whose handler kept failing until the attempts ran out.
CREATE VIEW amp.failed_deliveries WITH (security_barrier) AS
SELECT m.id               AS message_id,
       m.message_type,
       s.external_id      AS sender,
       r.external_id      AS recipient,
       m.attempts,
       m.last_error,
       m.created_at,
       m.content
FROM amp.messages m
LEFT JOIN amp.agents s ON s.id = m.sender_id
JOIN amp.agents r ON r.id = m.recipient_id
WHERE m.delivery_status = 'failed' AND (amp.may_act_as_id(r.id) OR amp.may_act_as_id(m.sender_id));
