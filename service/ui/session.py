"""The dashboard's sign-in: a signed, HttpOnly session cookie that names an API key by its hash,
and CSRF tokens bound to it.

The cookie holds ``{"k": <sha-256 of the key>, "n": <random nonce>}`` signed with
``MMKD_SESSION_SECRET`` (itsdangerous, timestamped; ``MMKD_SESSION_MAX_AGE_SECONDS``). Every
request checks the hash against the keys table (through the same short cache as the API), so a
revoked key's sessions end with it. A CSRF token is an HMAC of the nonce: forms carry it as a
hidden field and htmx as an ``X-CSRF-Token`` header; before sign-in, a short-lived ``mmkd_csrf``
cookie plays the nonce (login CSRF). With auth off (loopback only) there is no sign-in: everyone is
the ``local`` owner, and actions still need the token, signed with a random secret of the process
unless ``MMKD_SESSION_SECRET`` is set.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import lru_cache

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from jobs import keys as keys_service
from jobs.keys import Principal
from service.config import ApiSettings

SESSION_COOKIE = "mmkd_session"
PRESESSION_COOKIE = "mmkd_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
PRESESSION_SECONDS = 3600


class SignInRequired(Exception):
    """No valid session: pages send the browser to /signin, streams and fragments answer 401."""


class CsrfRefused(Exception):
    """A state-changing request without the right CSRF token (403)."""


class SessionSecretMissing(Exception):
    """Auth is on and ``MMKD_SESSION_SECRET`` is unset: the dashboard cannot sign anyone in (503)."""


@dataclass(frozen=True)
class Visitor:
    """Who is looking: the owner, and the nonce their CSRF tokens are bound to."""

    owner: Principal
    nonce: str


def _serializer(settings: ApiSettings) -> URLSafeTimedSerializer:
    if settings.session_secret is None:
        raise SessionSecretMissing
    return URLSafeTimedSerializer(settings.session_secret.get_secret_value(), salt="mmkd-session")


def _secret(settings: ApiSettings) -> bytes:
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    if settings.auth:
        raise SessionSecretMissing
    # Auth off (loopback only, one owner): the tokens are all that stops another site's page from
    # posting to this server through the user's browser, so they must not be guessable. A secret of
    # this process's own; several API processes with auth off need MMKD_SESSION_SECRET to agree.
    return _process_secret()


@lru_cache(maxsize=1)
def _process_secret() -> bytes:
    return secrets.token_bytes(32)


def csrf_token(settings: ApiSettings, nonce: str) -> str:
    """The CSRF token for ``nonce``."""
    return hmac.new(_secret(settings), f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()


def check_csrf(settings: ApiSettings, nonce: str, offered: str | None) -> None:
    """Raise :class:`CsrfRefused` unless ``offered`` is ``nonce``'s token."""
    if not nonce or not offered or not hmac.compare_digest(csrf_token(settings, nonce), offered):
        raise CsrfRefused


def start_session(response: Response, request: Request, settings: ApiSettings, *, key_hash: str) -> None:
    """Set the session cookie for ``key_hash`` (a fresh nonce) and drop the pre-session cookie."""
    value = _serializer(settings).dumps({"k": key_hash, "n": secrets.token_urlsafe(16)})
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=settings.session_max_age_seconds,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(PRESESSION_COOKIE, path="/")


def end_session(response: Response) -> None:
    """Forget the session cookie."""
    response.delete_cookie(SESSION_COOKIE, path="/")


def presession_nonce(request: Request) -> str:
    """The nonce of the sign-in form's CSRF token: the ``mmkd_csrf`` cookie's, or a new one."""
    nonce = request.cookies.get(PRESESSION_COOKIE, "")
    return nonce if 16 <= len(nonce) <= 64 else secrets.token_urlsafe(16)


def remember_presession(response: Response, request: Request, nonce: str) -> None:
    """Set the ``mmkd_csrf`` cookie to ``nonce`` (the sign-in form's token is bound to it)."""
    response.set_cookie(
        PRESESSION_COOKIE,
        nonce,
        max_age=PRESESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def visitor(request: Request, session: Session, settings: ApiSettings) -> Visitor:
    """The signed-in owner, or :class:`SignInRequired`; with auth off, the ``local`` owner."""
    cache: keys_service.AuthCache = request.app.state.auth_cache
    if not settings.auth:
        local = keys_service.get_or_create_owner(session, name="local")
        session.commit()
        return Visitor(Principal(id=local.id, name=local.name), nonce="local")
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or len(raw) > 4096:
        raise SignInRequired
    try:
        payload = _serializer(settings).loads(raw, max_age=settings.session_max_age_seconds)
        key_hash, nonce = str(payload["k"]), str(payload["n"])
    except (BadSignature, KeyError, TypeError):
        raise SignInRequired from None
    owner = keys_service.authenticate_hash(session, key_hash=key_hash, cache=cache)
    if owner is None:  # the key was revoked (or never existed)
        raise SignInRequired
    return Visitor(owner, nonce)


def sign_in(request: Request, session: Session, settings: ApiSettings, *, api_key: str) -> str | None:
    """The hash of ``api_key`` if it is a valid key, else None."""
    if not api_key or len(api_key) > 200:
        return None
    owner = keys_service.authenticate(session, token=api_key.strip(), cache=request.app.state.auth_cache)
    return None if owner is None else keys_service.hash_key(api_key.strip())
