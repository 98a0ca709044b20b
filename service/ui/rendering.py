"""How the dashboard answers: templates rendered with the visitor and their CSRF token, security
headers on every page, and HTML (not problem+json) for a page's errors: no session sends the
browser to /signin, a refused CSRF token is a 403 page, a missing or foreign job the same 404 page."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from jobs.errors import InvalidRequestError, NotFoundError
from service.ui.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    CsrfRefused,
    SessionSecretMissing,
    SignInRequired,
    Visitor,
    csrf_token,
)

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
#: Scripts and styles only from this origin (no inline script anywhere), no framing, no plugins.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def render(
    request: Request, template: str, who: Visitor | None, *, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """The ``template`` with the visitor and their CSRF token."""
    settings = request.app.state.settings
    context = {
        "who": who,
        "csrf": csrf_token(settings, who.nonce) if who is not None else "",
        "csrf_field": CSRF_FIELD,
        "csrf_header": CSRF_HEADER,
        "auth": settings.auth,
        **values,
    }
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def _error_page(request: Request, status_code: int, title: str, detail: str) -> Response:
    if request.url.path.startswith("/ui/"):  # fragments, streams and data: no page around them
        return PlainTextResponse(f"{title}: {detail}", status_code=status_code)
    return render(request, "error.html", None, status_code=status_code, title=title, detail=detail)


class PageRoute(APIRoute):
    """A dashboard route: its errors are pages, and every answer carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap the route's handler."""
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                if request.url.path.startswith("/ui/"):
                    response = PlainTextResponse("Sign in first.", status_code=401)
                else:
                    response = RedirectResponse("/signin", status_code=303)
            except CsrfRefused:
                response = _error_page(request, 403, "Refused", "The form's CSRF token is missing or wrong.")
            except NotFoundError:
                response = _error_page(request, 404, "Not found", "No such page, job or artifact.")
            except InvalidRequestError as error:
                response = _error_page(request, 422, "Invalid request", error.detail)
            except RequestValidationError as error:
                fields = ", ".join(".".join(str(part) for part in e["loc"]) for e in error.errors()[:5])
                response = _error_page(request, 422, "Invalid request", f"Check {fields}.")
            except SessionSecretMissing:
                detail = "Sign-in needs MMKD_SESSION_SECRET on the server (auth is on)."
                response = _error_page(request, 503, "Dashboard not configured", detail)
            response.headers.update(SECURITY_HEADERS)
            return response

        return page
