"""Load and validate `configuration.yaml`, once per process.

The file holds the product's settings (model tags, batching, input limits) and BentoML's own
runtime settings under `bentoml:`. BentoML's `BENTOML_CONFIG` rejects unknown top-level keys,
so instead of handing it the whole file, each service receives its share through
`@bentoml.service(**settings.service_options(name))`. A bad value stops the service at import
time with a message that names the key.
"""

from __future__ import annotations

import functools
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
)

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


CODE_PATTERN = r"^[A-Z0-9]{2,12}$"


class FamilyConfig(StrictModel):
    """Which stored model serves a family, and how its calls are batched."""

    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(default="latest", pattern=r"^[A-Za-z0-9_.-]+$")
    batching: Batching

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

    @field_validator("versions")
    @classmethod
    def _versions_are_names(cls, versions: dict[str, str]) -> dict[str, str]:
        for code, version in versions.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", version):
                raise ValueError(f"version of {code} must be a store version, got {version!r}")
        return versions

    def model_name(self, code: str) -> str:
        return self.model_pattern.format(code=code)

    def code_of(self, model_name: str) -> str | None:
        """The code in a model name that fits the pattern, else None.

        BentoML stores tag names in lower case (modelo_amk_nm), so the match ignores case
        and codes are upper case.
        """
        prefix, _, suffix = self.model_pattern.lower().partition("{code}")
        name = model_name.lower()
        if not (name.startswith(prefix) and name.endswith(suffix)):
            return None
        code = name[len(prefix) : len(name) - len(suffix)].upper()
        return code if re.fullmatch(CODE_PATTERN, code) else None


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


class AntibioticLimits(StrictModel):
    max_vectors: int = Field(ge=1, le=100_000)
    max_features: int = Field(ge=1, le=1_000_000)


class Limits(StrictModel):
    max_body_bytes: int = Field(ge=1024)
    heatflow: HeatFlowLimits
    falsetrue: FalseTrueLimits
    antibiotics: AntibioticLimits


class BentoMLSettings(StrictModel):
    """BentoML service options: `defaults` for every service, `services` per class name."""

    defaults: dict[str, Any] = Field(default_factory=dict)
    services: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Settings(StrictModel):
    families: dict[str, FamilyEntry]
    limits: Limits
    bentoml: BentoMLSettings = Field(default_factory=BentoMLSettings)

    @field_validator("families")
    @classmethod
    def _known_families(
        cls, families: dict[str, FamilyConfig | PanelConfig]
    ) -> dict[str, FamilyConfig | PanelConfig]:
        missing = {"heatflow", "falsetrue", "antibiotics"} - families.keys()
        if missing:
            raise ValueError(f"missing families: {sorted(missing)}")
        if not isinstance(families["antibiotics"], PanelConfig):
            raise ValueError("families.antibiotics needs model_pattern (it serves a panel)")
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
        """BentoML options for one service: the defaults deep-merged with its own entry."""
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
