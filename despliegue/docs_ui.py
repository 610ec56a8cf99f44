"""The Swagger UI and OpenAPI document as this service publishes them.

BentoML's page at `/` loads Google Tag Manager and links to GitHub, and its OpenAPI description
embeds badge images from img.shields.io: every visitor's browser would call third parties.
This middleware serves instead:

- `/`: a page that loads only BentoML's own Swagger UI assets from `/static_content/`, with a
  Content-Security-Policy that lets the browser fetch nothing from any other origin;
- `/ui/swagger-initializer.js`: the UI set-up, with the online spec validator switched off;
- `/docs.json`: BentoML's document with our own description, the bearer-token scheme (so the
  UI's "Authorize" button works) and the error responses this service really gives (400, 401,
  403, 413, 422, 429, 503 with the `{"error", "detail"}` body).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from despliegue.auth import PROBES, auth_enabled, required_scope
from despliegue.config import AuthSettings

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
)

INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Despliegue API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="./static_content/index.css" />
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./ui/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""

INITIALIZER_JS = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
"""

DESCRIPTION = (
    "Models served by Despliegue. Every endpoint except the probes needs "
    "`Authorization: Bearer <token>` (use **Authorize**); a token may call only the endpoint "
    'families it was made for. Errors answer `{"error": ..., "detail": [{loc, msg, type}]}`.'
)

ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "title": "ErrorBody",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "One line naming the field and the rule."},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}

ERRORS = {
    "400": "The body does not match the request schema",
    "401": "Missing or invalid bearer token",
    "403": "The token may not call this endpoint family",
    "413": "Request body larger than the configured limit",
    "422": "Understood but cannot be answered (a value out of range after decoding)",
    "429": "Image endpoints: this worker's budget of decoded pixels is in use; retry after "
    "the Retry-After seconds",
    "503": "A model's worker is being restarted or sheds load; retry after the Retry-After seconds",
}


def publishable_openapi(
    doc: dict[str, Any], auth: AuthSettings, api_paths: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """BentoML's OpenAPI document, made true to this service and free of third-party links.

    BentoML lets a mounted FastAPI route replace an API route on the same path in the document
    (GET /antibiotics hides POST /antibiotics); `api_paths` puts the hidden operations back.
    """
    for path, operations in (api_paths or {}).items():
        for method, operation in operations.items():
            doc.setdefault("paths", {}).setdefault(path, {}).setdefault(method, operation)
    doc["info"] = {"title": "Despliegue", "version": doc.get("info", {}).get("version") or "1"}
    doc["info"]["description"] = DESCRIPTION
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorBody"] = ERROR_BODY
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True  # an empty body is a 400
            responses = operation.setdefault("responses", {})
            codes = (
                ["400", "413", "422", "429", "503"] if method in {"post", "put", "patch"} else []
            )
            if auth_enabled(auth) and path not in PROBES and required_scope(path, auth) is not None:
                operation["security"] = [{"bearer": []}]
                codes += ["401", "403"]
            for code in codes:
                responses[code] = {"description": ERRORS[code], "content": error_ref}
    return doc


def api_operations(service: Any) -> dict[str, dict[str, Any]]:
    """The OpenAPI operations of a service's own API routes, as BentoML generates them."""
    from _bentoml_sdk.service.openapi import _get_api_routes
    from bentoml._internal.utils.cattr import bentoml_cattr

    return {
        path: bentoml_cattr.unstructure(item) for path, item in _get_api_routes(service).items()
    }


class PrivateDocs:
    """Serve the UI page and initializer, and rewrite /docs.json on its way out."""

    def __init__(
        self, app: ASGIApp, auth: AuthSettings, api_paths: dict[str, dict[str, Any]]
    ) -> None:
        self.app = app
        self.auth = auth
        self.api_paths = api_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/":
            await _answer(send, INDEX_HTML.encode(), b"text/html; charset=utf-8")
        elif path == "/ui/swagger-initializer.js":
            await _answer(send, INITIALIZER_JS.encode(), b"text/javascript; charset=utf-8")
        elif path == "/docs.json":
            await self._rewrite_docs(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _rewrite_docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        if start.get("status") != 200:
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        doc = publishable_openapi(json.loads(b"".join(chunks)), self.auth, self.api_paths)
        await _answer(send, json.dumps(doc).encode(), b"application/json")


async def _answer(send: Send, body: bytes, content_type: bytes) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
