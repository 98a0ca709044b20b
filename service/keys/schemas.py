"""What the keys endpoints return."""

from __future__ import annotations

from pydantic import BaseModel


class WhoAmI(BaseModel):
    """The owner the calling key acts for."""

    owner: str
    auth: bool
