"""Ids in paths: a route convertor that matches decimal digits and leaves the range to the parameter.

Starlette's ``int`` convertor calls ``int()`` while routing, and Python refuses a string of more than
4,300 digits there: a 500. ``{name:digits}`` matches ``[0-9]+`` and hands the text on unchanged, so
the parameter's ``Path(ge=1, le=MAX_ID)`` refuses an id of any length with a 422 at ``path.name``;
anything but ASCII digits (``+2``, ``2.0``, ``%0C2``, ``٢``) matches no route (404).
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class DigitsConvertor(Convertor[str]):
    """Decimal digits, kept as text (the handler's parameter parses and bounds them)."""

    regex = "[0-9]+"

    def convert(self, value: str) -> str:
        """The segment as matched."""
        return value

    def to_string(self, value: object) -> str:
        """An id (``url_for`` passes ints) as its digits."""
        text = str(value)
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"not a path id: {text!r}")
        return text


register_url_convertor("digits", DigitsConvertor())


def id_segment(name: str) -> str:
    """A path segment for the id parameter ``name``: ``{name:digits}``."""
    return f"{{{name}:digits}}"
