"""What the benchmark measures: one `BenchPath` per public endpoint, declared, not coded.

Each entry says how to build one request, which runner method is the model call (the physical
limit calls that very method in-process, so the limit and the service run the same code), and
which seed-style FastAPI app (benchmarks/baselines/) is the design a user would run instead.

Adding a path is one entry in PATHS (the flowers entry below, for instance: route, family
key under `families:` in configuration.yaml, runner class, its batchable method = the metrics
method_name, `make_body(rng)` -> JSON dict (or bytes + content_type), `make_batch(rng, n)` ->
what the method takes for n items, the baseline app, the limit's batch sizes; optionally
`limit_call` when the model work is more than one method, `model_key` for the stored model
the baselines load, and `mlflow_body` for an `mlflow models serve` design)
and, for the seed design, a FastAPI module in benchmarks/baselines/ that loads the file named
by the MODEL_FILE environment variable and calls the model once per request. This module is
imported by the load generator and by locust (gevent), so keep heavy imports inside functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Body = dict[str, Any] | bytes


@dataclass(frozen=True)
class BenchPath:
    name: str
    route: str
    family: str
    runner: str
    method: str
    make_body: Callable[[np.random.Generator], Body]
    make_batch: Callable[[np.random.Generator, int], Any]
    baseline: str | None = None
    content_type: str = "application/json"
    items_per_request: int = 1
    limit_batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    # How the physical limit runs one batch on the runner instance; default: the method alone.
    # /super needs two model calls (detector, then validator on the crops), as the API makes.
    limit_call: Callable[[Any, Any], Any] | None = None
    # The stored model the baselines load (a key of benchmarks.store's answer): default the
    # family; a panel member is "antibiotics.AMK".
    model_key: str | None = None
    # Seed 003's design, `mlflow models serve` on the same model: the body its /invocations
    # takes for one request. None: the path has no MLflow design.
    mlflow_body: Callable[[np.random.Generator], Body] | None = None
    # The API's own work on one request body before the runner sees it (decoding images),
    # measured in-process next to the limit: on one core the model and this work share the
    # CPU, so together they bound what any server could answer. None: JSON numbers or text.
    api_work: Callable[[Body], Any] | None = None

    @property
    def runner_class_name(self) -> str:
        return self.runner.rpartition(":")[2]

    @property
    def store_key(self) -> str:
        return self.model_key or self.family

    def call_limit(self, runner: Any, batch: Any) -> Any:
        if self.limit_call is not None:
            return self.limit_call(runner, batch)
        return getattr(runner, self.method)(batch)

    def request(self, design: str = "service") -> tuple[str, Callable[[np.random.Generator], Body]]:
        """The route and body maker of one design: the service's (also the seed apps' and the
        Ray Serve peer's), `mlflow models serve`'s, MLServer's (the V2 inference protocol
        holding the same items), or the service's own V2 route with MLServer's tensors."""
        if design == "mlflow":
            if self.mlflow_body is None:
                raise ValueError(f"path {self.name!r} has no mlflow design")
            return "/invocations", self.mlflow_body
        if design == "mlserver":
            return f"/v2/models/{self.name}/infer", lambda rng: v2_body(self, self.make_body(rng))
        if design == "v2":
            # The service's own V2 route, with MLServer's body: the same tensors, its outputs.
            route = f"/v2/models/{self.v2_model_name}/infer"
            return route, lambda rng: service_v2_body(self, self.make_body(rng))
        return self.route, self.make_body

    @property
    def v2_model_name(self) -> str:
        """The store name the service's V2 routes serve this path's model under."""
        from despliegue.config import settings

        key, _, code = self.store_key.partition(".")
        return settings().panel(key).model_name(code) if code else settings().family(key).model


def _thickness(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.uniform(0.0, 12_000.0, size=n), 1)


def heatflow_body(rng: np.random.Generator) -> Body:
    return {"sediment_thickness_m": _thickness(rng, 1).tolist()}


def heatflow_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    return _thickness(rng, n)


def _headlines(rng: np.random.Generator, n: int) -> list[str]:
    from despliegue.families.falsetrue import load_corpus

    texts, _ = load_corpus()
    return [texts[i] for i in rng.integers(0, len(texts), size=n)]


def falsetrue_body(rng: np.random.Generator) -> Body:
    return {"texts": _headlines(rng, 1)}


def falsetrue_batch(rng: np.random.Generator, n: int) -> list[str]:
    return _headlines(rng, n)


def _b64_jpeg(pixels: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _flowers(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Synthetic 224x224 flower photos, drawn as the reference model's training set is."""
    from despliegue.families.flowers import CLASSES, draw_flower

    return [draw_flower(rng, int(k)) for k in rng.integers(0, len(CLASSES), size=n)]


