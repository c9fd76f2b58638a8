-- Every SQL statement the agent-messaging SDK runs, by name. queries.py reads this
-- file once, at import, and exposes each statement as a constant of the same name in
-- upper case (send_one_way -> queries.SEND_ONE_WAY); a statement without a constant,
-- or a constant without a statement, fails the import.
--
-- Layout: a statement begins at a line "-- name: " followed by its name (lower case,
-- unique); the comment lines under it say what it does; the other lines, up to the
-- next such line, are the statement. Comment lines are not sent to the server.
--
-- One casting convention:
--   * parameters are bound ($1, $2, ...), never formatted into the text;
--   * JSON goes in as text, cast by the server: $n::text::jsonb ($n::text[]::jsonb[]
--     for an array of documents); psqlpy binds only dicts and lists as jsonb;
--   * JSON comes back as text (content::text AS content) and is decoded row by row in
--     Python (content.loads): psqlpy decodes a result set as a whole and fails it as
--     a whole on one value it cannot convert; rows the server gathers into one value
--     (json_agg of json_build_object, content inside as JSON text) come back as text
--     too, and each element's content is decoded on its own;
--   * a duration goes in as seconds: make_interval(secs => $n).
-- Kept as they were, because changing them would change what a caller sees for a
-- value psqlpy cannot decode: the whole-row reads of one object, which let the driver
-- decode their jsonb columns (get_message, get_meeting, meeting_status), and the MCP
-- server's reads, which hand content to the model as the driver decoded it
-- (mcp_claim_inbox, mcp_read_inbox, mcp_peek_inbox, mcp_pending_pushed,
-- mcp_pending_questions).
--
-- Statements that stay elsewhere, on purpose:
--   * database.py: the connector's own statements (a new connection's session
--     settings and backend pid, pg_cancel_backend, BEGIN / COMMIT / ROLLBACK);
--   * migrations.py and alembic/: the migrations (psycopg, frozen revision files);
--   * roles.py: the DDL of `amp roles` (CREATE ROLE, GRANT), dynamic: the server
--     quotes the role names into it (format_statement) and it runs as returned; the
--     DO block that creates the protocol's roles is read from sql/access.sql;
--     database.py likewise runs the CREATE DATABASE that create_database returns;
--   * what applications run themselves (AgentMessaging.transaction, tx.execute), and
--     the statements of the tests, the benchmark and the scripts.


-- ---------------------------------------------------------------------------
-- organizations and agents (agents.py, status.py, delivery.py, mcp_server.py)

-- name: register_organization
-- Register an organization; its row.
SELECT * FROM amp.register_organization($1, $2)

-- name: get_organization
-- The organization with that external id.
SELECT * FROM amp.get_organization($1)

-- name: register_agent
-- Register an agent of an organization; its row.
SELECT * FROM amp.register_agent($1, $2, $3)

-- name: get_agent
-- The agent with that external id.
SELECT * FROM amp.get_agent($1)

-- name: agent_channel
-- The NOTIFY channel of one agent.
SELECT amp.agent_channel($1)

-- name: agent_channels_of
-- The NOTIFY channels of many agents (an array of external ids), in order.
SELECT amp.agent_channel(a) AS channel FROM unnest($1::text[]) AS a

-- name: agent_channels
-- The channel of every agent the connection may act as (`amp status --watch`).
SELECT channel AS c FROM amp.agent_channels()


-- ---------------------------------------------------------------------------
-- the LISTEN connection (database.Listener), run on the listener's own connection

-- name: listen
-- LISTEN on an array of channels.
SELECT amp.listen($1)

-- name: unlisten
-- UNLISTEN an array of channels.
SELECT amp.unlisten($1)

