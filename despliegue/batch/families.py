"""How each family is scored in batch: what one item is, and its API answer as one row.

A `Scorer` prepares one item at a time (an unreadable image or an invalid value is that item's
error, never the run's) with the API's own gates (the request schema, the image decoder), then
answers a whole batch with the family's runner method and the family's answer function, so each
row holds the fields the API's answer holds for that item. Each family's registry entry names
its scorer (`Family.batch`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError

from despliegue.answers.antibiotics import (
    antibiotics_response,
    panel_of,
    panel_rows,
    requested_codes,
)
from despliegue.answers.faces import crops_to_validate, faces_of, super_response, validated_faces
from despliegue.answers.falsetrue import falsetrue_response
from despliegue.answers.flowers import flowers_response
from despliegue.answers.heatflow import heat_flow_response
from despliegue.config import settings
from despliegue.contracts import ModelCard
from despliegue.errors import ClientError
from despliegue.images import DecodedImage, ModelInput, decode_header, read_header, uploaded_payload
from despliegue.schemas import AntibioticsRequest, FalseTrueRequest, HeatFlowRequest

# A row: answer fields by column name (an error row holds only `error`).
Row = dict[str, Any]


class ItemRefused(ValueError):
    """One item the API would refuse; the message is the reason its row records."""


def refusal(exc: Exception) -> ItemRefused:
    """The API's wording of why an item is refused: the broken rule, as its 4xx body says it."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return ItemRefused(str(first["msg"]))
    if isinstance(exc, ClientError):
        return ItemRefused(exc.msg)
    return ItemRefused(str(exc) or type(exc).__name__)


