-- amp: access control. Identity is a PostgreSQL role.
--
-- A connection may act as an agent when its session_user is a member of the role
-- bound to the agent or to the agent's organization (amp.role_bindings).
-- Superusers and members of amp_admin may act as any agent. Agents of an
-- organization bound to no role (and not bound themselves) are open to every role
-- granted amp_user: the single-tenant default. Agents of two different bound
-- organizations may contact each other only where amp.allow_contact opened it.
--
-- This file holds the roles, the two policy tables, the checks the protocol's
-- functions call at their central points (amp._resolve_pair, amp._acting_agent, the
-- worker and meeting helpers), and the functions that administer and show the
-- policy. security.sql, applied last, makes every function SECURITY DEFINER (owned
-- by amp_owner, search_path pinned) and grants the public API to amp_user; the
-- checks therefore look at session_user, the role the client logged in as.
--
-- Everything here is idempotent: the file can be applied again.

-- ---------------------------------------------------------------------------
-- Roles (cluster-wide, shared by every database of the server)
--   amp_owner  NOLOGIN: owns every amp table, view and function. `amp migrate`
--              runs as a superuser or as a member of amp_owner.
--   amp_user   NOLOGIN: USAGE on schema amp, EXECUTE on the public API, SELECT on
--              the views. Application roles are granted it.
--   amp_admin  NOLOGIN, member of amp_user: acts as any agent, binds roles,
--              allows contact between organizations.
-- Created only where missing, so a migrator that cannot create roles works once
-- an administrator has run `amp roles create`. Concurrent migrations of two
-- databases of one server may race to create them: the loser's duplicate is
-- caught (advisory locks are per database and cannot serialise this).
-- ---------------------------------------------------------------------------

-- BEGIN roles (`amp roles create` runs this block)
DO $roles$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['amp_owner', 'amp_user', 'amp_admin'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- created by a concurrent migration
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'role % does not exist and role % may not create it',
                        v_role, current_user
                        USING HINT = 'run "amp roles create" as a superuser (or a role '
                                     'with CREATEROLE) first';
            END;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members
                   WHERE roleid = 'amp_user'::regrole AND member = 'amp_admin'::regrole) THEN
        BEGIN
            GRANT amp_user TO amp_admin;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$roles$;
-- END roles

-- ---------------------------------------------------------------------------
-- Policy tables
-- ---------------------------------------------------------------------------

-- An organization or a single agent bound to a PostgreSQL role (by name: a role
-- dropped and not re-created matches nobody, so the binding fails closed).
CREATE TABLE IF NOT EXISTS amp.role_bindings (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid UNIQUE REFERENCES amp.organizations (id) ON DELETE CASCADE,
    agent_id        uuid UNIQUE REFERENCES amp.agents (id) ON DELETE CASCADE,
    role_name       name NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((organization_id IS NULL) <> (agent_id IS NULL))
);

-- Agents of `from` may contact agents of `to` (two bound organizations). The other
-- direction is a row of its own; an agent of `to` may still answer inside a live
-- conversation (session) with an agent of `from`.
CREATE TABLE IF NOT EXISTS amp.contacts (
    from_organization_id uuid NOT NULL REFERENCES amp.organizations (id) ON DELETE CASCADE,
    to_organization_id   uuid NOT NULL REFERENCES amp.organizations (id) ON DELETE CASCADE,
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (from_organization_id, to_organization_id),
    CHECK (from_organization_id <> to_organization_id)
);

