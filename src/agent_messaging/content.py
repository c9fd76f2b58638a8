"""Message content: ``T`` to JSON text on the way in, JSON back to ``T`` on the way out.

Content travels to SQL as text cast to ``jsonb`` (``$n::text::jsonb``): psqlpy binds
only dicts and lists as ``jsonb``, and a message may be a plain string or number.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from .exceptions import InvalidInputError


def encode(adapter: TypeAdapter[Any], message: Any, max_bytes: int) -> str:
    """Serialise ``message``; refuse what is not JSON-serialisable or too large."""
    try:
        data = adapter.dump_json(message, warnings="error")
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"message content is not JSON-serialisable as the message type: {exc}"
        ) from exc
    if len(data) > max_bytes:
        raise InvalidInputError(
            f"message content is {len(data)} bytes, more than the limit of {max_bytes}"
        )
    return data.decode()


def encode_metadata(metadata: dict[str, Any] | None) -> str:
    """Serialise message metadata (a JSON object)."""
    if metadata is None:
        return "{}"
    try:
        return TypeAdapter(dict[str, Any]).dump_json(metadata).decode()
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from exc


def decode(adapter: TypeAdapter[Any], value: Any) -> Any:
    """Validate stored JSON (already parsed by the driver) back into ``T``.

    Raises :class:`pydantic.ValidationError` when it does not fit ``T``.
    """
    return adapter.validate_python(value)


__all__ = ["ValidationError", "decode", "encode", "encode_metadata"]
