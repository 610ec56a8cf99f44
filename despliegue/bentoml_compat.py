"""Every reach into BentoML's private modules, in one place.

BentoML's public API does not cover a few things the service needs: the OpenAPI operations of
a service's own routes, the serving entry point `bentoml serve` uses, the model store of a
folder other than BENTOML_HOME, the route list the HTTP metrics middleware reads, and the
loggers to quiet. Only the exact pin in requirements.txt holds these; on an upgrade,
tests/unit/test_bentoml_compat.py imports every reach listed in `REACHES` and names each one
that moved, and a reach that fails at run time raises `BentoMLChanged` saying the same.

Imports happen when a function is called, not when this module is imported: the serving entry
point must set environment variables before BentoML's server modules are loaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The loggers BentoML writes request failures and tag-case warnings to (filtered in
# despliegue/errors.py and despliegue/quiet.py); each is the named module's own `logger`.
REQUEST_ERRORS_LOGGER = "bentoml._internal.server.http_app"
TAG_LOGGER = "bentoml._internal.tag"
# The attribute of a service instance holding its methods' bound callers (api_methods_bound_once).
BOUND_CALLERS = "_bentoml_bound_callers"


class BentoMLChanged(ImportError):
    """A private BentoML module or name this service relies on is gone or moved."""


@dataclass(frozen=True)
class Reach:
    """One private name: the module, the attribute in it, and what the service uses it for."""

    module: str
    attribute: str
    used_for: str


REACHES: tuple[Reach, ...] = (
    Reach(
        "_bentoml_sdk.service.openapi",
        "_get_api_routes",
        "the OpenAPI operations of the API service's own routes (despliegue/http/docs.py)",
    ),
    Reach(
        "bentoml._internal.utils.cattr",
        "bentoml_cattr",
        "those operations as plain JSON (despliegue/http/docs.py)",
    ),
    Reach(
        "bentoml._internal.configuration.containers",
        "BentoMLContainer",
        "the BentoML home, model store folder, TLS settings and each service's URL "
        "(artifacts.py, lifecycle/plans.py, http/probes.py, startup.py)",
    ),
    Reach(
        "bentoml._internal.models.model",
        "ModelStore",
        "a model store in a folder of its own, to check a backup (despliegue/backup.py)",
    ),
    Reach(
        "bentoml._internal.context",
        "server_context",
        "the API's routes, so metrics label only known paths (http/server.py), and whether "
        "this process is a server worker (startup.py)",
    ),
    Reach(
        "bentoml._internal.server.http.instruments",
        "RunnerTrafficMetricsMiddleware",
        "the HTTP metrics middleware, replaced by one with bounded labels (http/server.py)",
    ),
    Reach(
        "_bentoml_impl.server.serving",
        "API_SERVER_NAME",
        "the public socket, kept closed until the API listens (despliegue/serving.py)",
    ),
    Reach(
        "_bentoml_impl.server",
        "serve_http",
        "the serving entry point `bentoml serve` uses (despliegue/serving.py)",
    ),
    Reach(
        "bentoml._internal.log",
        "configure_server_logging",
        "the server's logging, as `bentoml serve` sets it up (despliegue/serving.py)",
    ),
    Reach(
        "bentoml._internal.service.loader",
        "load",
        "loading the service or Bento to serve (despliegue/serving.py)",
    ),
    Reach(
        REQUEST_ERRORS_LOGGER,
        "logger",
        "the logger of request exceptions, filtered to one line per client mistake (errors.py)",
    ),
    Reach(TAG_LOGGER, "logger", "the logger of tag-case warnings, quieted (despliegue/quiet.py)"),
    Reach(
        "bentoml._internal.marshal.dispatcher",
        "CorkDispatcher",
        "adaptive batching's cost learning, set never to hold a lone request (config.py)",
    ),
    Reach(
        "_bentoml_sdk.io_models",
        "IOMixin",
        "the media type of a method's input and output, worked out once per class (config.py)",
    ),
    Reach(
        "_bentoml_sdk.method",
        "APIMethod",
        "a service method bound to its instance once, not on every request (config.py)",
    ),
)


def reach(module: str, attribute: str) -> Any:
    """A private BentoML name, or BentoMLChanged naming it and what it is used for."""
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        import bentoml

        used_for = next(
            (r.used_for for r in REACHES if (r.module, r.attribute) == (module, attribute)), "?"
        )
        raise BentoMLChanged(
            f"bentoml {bentoml.__version__} has no {module}.{attribute} ({exc}); it was used "
            f"for {used_for}. Pin the bentoml version requirements.txt names, or update "
            "despliegue/bentoml_compat.py"
        ) from exc


def container() -> Any:
    return reach("bentoml._internal.configuration.containers", "BentoMLContainer")


def model_store_folder() -> Path:
    """The folder of the model store this process reads (the Bento's own inside an image)."""
    return Path(container().model_store.get()._path)


def bentoml_home() -> str:
    """The BentoML home this process uses (BENTOML_HOME or ~/bentoml)."""
    return str(container().bentoml_home.get())


def service_urls() -> dict[str, str]:
    """The URL BentoML gave each service of this server, by service name."""
    return dict(container().remote_runner_mapping.get())


def api_routes(service: Any) -> dict[str, dict[str, Any]]:
    """The OpenAPI path items of a service's own API routes, as BentoML generates them."""
    get_api_routes = reach("_bentoml_sdk.service.openapi", "_get_api_routes")
    cattr = reach("bentoml._internal.utils.cattr", "bentoml_cattr")
    return {path: cattr.unstructure(item) for path, item in get_api_routes(service).items()}


def model_store(folder: str) -> Any:
    """A BentoML model store in `folder` (not the home's)."""
    return reach("bentoml._internal.models.model", "ModelStore")(folder)


def server_context() -> Any:
    return reach("bentoml._internal.context", "server_context")


def http_instruments() -> Any:
    """The module holding BentoML's HTTP metrics middleware (its class is replaced there)."""
    module = "bentoml._internal.server.http.instruments"
    reach(module, "RunnerTrafficMetricsMiddleware")
    return importlib.import_module(module)


def api_server_name() -> str:
    return reach("_bentoml_impl.server.serving", "API_SERVER_NAME")


def serve_http() -> Any:
    return reach("_bentoml_impl.server", "serve_http")


def configure_server_logging() -> None:
    reach("bentoml._internal.log", "configure_server_logging")()


def load_service(bento: str, working_dir: str) -> Any:
    return reach("bentoml._internal.service.loader", "load")(
        bento_identifier=bento, working_dir=working_dir
    )


def batching_never_holds_a_lone_request() -> None:
    """BentoML's adaptive batching learns a model's cost on a runner's first calls; to learn
    batches of 2 and of 3 it holds the first request up to (2n+1)·a+b seconds waiting for more
    (`CorkDispatcher.train_optimizer`): for MTCNN (~0.2 s a call) a lone client waited ~1.2 s,
    twice, the /face tail. Here every training call takes what is queued, whatever its size,
    without waiting: the estimate still comes from real calls and is refreshed from live
    batches every few seconds, as before. Idempotent."""
    dispatcher = reach("bentoml._internal.marshal.dispatcher", "CorkDispatcher")
    learn = dispatcher.train_optimizer
    if getattr(learn, "never_holds", False):
        return

    async def train_optimizer(
        self: Any, num_required_reqs: int, num_reqs_to_train: int, training_batch_size: int
    ) -> None:
        await learn(self, num_required_reqs, num_reqs_to_train, 1)  # 1: no wait for more

    train_optimizer.never_holds = True  # type: ignore[attr-defined]
    dispatcher.train_optimizer = train_optimizer


def media_types_worked_out_once() -> None:
    """BentoML names the media type of a response whose schema is a root model (a runner
    method's `list[...]`, an array) by building its JSON schema, a pydantic `TypeAdapter` and
    all, on every response (`IOMixin.mime_type`): ~0.5 ms of a runner's CPU per call, as much
    as the flower CNN spends on one image. What it works out from a class's schema never
    changes, so it is worked out on first use and kept; a media type declared on the class
    (`media_type`, which BentoML may set after making it) still comes first. Idempotent."""
    mixin = reach("_bentoml_sdk.io_models", "IOMixin")
    work_out = mixin.__dict__["mime_type"].__func__
    if getattr(work_out, "once_per_class", False):
        return
    known: dict[type, str] = {}

    def mime_type(cls: Any) -> str:
        if cls.media_type is not None:
            return cls.media_type
        media_type = known.get(cls)
        if media_type is None:
            media_type = known[cls] = work_out(cls)
        return media_type

    mime_type.once_per_class = True  # type: ignore[attr-defined]
    mime_type.__wrapped__ = work_out  # type: ignore[attr-defined]
    mixin.mime_type = classmethod(mime_type)


def api_methods_bound_once() -> None:
    """BentoML's server looks a method up on the service instance for every request it
    answers (`getattr(instance, name).local`), and each lookup rebuilds the bound caller:
    `inspect.signature` of the function, `functools.wraps`, a new signature without `self`
    (~4% of the API worker's CPU for a lone client of /heatflow). What it builds depends only
    on the method and the instance, so it is built on the first lookup and kept on the
    instance (`BOUND_CALLERS`), which it lives and goes with. Idempotent."""
    api_method = reach("_bentoml_sdk.method", "APIMethod")
    bind = api_method._local_call
    if getattr(bind, "once_per_instance", False):
        return

    def _local_call(self: Any, instance: Any) -> Any:
        attributes = getattr(instance, "__dict__", None)
        if attributes is None:  # an instance with __slots__ only: built each time, as before
            return bind(self, instance)
        callers = attributes.get(BOUND_CALLERS)
        if callers is None:
            callers = attributes[BOUND_CALLERS] = {}
        caller = callers.get(self.name)
        if caller is None:
            caller = callers[self.name] = bind(self, instance)
        return caller

    _local_call.once_per_instance = True  # type: ignore[attr-defined]
    api_method._local_call = _local_call
