"""ASGI middleware of the public service: HTTP concerns that come before any schema."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import get_args, get_origin

from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from despliegue.errors import ROUTING_ERRORS, error_body

FRAMING_HEADERS = (b"content-length", b"transfer-encoding")
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def first_header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's first value, as Starlette (and so BentoML) reads it."""
    return next((value for key, value in scope["headers"] if key == name), None)


def repeated_header(scope: Scope, names: tuple[bytes, ...]) -> bytes | None:
    """The first of `names` that the request sends more than once, if any."""
    seen: set[bytes] = set()
    for key, _ in scope["headers"]:
        if key in names:
            if key in seen:
                return key
            seen.add(key)
    return None


class BodySizeLimit:
    """Answer 413 to a request body larger than `max_body_bytes`, before anything parses it.

    A declared Content-Length is checked up front (the HTTP server then delivers exactly that
    many bytes). A chunked body is counted as it arrives, up to the limit, and replayed, since
    BentoML would turn an error raised while it reads the body into a 500. A request that
    declares both, or repeats a framing header, is ambiguous (request smuggling's raw material)
    and gets 400.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        repeated = repeated_header(scope, FRAMING_HEADERS)
        declared = first_header(scope, b"content-length")
        chunked = first_header(scope, b"transfer-encoding") is not None
        if repeated is not None or (declared is not None and chunked):
            loc: list[str | int] = ["header", (repeated or b"transfer-encoding").decode()]
            msg = "given more than once" if repeated else "not allowed with content-length"
            await send_client_error(scope, send, 400, loc, msg, "value_error", close=True)
            return
        if not chunked:
            if declared is not None and (
                not declared.isdigit() or int(declared) > self.max_body_bytes
            ):
                await self._refuse(scope, send)
                return
            await self.app(scope, receive, send)
            return
        messages = await read_body(receive, self.max_body_bytes)
        if messages is None:
            await self._refuse(scope, send)
            return
        await self.app(scope, replayer(messages, receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        limit = f"larger than the limit of {self.max_body_bytes} bytes"
        await send_client_error(scope, send, 413, ["body"], limit, "too_large", close=True)


class InFlightLimit:
    """At most `max_in_flight` API requests in this worker at once, and at most
    `class_limits[c]` of them of admission class `c` (`classes` maps each path to its class);
    past either, 503 with Retry-After at once, before the body is read.

    Without a bound, requests arriving faster than the models answer queue in the API worker:
    their latency grows without end and the worker holds every queued body (a 30-minute soak
    above capacity: p99 past 300 s and the API worker from 457 MiB to 4.6 GiB). Shedding
    early keeps the answered requests fast and the memory bounded; a client retries later.
    The class limits keep a burst of slow requests (large photos, seconds each) from taking
    every place while fast paths (milliseconds) would still answer.
    """

    RETRY_AFTER_S = 1

    def __init__(
        self,
        app: ASGIApp,
        max_in_flight: int,
        paths: frozenset[str],
        classes: dict[str, str] | None = None,
        class_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.paths = paths
        self.classes = classes or {}
        self.class_limits = class_limits or {}
        self.in_flight = 0
        self.in_flight_by_class: dict[str, int] = dict.fromkeys(self.class_limits, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        kind = self.classes.get(scope["path"], "")
        places = self.class_limits.get(kind)
        message = None
        if self.in_flight >= self.max_in_flight:
            message = (
                f"this worker is answering {self.in_flight} requests, its limit "
                "(limits.max_requests_in_flight)"
            )
        elif places is not None and self.in_flight_by_class[kind] >= places:
            message = (
                f"this worker is answering {places} {kind} requests, their limit "
                f"(limits.in_flight_share.{kind})"
            )
        if message is not None:
            retry = (b"retry-after", str(self.RETRY_AFTER_S).encode())
            await send_client_error(
                scope,
                send,
                503,
                ["request"],
                f"{message}; retry after {self.RETRY_AFTER_S} s",
                "overloaded",
                headers=[retry],
            )
            return
        self.in_flight += 1
        if places is not None:
            self.in_flight_by_class[kind] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if places is not None:
                self.in_flight_by_class[kind] -= 1


class ControlCharacterPaths:
    """Answer 404 to a path holding a control character (a decoded `%0A`, say) at once.

    No operation's path holds one, and Python's `$` matches before a final line break: left
    alone, `POST /heatflow%0A` reached the /heatflow API while every guard keyed on the exact
    path (content type, in-flight limit, the token's scope) let it by.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"} and CONTROL_CHARACTER.search(scope["path"]):
            await send_client_error(scope, send, 404, *ROUTING_ERRORS[HTTPStatus.NOT_FOUND])
            return
        await self.app(scope, receive, send)


CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class MethodNotAllowed:
    """Answer 405 with the full `Allow` list on paths served by more than one router.

    GET /antibiotics (the catalog app) and POST /antibiotics (a BentoML API) share a path;
    left alone, the first router to half-match answers 405 naming only its own method.
    """

    def __init__(self, app: ASGIApp, allowed: dict[str, frozenset[str]]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.allowed.get(scope.get("path", "")) if scope["type"] == "http" else None
        if methods is None or scope["method"] in methods:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(methods)).encode()
        body = error_body(*ROUTING_ERRORS[HTTPStatus.METHOD_NOT_ALLOWED])
        headers = [
            (b"allow", allow),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, max_bytes: int) -> list[Message] | None:
    """Every message of a request body, or None as soon as it passes `max_bytes`."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > max_bytes:
            return None
        if not message.get("more_body", False):
            return messages


def replayer(messages: list[Message], then: Receive) -> Receive:
    """A `receive` that hands out the read messages again, then defers to `then`."""
    pending = list(messages)

    async def receive() -> Message:
        return pending.pop(0) if pending else await then()

    return receive


JSON = "application/json"
MULTIPART = "multipart/form-data"


def is_json_media_type(media_type: str) -> bool:
    return media_type == JSON or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class ContentTypeGuard:
    """Let through only the media type an endpoint takes; anything else gets 415.

    BentoML picks its body parser by the request's Content-Type and falls back to JSON for
    types it does not know: `text/plain` was parsed as JSON, a form sent to a JSON endpoint
    was parsed as a form, and a JSON or urlencoded body sent to an upload endpoint had its
    text values read as URLs to download. Here a JSON endpoint takes `application/json` (or a
    `+json` type, or no Content-Type: BentoML's default) and an upload endpoint takes
    `multipart/form-data` with a boundary. A repeated Content-Type is a 400: this guard and
    BentoML must read the same one.
    """

    def __init__(self, app: ASGIApp, media_types: dict[str, str]) -> None:
        self.app = app
        self.media_types = media_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        expected = self.media_types.get(scope.get("path", "")) if scope["type"] == "http" else None
        if expected is None or scope["method"] in BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        loc: list[str | int] = ["header", "content-type"]
        if repeated_header(scope, (b"content-type",)):
            await send_client_error(scope, send, 400, loc, "given more than once", "value_error")
            return
        declared = (first_header(scope, b"content-type") or b"").decode("latin-1").lower()
        media_type, _, parameters = declared.partition(";")
        media_type = media_type.strip()
        if expected == JSON:
            accepted = not media_type or is_json_media_type(media_type)
        else:
            accepted = media_type == expected
        if not accepted:
            msg = f"this endpoint takes {expected}, not {media_type or 'a body without one'}"
            await send_client_error(scope, send, 415, loc, msg, "unsupported_media_type")
            return
        if expected == MULTIPART and "boundary=" not in parameters:
            msg = "multipart body without a boundary parameter"
            await send_client_error(scope, send, 400, loc, msg, "value_error")
            return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class FormField:
    """One field of an upload endpoint's form: a file or a value, one or a list."""

    file: bool
    many: bool


def form_fields(input_spec: type[BaseModel], file_fields: Iterable[str]) -> dict[str, FormField]:
    """The form an upload endpoint takes, read from its BentoML input model."""
    files = set(file_fields)
    fields = {}
    for name, info in input_spec.model_fields.items():
        annotation = info.annotation
        many = any(get_origin(a) is list for a in (annotation, *get_args(annotation)))
        fields[name] = FormField(file=name in files, many=many)
    return fields


class UploadFieldGuard:
    """Check an upload form field by field before BentoML reads it: 422 naming the field.

    - a text value where a file is expected: BentoML would read it as a URL and download it
      from the server, a request made on the client's behalf;
    - a field the endpoint does not take (BentoML ignores it silently);
    - more than one file or value for a field that takes one (BentoML keeps the first file
      and drops the rest).

    A malformed multipart body is a 400. The body is read here (up to the size limit) and
    replayed to the app.
    """

    def __init__(
        self, app: ASGIApp, forms: dict[str, dict[str, FormField]], max_body_bytes: int
    ) -> None:
        self.app = app
        self.forms = forms
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fields = self.forms.get(scope.get("path", "")) if scope["type"] == "http" else None
        content_type = (first_header(scope, b"content-type") or b"").lower() if fields else b""
        if not fields or not content_type.startswith(MULTIPART.encode()):
            await self.app(scope, receive, send)
            return
        messages = await read_body(receive, self.max_body_bytes)
        if messages is None:
            limit = f"larger than the limit of {self.max_body_bytes} bytes"
            await send_client_error(scope, send, 413, ["body"], limit, "too_large", close=True)
            return
        refusal = await self._refusal(scope, messages, fields)
        if refusal is not None:
            status, loc, msg = refusal
            await send_client_error(scope, send, status, loc, msg, "value_error")
            return
        await self.app(scope, replayer(messages, receive), send)

    @staticmethod
    async def _refusal(
        scope: Scope, messages: list[Message], fields: dict[str, FormField]
    ) -> tuple[int, list[str | int], str] | None:
        from starlette.requests import Request

        async def disconnected() -> Message:
            return {"type": "http.disconnect"}

        try:
            form = await Request(scope, replayer(messages, disconnected)).form()
        except Exception as exc:  # python-multipart raises several types for broken bodies
            return 400, ["body"], f"malformed multipart body: {exc}"
        try:
            counted: dict[str, int] = {}
            for name, value in form.multi_items():  # the first problem in the body's order
                field = fields.get(name)
                if field is None:
                    known = ", ".join(sorted(fields))
                    return 422, [name], f"unknown field; this endpoint takes: {known}"
                index = counted[name] = counted.get(name, -1) + 1
                if field.file and not isinstance(value, UploadFile):
                    return 422, [name, index], "must be an uploaded file, not a text value"
                if not field.file and isinstance(value, UploadFile) and not is_value_part(value):
                    return 422, [name, index], "must be a text value, not a file"
                if index and not field.many:
                    kind = "file" if field.file else "value"
                    return 422, [name], f"takes one {kind}, got {len(form.getlist(name))}"
        finally:
            await form.close()
        return None


# A value sent as a part of its own: OpenAPI's Encoding Object, and so Swagger UI, sends a
# form value as a file named "blob" with a JSON or plain-text media type; BentoML reads it.
VALUE_PART_MEDIA_TYPES = ("application/json", "text/plain")
VALUE_PART_MAX_BYTES = 64 * 1024


def is_value_part(part: UploadFile) -> bool:
    """A multipart part that carries a value (JSON or text, small), not a file."""
    media_type = (part.content_type or "").split(";")[0].strip().lower()
    return media_type in VALUE_PART_MEDIA_TYPES and (part.size or 0) <= VALUE_PART_MAX_BYTES


async def send_client_error(
    scope: Scope,
    send: Send,
    status: int,
    loc: list[str | int],
    msg: str,
    kind: str,
    *,
    field: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    close: bool = False,
) -> None:
    """Answer with the service's error body (despliegue/errors.py); `field` defaults to the
    dotted `loc`. A WebSocket handshake gets the same answer where the
    server supports it (the ASGI `websocket.http.response` extension), else a policy close.
    """
    body = error_body(loc, msg, kind, field=field)
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        start = {"type": "websocket.http.response.start", "status": status}
        await send({**start, "headers": response_headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    if close:
        response_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
