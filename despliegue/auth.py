"""Bearer-token authentication and per-family authorisation, as one ASGI middleware.

It sits in front of every route of the public service, including endpoints added later: the
scope a path needs is its first segment (`/heatflow` -> `heatflow`, `/images/faces` ->
`images`), so a new endpoint family is protected the moment it exists and reachable by the
tokens whose `allow` names it (or `*`). Probes are always open; the Swagger UI and /metrics
need a token (any valid one) when the configuration says so.

Missing or wrong token -> 401, valid token without the scope -> 403; both with the same JSON
body shape as every other client error.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from starlette.types import ASGIApp, Receive, Scope, Send

from despliegue.config import AuthSettings, ConfigurationError
from despliegue.tokens import TokenBook, TokenLineError, load_records

PROBES = frozenset({"/livez", "/readyz", "/healthz"})
DOCS_PATHS = frozenset({"/", "/docs.json", "/schema.json"})
DOCS_PREFIXES = ("/static_content/", "/ui/")
AUTH_SWITCH_ENV = "DESPLIEGUE_AUTH"
REALM = 'Bearer realm="despliegue"'
logger = logging.getLogger("despliegue.auth")


def auth_enabled(auth: AuthSettings) -> bool:
    """Off only by an explicit switch: `enabled: false` or DESPLIEGUE_AUTH=off."""
    switch = os.environ.get(AUTH_SWITCH_ENV, "").strip().lower()
    if switch not in {"", "on", "off"}:
        raise ConfigurationError(f"{AUTH_SWITCH_ENV}={switch!r}: use 'on' or 'off'")
    return auth.enabled and switch != "off"


def token_book(auth: AuthSettings) -> TokenBook | None:
    """The configured tokens, or None when auth is off. Refuses to run with auth on and none.

    Called once when `bentoml serve` starts (service.py's pre-flight), so a misconfigured
    service stops before it serves, and again in each API worker.
    """
    if not auth_enabled(auth):
        return None
    try:
        book = TokenBook(load_records(auth.tokens_file))
    except TokenLineError as exc:
        raise ConfigurationError(f"security.auth: {exc}") from None
    if not len(book):
        raise ConfigurationError(
            "security.auth is enabled but no tokens are configured. Create one with "
            "`python -m despliegue.tokens new --id NAME --allow FAMILIES >> tokens.txt` and "
            "set DESPLIEGUE_TOKENS_FILE=tokens.txt (or DESPLIEGUE_TOKENS), or switch auth off "
            "for local development with DESPLIEGUE_AUTH=off."
        )
    return book


def required_scope(path: str, auth: AuthSettings) -> str | None:
    """The scope a path needs; None = open. 'any' = any valid token."""
    if path in PROBES:
        return None
    if path in DOCS_PATHS or path.startswith(DOCS_PREFIXES):
        return "any" if auth.docs_need_token else None
    if path == "/metrics":
        return "any" if auth.metrics_need_token else None
    return path.strip("/").split("/", 1)[0] or "any"


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if kind.lower() == "bearer" and token.strip() else None
    return None


class BearerAuth:
    """Check `Authorization: Bearer <token>` against the configured hashes."""

    def __init__(self, app: ASGIApp, auth: AuthSettings) -> None:
        self.app = app
        self.auth = auth
        self.book = book = token_book(auth)
        if book is None:
            banner = (
                "AUTH DISABLED for local development: every endpoint is open to anyone who "
                "can reach this port. Never run like this outside your own machine."
            )
            logger.warning(banner)
            print(f"\n{'!' * 78}\n!! {banner}\n{'!' * 78}\n", file=sys.stderr, flush=True)
        else:
            logger.info("auth on: %d token(s) configured", len(book))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.book is None:
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["path"], self.auth)
        if needed is None:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        record = self.book.identify(token) if token else None
        if record is None:
            reason = "missing bearer token" if token is None else "invalid token"
            await _refuse(send, 401, reason, "unauthorized")
            return
        scope.setdefault("despliegue", {})["token_id"] = record.token_id
        if needed != "any" and not record.permits(needed):
            reason = f"token {record.token_id!r} may not call {needed!r}"
            await _refuse(send, 403, reason, "forbidden")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, reason: str, kind: str) -> None:
    body = json.dumps(
        {
            "error": f"authorization: {reason}",
            "detail": [{"loc": ["header", "authorization"], "msg": reason, "type": kind}],
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", REALM.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
