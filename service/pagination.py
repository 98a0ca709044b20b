"""Opaque keyset cursors: ``next_cursor`` names the last id of a page and the kind of list it came from."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Query

from jobs.errors import InvalidRequestError
from service.deps import MAX_ID

#: A cursor is opaque: the ``next_cursor`` of the page before, of the same list (else a 422).
CURSOR_PARAM = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="`next_cursor` of the previous page of this list; any other value is a 422.",
    ),
]


class BadCursorError(InvalidRequestError):
    """The cursor was not one this API handed out for this list (a 422 at ``query.cursor``)."""

    title = "Invalid cursor"

    def __init__(self, cursor: str) -> None:
        message = f"{cursor!r} is not a cursor of this list; use next_cursor from a previous page"
        super().__init__([{"path": "query.cursor", "message": message}])


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
        raise BadCursorError(cursor) from exc
