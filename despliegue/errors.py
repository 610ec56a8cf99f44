"""Client mistakes: one body shape, one exception type, one HTTP mapping, one log line.

Every error this service answers has the body `ErrorBody` describes, written by `error_body`
here and nowhere else: the API methods, every middleware (size limits, auth, content checks,
405) and the OpenAPI document's error schema (despliegue/http/docs.py) all use it.

Schema violations are caught by pydantic before our code runs; BentoML answers them with 400
and `{"error", "detail": [{"loc", "msg", "type"}]}`. Mistakes that can only be seen after
decoding (an image that is not an image, an unknown model code) raise `ClientError`, which
`answers_client_errors` turns into the same body shape with its own status (422 by default).
A request the service cannot take right now through no fault of the client (its memory budget
is spent, a runner is being replaced) raises `TryLater`: 429 or 503 with `Retry-After`.

BentoML words a schema violation after its own internal class ("1 validation error for
HeatFlowRequestIODescriptor") and some other 4xx as a list, and Starlette's routers refuse a
path they do not serve in plain text; `ClientErrorWording` rewrites those bodies so that every
error a client reads says which field broke which rule, in one shape.

BentoML logs every client mistake at ERROR with a full traceback. `ClientMistakeLogFilter`
rewrites those records into one WARNING line without the traceback (and without the input),
so the log keeps server faults visible.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from despliegue.bentoml_compat import REQUEST_ERRORS_LOGGER

P = ParamSpec("P")
R = TypeVar("R")


class ErrorDetail(BaseModel):
    """One broken rule: where (`loc`, the path of the field in the body), what and its kind."""

    loc: list[str | int]
    msg: str
    type: str
    # Present only when pydantic found the mistake (its page about that kind of error).
    url: str | SkipJsonSchema[None] = Field(
        default=None,
        description="pydantic's page about this kind of error.",
        json_schema_extra=lambda schema: schema.pop("default"),
    )


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="One line naming the field and the rule.")
    detail: list[ErrorDetail]


def error_body(loc: Sequence[str | int], msg: str, kind: str, *, field: str | None = None) -> bytes:
    """The JSON error body for one broken rule: `{"error": "<field>: <msg>", "detail": [...]}`;
    `field` defaults to the dotted `loc` (none: the request as a whole, `msg` alone)."""
    return error_json(one_broken_rule(loc, msg, kind, field=field))


def one_broken_rule(
    loc: Sequence[str | int], msg: str, kind: str, *, field: str | None = None
) -> ErrorBody:
    """The error body for one broken rule, before it is written (see `error_body`)."""
    field = field or ".".join(str(part) for part in loc)
    detail = ErrorDetail(loc=list(loc), msg=msg, type=kind)
    return ErrorBody(error=f"{field}: {msg}" if field else msg, detail=[detail])


def error_json(body: ErrorBody) -> bytes:
    return json.dumps(body.model_dump(mode="json", exclude_none=True)).encode()


def error_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """An error body as the response an API method returns."""
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class ClientError(Exception):
    """A request the service understood but cannot answer; `loc` names the field."""

    def __init__(
        self,
        loc: Sequence[str | int],
        msg: str,
        *,
        kind: str = "value_error",
        status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY,
    ) -> None:
        super().__init__(msg)
        self.loc = list(loc)
        self.msg = msg
        self.kind = kind
        self.status = status

    def to_response(self) -> Response:
        return error_response(int(self.status), error_body(self.loc, self.msg, self.kind))


class TryLater(Exception):
    """The service cannot answer this request now; the same request may succeed later."""

    def __init__(
        self,
        msg: str,
        *,
        status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE,
        retry_after_s: int = 1,
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status
        self.retry_after_s = retry_after_s

    def to_response(self) -> Response:
        headers = {"Retry-After": str(self.retry_after_s)}
        return error_response(int(self.status), error_body([], self.msg, "try_later"), headers)


def answers_client_errors(
    endpoint: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R | Response]]:
    """Wrap an async API method so a ClientError or TryLater becomes its JSON response."""

    @functools.wraps(endpoint)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        try:
            return await endpoint(*args, **kwargs)
        except ClientError as exc:
            logging.getLogger("despliegue.api").warning(
                "client error %s: %s", int(exc.status), exc.args[0]
            )
            return exc.to_response()
        except TryLater as exc:
            logging.getLogger("despliegue.api").warning(
                "answered %s (retry after %s s): %s", int(exc.status), exc.retry_after_s, exc.msg
            )
            return exc.to_response()

    return wrapper


class ClientMistakeLogFilter(logging.Filter):
    """Turn BentoML's ERROR+traceback for a 4xx into one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not _is_client_mistake(exc):
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "client error on %s: %s"
        record.args = (_path_of(record), _summary(exc))
        record.exc_info = None
        record.exc_text = None
        return True


