"""Checks of public arguments that must fail before anything reaches the database.

The database checks everything again (``sql/``): these checks exist for what the
driver could not even send (NUL characters), for what never goes to SQL (timeouts),
and to say clearly which argument is wrong. Every failure is an
:class:`InvalidInputError`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .exceptions import InvalidInputError

#: the longest external id (characters); the same rule as ``amp._require_external_id``
MAX_EXTERNAL_ID_LENGTH = 255
#: the largest page size a caller may ask for here; the server's own maximum
#: (``amp._setting('max_page_size')``, default 1000) is checked in SQL
MAX_LIMIT = 2**31 - 1

# the same character classes as amp._require_external_id
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SPACES = " \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_EDGE_SPACE = re.compile(f"^[{_SPACES}]|[{_SPACES}]$")


def external_id(what: str, value: Any) -> str:
    """An agent or organization external id: a non-empty ``str`` of at most 255
    characters, without control characters (NUL included) and without leading or
    trailing whitespace. Ids are not normalised: ``"Alice"`` and ``"alice"`` differ."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{what} must not be empty")
    if len(value) > MAX_EXTERNAL_ID_LENGTH:
        raise InvalidInputError(
            f"{what} is {len(value)} characters, more than the limit of {MAX_EXTERNAL_ID_LENGTH}"
        )
    if _CONTROL.search(value):
        shown = _CONTROL.sub("?", value)
        raise InvalidInputError(f"{what} {shown!r} contains a control character")
    if _EDGE_SPACE.search(value):
        raise InvalidInputError(f"{what} {value!r} starts or ends with whitespace")
    return value


def display_name(value: Any) -> str | None:
    """An optional display name: a ``str`` without NUL characters, at most 1000
    characters (``None``: the external id is used)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"name must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise InvalidInputError("name contains a NUL character (U+0000)")
    if len(value) > 1000:
        raise InvalidInputError(f"name is {len(value)} characters, more than the limit of 1000")
    return value


def optional_external_id(what: str, value: Any) -> str | None:
    """Like :func:`external_id`, ``None`` allowed."""
    return None if value is None else external_id(what, value)


def timeout(name: str, value: Any) -> float | None:
    """A timeout in seconds: ``None`` (the default applies) or a finite number >= 0."""
    if value is None:
        return None
    return seconds(name, value, allow_zero=True)


def seconds(name: str, value: Any, *, allow_zero: bool, maximum: float | None = None) -> float:
    """A finite number of seconds, positive (or zero if allowed), at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number of seconds, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be a finite number of seconds, not {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        need = "0 or more" if allow_zero else "more than 0"
        raise InvalidInputError(f"{name} must be {need} seconds, not {value!r}")
    if maximum is not None and number > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum:g} seconds, not {value!r}")
    return number


def limit(value: Any) -> int | None:
    """A page size: ``None`` (the server's default page) or an ``int`` >= 1. The
    server refuses one above its maximum (``amp._setting('max_page_size')``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"limit must be an integer, not {value!r}")
    if value < 1 or value > MAX_LIMIT:
        raise InvalidInputError(
            f"limit must be 1 or more (and at most the page maximum), not {value}"
        )
    return value


def sequence_number(name: str, value: Any) -> int:
    """A message ``seq`` cursor: an ``int`` >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidInputError(f"{name} must be an integer >= 0, not {value!r}")
    return value
