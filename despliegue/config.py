"""Load and validate `configuration.yaml`, once per process.

The file holds the product's settings (model tags, batching, input limits) and BentoML's own
runtime settings under `bentoml:`. BentoML's `BENTOML_CONFIG` rejects unknown top-level keys,
so instead of handing it the whole file, each service receives its share through
`@bentoml.service(**settings.service_options(name))`. A bad value stops the service at import
time with a message that names the key.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from despliegue import registry

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "configuration.yaml"
CONFIG_ENV_VAR = "DESPLIEGUE_CONFIG"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(StrictModel):
    """Adaptive batching bounds for one runner method (see BentoML's adaptive batching)."""

    max_batch_size: int = Field(ge=1, le=4096)
    # BentoML sheds load (503) when it predicts a batch would miss this deadline, so it is a
    # deadline, not a wait window: keep it well above one batch's compute time.
    max_latency_ms: int = Field(ge=10, le=600_000)
    # Off turns the method into a plain call per request (BentoML refuses max_batch_size 1);
    # the benchmark serves with it off to measure what batching buys. Excluded from
    # model_dump() so the bounds alone can still be spread into @bentoml.api.
    enabled: bool = Field(default=True, exclude=True)
    # Calls to this method one API worker keeps pending at once; requests arriving meanwhile
    # wait and leave merged in the next call (despliegue/coalescing.py). One gave the most
    # throughput with one runner worker (measured: 1 > 2 > 4); raise it with the runner's
    # workers, so each has a call to work on.
    calls_in_flight: int = Field(default=1, ge=1, le=64, exclude=True)

    def api_options(self) -> dict[str, Any]:
        """Keyword arguments for a batchable runner method's `@bentoml.api(...)`; BentoML's
        dispatcher set to learn a model's cost without holding a lone request."""
        if not self.enabled:
            return {"batchable": False}
        from despliegue.bentoml_compat import batching_never_holds_a_lone_request

        batching_never_holds_a_lone_request()
        return {"batchable": True, **self.model_dump()}


CODE_CHARS = r"[A-Z0-9]{2,12}"
CODE_PATTERN = f"^{CODE_CHARS}$"


TAG_PATTERN = r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$"
ALIAS_PATTERN = r"^[A-Za-z0-9_-]+$"


class Canary(StrictModel):
    """A candidate model answering a share of a family's requests (despliegue/lifecycle/)."""

    tag: str = Field(pattern=TAG_PATTERN, description="store tag name:version of the candidate")
    percent: float = Field(ge=0, le=100, description="share of requests it answers, in %")


class FamilyConfig(StrictModel):
    """Which stored model serves a family, and how its calls are batched."""

    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(default="latest", pattern=r"^[A-Za-z0-9_.-]+$")
    batching: Batching
    # Decision threshold on the model's score, for families that answer yes/no or "unknown".
    threshold: float | None = Field(default=None, ge=0, le=1)
    # A candidate answering a share of requests, and one receiving a copy of every request.
    # The lifecycle state file (save_models.py canary / shadow) overrides both.
    canary: Canary | None = None
    shadow: str | None = Field(default=None, pattern=TAG_PATTERN)
    # `save_models.py sync` imports and serves what models:/<model>@<alias> names in MLflow.
    mlflow_alias: str | None = Field(default=None, pattern=ALIAS_PATTERN)
    # For a model that takes images of any size (the face detector): the API scales each image
    # down to this longer side before the model sees it, and maps the answers back.
    max_side: int | None = Field(default=None, ge=64, le=16384)

    @property
    def tag(self) -> str:
        return f"{self.model}:{self.version}"


class PanelConfig(StrictModel):
    """A family serving an open set of models named by a pattern (one model per code).

    `codes` empty means every model in the store whose name fits the pattern; `versions` pins
    one code to a stored version (otherwise its latest version is served).
    """

    model_pattern: str = Field(pattern=r"^[A-Za-z0-9_.-]*\{code\}[A-Za-z0-9_.-]*$")
    codes: list[Annotated[str, Field(pattern=CODE_PATTERN)]] = Field(default_factory=list)
    versions: dict[Annotated[str, Field(pattern=CODE_PATTERN)], str] = Field(default_factory=dict)
    batching: Batching
    # `save_models.py sync` serves, for every registered model fitting the pattern, the version
    # this MLflow alias names (a new code joins the panel).
    mlflow_alias: str | None = Field(default=None, pattern=ALIAS_PATTERN)

    @field_validator("versions")
    @classmethod
    def _versions_are_names(cls, versions: dict[str, str]) -> dict[str, str]:
        for code, version in versions.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", version):
                raise ValueError(f"version of {code} must be a store version, got {version!r}")
        return versions

    def model_name(self, code: str) -> str:
        return self.model_pattern.format(code=code)

    def name_regex(self) -> str:
        """A regex every model name of the panel fully matches, the code as group `code`."""
        prefix, _, suffix = self.model_pattern.partition("{code}")
        return f"{re.escape(prefix)}(?P<code>{CODE_CHARS}){re.escape(suffix)}"

    def code_of(self, model_name: str) -> str | None:
        """The code in a model name that fits the pattern, else None.

        BentoML stores tag names in lower case (modelo_amk_nm), so the match ignores case
        and codes are upper case.
        """
        found = re.fullmatch(self.name_regex(), model_name, re.IGNORECASE)
        return found["code"].upper() if found else None


def _family_kind(raw: Any) -> str:
    """A family entry with a model_pattern is a panel; any other names one model."""
    if isinstance(raw, PanelConfig) or (isinstance(raw, dict) and "model_pattern" in raw):
        return "panel"
    return "single"


FamilyEntry = Annotated[
    Annotated[FamilyConfig, Tag("single")] | Annotated[PanelConfig, Tag("panel")],
    Discriminator(_family_kind),
]
UNION_TAGS = {"single", "panel"}


class HeatFlowLimits(StrictModel):
    max_values: int = Field(ge=1, le=1_000_000)
    max_thickness_m: float = Field(gt=0, le=100_000)


class FalseTrueLimits(StrictModel):
    max_texts: int = Field(ge=1, le=100_000)
    max_text_chars: int = Field(ge=1, le=10_000_000)


# Pillow warns about an image above this many pixels (its MAX_IMAGE_PIXELS) and refuses twice
# as many. The service never changes that process-wide setting, so its own limit stays below.
PILLOW_MAX_IMAGE_PIXELS = 89_478_485


class ImageLimits(StrictModel):
    """Bounds on the images of one request, checked before any pixel is decoded."""

    max_images: int = Field(ge=1, le=1024)
    max_image_bytes: int = Field(ge=1024, le=1 << 30)
    max_pixels: int = Field(ge=1024, le=PILLOW_MAX_IMAGE_PIXELS)
    # Decoded pixels (after reduced-scale JPEG decoding) of all images of one request, and of
    # every request in flight in one API worker (past it: 429 with Retry-After).
    max_request_pixels: int = Field(default=67_108_864, ge=1024, le=1 << 34)
    max_pixels_in_flight: int = Field(default=134_217_728, ge=1024, le=1 << 36)

    @model_validator(mode="after")
    def _budgets_hold_one_image(self) -> ImageLimits:
        if not self.max_pixels <= self.max_request_pixels <= self.max_pixels_in_flight:
            raise ValueError(
                "need max_pixels <= max_request_pixels <= max_pixels_in_flight (an image the "
                "limits accept must fit in a request, and a request in the worker's budget)"
            )
        return self


class AntibioticLimits(StrictModel):
    max_vectors: int = Field(ge=1, le=100_000)
    max_features: int = Field(ge=1, le=1_000_000)


class Limits(StrictModel):
    max_body_bytes: int = Field(ge=1024)
    # A request head (request line and headers) not complete this long after its first byte
    # gets 408 and a closed connection (despliegue/http/server.py).
    request_head_timeout_s: float = Field(default=10.0, ge=0.5, le=600)
    # API requests one API worker answers at once; past it: 503 with Retry-After, at once
    # (despliegue/http/guards.py: InFlightLimit).
    max_requests_in_flight: int = Field(default=128, ge=1, le=100_000)
    # The share of those places the requests of one admission class may hold at most (the
    # registry gives each family its class); a class not listed may take any place.
    in_flight_share: dict[str, float] = Field(default_factory=dict)
    heatflow: HeatFlowLimits
    falsetrue: FalseTrueLimits
    images: ImageLimits
    antibiotics: AntibioticLimits

    @field_validator("in_flight_share")
    @classmethod
    def _known_classes_and_shares(cls, shares: dict[str, float]) -> dict[str, float]:
        classes = registry.admission_classes()
        unknown = sorted(shares.keys() - set(classes))
        if unknown:
            raise ValueError(
                f"unknown admission classes {unknown}; the families' classes are: "
                f"{', '.join(classes)}"
            )
        wrong = {name: share for name, share in shares.items() if not 0 < share <= 1}
        if wrong:
            raise ValueError(f"shares must be in (0, 1]: {wrong}")
        return shares

    def places_by_class(self) -> dict[str, int]:
        """The places of `max_requests_in_flight` each limited class may hold (at least one)."""
        return {
            name: max(1, int(share * self.max_requests_in_flight))
            for name, share in self.in_flight_share.items()
        }


class TensorFlowSettings(StrictModel):
    """Thread pools of every TensorFlow runner process (set before the first op runs)."""

    intra_op_threads: int = Field(ge=0, le=256)
    inter_op_threads: int = Field(ge=0, le=256)
    # Serve a Keras model's verified ONNX export (despliegue/compiled_runtime.py), and MTCNN's
    # three (despliegue/mtcnn_compiled.py), when the store has them; false serves every Keras
    # model and MTCNN with TensorFlow, as before compiled runtimes.
    compiled: bool = True


class ServiceLevelObjective(StrictModel):
    """What "sustainable" means for the stress test (benchmarks/stress.py): a rate is
    sustainable while the 99th percentile latency and the error rate stay within these."""

    p99_ms: float = Field(default=500.0, gt=0, le=600_000)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)


