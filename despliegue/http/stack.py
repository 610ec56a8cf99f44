"""The API worker's edge, installed in one place and in one order (despliegue/http/)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from despliegue import registry
from despliegue.config import Settings
from despliegue.errors import ClientErrorWording
from despliegue.http.audit import AuditLog
from despliegue.http.auth import DOCS_PATHS, DOCS_PREFIXES, PROBES, BearerAuth, auth_enabled
from despliegue.http.docs import PrivateDocs, api_operations
from despliegue.http.guards import (
    BodySizeLimit,
    ContentTypeGuard,
    ControlCharacterPaths,
    InFlightLimit,
    MethodNotAllowed,
    UploadFieldGuard,
    form_fields,
)
from despliegue.http.probes import Probes
from despliegue.http.rejections import RejectionMetrics
from despliegue.http.server import configure_http_server
from despliegue.v2.naming import WithInferClasses, WithInferPaths


def install_edge(service: Any, catalog: FastAPI, settings: Settings) -> None:
    """Install every middleware on the API service, outermost first, then set the HTTP server.

    A request meets them in this order (BentoML makes the first added the outermost):

    1. `Probes`: /livez, /readyz and /healthz are answered at once, before auth, audit and the
       limits, so a probe never waits behind a full worker (despliegue/http/probes.py).
    2. `AuditLog`: one line per call, so it also covers the refusals by everything below.
    3. `RejectionMetrics`: counts refused inputs per route and reason, whoever refused them.
    4. `ControlCharacterPaths`: a path holding a control character is refused before auth (it
       would otherwise reach an API past the guards keyed on the exact path).
    5. `BearerAuth`: no valid token for the path, no further work.
    6. `PrivateDocs`: the UI and /docs.json, written for this service (after auth: with auth
       on, the document is not public).
    7. `InFlightLimit`: 503 with Retry-After past the worker's requests in flight, or past the
       places of the request's admission class (the registry's, e.g. images), before the body
       is read; V2 infer calls count as their model's family's (despliegue/v2/naming.py).
    8. `BodySizeLimit`: 413 before a large body is parsed.
    9. `ContentTypeGuard`: 415 for a media type the endpoint does not take.
    10. `UploadFieldGuard`: upload forms checked field by field before BentoML reads them.
    11. `MethodNotAllowed`: 405 with the full Allow list on paths a BentoML API and a catalog
        route share.
    12. `ClientErrorWording`, innermost: BentoML's own 4xx bodies rewritten into the product's
        error body, so every layer above sees (and counts, and audits) the final answer.
    """
    routes = frozenset(api.route for api in service.apis.values())
    auth = settings.security.auth
    limits = settings.limits
    service.add_asgi_middleware(Probes, service=service, auth_on=auth_enabled(auth))
    service.add_asgi_middleware(AuditLog, audit=settings.security.audit)
    service.add_asgi_middleware(RejectionMetrics, routes=routes)
    service.add_asgi_middleware(ControlCharacterPaths)
    service.add_asgi_middleware(BearerAuth, auth=auth)
    service.add_asgi_middleware(PrivateDocs, auth=auth, api_paths=api_operations(service))
    service.add_asgi_middleware(
        InFlightLimit,
        max_in_flight=limits.max_requests_in_flight,
        paths=WithInferPaths(routes),
        classes=WithInferClasses(
            {route: kind for route in routes if (kind := registry.admission_of(route)) is not None}
        ),
        class_limits=limits.places_by_class(),
    )
    service.add_asgi_middleware(BodySizeLimit, max_body_bytes=limits.max_body_bytes)
    service.add_asgi_middleware(
        ContentTypeGuard,
        media_types={api.route: api.input_spec.mime_type() for api in service.apis.values()},
    )
    service.add_asgi_middleware(
        UploadFieldGuard,
        forms={
            api.route: form_fields(api.input_spec, api.input_spec.multipart_fields)
            for api in service.apis.values()
            if api.input_spec.mime_type() == "multipart/form-data"
        },
        max_body_bytes=limits.max_body_bytes,
    )
    service.add_asgi_middleware(MethodNotAllowed, allowed=shared_paths(service, catalog))
    configure_http_server(
        head_timeout_s=limits.request_head_timeout_s,
        trusted_proxies=settings.security.trusted_proxies,
        metric_paths=frozenset({*PROBES, *DOCS_PATHS, "/metrics", *catalog_operations(catalog)}),
        metric_prefixes=DOCS_PREFIXES,
    )
    service.add_asgi_middleware(ClientErrorWording)


def catalog_operations(catalog: FastAPI) -> dict[str, dict]:
    """The catalog app's paths and their operations, as its OpenAPI document lists them."""
    return get_openapi(title=catalog.title, version="1", routes=catalog.routes)["paths"]


def shared_paths(service: Any, catalog: FastAPI) -> dict[str, frozenset[str]]:
    """Paths that both a BentoML API and a catalog route serve, with every method they take."""
    api_routes = {api.route for api in service.apis.values()}
    return {
        path: frozenset({"POST", *(method.upper() for method in operations)})
        | ({"HEAD"} if "get" in operations else set())
        for path, operations in catalog_operations(catalog).items()
        if path in api_routes
    }
