"""HTTP for keys: who am I. Issuing and revoking keys is an admin command (``mmkd keys``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import CurrentOwner
from service.keys.schemas import WhoAmI
from service.openapi import error_responses
from service.strict_json import StrictJsonRoute

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1", tags=["keys"], responses=error_responses(401, 503))


@router.get("/whoami", response_model=WhoAmI)
def whoami(owner: CurrentOwner, request: Request) -> WhoAmI:
    """The owner the presented API key belongs to."""
    return WhoAmI(owner=owner.name, auth=request.app.state.settings.auth)
