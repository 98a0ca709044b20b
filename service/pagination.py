"""Opaque keyset cursors: ``next_cursor`` names the last id of a page and the kind of list it came from."""

from __future__ import annotations

import base64
import binascii

from jobs.errors import ServiceError
from service.deps import MAX_ID


class BadCursorError(ServiceError):
    """The cursor was not one this API handed out for this list."""

    status = 422
    title = "Invalid cursor"


def encode_cursor(kind: str, last_id: int) -> str:
    """The cursor that continues a ``kind`` listing after ``last_id``."""
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str) -> int:
    """The id a ``kind`` cursor continues before; 422 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = raw.partition(":")
        if found != kind:
            raise ValueError(cursor)
        before_id = int(value)
        if not 1 <= before_id <= MAX_ID:
            raise ValueError(cursor)
        return before_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadCursorError(f"cursor {cursor!r} is not valid; use next_cursor from a previous page") from exc
