"""What BentoML's HTTP server needs from us below the ASGI app, where no middleware reaches.

BentoML serves each process with uvicorn and wraps the app in its own Prometheus middleware.
Neither takes a setting for the first two of these, and no middleware of ours can act there
(uvicorn parses a request's head before any middleware runs; BentoML's metrics middleware
runs before ours):

- **A deadline for a request's head.** uvicorn waits for an unfinished head forever
  (`timeout_keep_alive` is only the idle time *between* requests, and any byte cancels it), so
  a client that trickles its headers, or connects and sends nothing, holds a connection as
  long as it likes (slowloris). `HeadDeadlineProtocol` answers 408 and closes the connection
  when a head is not complete `limits.request_head_timeout_s` after its first byte (or after
  the connection opened). Slow bodies are bounded by BentoML's `traffic.timeout` (504).
- **Bounded metric labels.** BentoML labels its request metrics with the raw path, so every
  random path (401s included) made new time series and `/metrics` grew without end.
  `RouteLabelledMetrics` is BentoML's middleware with the label of any path that is not a
  route of the service replaced by `other` (asset folders keep their prefix).
- **Which proxies may name the client.** uvicorn rewrites the client address from
  `X-Forwarded-For` when the peer is in its `forwarded_allow_ips`, loopback by default, read
  from $FORWARDED_ALLOW_IPS. It is set here from `security.trusted_proxies`, so the addresses
  an operator lists are trusted, and nothing else (not even loopback) by default.

`configure_http_server()` puts these in place in the process that imports service.py (the
API worker and each runner worker) before BentoML builds its app and uvicorn server.
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvicorn.config
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from despliegue import bentoml_compat
from despliegue.errors import error_body

instruments = bentoml_compat.http_instruments()
server_context = bentoml_compat.server_context()

OTHER_PATHS = "other"
_REQUEST_SCOPE = "despliegue.request_scope"


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (a C parser: uvicorn's pure-Python h11 one took ~15% of a
    small request's CPU) with a deadline for each request head: 408, then close."""

    head_timeout_s: float = 10.0  # set by configure_http_server()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.head_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """The first bytes of a head (a new connection's or the next on a kept-alive one)."""
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self.head_deadline is None and not self.transport.is_closing():
            self.head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses (ambiguous framing: request smuggling's raw material;
        a malformed head) is answered as every other refusal, with the product's error body
        naming the header and the rule, not uvicorn's plain-text line. uvicorn calls this
        inside its `except HttpParserError`, so the parser's own reason is at hand."""
        reason = str(sys.exc_info()[1] or msg)
        loc, rule = parser_refusal(reason)
        body = error_body(loc, rule, "value_error")
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()

    def _head_timed_out(self) -> None:
        self.head_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head trickles in while the previous request is answered: the 408
            # would cut into that answer; the deadline is checked again after one more period.
            self._arm()
            return
        message = f"request head not complete within {self.head_timeout_s:g} s\n".encode()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + message
        )
        self.transport.close()


def parser_refusal(reason: str) -> tuple[list[str | int], str]:
    """Where a request the HTTP parser refused went wrong, in the words the body-size guard
    uses for the same rules (despliegue/http/guards.py: BodySizeLimit)."""
    said = reason.lower()
    if "transfer-encoding" in said and "content-length" in said:
        return ["header", "transfer-encoding"], "not allowed with content-length"
    if "duplicate content-length" in said:
        return ["header", "content-length"], "given more than once"
    return ["request"], f"not a valid HTTP/1.1 request ({reason})"


class RouteLabelledMetrics(instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics, labelled by route: unknown paths share one label."""

    # Set by configure_http_server(); the process's API routes are added at each call.
    paths: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    def __init__(self, app: ASGIApp, **options: object) -> None:
        super().__init__(self._call_with_request_scope, **options)  # type: ignore[arg-type]
        self.routed_app = app

    def label(self, path: str) -> str:
        if path in self.paths or path in server_context.service_routes:
            return path
        return next((prefix for prefix in self.prefixes if path.startswith(prefix)), OTHER_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        path = scope.get("path", "")
        label = self.label(path) if scope["type"] in {"http", "websocket"} else path
        if label != path:
            # BentoML's middleware reads its label from the scope's path: it gets a copy with
            # the label, and the app gets the request's own scope back.
            scope = {**scope, "path": label, _REQUEST_SCOPE: scope}
        await super().__call__(scope, receive, send)  # type: ignore[arg-type]

    async def _call_with_request_scope(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.routed_app(scope.get(_REQUEST_SCOPE, scope), receive, send)


def configure_http_server(
    head_timeout_s: float,
    trusted_proxies: list[str],
    metric_paths: frozenset[str],
    metric_prefixes: tuple[str, ...],
) -> None:
    """Set this process's uvicorn and BentoML metrics up as the module docstring says.

    `metric_paths` are the non-API paths served (the API routes are added by BentoML per
    process); paths under `metric_prefixes` are labelled by the prefix."""
    HeadDeadlineProtocol.head_timeout_s = head_timeout_s
    # BentoML's worker builds uvicorn.Config with the default `http="auto"`, and leaves
    # `forwarded_allow_ips` to uvicorn's environment variable (an empty list trusts nobody).
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{HeadDeadlineProtocol.__name__}"
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(trusted_proxies)
    RouteLabelledMetrics.paths = metric_paths
    RouteLabelledMetrics.prefixes = metric_prefixes
    # BentoML imports the class from this module when it builds each app's middleware.
    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledMetrics  # type: ignore[misc]
