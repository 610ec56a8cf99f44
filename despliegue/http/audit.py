"""Audit log: one JSON line per call of the public service, as an ASGI middleware.

Each line holds the time, request id (taken from a well-formed `X-Request-ID` or made here,
and echoed in the response), token id (never the token), method, endpoint, model tags (read
from the JSON response's `model` / `models[].tag`), status and latency. The request body is
left out unless `security.audit.include_input` is set. It is the outermost middleware, so
refusals (401, 403, 413) are audited too, and so are WebSocket handshakes (method
`WEBSOCKET`; status 101 when accepted). The status is what the client got: 504 for a
request BentoML cut at its timeout, 500 for one that failed before answering. `client` is
the peer's address, or the address a trusted proxy forwarded (`security.trusted_proxies`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import sys
import time
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from despliegue.config import AuditSettings
from despliegue.http.auth import PROBES

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
NOT_AUDITED_PREFIXES = ("/static_content/", "/ui/")
MAX_SNIFFED_BODY = 1 << 20  # responses larger than this are not parsed for model tags
V2_JSON_HEADER_LENGTH = b"inference-header-content-length"  # despliegue/v2/protocol.py
TIMED_OUT = 504  # what BentoML answers a request it cuts at `traffic.timeout`
# One encoder for every line: `json.dumps` with an option builds a new encoder per call.
LINE_ENCODER = json.JSONEncoder(ensure_ascii=False)


log = logging.getLogger(__name__)


class AuditSink:
    """One place audit lines go: a text stream, written and flushed line by line.

    The line is written directly, not through a `logging.Logger`: the logging machinery's
    per-record work (a LogRecord, the caller lookup, a formatter, handler locks) cost ~65 µs
    of a /heatflow request's ~650 µs of API-worker CPU at 32 clients, for a line that needs
    none of it. A write that fails is reported on the service's log (once, and again when
    writes work again) and does not fail the request, as a logging handler would do.
    """

    def __init__(self, name: str, stream: TextIO) -> None:
        self.name = name
        self.stream = stream
        self.failing = False

    def write(self, line: str) -> None:
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError) as exc:
            if not self.failing:
                self.failing = True
                log.error("audit lines to %s are being lost: %s", self.name, exc)
            return
        if self.failing:
            self.failing = False
            log.warning("audit lines to %s are written again", self.name)


class RotatingFileSink(AuditSink):
    """A file rotated at `max_bytes` into `backup_count` numbered backups.

    Rotation is `logging.handlers.RotatingFileHandler`'s (its naming, backups and reopening).
    The size is read with one `fstat` per line rather than the two `stat` calls, `seek` and
    `tell` of its `shouldRollover`; it is the file's size, so lines other API workers append
    count too. As with that handler, a backup count of 0 means the file is never rotated.
    """

    def __init__(self, path: str, max_bytes: int, backup_count: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.handler = RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
        )
        super().__init__(path, self.handler.stream)
        self.max_bytes = max_bytes if backup_count > 0 else 0

    def write(self, line: str) -> None:
        if self.max_bytes:
            self.rotate_before(len(line) if line.isascii() else len(line.encode("utf-8")))
        super().write(line)

    def rotate_before(self, line_bytes: int) -> None:
        """Rotate if the line would take a non-empty file to `max_bytes` or past it."""
        try:
            size = os.fstat(self.stream.fileno()).st_size
            if size and size + line_bytes >= self.max_bytes:
                self.handler.doRollover()
                self.stream = self.handler.stream
        except (OSError, ValueError) as exc:
            log.error("audit file %s could not be rotated: %s", self.name, exc)


def audit_sinks(audit: AuditSettings) -> list[AuditSink]:
    """The places `security.audit` names: stdout and/or a rotated file."""
    sinks: list[AuditSink] = []
    if audit.stdout:
        sinks.append(AuditSink("stdout", sys.stdout))
    if audit.file:
        sinks.append(RotatingFileSink(audit.file, audit.max_file_bytes, audit.backup_count))
    return sinks


def model_tags(body: bytes) -> list[str]:
    """The tags a JSON response names: `model` (one), `models[].tag` (the catalogue), or a V2
    answer's `model_name` and `model_version`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    if not isinstance(parsed, dict):
        return []
    if isinstance(parsed.get("model"), str):
        return [parsed["model"]]
    if isinstance(parsed.get("model_name"), str) and isinstance(parsed.get("model_version"), str):
        return [f"{parsed['model_name']}:{parsed['model_version']}"]  # an Open Inference answer
    models = parsed.get("models")
    if isinstance(models, list):
        return [m["tag"] for m in models if isinstance(m, dict) and isinstance(m.get("tag"), str)]
    return []


