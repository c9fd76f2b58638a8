"""Message content: ``T`` to JSON text on the way in, JSON text back to ``T`` on the way out.

Content travels to SQL as text cast to ``jsonb`` (``$n::text::jsonb``): psqlpy binds
only dicts and lists as ``jsonb``, and a message may be a plain string or number.

It comes back as text too (``content::text``), decoded here row by row with
:func:`loads`: psqlpy decodes a whole result set at once and fails it as a whole on
one value it cannot convert (nesting deeper than 127, a number beyond the float
range), so one bad row would take every other row of the result with it. Measured
against psqlpy's own decoding, text plus ``json.loads`` costs the same (0.5 ms for one
small row, 1.0 against 0.9 ms for 100 rows, 53 against 60 ms for one 1 MB value), and
it reads integers exactly at any size.

On the way in, what JSON cannot carry is refused with :class:`InvalidInputError`
instead of being changed silently: NaN and infinities (pydantic would write ``null``)
and NUL characters (PostgreSQL cannot store ``\\u0000``). The server checks the rest
(size, nesting, number range: ``amp._check_message``), for every caller.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from . import validation
from .exceptions import InvalidInputError
from .models import AttrDict, MeetingInvitation, SystemMessage

# an escaped NUL in JSON text: \u0000 after an even number of backslashes
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class UndecodableContent(ValueError):
    """Stored JSON that cannot be turned back into a Python value (or into ``T``)."""


def encode(adapter: TypeAdapter[Any], message: Any, max_bytes: int) -> str:
    """Serialise ``message``; refuse what is not JSON-serialisable, what JSON cannot
    carry faithfully (NaN, infinities, NUL characters) or what is too large."""
    try:
        data = adapter.dump_json(message, warnings="error")
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"message content is not JSON-serialisable as the message type: {exc}"
        ) from exc
    _check_faithful("message content", data, lambda: adapter.dump_python(message))
    if len(data) > max_bytes:
        raise InvalidInputError(
            f"message content is {len(data)} bytes, more than the limit of {max_bytes}"
        )
    return data.decode()


_METADATA: TypeAdapter[dict[str, Any]] | None = None


def encode_metadata(metadata: dict[str, Any] | None) -> str:
    """Serialise message metadata (a JSON object)."""
    global _METADATA
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata must be a dict, not {type(metadata).__name__}")
    if _METADATA is None:  # made once, on first use (a send without metadata never does)
        _METADATA = TypeAdapter(dict[str, Any])
    try:
        data = _METADATA.dump_json(metadata)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from exc
    _check_faithful("message metadata", data, lambda: metadata)
    return data.decode()


def _check_faithful(what: str, data: bytes, as_python: Any) -> None:
    """Refuse NUL characters and non-finite floats (which pydantic writes as ``null``).

    Both are looked for only when the JSON text could hold them (a ``\\u0000`` escape,
    a ``null``), so the common message costs two substring searches.
    """
    if b"\\u0000" in data and _NUL.search(data):
        raise InvalidInputError(f"{what} contains a NUL character (U+0000), which cannot be stored")
    if b"null" in data:
        bad = _non_finite(as_python())
        if bad is not None:
            raise InvalidInputError(
                f"{what} contains {bad!r}, which JSON cannot carry (it would become null)"
            )


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinity in a Python structure, else ``None`` (iterative)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return None


def loads(text: str | None) -> Any:
    """Parse stored JSON text (a ``jsonb`` column selected as ``::text``).

    Raises :class:`UndecodableContent` when Python cannot parse it (nesting beyond
    the interpreter's recursion limit, an integer of more than 4300 digits).
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as exc:
        raise UndecodableContent(f"stored JSON cannot be decoded: {exc}") from exc


def decode(adapter: TypeAdapter[Any], value: Any) -> Any:
    """Validate stored JSON (already parsed) back into ``T``.

    Raises :class:`pydantic.ValidationError` when it does not fit ``T``.
    """
    return adapter.validate_python(value)


def decode_text(adapter: TypeAdapter[Any], text: str | None) -> Any:
    """:func:`loads` then :func:`decode`; any failure is :class:`UndecodableContent`
    (with the reason), so a caller can set that one message aside."""
    value = loads(text)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise UndecodableContent(f"content does not fit the message type: {exc}") from exc
    except RecursionError as exc:
        raise UndecodableContent(f"content nests too deeply to validate: {exc}") from exc


__all__ = [
    "UndecodableContent",
    "ValidationError",
    "decode",
    "decode_text",
    "encode",
    "encode_metadata",
    "loads",
]


class Codec:
    """The content codec of one SDK instance: ``T`` in and out, through one pydantic
    adapter (``resolve_type()`` gives ``T`` once, when first needed, ``None`` for
    untyped: any JSON, objects as :class:`~agent_messaging.models.AttrDict`).
    Protocol messages (meeting invitations, system messages) have their own types
    and never pass through ``T``."""

    def __init__(self, resolve_type: Callable[[], Any], max_message_bytes: int) -> None:
        self._resolve_type = resolve_type
        self._adapter: TypeAdapter[Any] | None = None
        self.max_message_bytes = max_message_bytes

    @property
    def adapter(self) -> TypeAdapter[Any]:
        """The pydantic adapter for ``T``."""
        if self._adapter is None:
            message_type = self._resolve_type()
            if message_type is None:
                self._adapter = TypeAdapter(Annotated[Any, AfterValidator(AttrDict.wrap)])
            else:
                self._adapter = TypeAdapter(message_type)
        return self._adapter

    def encode(self, message: Any) -> str:
        """``message`` as ``T``, serialised (see :func:`encode`)."""
        return encode(self.adapter, message, self.max_message_bytes)

    def decode(self, value: Any) -> Any:
        """Parsed JSON validated as ``T`` (see :func:`decode`)."""
        return decode(self.adapter, value)

    def decode_text(self, text: str | None) -> Any:
        """JSON text validated as ``T`` (see :func:`decode_text`)."""
        return decode_text(self.adapter, text)

    def decode_content(self, message_type: str, value: Any) -> Any:
        """Stored content as handed to users: the protocol's own types for meeting
        invitations and system messages, ``T`` for everything agents said."""
        if message_type == "meeting_invitation":
            return MeetingInvitation(value)
        if message_type == "system":
            return SystemMessage(value)
        return self.decode(value)

    def message_args(
        self, sender: str, recipient: str, message: Any, metadata: dict[str, Any] | None
    ) -> list[Any]:
        """``[sender, recipient, content, metadata]`` for an ``amp.*`` call that stores a
        message: ids checked, content serialised as ``T`` (refused if not serialisable,
        not faithfully representable in JSON, or if content and metadata together
        are larger than ``max_message_bytes``), both as JSON text for
        ``$n::text::jsonb``."""
        validation.external_id("sender external id", sender)
        validation.external_id("recipient external id", recipient)
        limit = self.max_message_bytes
        body = encode(self.adapter, message, limit)
        meta = encode_metadata(metadata)
        size = len(body.encode()) + len(meta.encode())
        if size > limit:
            raise InvalidInputError(
                f"message content and metadata are {size} bytes, more than the limit of {limit}"
            )
        return [sender, recipient, body, meta]
