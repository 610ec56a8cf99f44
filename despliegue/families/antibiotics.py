"""Antibiotics (seed 003): one 3-class Keras model per antibiotic, `modelo_<CODE>_NM`.

Each model takes one feature vector of a bacterial isolate and answers the probabilities of
S (susceptible), I (intermediate) and R (resistant). The panel is open: any stored model whose
name fits the pattern configured in `families.antibiotics.model_pattern` is served; its input
length, class labels and preprocessing live in its metadata, not in code.

The reference panel (AMK, AMP, ATM, CAS, CAZ) is trained on generated isolates: 16 binary
resistance-marker features; each antibiotic draws its own marker weights (seeded by its code),
a logistic score plus noise decides R / I / S with imbalanced rates (~65 % S, ~12 % I, ~23 % R),
and the small network is trained with balanced class weights, as the seed trains its models
for imbalance. They show the serving path works; they know nothing about real bacteria.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from despliegue.config import config_path, settings
from despliegue.drift.baselines import Summary, build_baseline
from despliegue.families.base import Recipe, ReferenceModel

REFERENCE_CODES = ("AMK", "AMP", "ATM", "CAS", "CAZ")
DEFAULT_CLASSES = ["S", "I", "R"]
N_MARKERS = 16
N_ISOLATES = 1500
PREPROCESSING_KINDS = ("none", "standardize")
# Longest JSON text of one float and its comma ("-2.2250738585072014e-308,").
JSON_BYTES_PER_VALUE = 25
MODEL_PATTERN = settings().panel("antibiotics").model_pattern


def code_of(model_name: str) -> str:
    """The antibiotic code in a model name, by the panel's one rule (despliegue/config.py)."""
    code = settings().panel("antibiotics").code_of(model_name)
    if code is None:
        raise ValueError(f"{model_name!r} does not fit the pattern {MODEL_PATTERN}")
    return code


def generate_isolates(code: str, n: int = N_ISOLATES) -> tuple[np.ndarray, np.ndarray]:
    """Marker matrix (n, 16) of 0/1 and labels 0=S, 1=I, 2=R; the same for the same code."""
    rng = np.random.default_rng(zlib.crc32(code.encode()))
    prevalence = rng.uniform(0.1, 0.5, size=N_MARKERS)
    markers = (rng.random((n, N_MARKERS)) < prevalence).astype(np.float32)
    weights = rng.normal(0.0, 0.4, size=N_MARKERS)
    weights[rng.choice(N_MARKERS, size=3, replace=False)] = rng.uniform(2.0, 3.5, size=3)
    score = markers @ weights + rng.normal(0.0, 0.5, size=n)
    s_cut, r_cut = np.quantile(score, [0.65, 0.77])
    labels = np.where(score >= r_cut, 2, np.where(score >= s_cut, 1, 0))
    return markers, labels


