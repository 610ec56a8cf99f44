"""Bearer-token authentication and per-family authorisation, as one ASGI middleware.

It sits in front of every route of the public service, including endpoints added later: the
scope a path needs is its first segment (`/heatflow` -> `heatflow`, `/images/faces` ->
`images`), so a new endpoint family is protected the moment it exists and reachable by the
tokens whose `allow` names it (or `*`). WebSocket handshakes are checked like HTTP requests.
Probes are always open; the Swagger UI and /metrics need a token (any valid one) when the
configuration says so.

Missing or wrong token -> 401, valid token without the scope -> 403; both with the same JSON
body shape as every other client error. The tokens file is reread when it changes, so a token
is added or revoked without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from despliegue.config import AuthSettings, ConfigurationError
from despliegue.http.guards import send_client_error
from despliegue.tokens import (
    TokenBook,
    TokenLineError,
    TokenRecord,
    load_records,
    tokens_file_path,
)
from despliegue.v2.naming import is_v2, v2_scope

PROBES = frozenset({"/livez", "/readyz", "/healthz"})
DOCS_PATHS = frozenset({"/", "/docs.json", "/schema.json"})
DOCS_PREFIXES = ("/static_content/", "/ui/")
AUTH_SWITCH_ENV = "DESPLIEGUE_AUTH"
REALM = 'Bearer realm="despliegue"'
# Earlier-version (PBKDF2) tokens: failed checks one client may cause per window, and checks
# allowed to wait for the one thread that runs them. Past either, 429 without deriving.
LEGACY_FAILURES_PER_WINDOW = 5
LEGACY_WINDOW_S = 60.0
LEGACY_MAX_WAITING = 8
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


class ReloadingTokenBook:
    """The configured tokens, reread whenever the tokens file changes.

    The file's identity (mtime, size, inode) is looked at no more than once every
    `reload_interval_s`, so a revoked token stops working within that time in every worker.
    A changed file that does not parse is logged and ignored: the tokens in force stay.
    """

    def __init__(self, auth: AuthSettings, book: TokenBook) -> None:
        self.auth = auth
        self.book = book
        self.path = tokens_file_path(auth.tokens_file)
        self.interval = auth.reload_interval_s
        self.seen = self._identity()
        self.next_look = time.monotonic() + self.interval

    def _identity(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def current(self) -> TokenBook:
        if self.path is None or not self.interval or time.monotonic() < self.next_look:
            return self.book
        self.next_look = time.monotonic() + self.interval
        identity = self._identity()
        if identity == self.seen:
            return self.book
        self.seen = identity
        try:
            book = TokenBook(load_records(self.auth.tokens_file))
        except TokenLineError as exc:
            logger.error(
                "tokens file changed but was not loaded; the tokens in force stay: %s", exc
            )
            return self.book
        self.book = book
        logger.info("tokens file reloaded: %d token(s)", len(book))
        if not len(book):
            logger.warning("no tokens are configured now: every call that needs one gets 401")
        return book


class FailureBudget:
    """How many failed checks each client may cause per window (a fixed window per client)."""

    def __init__(self, failures: int, window_s: float, max_clients: int = 10_000) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_clients = max_clients
        self.spent: dict[str, tuple[float, int]] = {}  # client -> (window start, failures)

    def retry_after(self, client: str) -> int | None:
        """Seconds until the client may try again, or None while it has budget left."""
        started, count = self.spent.get(client, (0.0, 0))
        left = started + self.window_s - time.monotonic()
        if left <= 0 or count < self.failures:
            return None
        return max(1, round(left))

    def charge(self, client: str) -> None:
        now = time.monotonic()
        started, count = self.spent.get(client, (now, 0))
        if started + self.window_s <= now:
            started, count = now, 0
        if client not in self.spent and len(self.spent) >= self.max_clients:
            self.spent = {c: v for c, v in self.spent.items() if v[0] + self.window_s > now}
            if len(self.spent) >= self.max_clients:
                self.spent.clear()
        self.spent[client] = (started, count + 1)


def required_scope(path: str, auth: AuthSettings) -> str | None:
    """The scope a path needs; None = open. 'any' = any valid token."""
    if path in PROBES:
        return None
    if path in DOCS_PATHS or path.startswith(DOCS_PREFIXES):
        return "any" if auth.docs_need_token else None
    if path == "/metrics":
        return "any" if auth.metrics_need_token else None
    if is_v2(path):
        return v2_scope(path)
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
        book = token_book(auth)
        self.tokens = ReloadingTokenBook(auth, book) if book is not None else None
        self.legacy_budget = FailureBudget(LEGACY_FAILURES_PER_WINDOW, LEGACY_WINDOW_S)
        self.legacy_lane = asyncio.Semaphore(1)
        self.legacy_waiting = 0
        if book is None:
            banner = (
                "AUTH DISABLED for local development: every endpoint is open to anyone who "
                "can reach this port. Never run like this outside your own machine."
            )
            logger.warning(banner)
            print(f"\n{'!' * 78}\n!! {banner}\n{'!' * 78}\n", file=sys.stderr, flush=True)
            return
        logger.info("auth on: %d token(s) configured", len(book))
        if book.legacy_ids():
            logger.warning(
                "tokens %s have an earlier version's PBKDF2 hash line: each check of one costs "
                "a key derivation; re-issue them with `python -m despliegue.tokens new`",
                ", ".join(book.legacy_ids()),
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"} or self.tokens is None:
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["path"], self.auth)
        if needed is None:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None:
            await _refuse(scope, send, 401, "missing bearer token", "unauthorized")
            return
        book = self.tokens.current()
        if book.is_slow(token):
            client = (scope.get("client") or ("unknown",))[0]
            wait = self.legacy_budget.retry_after(client)
            if wait is not None or self.legacy_waiting >= LEGACY_MAX_WAITING:
                reason = "too many failed checks of earlier-version tokens; retry later"
                retry = str(wait or 1).encode()
                await _refuse(scope, send, 429, reason, "too_many_requests", retry)
                return
            record = await self._legacy_identify(book, token)
            if record is None:
                self.legacy_budget.charge(client)
        else:
            record = book.identify(token)
        if record is None:
            await _refuse(scope, send, 401, "invalid token", "unauthorized")
            return
        scope.setdefault("despliegue", {})["token_id"] = record.token_id
        if needed != "any" and not record.permits(needed):
            reason = f"token {record.token_id!r} may not call {needed!r}"
            await _refuse(scope, send, 403, reason, "forbidden")
            return
        await self.app(scope, receive, send)

    async def _legacy_identify(self, book: TokenBook, token: str) -> TokenRecord | None:
        """A PBKDF2 check in a worker thread, one at a time: the event loop keeps serving."""
        self.legacy_waiting += 1
        try:
            async with self.legacy_lane:
                return await asyncio.to_thread(book.identify, token)
        finally:
            self.legacy_waiting -= 1


async def _refuse(
    scope: Scope, send: Send, status: int, reason: str, kind: str, retry_after: bytes = b""
) -> None:
    headers = []
    if status == 401:
        headers.append((b"www-authenticate", REALM.encode()))
    if retry_after:
        headers.append((b"retry-after", retry_after))
    loc: list[str | int] = ["header", "authorization"]
    await send_client_error(
        scope, send, status, loc, reason, kind, field="authorization", headers=headers
    )
