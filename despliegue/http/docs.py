"""The Swagger UI and OpenAPI document as this service publishes them.

BentoML's page at `/` loads Google Tag Manager and links to GitHub, and its OpenAPI description
embeds badge images from img.shields.io: every visitor's browser would call third parties.
This middleware serves instead:

- `/`: a page that loads only BentoML's own Swagger UI assets from `/static_content/`, with a
  Content-Security-Policy that lets the browser fetch nothing from any other origin;
- `/ui/swagger-initializer.js`: the UI set-up, with the online spec validator switched off;
- `/docs.json`: BentoML's document with our own description, the bearer-token scheme (so the
  UI's "Authorize" button works) and the error responses this service really gives (400, 401,
  403, 404 where a family is named, 413, 415, 422, 429, 503 with the `{"error", "detail"}` body).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from despliegue import __version__, registry
from despliegue.bentoml_compat import api_routes
from despliegue.config import AuthSettings
from despliegue.errors import ErrorBody
from despliegue.http.auth import PROBES, auth_enabled, required_scope
from despliegue.v2.naming import V2_MODEL_PATHS, V2_TAG, V2_TAG_DESCRIPTION

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
)

# BentoML's index.css hides the document title (and styles its own top bar); this page keeps
# Swagger UI's stylesheet only and shows the title.
INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Despliegue API</title>
    <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css" />
    <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" />
    <style>
      body { margin: 0; background: #fafafa; }
      .swagger-ui .topbar { display: none; }
      .swagger-ui .file-list .json-schema-form-item-add { font-size: 0 !important; }
      .swagger-ui .file-list .json-schema-form-item-add::after {
        content: "Add an image file";
        font-size: 14px;
      }
    </style>
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="./ui/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"""

# Swagger UI labels the button that adds a file to a list of files with the items' JSON type,
# "Add string item"; FileLists marks such lists so the page's style can say "Add an image file".
INITIALIZER_JS = """const FileLists = () => ({
  wrapComponents: {
    JsonSchema_array: (Original, system) => (props) => {
      const items = props.schema && props.schema.get("items");
      const drawn = system.React.createElement(Original, props);
      if (!items || items.get("format") !== "binary") return drawn;
      return system.React.createElement("div", { className: "file-list" }, drawn);
    },
  },
});

window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [FileLists],
    layout: "StandaloneLayout",
  });
};
"""

DESCRIPTION = (
    "Models served by Despliegue. Every endpoint except the probes needs "
    "`Authorization: Bearer <token>` (use **Authorize**); a token may call only the endpoint "
    'families it was made for. Errors answer `{"error": ..., "detail": [{loc, msg, type}]}`.'
)


def error_schemas() -> dict[str, dict[str, Any]]:
    """The error body's JSON schemas, generated from the model every error answer is written
    from (despliegue/errors.py), ready for the document's components."""
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"ErrorBody": schema, **schema.pop("$defs", {})}


ERRORS = {
    "400": "The body does not match the request schema",
    "401": "Missing or invalid bearer token",
    "403": "The token may not call this endpoint family",
    "404": "Not a known family (the body lists the families), or not a loaded model or version",
    "409": "The version is loaded as a canary or shadow: infer answers with the served one",
    "413": "Request body larger than the configured limit",
    "415": "Content-Type is not the one this endpoint takes",
    "422": "Understood but cannot be answered (a value out of range after decoding)",
    "429": "Image endpoints: this worker's budget of decoded pixels is in use; retry after "
    "the Retry-After seconds",
    "503": "This API worker is at its limit of requests in flight, or a model's worker is being "
    "restarted or sheds load; retry after the Retry-After seconds",
}


# The operations that name a family and answer 404 when it is not one. BentoML documents a 404
# with its own body on every API; no other operation answers one (its path exists).
FAMILY_LOOKUPS = frozenset({"/drift", "/drift/{family}", "/models/{family}/compare"})

# Operations grouped in the UI: by model family (the first path segment names it; the registry
# says which segments each family serves), then the catalog and the probes. A path not listed
# here is grouped under its own segment.
OTHER_TAGS: dict[str, str] = {
    "models": "catalog",
    "drift": "monitoring",
    "livez": "infrastructure",
    "readyz": "infrastructure",
    "healthz": "infrastructure",
    "metrics": "infrastructure",
    "v2": V2_TAG,
}
OTHER_TAG_DESCRIPTIONS: dict[str, str] = {
    "catalog": "What is being served: model tags, families, origin and metadata.",
    "monitoring": "Drift of each family's served models against their baselines.",
    "infrastructure": "Probes and Prometheus metrics (no token needed for the probes).",
    V2_TAG: V2_TAG_DESCRIPTION,
}


def family_tags() -> dict[str, str]:
    """First path segment -> the UI tag its operations are grouped under."""
    families = {segment: f.tag for f in registry.FAMILIES for segment in f.paths}
    return {**families, **OTHER_TAGS}


def tag_descriptions() -> dict[str, str]:
    """Every UI tag and what it says, in the UI's order: the families first."""
    return {**{f.tag: f.summary for f in registry.FAMILIES}, **OTHER_TAG_DESCRIPTIONS}