-- ---------------------------------------------------------------------------
-- Checks (internal: called by the protocol's functions)
-- ---------------------------------------------------------------------------

-- Superusers and members of amp_admin (pg_has_role counts a superuser as a member
-- of every role).
CREATE OR REPLACE FUNCTION amp._is_admin()
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN pg_has_role(session_user, 'amp_admin', 'MEMBER');
END;
$$;

-- May role p_role act as the agent? The single definition of identity. (A bound
-- role that no longer exists is NULL for to_regrole: nobody is its member.)
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

-- May this connection act as the agent?
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

-- The agent, if this connection may act as it; AM060 otherwise.
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

-- The agent named by an external id, acting as it: AM020 if unknown, AM060 if
-- this connection may not act as it. Every call of the API passes here, so the
-- common case is one query: the rule of amp._role_may_act_as written out in it (a
-- call of that function costs more than the check). When that query finds no
-- agent the connection may act as, the checks run one by one for the error that
-- names what failed.
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

-- Registering an agent in a bound organization takes a member of its role.
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

-- May the sender's organization contact the recipient's? Yes within one
-- organization, when either is unbound, where amp.contacts allows it, and for an
-- answer inside a live conversation of the pair that the other side was allowed
-- to start. AM061 otherwise. Applies to every caller, administrators included.
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

-- A worker is used only by the login role that registered it (or an admin); with
-- p_check_agents, every agent it serves must still be one the caller may act as
-- (a binding made after the worker started serving takes effect at its next claim).
-- Unknown workers pass: the caller's own check reports them. Returns true.
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

-- A meeting is seen by its participants (anyone who may act as one of them, left
-- or not) and by admins.
CREATE OR REPLACE FUNCTION amp.may_read_meeting(p_meeting uuid)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._is_admin() OR EXISTS (
        SELECT 1 FROM amp.meeting_participants p JOIN amp.agents a ON a.id = p.agent_id
        WHERE p.meeting_id = p_meeting AND amp._may_act_as(a));
END;
$$;

-- AM060 unless the meeting may be read; an unknown meeting passes (the caller
-- reports it). Returns true.
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

-- A message is read by whoever may act as its sender or recipient, or read the
-- meeting it was said in.
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

-- ---------------------------------------------------------------------------
-- Administration (public API; the changes are for admins only)
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION amp._require_role_exists(p_role name)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_role IS NULL OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
        PERFORM amp._raise_error('AM001', format('role %L does not exist', p_role));
    END IF;
END;
$$;

-- Bind an organization to a role: from now on only members of the role (and
-- admins) act as its agents. Binding again replaces the role.
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

-- Bind one agent to a role: members of it act as this agent (so do members of
-- its organization's role, if that is bound).
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

-- Remove a binding; returns whether there was one.
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

-- Let agents of p_from contact agents of p_to (and back, unless p_both_ways is false).
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

-- Close what allow_contact opened (both directions unless p_both_ways is false).
-- Live conversations are not ended, but nothing more can be said in them.
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

-- ---------------------------------------------------------------------------
-- Inspection (public API; each shows only what the caller may see)
-- ---------------------------------------------------------------------------

-- May this connection act as the agent?
CREATE OR REPLACE FUNCTION amp.can_act_as(p_agent text)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN amp._may_act_as(amp.get_agent(p_agent));
END;
$$;

-- Who may act as whom: every agent this connection may act as (all, for an
-- admin), how it is bound, and the login roles that may act as it.
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

-- Which organizations may contact which (admins only).
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

-- The channel of every agent this connection may act as (`amp watch` LISTENs on them).
CREATE OR REPLACE FUNCTION amp.agent_channels()
RETURNS TABLE (agent_external_id text, channel text)
LANGUAGE sql STABLE AS $$
    SELECT a.external_id, c.channel
    FROM amp.agents a JOIN amp.agent_channels c ON c.agent_id = a.id
    WHERE amp._may_act_as(a)
    ORDER BY a.external_id
$$;

-- One message, for whoever may act as its sender or recipient or read its
-- meeting (AM060 otherwise); no row for an unknown id.
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

-- The alembic revision the schema is at (NULL if it was never migrated), for
-- clients that may not read amp.alembic_version.
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

-- What an SDK checks when it starts: the revision the schema is at, and every applied
-- revision with its breaking flag (JSON), so that an older SDK can tell whether it may
-- run on a newer schema. For roles that may not read the bookkeeping tables.
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
