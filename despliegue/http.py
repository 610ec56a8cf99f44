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
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        limit = self.max_body_bytes
        await send_client_error(
            send, 413, ["body"], f"larger than the limit of {limit} bytes", "too_large", close=True
        )


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


async def send_client_error(
    send: Send, status: int, loc: list[str], msg: str, kind: str, *, close: bool = False
) -> None:
    """Answer with the service's error body: {"error": "<field>: <msg>", "detail": [...]}."""
    body = json.dumps(
        {
            "error": f"{'.'.join(loc)}: {msg}",
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
