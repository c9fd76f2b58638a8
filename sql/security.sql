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
