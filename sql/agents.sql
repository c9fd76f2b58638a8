-- amp: errors, channels, organizations and agents.

-- Every error an amp function raises has its own SQLSTATE (class AM) and names it
-- again in the HINT, because some drivers (psqlpy among them) pass on the message
-- but not the code. The Python SDK maps each code to exactly one exception class.
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

-- ---------------------------------------------------------------------------
-- Channels. The rule lives here so no client has to know it:
--   amp_agent_<32 random hex>       everything an agent may be waiting for
--                                   (amp.agent_channels: unguessable)
--   amp_meeting_<meeting uuid hex>  turn changes and the end of one meeting
--   amp_meeting_events              every meeting event, for observers
-- ---------------------------------------------------------------------------

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

-- LISTEN takes an identifier, not a parameter: this lets a client bind channel
-- names (and subscribe to many in one round trip) instead of quoting them.
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

-- ---------------------------------------------------------------------------
-- Organizations and agents
-- ---------------------------------------------------------------------------

-- External ids are taken as given: no case folding, no Unicode normalisation
-- ('Alice' and 'alice' are two agents). So that an id reads the same everywhere it
-- is shown, it must be 1 to 255 characters, without control characters (U+0000 to
-- U+001F, U+007F to U+009F; NUL cannot be sent at all) and without leading or
-- trailing whitespace (space, U+00A0, U+1680, U+2000 to U+200A, U+2028, U+2029,
-- U+202F, U+205F, U+3000, U+FEFF). The SDK applies the same rule before sending.
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

-- Display names: at most 1000 characters (NULL or blank: the external id).
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

-- The organization an agent belongs to, by the agent's external id (what "who am
-- I" answers). Open to every amp_user, as amp.get_agent and amp.get_organization
-- are: looking up an id one already knows shows nothing secret.
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

-- The directory: the agents this connection can reach, by external id, with their
-- organization and, for its own agents, whether a live worker serves them. Listed
-- are the agents the caller may act as and those it may contact from an agent it
-- acts as, by the organizations' contact policy (amp._require_contact: the same
-- organization, either one bound to no role, or amp.allow_contact); everything for
-- an admin. So one tenant does not enumerate another's agents (amp.get_agent still
-- finds an agent whose id one knows); an organization that may only answer inside
-- conversations the other side started (one-way contact) is not shown that side's
-- agents. Presence is what amp.online_agents shows the caller: `online` is NULL for
-- an agent it may not act as. Only agents of p_organization if given (AM010 if
-- unknown); in external id order after p_after (pass the last agent of a page for
-- the next); at most p_limit (NULL: the default page size).
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

-- An agent's channel by external id, for clients in any language; only for a
-- connection that may act as the agent (AM060 otherwise).
CREATE OR REPLACE FUNCTION amp.agent_channel(p_external_id text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._agent_channel_by_id((amp._acting_agent(p_external_id)).id);
END;
$$;
