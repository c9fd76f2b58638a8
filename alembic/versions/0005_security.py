"""Access control: every amp function SECURITY DEFINER, owned by amp_owner, with a
pinned search_path; EXECUTE on the public API for amp_user only; tables and views
owned by amp_owner (security.sql, re-applied by every later revision).

Revision ID: 0005
Revises: 0004
"""

from agent_messaging.migrations import _raw_connection, apply_sql_files

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_sql_files("security.sql")


# Back to functions that run with the caller's rights and are executable by anyone,
# owned by the migrator. The roles stay: they belong to the whole server.
DOWNGRADE = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
             WHERE p.pronamespace = 'amp'::regnamespace LOOP
        EXECUTE format('ALTER ROUTINE %s SECURITY INVOKER RESET ALL', r.fn);
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.fn, current_user);
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM amp_user', r.fn);
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO PUBLIC', r.fn);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS rel, c.relkind FROM pg_class c
             WHERE c.relnamespace = 'amp'::regnamespace AND c.relkind IN ('r', 'p', 'v') LOOP
        EXECUTE format('REVOKE ALL ON %s FROM amp_user', r.rel);
        EXECUTE format('ALTER TABLE %s OWNER TO %I', r.rel, current_user);
    END LOOP;
    EXECUTE format('ALTER SCHEMA amp OWNER TO %I', current_user);
    REVOKE ALL ON SCHEMA amp FROM amp_user;
END $$;
DROP FUNCTION IF EXISTS amp.api_functions();
"""


def downgrade() -> None:
    # psycopg without parameters: the text goes as is (no %-placeholders)
    _raw_connection().execute(DOWNGRADE)