def _is_client_mistake(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return True
    return isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500


def _path_of(record: logging.LogRecord) -> Any:
    args = record.args if isinstance(record.args, tuple) else ()
    return args[0] if args else "?"


def _summary(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return describe(exc.errors(include_input=False, include_context=False))
    return str(exc)


def describe(errors: Sequence[dict[str, Any]]) -> str:
    """One line naming each broken field and its rule: `field.0: Input should be ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error.get('loc', [])) or 'body'}: {error.get('msg')}"
        for error in errors
    )


BENTOML_WORDING = re.compile(r"^\d+ validation errors? for ")

# Starlette's routers answer a path or method they do not serve in plain text ("Not Found"),
# FastAPI as {"detail": "Not Found"}; a path no router matches (one holding a line break,
# say) reaches the outermost one. Those answers, in the product's words:
ROUTING_ERRORS = {
    HTTPStatus.NOT_FOUND: (["path"], "no operation here; /docs.json lists every one", "not_found"),
    HTTPStatus.METHOD_NOT_ALLOWED: (["method"], "not allowed here", "method_not_allowed"),
}


def in_our_words(status: int, body: bytes) -> ErrorBody | None:
    """A 4xx body in the product's words, or None when it already is, is empty (HEAD), or is
    JSON of some other shape (FastAPI's own 422 list is left as it is)."""
    if not body.strip():
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return routing_error(status, body.decode("utf-8", "replace"))
    if isinstance(parsed, dict) and set(parsed) == {"detail"} and isinstance(parsed["detail"], str):
        return routing_error(status, parsed["detail"])
    return reworded(parsed)


def routing_error(status: int, text: str) -> ErrorBody:
    """A router's bare refusal ("Not Found") as an error naming the field."""
    if status in ROUTING_ERRORS:
        return one_broken_rule(*ROUTING_ERRORS[HTTPStatus(status)])
    return ErrorBody(error=text.strip()[:200], detail=[])


def reworded(body: Any) -> ErrorBody | None:
    """A 4xx body in the product's words, or None when it already is."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        return ErrorBody(error=str(body[0].get("error", "")), detail=[])  # BentoML's 4xx list
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    detail = body.get("detail")
    if BENTOML_WORDING.match(body["error"]) and isinstance(detail, list) and detail:
        return ErrorBody(error=describe(detail), detail=detail)
    return None


class ClientErrorWording:
    """Rewrite BentoML's 4xx bodies (see the module docstring); other responses stream as is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def watch(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                start = message  # held until the body is complete
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            better = in_our_words(start["status"], body)
            if better is not None:
                body = error_json(better)
            replaced = {b"content-length"} | ({b"content-type"} if better else set())
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
            headers.append((b"content-length", str(len(body)).encode()))
            if better is not None:
                headers.append((b"content-type", b"application/json"))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, watch)


def install_log_filter() -> None:
    """Attach the filter where BentoML logs request exceptions (idempotent)."""
    logger = logging.getLogger(REQUEST_ERRORS_LOGGER)
    if not any(isinstance(f, ClientMistakeLogFilter) for f in logger.filters):
        logger.addFilter(ClientMistakeLogFilter())