def flowers_body(rng: np.random.Generator) -> Body:
    return {"images": [_b64_jpeg(_flowers(rng, 1)[0])]}


def decode_field(field: str) -> Callable[[Body], Any]:
    """The API's decoding of one image request (the same function its endpoints call)."""

    def decode(body: Body) -> Any:
        from despliegue.images import decode_images

        assert isinstance(body, dict)
        return decode_images(body[field], field)

    return decode


@functools.cache
def _astronaut() -> np.ndarray:
    """skimage's astronaut (512x512 RGB, one face the detector finds): a photo with a face
    that needs no download."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., :3])


@functools.cache
def _astronaut_b64(mirrored: bool) -> str:
    pixels = _astronaut()[:, ::-1] if mirrored else _astronaut()
    return _b64_jpeg(np.ascontiguousarray(pixels))


def face_body(rng: np.random.Generator) -> Body:
    return {"input_data": [_astronaut_b64(bool(rng.integers(0, 2)))]}


def face_batch(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return [_astronaut().copy() for _ in range(n)]


def super_limit(runner: Any, images: list[np.ndarray]) -> list[float]:
    """/super's model work for a batch of images: one detector call, the API's crops of the
    confident faces, one validator call on all crops."""
    from despliegue.answers.faces import crop, faces_of
    from despliegue.config import settings

    threshold = float(settings().family("face_detector").threshold)  # type: ignore[arg-type]
    detections = unwrapped(runner.detect(images))
    crops = [
        crop(image, face.box)
        for image, rows in zip(images, detections, strict=True)
        for face in faces_of(rows, threshold)
    ]
    return unwrapped(runner.validate(crops)) if crops else []


def unwrapped(answered: Sequence[Any]) -> list[Any]:
    """A runner's answers without the tag of the model that gave each (lifecycle.Answered)."""
    return [item.answer for item in answered]


ANTIBIOTIC = "AMK"  # one reference panel member; every member has the same 16-marker shape


def _markers(rng: np.random.Generator, n: int) -> np.ndarray:
    from despliegue.families.antibiotics import N_MARKERS

    return rng.integers(0, 2, size=(n, N_MARKERS)).astype(float)


def antibiotics_body(rng: np.random.Generator) -> Body:
    return {"features": _markers(rng, 1).tolist(), "codes": [ANTIBIOTIC]}


def antibiotics_batch(rng: np.random.Generator, n: int) -> list[Any]:
    from despliegue.contracts import PanelRow

    return [PanelRow(code=ANTIBIOTIC, features=row) for row in _markers(rng, n).tolist()]


def antibiotics_mlflow_body(rng: np.random.Generator) -> Body:
    """MLflow's tensor input for the same single vector (the pyfunc takes the model's raw
    input; the service standardizes the markers first, a 16-value subtraction)."""
    return {"inputs": _markers(rng, 1).tolist()}


