"""Real PostgreSQL roles for access-control tests.

Roles belong to the whole server, which every test database shares: each test makes
its own, with unique names, and drops them when it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def as_role(dsn: str, role: str) -> str:
    """The same URL, logging in as ``role`` (the servers of the tests trust local logins)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


class Roles:
    """Creates roles on the test server and drops them again."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.created: list[str] = []

    def reserve(self, prefix: str) -> str:
        """A unique role name that something else creates; dropped like the others."""
        name = f"t_{prefix}_{uuid.uuid4().hex[:8]}"
        self.created.append(name)
        return name

    def create(self, prefix: str, *, login: bool = True, member_of: Sequence[str] = ()) -> str:
        """A new role named ``t_<prefix>_<random>``, granted ``member_of``."""
        name = f"t_{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(
                    sql.Identifier(name)
                )
            )
            for parent in member_of:
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(parent), sql.Identifier(name))
                )
        self.created.append(name)
        return name

    def organization(self, prefix: str) -> tuple[str, str]:
        """An organization's role (NOLOGIN, granted amp_user) and a login role in it."""
        group = self.create(prefix, login=False, member_of=["amp_user"])
        return group, self.create(prefix + "_app", member_of=[group])

    def drop_all(self) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            for name in reversed(self.created):
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (name,),
                )
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.created.clear()
