"""``amp roles``: the PostgreSQL roles that identity and access control rest on.

An operator (a superuser, or a role with CREATEROLE that is a member of ``amp_admin``)
creates the three roles of the protocol, binds an organization (or one agent) to a
role, grants that role to the login roles its processes connect with, and opens
contact between organizations. Role names travel as bound parameters and are quoted
by the server (``format('%I')``), never pasted into SQL here.
"""

from __future__ import annotations

from . import migrations, queries
from .database import Database, Row

ROLES = ("amp_owner", "amp_user", "amp_admin")


def roles_block() -> str:
    """The DO block of ``sql/access.sql`` that creates the roles where missing."""
    text = (migrations.sql_dir() / "access.sql").read_text()
    block = text.split("-- BEGIN roles", 1)[1].split("-- END roles", 1)[0]
    return block.split("\n", 1)[1]


async def create_roles(db: Database) -> None:
    """Create ``amp_owner``, ``amp_user`` and ``amp_admin`` where missing."""
    await db.execute(roles_block())


async def _run_formatted(db: Database, template: str, *values: str) -> None:
    """Run a statement whose identifiers (and literals) the server quotes with ``format``."""
    statement = await db.fetch_value(queries.FORMAT_STATEMENT, [template, list(values)])
    await db.execute(str(statement))


async def role_exists(db: Database, role: str) -> bool:
    """Whether a role of that name exists on the server."""
    return bool(await db.fetch_value(queries.ROLE_EXISTS, [role]))


async def ensure_group(db: Database, role: str) -> None:
    """An organization's role: NOLOGIN, a member of ``amp_user`` (created if missing)."""
    if not await role_exists(db, role):
        await _run_formatted(db, "CREATE ROLE %I NOLOGIN", role)
    await _run_formatted(db, "GRANT amp_user TO %I", role)


async def bind(db: Database, target: str, role: str, *, agent: bool, create: bool) -> None:
    """Bind an organization (or, with ``agent``, one agent) to ``role``."""
    if create:
        await ensure_group(db, role)
    if agent:
        await db.execute(queries.BIND_AGENT, [target, role])
    else:
        await db.execute(queries.BIND_ORGANIZATION, [target, role])


async def grant(db: Database, login: str, role: str, *, create: bool, password: str | None) -> None:
    """Let login role ``login`` act as ``role`` (GRANT role TO login); with ``create``,
    create the login role if it is missing."""
    if create and not await role_exists(db, login):
        if password:
            await _run_formatted(db, "CREATE ROLE %I LOGIN PASSWORD %L", login, password)
        else:
            await _run_formatted(db, "CREATE ROLE %I LOGIN", login)
    await _run_formatted(db, "GRANT %I TO %I", role, login)


async def allow(db: Database, first: str, second: str, *, both_ways: bool) -> None:
    """``amp.allow_contact``."""
    await db.execute(queries.ALLOW_CONTACT, [first, second, both_ways])


async def revoke(db: Database, first: str, second: str, *, both_ways: bool) -> None:
    """``amp.revoke_contact``."""
    await db.execute(queries.REVOKE_CONTACT, [first, second, both_ways])


async def show(db: Database) -> dict[str, list[Row]]:
    """Who may act as whom (``amp.role_map``), and, for an admin, the contacts."""
    from .exceptions import AccessDeniedError

    agents = await db.fetch(queries.ROLE_MAP)
    try:
        contacts = await db.fetch(queries.CONTACT_LIST)
    except AccessDeniedError:
        contacts = []
    return {"agents": agents, "contacts": contacts}