# A multipart file field as OpenAPI 3.1 writes it (BentoML writes the non-standard type "file").
FILE_SCHEMA = {"type": "string", "format": "binary", "contentMediaType": "image/*"}


def family_tag(path: str) -> str:
    segment = path.strip("/").split("/")[0]
    return family_tags().get(segment, segment)


def publishable_openapi(
    doc: dict[str, Any], auth: AuthSettings, api_paths: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """BentoML's OpenAPI document, made true to this service and free of third-party links.

    What changes: OpenAPI 3.1 (the schemas pydantic writes are JSON Schema 2020-12, with
    `examples` and `"type": "null"`, which a 3.0 document may not hold); response codes as
    strings (BentoML's are integers, and `400` beside `"400"` is a duplicated key once
    serialized, which Swagger UI refuses); file fields in standard form; one tag per model
    family and a summary per operation; the product's version, description and error bodies.

    BentoML lets a mounted FastAPI route replace an API route on the same path in the document
    (GET /antibiotics hides POST /antibiotics); `api_paths` puts the hidden operations back.
    """
    for path, operations in (api_paths or {}).items():
        for method, operation in operations.items():
            doc.setdefault("paths", {}).setdefault(path, {}).setdefault(method, operation)
    doc["openapi"] = "3.1.0"
    doc["info"] = {"title": "Despliegue", "version": _version(doc), "description": DESCRIPTION}
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(error_schemas())
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    used_tags: set[str] = set()
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True  # an empty body is a 400
            operation["tags"] = [family_tag(path)]
            used_tags.add(operation["tags"][0])
            operation["summary"] = _summary(operation, method, path)
            responses = {
                str(code): answer
                for code, answer in operation.get("responses", {}).items()
                if str(code) != "404"
            }
            codes = (
                ["400", "413", "415", "422", "429", "503"]
                if method in {"post", "put", "patch"}
                else []
            )
            if path in FAMILY_LOOKUPS or path.startswith(V2_MODEL_PATHS):
                codes.append("404")
            if path.startswith(V2_MODEL_PATHS) and path.endswith("/versions/{version}/infer"):
                codes.append("409")
            if auth_enabled(auth) and path not in PROBES and required_scope(path, auth) is not None:
                operation["security"] = [{"bearer": []}]
                codes += ["401", "403"]
            for code in codes:
                responses[code] = {"description": ERRORS[code], "content": error_ref}
            operation["responses"] = responses
    _restore_unions(doc)
    descriptions = tag_descriptions()
    doc["tags"] = [
        {"name": tag, "description": descriptions.get(tag, f"/{tag}")}
        for tag in [*descriptions, *sorted(used_tags - descriptions.keys())]
        if tag in used_tags
    ]
    return _standard_schemas(doc, frozenset(components["schemas"]))


def _restore_unions(doc: dict[str, Any]) -> None:
    """Put back the "one or a list" fields of each JSON request body (despliegue/schemas.py):
    BentoML inlines the request schema in the operation keeping only an `anyOf`'s first branch
    (one item), while the schema in the components keeps both."""
    schemas = doc.get("components", {}).get("schemas", {})
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            inline = content.get("application/json", {}).get("schema", {})
            title = inline.get("title")
            full = schemas.get(f"{title}IODescriptor") or schemas.get(title) or {}
            for name, field in full.get("properties", {}).items():
                if "anyOf" in field and name in inline.get("properties", {}):
                    inline["properties"][name] = field


def _version(doc: dict[str, Any]) -> str:
    """The product version, and the Bento's when BentoML serves a built one ("None" otherwise)."""
    bento = str(doc.get("info", {}).get("version") or "None")
    return __version__ if bento == "None" else f"{__version__} (bento {bento})"


def _summary(operation: dict[str, Any], method: str, path: str) -> str:
    """The first sentence of the operation's description (its docstring); FastAPI's own
    summary ("Get Models", from the function name) only when there is no description."""
    description = re.sub(r"<[^>]+>", "", operation.get("description") or "").strip()
    first = re.split(r"(?<=[.!?])\s", description, maxsplit=1)[0].rstrip(".")
    return first or operation.get("summary") or f"{method.upper()} {path}"


def _standard_schemas(node: Any, components: frozenset[str]) -> Any:
    """BentoML's file fields as standard OpenAPI 3.1 schemas, and titles without BentoML's
    internal class suffix (a person reads "HeatFlowRequest", not "...IODescriptor") unless
    another schema has that name (client generators name their classes after titles)."""
    if isinstance(node, list):
        return [_standard_schemas(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "file":
        return {**FILE_SCHEMA, **({"title": node["title"]} if "title" in node else {})}
    if node.get("type") == "string" and node.get("format") == "binary":
        node = {**node, **FILE_SCHEMA}
    cleaned = {key: _standard_schemas(value, components) for key, value in node.items()}
    title = cleaned.get("title")
    if isinstance(title, str) and title.removesuffix("IODescriptor") not in components:
        cleaned["title"] = title.removesuffix("IODescriptor")
    return cleaned


def api_operations(service: Any) -> dict[str, dict[str, Any]]:
    """The OpenAPI operations of a service's own API routes, as BentoML generates them."""
    return api_routes(service)


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