def build_reference(model_name: str) -> ReferenceModel:
    import keras
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils.class_weight import compute_class_weight

    code = code_of(model_name)
    markers, labels = generate_isolates(code)
    x_train, x_test, y_train, y_test = train_test_split(
        markers, labels, test_size=0.25, random_state=2026, stratify=labels
    )
    mean = x_train.mean(axis=0)
    std = np.where(x_train.std(axis=0) > 0, x_train.std(axis=0), 1.0)
    keras.utils.set_random_seed(zlib.crc32(code.encode()) % 2**31)
    model = keras.Sequential(
        [
            keras.Input((N_MARKERS,), name="markers"),
            keras.layers.Dense(24, activation="relu"),
            keras.layers.Dense(len(DEFAULT_CLASSES), activation="softmax"),
        ],
        name=model_name,
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    balanced = compute_class_weight("balanced", classes=np.arange(3), y=y_train)
    class_weight = {i: float(w) for i, w in enumerate(balanced)}
    model.fit(
        (x_train - mean) / std,
        y_train,
        epochs=25,
        batch_size=64,
        verbose=0,
        class_weight=class_weight,
    )
    predicted = np.argmax(model((x_test - mean) / std, training=False).numpy(), axis=1)
    trained = model((x_train - mean) / std, training=False).numpy()
    metadata = {
        "reference": True,
        "task": "3-class antimicrobial susceptibility (S / I / R)",
        "code": code,
        "input_length": N_MARKERS,
        "classes": DEFAULT_CLASSES,
        "features": [f"marker_{i:02d}" for i in range(N_MARKERS)],
        "feature_ranges": {"marker_*": [0.0, 1.0]},
        "preprocessing": {
            "kind": "standardize",
            "mean": np.round(mean, 6).tolist(),
            "std": np.round(std, 6).tolist(),
        },
        "training_data": (
            f"{N_ISOLATES} generated isolates, {N_MARKERS} binary markers, weights seeded by "
            f"crc32({code!r}); R/I/S from a noisy logistic score (despliegue/families/"
            "antibiotics.py)"
        ),
        "class_weight": {c: round(w, 4) for c, w in zip(DEFAULT_CLASSES, balanced, strict=True)},
        "metrics_held_out": {
            "split": "25% held out, stratified",
            "balanced_accuracy": round(float(balanced_accuracy_score(y_test, predicted)), 4),
            "f1_macro": round(float(f1_score(y_test, predicted, average="macro")), 4),
        },
        "baseline": build_baseline(
            Summary(numeric={f"marker_{i:02d}": x_train[:, i].tolist() for i in range(N_MARKERS)}),
            {
                "class": [DEFAULT_CLASSES[i] for i in trained.argmax(axis=1)],
                "confidence": trained.max(axis=1).tolist(),
            },
            source="reference",
        ),
    }
    return ReferenceModel(model=model, metadata=metadata)


def _shapes(model: Any) -> tuple[int, int]:
    """(input length, number of classes) of a Keras model taking one flat vector."""
    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
        raise ValueError("the model must have exactly one input and one output")
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(in_shape) != 2 or in_shape[1] is None:
        raise ValueError(f"input shape must be (batch, n_features), got {in_shape}")
    if len(out_shape) != 2 or out_shape[1] is None or out_shape[1] < 2:
        raise ValueError(f"output shape must be (batch, n_classes), got {out_shape}")
    return int(in_shape[1]), int(out_shape[1])


def probe(model: Any) -> None:
    n_features, n_classes = _shapes(model)
    output = np.asarray(model(np.zeros((2, n_features), dtype=np.float32), training=False))
    if output.shape != (2, n_classes):
        raise ValueError(f"2 vectors gave output shape {output.shape}")
    if not np.all(np.isfinite(output)) or output.min() < 0 or output.max() > 1:
        raise ValueError("outputs must be class probabilities in [0, 1] (end in a softmax)")
    if not np.allclose(output.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("class probabilities must sum to 1 per vector (end in a softmax)")


def serving_metadata(model_name: str, model: Any, declared: dict[str, Any]) -> dict[str, Any]:
    """Input length from the model; classes, features, preprocessing as the import declared."""
    n_features, n_classes = _shapes(model)
    classes = [str(c) for c in declared.get("classes") or DEFAULT_CLASSES]
    if len(classes) != n_classes or len(set(classes)) != n_classes:
        raise ValueError(
            f"the model answers {n_classes} classes but the labels are {classes}: declare "
            f"{n_classes} distinct labels"
        )
    features = declared.get("features")
    if features is not None and len(features) != n_features:
        raise ValueError(f"{len(features)} feature names for an input of length {n_features}")
    preprocessing = dict(declared.get("preprocessing") or {"kind": "none"})
    if "kind" not in preprocessing:
        raise ValueError(
            f"preprocessing {sorted(preprocessing)} describes images; an antibiotic model's "
            f"preprocessing has a kind ({' or '.join(PREPROCESSING_KINDS)}), declared in its "
            "MLflow metadata"
        )
    kind = preprocessing.get("kind")
    if kind not in PREPROCESSING_KINDS:
        raise ValueError(f"preprocessing kind {kind!r} is not one of {PREPROCESSING_KINDS}")
    if kind == "standardize":
        for key in ("mean", "std"):
            values = np.asarray(preprocessing.get(key, []), dtype=float)
            if values.shape != (n_features,) or not np.all(np.isfinite(values)):
                raise ValueError(f"preprocessing.{key} needs {n_features} finite numbers")
        if np.any(np.asarray(preprocessing["std"], dtype=float) <= 0):
            raise ValueError("preprocessing.std must be > 0")
    check_request_limits(n_features)
    metadata = {
        "code": code_of(model_name),
        "input_length": n_features,
        "classes": classes,
        "preprocessing": preprocessing,
    }
    if features is not None:
        metadata["features"] = [str(f) for f in features]
    return metadata


def check_request_limits(n_features: int) -> None:
    """Refuse a model no request could reach: one vector of its length must pass the schema's
    length limit and fit in a request body. Names the configuration key to raise."""
    limits = settings().limits
    where = f"in {config_path()}"
    if n_features > limits.antibiotics.max_features:
        raise ValueError(
            f"the model takes {n_features} features per vector, but requests are limited to "
            f"limits.antibiotics.max_features = {limits.antibiotics.max_features} {where}: "
            f"raise it to at least {n_features}, then import again"
        )
    one_vector = n_features * JSON_BYTES_PER_VALUE + 1024
    if one_vector > limits.max_body_bytes:
        raise ValueError(
            f"one vector of {n_features} values takes up to {one_vector} bytes of JSON, but "
            f"request bodies are limited to limits.max_body_bytes = {limits.max_body_bytes} "
            f"{where}: raise it, then import again"
        )


RECIPE = Recipe(
    family="antibiotics",
    model_name=MODEL_PATTERN.format(code="<CODE>"),
    framework="keras",
    description="Keras, one per antibiotic: feature vector -> S / I / R probabilities",
    build_reference=build_reference,
    probe=probe,
    name_pattern=settings().panel("antibiotics").name_regex(),
    reference_names=tuple(MODEL_PATTERN.format(code=code) for code in REFERENCE_CODES),
    serving_metadata=serving_metadata,
)