class AuditLog:
    """Write one audit line per request (probes and UI assets excepted).

    The line is written before the response's last body chunk is sent, so a client that holds
    its answer can already find its line (and a crash after the answer cannot lose it).
    """

    def __init__(self, app: ASGIApp, audit: AuditSettings) -> None:
        self.app = app
        self.audit = audit
        self.sinks = audit_sinks(audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] not in {"http", "websocket"}
            or not self.sinks
            or path in PROBES
            or path.startswith(NOT_AUDITED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        record: dict[str, Any] = {"status": 500}
        response_body = bytearray()
        sniff = True
        request_body = bytearray()
        keep_input = self.audit.include_input
        input_cap = self.audit.max_input_chars

        written = False
        answering = False

        def write_line() -> None:
            nonlocal written
            if written:
                return
            written = True
            line = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request_id": request_id,
                "token_id": scope.get("despliegue", {}).get("token_id"),
                "method": scope.get("method", "WEBSOCKET"),
                "endpoint": path,
                "models": model_tags(bytes(response_body)) if response_body else [],
                "status": record["status"],
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": (scope.get("client") or [None])[0],
            }
            if keep_input:
                text = request_body.decode("utf-8", "replace")
                line["input"] = text[:input_cap]
                line["input_truncated"] = len(text) > input_cap
            text = LINE_ENCODER.encode(line) + "\n"
            for sink in self.sinks:
                sink.write(text)

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(request_body) <= input_cap:
                request_body.extend(message.get("body", b"")[: input_cap + 1])
            return message

        # Body bytes the response declared (content-length) and has sent: a client holds its
        # whole answer once they are all sent, even if an empty final message follows.
        declared: int | None = None
        sent = 0
        sniff_limit = MAX_SNIFFED_BODY + 1  # bytes worth reading for tags

        async def send_and_watch(message: Message) -> None:
            nonlocal sniff, declared, sent, sniff_limit
            if message["type"] in {"websocket.accept", "websocket.close"} and not written:
                # A handshake's outcome: accepted (101), or closed before it was (403).
                accepted = message["type"] == "websocket.accept"
                record["status"] = 101 if accepted else 403
                write_line()
            elif message["type"] in {"http.response.start", "websocket.http.response.start"}:
                nonlocal answering
                answering = True
                record["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                content_type = dict(headers).get(b"content-type", b"")
                length = dict(headers).get(b"content-length", b"")
                declared = int(length) if length.isdigit() else None
                sniff = content_type.startswith(b"application/json")
                # An Open Inference answer with binary tensors: a JSON header of this length,
                # then the tensors' bytes; the tags are in the header.
                json_header = dict(headers).get(V2_JSON_HEADER_LENGTH, b"")
                if json_header.isdigit():
                    sniff, sniff_limit = True, int(json_header)
                message = {**message, "headers": headers}
            elif message["type"] in {"http.response.body", "websocket.http.response.body"}:
                if sniff:
                    response_body.extend(message.get("body", b""))
                    if len(response_body) >= sniff_limit:
                        sniff = False
                        del response_body[sniff_limit:]  # the JSON header is all there is to read
                    if len(response_body) > MAX_SNIFFED_BODY:
                        sniff = False
                        response_body.clear()
                sent += len(message.get("body", b""))
                complete = declared is not None and sent >= declared
                if complete or not message.get("more_body", False):
                    write_line()  # before the client can see its whole answer
            await send(message)

        try:
            await self.app(scope, receive_and_keep if keep_input else receive, send_and_watch)
        except asyncio.CancelledError:
            if not answering:
                # Cancelled before any answer: BentoML's TimeoutMiddleware, outside every
                # middleware of the service, cut it at `traffic.timeout` and answers 504 itself.
                record["status"] = TIMED_OUT
            raise
        finally:
            write_line()  # the app failed or sent no final body: still one line


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if REQUEST_ID.match(candidate):
                return candidate
    # 128 random bits as 32 hex digits, like uuid4().hex, from Python's generator (seeded from
    # os.urandom at start): an id names a request in the log, it guards nothing, and
    # uuid4's os.urandom call showed as ~6% of an image request's API time under load.
    return f"{random.getrandbits(128):032x}"
