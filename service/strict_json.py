"""Request bodies read as JSON with one rule more than ``json.loads``: a key may appear once per
object. The standard parser keeps the last of two equal keys silently; a spec file with a duplicate
key is an error (``core.spec_yaml``), and the same spec sent as JSON must be one too."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice. FastAPI turns it into its body error (a 422 here)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise DuplicateKeyError(f"duplicate key {json.dumps(key)}")
        data[key] = value
    return data


class StrictJsonRequest(Request):
    """A request whose ``json()`` refuses duplicate keys."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), object_pairs_hook=_unique_keys)
        return self._json


class StrictJsonRoute(APIRoute):
    """The route class of every router: its handlers read bodies through :class:`StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