PATHS: tuple[BenchPath, ...] = (
    BenchPath(
        name="heatflow",
        route="/heatflow",
        family="heatflow",
        runner="runners.heatflow:HeatFlowRegressor",
        method="predict",
        make_body=heatflow_body,
        make_batch=heatflow_batch,
        baseline="benchmarks.baselines.heatflow_seed:app",
    ),
    BenchPath(
        name="falsetrue",
        route="/falsetrue",
        family="falsetrue",
        runner="runners.falsetrue:FalseTrueClassifier",
        method="classify",
        make_body=falsetrue_body,
        make_batch=falsetrue_batch,
        baseline="benchmarks.baselines.falsetrue_seed:app",
    ),
    BenchPath(
        name="flowers",
        route="/flowers",
        family="flowers",
        runner="runners.flowers:FlowerClassifier",
        method="classify",
        make_body=flowers_body,
        make_batch=_flowers,
        baseline="benchmarks.baselines.flowers_seed:app",
        limit_batch_sizes=(1, 8, 16, 32, 64),
        api_work=decode_field("images"),
    ),
    BenchPath(
        name="face",
        route="/face",
        family="face_detector",
        runner="runners.faces:FaceAnalyzer",
        method="detect",
        make_body=face_body,
        make_batch=face_batch,
        baseline="benchmarks.baselines.faces_seed:app",
        model_key="face_validator",
        limit_batch_sizes=(1, 4, 8),
        api_work=decode_field("input_data"),
    ),
    BenchPath(
        name="super",
        route="/super",
        family="face_validator",
        runner="runners.faces:FaceAnalyzer",
        method="validate",
        make_body=face_body,
        make_batch=face_batch,
        baseline="benchmarks.baselines.faces_seed:app",
        limit_batch_sizes=(1, 4, 8),
        limit_call=super_limit,
        api_work=decode_field("input_data"),
    ),
    BenchPath(
        name="antibiotics",
        route="/antibiotics",
        family="antibiotics",
        runner="runners.antibiotics:AntibioticPanel",
        method="susceptibility",
        make_body=antibiotics_body,
        make_batch=antibiotics_batch,
        model_key=f"antibiotics.{ANTIBIOTIC}",
        mlflow_body=antibiotics_mlflow_body,
        limit_batch_sizes=(1, 8, 32, 128, 512),
    ),
)


def v2_body(path: BenchPath, body: Body) -> Body:
    """The service body's items as one V2 inference tensor (MLServer): texts and Base64 images
    as BYTES, numbers as FP64 rows; /falsetrue asks the sklearn runtime for the label and the
    probabilities, as the service's runner computes both."""
    from benchmarks.peers.models import REQUEST_FIELD

    assert isinstance(body, dict)
    items = body[REQUEST_FIELD[path.name]]
    if isinstance(items[0], str):
        tensor = {"datatype": "BYTES", "shape": [len(items)], "data": items}
    else:
        rows = np.asarray(items, dtype=float).reshape(len(items), -1)
        tensor = {"datatype": "FP64", "shape": list(rows.shape), "data": rows.ravel().tolist()}
    v2: dict[str, Any] = {"inputs": [{"name": REQUEST_FIELD[path.name], **tensor}]}
    if path.name == "falsetrue":
        v2["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
    return v2


def service_v2_body(path: BenchPath, body: Body) -> Body:
    """MLServer's V2 body for the service's V2 route: the same input tensor; every output."""
    v2 = v2_body(path, body)
    assert isinstance(v2, dict)
    v2.pop("outputs", None)
    return v2


def direct_answers(path: BenchPath, runner: Any, body: Body) -> list[Any]:
    """The answers a peer must give for `body`, from the service's runner called in-process
    (the model called directly), in the peers' shapes (benchmarks/peers/models.py)."""
    from benchmarks.peers.models import REQUEST_FIELD
    from despliegue.config import settings

    assert isinstance(body, dict)
    items = body[REQUEST_FIELD[path.name]]
    if path.name == "heatflow":
        answers = unwrapped(runner.predict(np.asarray(items, dtype=float)))
        return np.round(np.asarray(answers, dtype=float), 3).tolist()
    if path.name == "falsetrue":
        return np.asarray(unwrapped(runner.classify(items)), dtype=float).tolist()
    if path.name == "antibiotics":
        from runners.antibiotics import PanelRow

        rows = [PanelRow(code=ANTIBIOTIC, features=v) for v in items]
        return np.asarray(unwrapped(runner.susceptibility(rows)), dtype=float).tolist()
    images = decode_field(REQUEST_FIELD[path.name])(body)
    if path.name == "flowers":
        return np.asarray(unwrapped(runner.classify(images)), dtype=float).tolist()
    threshold = float(settings().family("face_detector").threshold)  # type: ignore[arg-type]
    detections = [
        [row.tolist() for row in rows if row[4] >= threshold]
        for rows in unwrapped(runner.detect(images))
    ]
    if path.name == "face":
        return detections
    scores = iter(super_limit(runner, images))
    return [max((next(scores) for _ in rows), default=0.0) for rows in detections]


def by_name(name: str) -> BenchPath:
    for path in PATHS:
        if path.name == name:
            return path
    raise KeyError(f"unknown benchmark path {name!r}; known: {[p.name for p in PATHS]}")


def encode(path: BenchPath, body: Body) -> bytes:
    """The bytes sent on the wire: JSON bodies are encoded once, before the clock starts."""
    import json

    return body if isinstance(body, bytes) else json.dumps(body).encode()