-- name: notify
-- NOTIFY a channel with a payload (the dispatcher's health check echoes to itself).
SELECT pg_notify($1, $2)

-- name: listener_backend_pid
-- The server process id of the listener connection (diagnostics).
SELECT pg_backend_pid() AS pid

-- name: listening_channels
-- The channels the listener connection LISTENs on (diagnostics and tests).
SELECT c AS channel FROM pg_listening_channels() AS c ORDER BY c


-- ---------------------------------------------------------------------------
-- the server (database.py, cli.py)

-- name: database_exists
-- A row if a database of that name exists on the server.
SELECT 1 FROM pg_database WHERE datname = $1

-- name: create_database
-- The CREATE DATABASE statement for a name, the identifier quoted by the server.
SELECT format('CREATE DATABASE %I', $1::text) AS s

-- name: schema_present
-- Whether the amp schema is installed (the CLI's probe before it starts anything).
SELECT to_regclass('amp.messages') IS NOT NULL AS found


-- ---------------------------------------------------------------------------
-- one-way messages (one_way.py)

-- name: send_one_way
-- Store a one-way message and push it to the recipient's handler; its id.
-- $1 sender, $2 recipient, $3 content, $4 metadata, $5 idempotency key.
SELECT amp.send_one_way($1, $2, $3::text::jsonb, $4::text::jsonb, $5)

-- name: send_one_way_many
-- Store many one-way messages in one transaction (recipients[i] gets contents[i],
-- or contents[0] for all); their ids, in order.
SELECT amp.send_one_way_many($1, $2, $3::text[]::jsonb[], $4::text::jsonb) AS id

-- name: delivery_outcome
-- A pushed message's delivery state, and the channel its sender is told on.
SELECT * FROM amp.delivery_outcome($1)


-- ---------------------------------------------------------------------------
-- workers and push delivery (delivery.py, mcp_server.py)

-- name: register_worker
-- Register this process as a worker (hostname, pid); its id.
SELECT amp.register_worker($1, $2) AS id

-- name: serve_agents
-- Record that the worker serves these agents (an array of external ids).
SELECT amp.serve_agents($1, $2)

-- name: hold_worker
-- Direct delivery for the worker $1, leased $2 seconds: run on the LISTEN connection
-- (its advisory lock is the worker's presence); false if another connection holds it.
SELECT amp.hold_worker($1, make_interval(secs => $2)) AS held

-- name: release_worker
-- The worker $1 is present on this connection no more (amp.hold_worker undone).
SELECT amp.release_worker($1) AS released

-- name: release_deliveries
-- Hand back deliveries leased to the worker $1: those of $2 (every one if null),
-- except $3; the ids handed back.
SELECT amp.release_deliveries($1, $2, $3) AS id

-- name: unregister_worker
-- The worker is gone: what it held is claimable again.
SELECT amp.unregister_worker($1)

-- name: heartbeat
-- The worker is alive (keeps its agents in amp.online_agents).
SELECT amp.heartbeat($1)

-- name: claim_deliveries
-- Lease up to $2 pending deliveries of the worker's agents for $3 seconds.
-- $4: attempts after which a delivery is dead-lettered.
SELECT id, seq, message_type, content::text AS content, metadata::text AS metadata,
       session_id, meeting_id, attempts, sender_external_id, sender_name,
       recipient_external_id, recipient_name
FROM amp.claim_deliveries($1, $2, make_interval(secs => $3), $4)

-- name: extend_leases
-- Extend the leases of the deliveries the worker still holds by $3 seconds; the
-- ids of those still leased to it.
SELECT amp.extend_leases($1, $2, make_interval(secs => $3)) AS id

-- name: next_delivery_at
-- When the worker's next retry or lease expiry is due, and the server's clock.
SELECT amp.next_delivery_at($1) AS at, now() AS now

-- name: ack_deliveries
-- Acknowledge handled deliveries (an array of message ids); the ids acknowledged.
SELECT amp.ack_deliveries($1, $2) AS id

-- name: fail_delivery
-- Record a failed attempt: retried after $4 seconds, or dead-lettered once the
-- message has had $5 attempts. $3: the error.
SELECT amp.fail_delivery($1, $2, $3, make_interval(secs => $4), $5)


-- ---------------------------------------------------------------------------
-- asynchronous conversations (async_conversation.py)

-- name: async_send
-- Store an async message in the recipient's inbox; its id.
-- $1 sender, $2 recipient, $3 content, $4 metadata, $5 idempotency key.
SELECT amp.async_send($1, $2, $3::text::jsonb, $4::text::jsonb, $5)

-- name: read_unread
-- Hand out up to $3 unread messages (from sender $2, any if null) under a receipt
-- and a lease of $4 seconds; confirm_read marks them read.
SELECT id, seq, content::text AS content, metadata::text AS metadata, session_id,
       sender_external_id, sender_name, created_at, receipt
FROM amp.read_unread($1, $2, $3::integer, make_interval(secs => $4))

-- name: confirm_read
-- Mark read the messages of a receipt that were decoded (an array of ids, as text);
-- the others are unread again. The ids marked read.
SELECT amp.confirm_read($1, $2::text::uuid, $3::text[]::uuid[]) AS id

-- name: reject_unread
-- Dead-letter one inbox message that cannot be decoded, with the reason.
SELECT 1 AS done FROM amp.reject_unread($1, $2::text::uuid, $3)

-- name: peek_unread
-- Up to $3 unread messages (from sender $2, any if null), marking nothing.
SELECT id, seq, content::text AS content, metadata::text AS metadata, session_id,
       sender_external_id, sender_name, created_at
FROM amp.peek_unread($1, $2, $3::integer)

-- name: inbox_messages
-- One page of the inbox, read or not: up to $4 messages after seq $3.
SELECT id, seq, content::text AS content, metadata::text AS metadata, session_id,
       sender_external_id, sender_name, created_at, read_at, delivery_status, last_error
FROM amp.inbox_messages($1, $2, $3::bigint, $4::integer)


-- ---------------------------------------------------------------------------
-- synchronous conversations (sync_conversation.py, client.py, mcp_server.py)

-- name: sync_send
-- Store a request and lock the conversation for the asker for $6 seconds.
-- $1 sender, $2 recipient, $3 content, $4 metadata, $5 idempotency key.
SELECT request_id
FROM amp.sync_send($1, $2, $3::text::jsonb, $4::text::jsonb, $5, make_interval(secs => $6))

-- name: sync_result
-- The outcome of a request: its status and, once replied, the reply's content.
SELECT status, content::text AS content FROM amp.sync_result($1)

-- name: sync_reply
-- Store the reply to the request $5 (the one awaited, if null); its id.
SELECT amp.sync_reply($1, $2, $3::text::jsonb, $4::text::jsonb, $5)

-- name: cancel_wait
-- Withdraw the request $3 of asker $1 to $2; whether there was a wait to withdraw.
SELECT amp.cancel_wait($1, $2, $3)

-- name: end_conversation
-- End the live conversation of two agents.
SELECT amp.end_conversation($1, $2)

-- name: get_session
-- The latest conversation of two agents of a type.
SELECT * FROM amp.get_session($1, $2, $3)

-- name: get_message
-- One stored message (content and metadata decoded by the driver: one row).
SELECT * FROM amp.get_message($1)


-- ---------------------------------------------------------------------------
-- meetings (meeting_manager.py, meeting_events.py, turn_sweeper.py)

-- name: create_meeting
-- Create a meeting hosted by $1 with the participants $2 and turns of $3 seconds;
-- its id.
SELECT amp.create_meeting($1::text, $2::text[], make_interval(secs => $3)) AS id

-- name: attend_meeting
-- Attend a meeting (idempotent); the meeting's status, and the agent's channel (where
-- its turn's hints come: the wait that follows listens there) in the same round trip.
SELECT amp.attend_meeting($1::text, $2::text::uuid) AS status,
       amp.agent_channel($1::text) AS channel

-- name: start_meeting
-- Start a ready meeting with the host's opening message; the message's id.
-- $4: the first speaker (the participant after the host if null).
SELECT amp.start_meeting($1::text, $2::text::uuid, $3::text::jsonb, $4::text) AS id

-- name: speak
-- Say something in one's turn and pass the turn to $4 (round-robin if null); the
-- message's id.
SELECT amp.speak($1::text, $2::text::uuid, $3::text::jsonb, $4::text) AS id

-- name: leave_meeting
-- Leave a meeting (not its host).
SELECT amp.leave_meeting($1::text, $2::text::uuid)

-- name: end_meeting
-- End a meeting (its host only).
SELECT amp.end_meeting($1::text, $2::text::uuid)

-- name: meeting_status
-- A meeting's state (its metadata decoded by the driver: one row).
SELECT * FROM amp.meeting_status($1::text::uuid)

-- name: meeting_participant_list
-- A meeting's participants, in speaking order.
SELECT * FROM amp.meeting_participant_list($1::text::uuid)

-- name: get_meeting
-- A meeting's row (its metadata decoded by the driver: one row), with the turn
-- duration in seconds.
SELECT *, extract(epoch FROM turn_duration)::float8 AS seconds
FROM amp.get_meeting($1::text::uuid)

-- name: meeting_turn
-- Where a participant stands: whose turn it is, whether the meeting ended, what the
-- participant last said; and, once it is its turn or the meeting ended, what was
-- said since (amp.meeting_history after last_spoke_seq) in the same round trip, as a
-- JSON array whose content fields are JSON text, each decoded on its own.
SELECT t.*,
       CASE WHEN t.your_turn OR t.meeting_ended THEN (
           SELECT coalesce(json_agg(json_build_object(
                      'seq', h.seq, 'message_id', h.message_id,
                      'message_type', h.message_type,
                      'sender_external_id', h.sender_external_id,
                      'content', h.content::text, 'is_late', h.is_late,
                      'created_at', h.created_at) ORDER BY h.seq), '[]')::text
           FROM amp.meeting_history($2::text::uuid, t.last_spoke_seq) h)
       END AS history
FROM amp.meeting_turn($1::text, $2::text::uuid) t

-- name: meeting_history
-- What was said in a meeting after seq $2, system messages included, in order.
SELECT seq, message_id, message_type, sender_external_id, content::text AS content,
       is_late, created_at
FROM amp.meeting_history($1::text::uuid, $2::bigint)

-- name: expire_turns
-- Pass on every turn whose deadline passed (idempotent); how many.
SELECT amp.expire_turns() AS n

-- name: next_turn_deadline
-- Seconds until the earliest turn deadline of all meetings (null: none).
SELECT amp.next_turn_deadline() AS s

-- name: meeting_events_max_seq
-- The seq of the newest meeting event (where an event relay starts).
SELECT amp.meeting_events_max_seq() AS s

-- name: meeting_events_after
-- Up to $2 meeting events after seq $1, in order.
SELECT seq, meeting_id, event_type, agent_external_id, data::text AS data, created_at
FROM amp.meeting_events_after($1::bigint, $2::integer)


-- ---------------------------------------------------------------------------
-- retention (retention.py)

-- name: prune_horizon
-- The moment before which history is pruned: now minus $1 seconds, or minus the
-- database's retention if null.
SELECT amp.prune_horizon(make_interval(secs => $1)) AS h

-- name: prune_meetings
-- Remove up to $2 meetings that ended before the horizon; how many.
SELECT amp.prune_meetings($1, $2) AS n

-- name: prune_messages
-- Remove up to $2 settled messages older than the horizon, from seq $3 on; how
-- many, and where the next batch starts (null: done).
SELECT removed, next_seq FROM amp.prune_messages($1, $2, $3)

-- name: prune_sessions
-- Remove up to $2 ended conversations left empty; how many.
SELECT amp.prune_sessions($1, $2) AS n


-- ---------------------------------------------------------------------------
-- roles and access (roles.py)

-- name: format_statement
-- A statement from a template and its values, quoted by the server (%I, %L).
SELECT format($1::text, VARIADIC $2::text[])

-- name: role_exists
-- Whether a role of that name exists (1 or 0).
SELECT count(*) FROM pg_roles WHERE rolname = $1

-- name: bind_agent
-- Bind one agent to a role.
SELECT amp.bind_agent($1, $2::text::name)

-- name: bind_organization
-- Bind an organization to a role.
SELECT amp.bind_organization($1, $2::text::name)

-- name: allow_contact
-- Let the agents of organization $1 contact those of $2 (and back, if $3).
SELECT amp.allow_contact($1, $2, $3)

-- name: revoke_contact
-- Close the contact of organization $1 to $2 (and back, if $3).
SELECT amp.revoke_contact($1, $2, $3)

-- name: role_map
-- Who may act as whom.
SELECT organization_external_id AS organization, agent_external_id AS agent,
       bound_role::text AS bound_role, bound_by,
       array_to_string(login_roles, ', ') AS login_roles
FROM amp.role_map()

-- name: contact_list
-- The contacts open between organizations (an administrator's view).
SELECT from_organization, to_organization FROM amp.contact_list()


-- ---------------------------------------------------------------------------
-- `amp status` (status.py): the inspection views, and what a hint names

-- name: status_conversations
-- The live conversations.
SELECT session_type, status, agent_a, agent_b, waiting_agent, waiting_on, waiting_since,
       messages
FROM amp.active_conversations ORDER BY created_at

-- name: status_meetings
-- The meetings not ended.
SELECT meeting_id, status, host, current_speaker, turn_deadline, participants, messages
FROM amp.active_meetings ORDER BY created_at

-- name: status_inboxes
-- Unread messages per agent.
SELECT agent, unread, oldest_unread_at FROM amp.agent_inbox ORDER BY agent

-- name: status_online
-- The agents a live worker serves.
SELECT agent, hostname, pid, heartbeat_at FROM amp.online_agents ORDER BY agent, pid

-- name: status_failed_deliveries
-- The dead-lettered messages.
SELECT message_id, message_type, sender, recipient, attempts, last_error
FROM amp.failed_deliveries ORDER BY created_at

-- name: watch_message
-- The message a hint names, for `amp status --watch`.
SELECT message_type, sender_external_id AS sender, recipient_external_id AS recipient,
       content::text AS content
FROM amp.get_message($1)

-- name: watch_meeting_event
-- The meeting event of seq $1 and, if it names a message, that message's content.
SELECT e.event_type, e.agent_external_id AS agent,
       CASE WHEN e.data ? 'message_id'
            THEN (SELECT g.content::text
                  FROM amp.get_message((e.data ->> 'message_id')::uuid) g)
       END AS content
FROM amp.meeting_events_after($1::bigint - 1, 1) e WHERE e.seq = $1


-- ---------------------------------------------------------------------------
-- `amp mcp` (mcp_server.py): the MCP server's own reads. Like every statement here,
-- each goes through public functions: the server runs as an application role,
-- which may read no table (tests/test_queries.py checks that none is named).

-- name: mcp_claim_inbox
-- Claim up to $2 pushed messages with a lease that is already over (whatever is not
-- acknowledged is claimable again at once); $3: no attempt limit.
SELECT id, seq, message_type, content, meeting_id, sender_external_id
FROM amp.claim_deliveries($1, $2, make_interval(), $3)

-- name: mcp_read_inbox
-- Take up to $3 unread async messages (from sender $2, any if null), marking them read.
SELECT id, seq, content, sender_external_id, created_at FROM amp.read_unread($1, $2, $3)

-- name: mcp_peek_inbox
-- The unread async messages (from sender $2, any if null), marking nothing.
SELECT id, seq, content, sender_external_id, created_at FROM amp.peek_unread($1, $2)

-- name: mcp_pending_pushed
-- Up to $3 pushed messages to agent $1 not delivered yet (from sender $2, any if
-- null), oldest first.
SELECT id, seq, message_type, content, created_at, sender_external_id
FROM amp.peek_deliveries($1, $2, $3)

-- name: mcp_agent_organization
-- The external id of agent $1's organization.
SELECT external_id FROM amp.agent_organization($1)

-- name: mcp_list_agents
-- Up to $2 agents the connection can reach (of organization $1, any if null) and,
-- for those it may act as, whether they are online (null for the others).
SELECT agent_external_id AS agent, name, organization_external_id AS organization, online
FROM amp.agent_list($1, NULL, $2)

-- name: mcp_pending_questions
-- Who waits for agent $1's answer, with the question.
SELECT sender_external_id, content, waiting_since, request_id FROM amp.awaiting_reply($1)

-- name: mcp_questions_from
-- The requests agent $2 waits on agent $1 to answer (to withdraw a cancelled ask).
SELECT request_id FROM amp.awaiting_reply($1) WHERE sender_external_id = $2

-- name: mcp_my_meetings
-- The meetings agent $1 is in (ended ones too if $2), newest first.
SELECT meeting_id, status, host_external_id AS host,
       current_speaker_external_id AS current_speaker, participant_status AS your_status,
       created_at
FROM amp.agent_meetings($1, $2)