def as_json(value: Any) -> str:
    """Nested answers (top-k, faces, probabilities) as one JSON text cell, any output format."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def card_of(runner: Any, key: str) -> ModelCard:
    """The card of the model answering `key` in a pinned runner (despliegue/lifecycle/swap.py)."""
    return runner.models.model(key).served.card


@dataclass(frozen=True)
class Scorer:
    """One family in batch. `reads` names what an item is: images (files), numbers, texts or
    vectors (numbers separated by commas, or a list cell); `column` is the table column read
    when none is named; `columns` the answer fields and their types (Spark SQL's names)."""

    family: str
    reads: str
    column: str
    columns: dict[str, str]
    READS: ClassVar[tuple[str, ...]] = ("images", "numbers", "texts", "vectors")

    def prepare(self, runner: Any, raw: Any) -> Any:
        raise NotImplementedError

    def answer(self, runner: Any, values: list[Any], options: dict[str, Any]) -> list[Row]:
        raise NotImplementedError


def image_from_file(path: Path, target: ModelInput, keep_original: bool = False) -> DecodedImage:
    """A file through the upload endpoints' gates (size, format, pixels, decode, resize)."""
    limits = settings().limits.images
    loc: list[str | int] = ["images"]
    try:
        raw = uploaded_payload(path, loc, limits)
        header = read_header(raw, loc, limits, target, keep_original)
        return decode_header(header, limits, target, keep_original)
    except (ClientError, OSError, ValueError) as exc:
        raise refusal(exc) from None


def number(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ItemRefused(f"not a number: {str(raw)[:40]!r}") from None


class HeatFlowScorer(Scorer):
    def prepare(self, runner: Any, raw: Any) -> float:
        try:
            return HeatFlowRequest(sediment_thickness_m=[number(raw)]).sediment_thickness_m[0]
        except ValidationError as exc:
            raise refusal(exc) from None

    def answer(self, runner: Any, values: list[float], options: dict[str, Any]) -> list[Row]:
        answered = runner.predict(np.asarray(values, dtype=float))
        card = card_of(runner, "heatflow")
        response = heat_flow_response(values, [a.answer for a in answered], card)
        return [
            {
                "sediment_thickness_m": thickness,
                "heat_flow_mw_m2": value,
                "unit": response.unit,
                "model_tag": item.model_tag,
            }
            for thickness, value, item in zip(
                response.sediment_thickness_m, response.heat_flow_mw_m2, answered, strict=True
            )
        ]


class FalseTrueScorer(Scorer):
    def prepare(self, runner: Any, raw: Any) -> str:
        try:
            return FalseTrueRequest(texts=[raw]).texts[0]
        except ValidationError as exc:
            raise refusal(exc) from None

    def answer(self, runner: Any, values: list[str], options: dict[str, Any]) -> list[Row]:
        answered = runner.classify(values)
        response = falsetrue_response([a.answer for a in answered], card_of(runner, "falsetrue"))
        return [
            {"is_falsetrue": label, "probability_real": probability, "model_tag": item.model_tag}
            for label, probability, item in zip(
                response.is_falsetrue, response.probability_real, answered, strict=True
            )
        ]


class FlowersScorer(Scorer):
    def prepare(self, runner: Any, raw: Path | str) -> np.ndarray:
        height, width = card_of(runner, "flowers").metadata["preprocessing"]["size"]
        return image_from_file(Path(raw), ModelInput(size=(int(height), int(width)))).pixels

    def answer(self, runner: Any, values: list[np.ndarray], options: dict[str, Any]) -> list[Row]:
        answered = runner.classify(values)
        threshold = float(settings().family("flowers").threshold)  # type: ignore[arg-type]
        response = flowers_response(
            [a.answer for a in answered], card_of(runner, "flowers"), options["top_k"], threshold
        )
        return [
            {
                "class_id": p.class_id,
                "name": p.name,
                "confidence": p.confidence,
                "top_k": as_json([c.model_dump() for c in p.top_k]),
                "threshold": response.threshold,
                "model_tag": item.model_tag,
            }
            for p, item in zip(response.predictions, answered, strict=True)
        ]


class FacesScorer(Scorer):
    """/super per image: detect, crop, validate, the verdict (as service.py answers it)."""

    def prepare(self, runner: Any, raw: Path | str) -> DecodedImage:
        detection = ModelInput(max_side=settings().family("face_detector").max_side)
        return image_from_file(Path(raw), detection)

    def answer(self, runner: Any, values: list[DecodedImage], options: dict[str, Any]) -> list[Row]:
        detector_threshold = float(settings().family("face_detector").threshold)  # type: ignore[arg-type]
        validator_threshold = float(settings().family("face_validator").threshold)  # type: ignore[arg-type]
        pixels = [image.pixels for image in values]
        detections = [a.answer for a in runner.detect(pixels)]
        validator = card_of(runner, "face_validator")
        height, width = validator.metadata["preprocessing"]["size"]
        seen = [faces_of(rows, detector_threshold) for rows in detections]
        crops = crops_to_validate(pixels, seen, (int(height), int(width)))
        scores = [float(a.answer) for a in runner.validate(crops)] if crops else []
        sent = [
            faces_of(rows, detector_threshold, image.scale)
            for image, rows in zip(values, detections, strict=True)
        ]
        validated = validated_faces(sent, scores, validator_threshold)
        response = super_response(
            validated,
            [None] * len(values),
            validator_threshold,
            card_of(runner, "face_detector"),
            validator,
        )
        return [
            {
                "result": verdict.result,
                "score": verdict.score,
                "faces": as_json([face.model_dump(mode="json") for face in verdict.faces]),
                "threshold": response.threshold,
                "detector": response.detector,
                "model_tag": response.model_tag,
            }
            for verdict in response.images
        ]


class AntibioticsScorer(Scorer):
    """Every served antibiotic that takes the vector's length (what a request without `codes`
    asks), each item's codes checked on its own."""

    def prepare(self, runner: Any, raw: Any) -> list[float]:
        if isinstance(raw, str):
            raw = [number(part) for part in raw.replace(";", ",").split(",") if part.strip()]
        try:
            return AntibioticsRequest(features=[list(raw)]).features[0]
        except (ValidationError, TypeError) as exc:
            raise refusal(exc) from None

    def answer(self, runner: Any, values: list[list[float]], options: dict[str, Any]) -> list[Row]:
        panel = settings().panel("antibiotics")
        served = panel_of(
            [card for card in runner.describe().cards if card.lane == "served"], panel
        )
        by_length: dict[int, list[int]] = {}
        for index, vector in enumerate(values):
            by_length.setdefault(len(vector), []).append(index)
        rows: list[Row] = [{}] * len(values)
        for indices in by_length.values():
            features = [values[i] for i in indices]
            try:
                codes = requested_codes(served, panel, features, None)
            except ClientError as exc:
                for i in indices:
                    rows[i] = {"error": exc.msg}
                continue
            answered = runner.susceptibility(panel_rows(codes, features))
            per_code = [a.answer for a in answered]
            response = antibiotics_response(served, codes, len(features), per_code)
            for position, i in enumerate(indices):
                results = response.results
                rows[i] = {
                    "codes": ",".join(r.code for r in results),
                    "predicted_class": as_json(
                        {r.code: r.predictions[position].predicted_class for r in results}
                    ),
                    "probabilities": as_json(
                        {r.code: r.predictions[position].probabilities for r in results}
                    ),
                    "model_tag": ",".join(r.model_tag for r in results),
                }
        return rows


HEATFLOW = HeatFlowScorer(
    "heatflow",
    "numbers",
    "sediment_thickness_m",
    {
        "sediment_thickness_m": "double",
        "heat_flow_mw_m2": "double",
        "unit": "string",
        "model_tag": "string",
    },
)
FALSETRUE = FalseTrueScorer(
    "falsetrue",
    "texts",
    "texts",
    {"is_falsetrue": "bigint", "probability_real": "double", "model_tag": "string"},
)
FLOWERS = FlowersScorer(
    "flowers",
    "images",
    "images",
    {
        "class_id": "bigint",
        "name": "string",
        "confidence": "double",
        "top_k": "string",
        "threshold": "double",
        "model_tag": "string",
    },
)
FACES = FacesScorer(
    "faces",
    "images",
    "input_data",
    {
        "result": "boolean",
        "score": "double",
        "faces": "string",
        "threshold": "double",
        "detector": "string",
        "model_tag": "string",
    },
)
ANTIBIOTICS = AntibioticsScorer(
    "antibiotics",
    "vectors",
    "features",
    {
        "codes": "string",
        "predicted_class": "string",
        "probabilities": "string",
        "model_tag": "string",
    },
)


def columns_of(scorer: Scorer) -> Sequence[str]:
    """Every output column, in order: the item's name, its answer fields, its error."""
    return ("item", *scorer.columns, "error")


def spark_schema(scorer: Scorer) -> str:
    """The output columns as a Spark DDL schema (what `mapInPandas` is told it returns)."""
    fields = {"item": "string", **scorer.columns, "error": "string"}
    return ", ".join(f"{name} {kind}" for name, kind in fields.items())
