"""ASGI middleware of the public service: HTTP concerns that come before any schema."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Answer 413 to a request body larger than `max_body_bytes`, before anything parses it.

    A declared Content-Length is checked up front. A chunked body (no Content-Length) is read
    here up to the limit and replayed, since BentoML would turn an error raised while it reads
    the body into a 500.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        messages = await read_body(receive, self.max_body_bytes)
        if messages is None:
            await self._refuse(send)
            return
        await self.app(scope, replayer(messages, receive), send)

    async def _refuse(self, send: Send) -> None:
        limit = self.max_body_bytes
        await send_client_error(
            send, 413, ["body"], f"larger than the limit of {limit} bytes", "too_large", close=True
        )


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
        body = b'{"error": "method: not allowed here", "detail": []}'
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


FORM_TYPES = (b"multipart/", b"application/x-www-form-urlencoded")


class ContentTypeGuard:
    """Refuse bodies BentoML would turn into a 500 while parsing them as a form.

    A `multipart/*` body without a boundary, or a form sent to an endpoint that takes JSON,
    makes Starlette's form parser raise inside BentoML, which answers 500. Here: 400 for the
    first, 415 for the second, naming the header.
    """

    def __init__(self, app: ASGIApp, json_routes: frozenset[str]) -> None:
        self.app = app
        self.json_routes = json_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in {"GET", "HEAD", "OPTIONS"}:
            content_type = dict(scope["headers"]).get(b"content-type", b"").lower()
            loc = ["header", "content-type"]
            if scope["path"] in self.json_routes and content_type.startswith(FORM_TYPES):
                msg = "this endpoint takes application/json"
                await send_client_error(send, 415, loc, msg, "unsupported_media_type")
                return
            if content_type.startswith(b"multipart/") and b"boundary=" not in content_type:
                msg = "multipart body without a boundary parameter"
                await send_client_error(send, 400, loc, msg, "value_error")
                return
        await self.app(scope, receive, send)


class UploadFieldGuard:
    """Refuse a multipart string where an endpoint expects an uploaded file.

    BentoML reads such a string as a URL and downloads it from the server, a request made on
    the client's behalf (and a 500 when its URL guard cannot load). Only real file parts pass;
    a malformed multipart body is a 400. The body is read here (up to the size limit) and
    replayed to the app.
    """

    def __init__(
        self, app: ASGIApp, file_fields: dict[str, frozenset[str]], max_body_bytes: int
    ) -> None:
        self.app = app
        self.file_fields = file_fields
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fields = self.file_fields.get(scope.get("path", "")) if scope["type"] == "http" else None
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"").lower()
        if not fields or not content_type.startswith(b"multipart/"):
            await self.app(scope, receive, send)
            return
        messages = await read_body(receive, self.max_body_bytes)
        if messages is None:
            limit = f"larger than the limit of {self.max_body_bytes} bytes"
            await send_client_error(send, 413, ["body"], limit, "too_large", close=True)
            return
        refusal = await self._refusal(scope, messages, fields)
        if refusal is not None:
            status, loc, msg = refusal
            await send_client_error(send, status, loc, msg, "value_error")
            return
        await self.app(scope, replayer(messages, receive), send)

    @staticmethod
    async def _refusal(
        scope: Scope, messages: list[Message], fields: frozenset[str]
    ) -> tuple[int, list[str | int], str] | None:
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        async def disconnected() -> Message:
            return {"type": "http.disconnect"}

        try:
            form = await Request(scope, replayer(messages, disconnected)).form()
        except Exception as exc:  # python-multipart raises several types for broken bodies
            return 400, ["body"], f"malformed multipart body: {exc}"
        try:
            for field in sorted(fields):
                for index, value in enumerate(form.getlist(field)):
                    if not isinstance(value, UploadFile):
                        return 422, [field, index], "must be an uploaded file, not a text value"
        finally:
            await form.close()
        return None


async def send_client_error(
    send: Send, status: int, loc: list[str | int], msg: str, kind: str, *, close: bool = False
) -> None:
    """Answer with the service's error body: {"error": "<field>: <msg>", "detail": [...]}."""
    body = json.dumps(
        {
            "error": f"{'.'.join(str(part) for part in loc)}: {msg}",
            "detail": [{"loc": loc, "msg": msg, "type": kind}],
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