class AuthSettings(StrictModel):
    """Bearer tokens. Probes (/livez, /readyz, /healthz) are always open."""

    # Off only for local development; DESPLIEGUE_AUTH=off does the same without editing.
    enabled: bool = True
    # A file of hash lines (see despliegue/tokens.py); $DESPLIEGUE_TOKENS_FILE overrides it.
    tokens_file: str | None = None
    docs_need_token: bool = False
    metrics_need_token: bool = True
    # How often each worker looks whether the tokens file changed (and rereads it); 0: never.
    reload_interval_s: float = Field(default=5.0, ge=0, le=3600)


class AuditSettings(StrictModel):
    """One JSON line per call, to stdout and/or a rotating file."""

    stdout: bool = True
    file: str | None = None
    max_file_bytes: int = Field(default=10_485_760, ge=4096)
    backup_count: int = Field(default=5, ge=0, le=1000)
    # The request body is personal data in most deployments: off unless an operator opts in.
    include_input: bool = False
    max_input_chars: int = Field(default=2000, ge=0, le=1_000_000)


class SecuritySettings(StrictModel):
    auth: AuthSettings = Field(default_factory=AuthSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    # Addresses (or CIDR ranges) of the reverse proxies in front of the service. A request from
    # one of them is taken to come from the client its X-Forwarded-For names (audit `client`,
    # failure budgets); from anyone else that header is ignored. Empty: no proxy is trusted.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy)
            except ValueError:
                raise ValueError(
                    f"{proxy!r} is not an IP address or CIDR range (host bits must be 0)"
                ) from None
        return proxies


class LifecycleSettings(StrictModel):
    """Where the record of what each family serves lives (despliegue/lifecycle/)."""

    # Unset: `served.json` in the BentoML home, beside the models it names (one checkout used
    # with two homes never mixes their states); inside a Bento, the state packed at build time
    # (despliegue/lifecycle/state.py). A relative path is taken from the project folder.
    # DESPLIEGUE_LIFECYCLE_STATE overrides both.
    state_file: str | None = None
    # How often each runner looks whether the state file changed (seconds).
    poll_interval_s: float = Field(default=1.0, ge=0.1, le=3600)


class DriftThresholds(StrictModel):
    """When a feature counts as drifted: both a shift large enough to matter (PSI) and one
    unlikely to be chance (the test's p-value), so that many features checked at once do not
    raise alarms on noise alone."""

    psi: float = Field(default=0.2, gt=0, le=10)
    p_value: float = Field(default=0.01, gt=0, le=1)


class DriftSettings(StrictModel):
    """Live capture of input and prediction summaries, and the drift checks on them
    (despliegue/drift/)."""

    # Off: no summary is taken and no drift metric is exported (the cost of capture is the
    # difference, measured by the benchmarks).
    capture: bool = True
    # A window closes after this many answered items (values, texts, images, vectors) per model.
    window_items: int = Field(default=500, ge=10, le=1_000_000)
    # Closed windows kept per model (the "PSI over time" of the report); older ones are dropped.
    history_windows: int = Field(default=48, ge=1, le=10_000)
    # A window with fewer items is reported as "insufficient data", not judged.
    min_items: int = Field(default=50, ge=5, le=1_000_000)
    # A model stored without a baseline gets one from its first N answered items.
    baseline_items: int = Field(default=500, ge=10, le=100_000)
    # The live windows are written to disk this often, and at shutdown.
    persist_interval_s: float = Field(default=30.0, ge=1, le=86_400)
    # Folder of the saved windows; null: `drift` inside the BentoML home.
    storage_dir: str | None = None
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)


