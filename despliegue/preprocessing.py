"""What a stored model expects done to its input before it is called, decided once at import.

An image model's card records its input size, colour order and value mapping:

    x = pixels (0-255, in `channels` order) * scale + offset,   then (x - mean) / std per channel

(mean/std only when given). A model that scales its own input (a `Rescaling` or `Normalization`
layer in the graph) is recorded as raw 0-255, so nothing scales it twice. `decided_by` says
whether the import detected it, the user declared it, or a default was assumed; `in_model`
lists the preprocessing layers found inside the model. The runner (CompiledImageModel) applies
exactly this, and `summary()` is the one line `GET /models` and `save_models.py list` show.

Antibiotic models record vector preprocessing instead (`kind`: none or standardize).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

ColourOrder = Literal["RGB", "BGR"]
DecidedBy = Literal["detected", "declared", "default", "reference"]

# The modes of keras.applications' preprocess_input (plus raw and 0-1), by name.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PRESETS: dict[str, dict[str, Any]] = {
    "raw": {"scale": 1.0, "offset": 0.0, "mean": None, "std": None, "channels": "RGB"},
    "unit": {"scale": 1 / 255, "offset": 0.0, "mean": None, "std": None, "channels": "RGB"},
    "tf": {"scale": 1 / 127.5, "offset": -1.0, "mean": None, "std": None, "channels": "RGB"},
    "torch": {
        "scale": 1 / 255,
        "offset": 0.0,
        "mean": IMAGENET_MEAN_RGB,
        "std": IMAGENET_STD_RGB,
        "channels": "RGB",
    },
    "caffe": {"scale": 1.0, "offset": 0.0, "mean": CAFFE_MEAN_BGR, "std": None, "channels": "BGR"},
}
DECLARABLE = ("preset", "scale", "offset", "mean", "std", "channels")


@dataclass(frozen=True)
class ImagePreprocessing:
    size: tuple[int, int]
    scale: float = 1 / 255
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: ColourOrder = "RGB"
    decided_by: DecidedBy = "default"
    in_model: tuple[str, ...] = field(default=())
    note: str = ""

    def __post_init__(self) -> None:
        if self.channels not in ("RGB", "BGR"):
            raise ValueError(f"channels must be RGB or BGR, got {self.channels!r}")
        if not np.isfinite(self.scale) or self.scale == 0 or not np.isfinite(self.offset):
            raise ValueError("scale must be a finite non-zero number and offset finite")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and (len(values) != 3 or not np.all(np.isfinite(values))):
                raise ValueError(f"{name} needs 3 finite numbers (one per channel)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std must be > 0")

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> ImagePreprocessing:
        """Read a card's `preprocessing` (older cards hold only size, scale and offset)."""
        return cls(
            size=(int(metadata["size"][0]), int(metadata["size"][1])),
            scale=float(metadata.get("scale", 1 / 255)),
            offset=float(metadata.get("offset", 0.0)),
            mean=_triple(metadata.get("mean")),
            std=_triple(metadata.get("std")),
            channels=metadata.get("channels", "RGB"),
            decided_by=metadata.get("decided_by", "default"),
            in_model=tuple(metadata.get("in_model", ())),
            note=str(metadata.get("note", "")),
        )

    def to_metadata(self) -> dict[str, Any]:
        recorded: dict[str, Any] = {
            "size": list(self.size),
            "channels": self.channels,
            "scale": self.scale,
            "offset": self.offset,
        }
        if self.mean is not None:
            recorded["mean"] = list(self.mean)
        if self.std is not None:
            recorded["std"] = list(self.std)
        recorded["decided_by"] = self.decided_by
        recorded["in_model"] = list(self.in_model)
        if self.note:
            recorded["note"] = self.note
        return recorded

    def declare(self, declared: dict[str, Any]) -> ImagePreprocessing:
        """This decision overridden by what an import declared: a preset first, then fields."""
        unknown = set(declared) - set(DECLARABLE)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; known: {DECLARABLE}")
        changes: dict[str, Any] = {}
        preset = declared.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"unknown preprocessing preset {preset!r}; known: {list(PRESETS)}")
            changes.update(PRESETS[preset])
        for key in ("scale", "offset"):
            if declared.get(key) is not None:
                changes[key] = parse_number(declared[key])
        for key in ("mean", "std"):
            if declared.get(key) is not None:
                changes[key] = _triple(declared[key])
        if declared.get("channels") is not None:
            changes["channels"] = str(declared["channels"]).upper()
        if not changes:
            return self
        return replace(self, **changes, decided_by="declared", note="")

    def apply(self, batch: np.ndarray) -> np.ndarray:
        """float32 model input for a (batch, height, width, 3) array of 0-255 RGB pixels."""
        pixels = np.asarray(batch)
        if self.channels == "BGR":
            pixels = pixels[..., ::-1]
        mean = np.asarray(self.mean if self.mean is not None else (0.0,) * 3, np.float32)
        std = np.asarray(self.std if self.std is not None else (1.0,) * 3, np.float32)
        # One multiply-add: (p * scale + offset - mean) / std, written into one float32 array
        # (the uint8 pixels are widened inside the multiply: no float copy, no temporaries).
        # Each image row is one run of width × 3 values, with the per-channel factors repeated
        # along it: broadcast over a last axis of 3, numpy's inner loop ran 3 values at a time
        # and this took 5.7× as long (8.2 against 1.4 ms for 16 images of 224 px).
        width = pixels.shape[-2]
        rows = np.ascontiguousarray(pixels).reshape(-1, width * 3)
        gain = np.tile(np.float32(self.scale) / std, width)
        bias = np.tile((np.float32(self.offset) - mean) / std, width)
        model_input = np.empty(rows.shape, np.float32)
        np.multiply(rows, gain, out=model_input)
        model_input += bias
        return model_input.reshape(pixels.shape)

    def is_raw(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0 and self.mean is None and self.std is None

    def summary(self) -> str:
        if self.is_raw():
            mapping = "raw 0–255"
        else:
            mapping = f"pixels{_times(self.scale)}{_plus(self.offset)}"
            if self.mean is not None and self.std is not None:
                mapping = f"({mapping} − mean) / std per channel"
            elif self.mean is not None:
                mapping = f"{mapping} − mean per channel"
            elif self.std is not None:
                mapping = f"{mapping} / std per channel"
        if self.channels == "BGR":
            mapping = f"BGR, {mapping}"
        return f"{mapping} ({_provenance(self)})"


def _provenance(preprocessing: ImagePreprocessing) -> str:
    found = f"in the model: {', '.join(preprocessing.in_model)}" if preprocessing.in_model else ""
    if preprocessing.decided_by == "detected":
        return f"detected, {found}"
    if preprocessing.decided_by == "declared":
        return f"declared at import{'; ' + found if found else ''}"
    if preprocessing.decided_by == "reference":
        return "reference model"
    return "default: no preprocessing found in the model"


def _times(scale: float) -> str:
    if scale == 1:
        return ""
    inverse = round(1 / scale, 3)
    if abs(inverse - 1 / scale) <= 1e-9 * abs(inverse):
        return f" / {inverse:g}"
    return f" × {scale:.6g}"


def _plus(offset: float) -> str:
    if offset == 0:
        return ""
    return f" − {-offset:.6g}" if offset < 0 else f" + {offset:.6g}"


def _triple(values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = values.split(",")
    return tuple(parse_number(v) for v in values)


def parse_number(value: Any) -> float:
    """A float from a number or a text such as "1/255" or "-1"."""
    if isinstance(value, str):
        numerator, _, denominator = value.strip().partition("/")
        try:
            number = float(numerator) / float(denominator or 1)
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{value!r} is not a number (e.g. 0.5 or 1/255)") from exc
        return number
    return float(value)


def summary(metadata: dict[str, Any]) -> str | None:
    """One line saying what is done to a stored model's input, or None if nothing is recorded."""
    recorded = metadata.get("preprocessing")
    if not isinstance(recorded, dict):
        return None
    if "size" in recorded:
        if "decided_by" not in recorded and metadata.get("reference"):
            recorded = {**recorded, "decided_by": "reference"}
        return ImagePreprocessing.from_metadata(recorded).summary()
    kind = recorded.get("kind", "none")
    if kind == "standardize":
        return "standardize: (x − mean) / std per feature"
    return "none: features as sent"