class BentoMLSettings(StrictModel):
    """BentoML service options: `defaults` for every service, `services` per class name."""

    defaults: dict[str, Any] = Field(default_factory=dict)
    services: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("services")
    @classmethod
    def _known_services(cls, services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # A misspelled service name would otherwise be ignored and its options never applied.
        names = registry.service_names()
        unknown = sorted(services.keys() - set(names))
        if unknown:
            raise ValueError(f"unknown services {unknown}; the services are: {', '.join(names)}")
        return services


class Settings(StrictModel):
    families: dict[str, FamilyEntry]
    limits: Limits
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    tensorflow: TensorFlowSettings
    bentoml: BentoMLSettings = Field(default_factory=BentoMLSettings)
    slo: ServiceLevelObjective = Field(default_factory=ServiceLevelObjective)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    # Family name -> "runner" or "api": where its runner runs, over the registry's default.
    placement: dict[str, str] = Field(default_factory=dict)

    @field_validator("placement")
    @classmethod
    def _known_placements(cls, placement: dict[str, str]) -> dict[str, str]:
        names = [family.name for family in registry.FAMILIES]
        for name, where in placement.items():
            if name not in names:
                raise ValueError(f"placement: unknown family {name!r}; the families are: {names}")
            if where not in registry.PLACEMENTS:
                raise ValueError(
                    f"placement.{name}: {where!r} is not one of {', '.join(registry.PLACEMENTS)}"
                )
        return placement

    def in_api(self, family: registry.Family) -> bool:
        """Whether the family's runner is an instance inside each API worker (no process of
        its own): `placement:` here, else the registry's default."""
        return self.placement.get(family.name, family.placement) == "api"

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: dict[str, FamilyEntry]) -> dict[str, FamilyEntry]:
        """The families of the registry (despliegue/registry.py), each in the shape it needs."""
        keys = registry.model_keys()
        missing = sorted(set(keys) - families.keys())
        if missing:
            raise ValueError(f"missing families: {missing}")
        unknown = sorted(families.keys() - set(keys))
        if unknown:
            raise ValueError(f"unknown families {unknown}; the families are: {', '.join(keys)}")
        for model in registry.models():
            entry = families[model.key]
            if model.panel and not isinstance(entry, PanelConfig):
                raise ValueError(f"families.{model.key} needs model_pattern (it serves a panel)")
            if not model.panel and isinstance(entry, PanelConfig):
                raise ValueError(f"families.{model.key} names one model, not a model_pattern")
        unset = [
            model.key
            for model in registry.models()
            if model.needs_threshold and getattr(families[model.key], "threshold", None) is None
        ]
        if unset:
            raise ValueError(f"families {unset} need a threshold")
        return families

    def family(self, name: str) -> FamilyConfig:
        family = self.families[name]
        assert isinstance(family, FamilyConfig), f"{name} is a panel"
        return family

    def panel(self, name: str) -> PanelConfig:
        panel = self.families[name]
        assert isinstance(panel, PanelConfig), f"{name} is not a panel"
        return panel

    def service_options(self, service_name: str) -> dict[str, Any]:
        """BentoML options for one service: the defaults deep-merged with its own entry.
        Every service of the project is declared with these, so this is also where BentoML's
        per-request work that never changes is set to happen once: a response's media type
        per class, a method's bound caller per instance."""
        from despliegue.bentoml_compat import api_methods_bound_once, media_types_worked_out_once

        media_types_worked_out_once()
        api_methods_bound_once()
        return _deep_merge(self.bentoml.defaults, self.bentoml.services.get(service_name, {}))


class ConfigurationError(RuntimeError):
    """The configuration file is missing or holds a value that fails validation."""


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH))


def load_settings(path: Path) -> Settings:
    """Parse and validate one configuration file; raise ConfigurationError naming the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read configuration file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in _plain_loc(err['loc'])) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration in {path}: {problems}") from None


def _plain_loc(loc: tuple[str | int, ...]) -> list[str | int]:
    """The key path an operator wrote: without the family-kind tag pydantic inserts."""
    if len(loc) > 2 and loc[0] == "families" and loc[2] in UNION_TAGS:
        return [*loc[:2], *loc[3:]]
    return list(loc)


@functools.cache
def settings() -> Settings:
    """The process-wide settings, read from DESPLIEGUE_CONFIG or ./configuration.yaml."""
    return load_settings(config_path())
