"""Flowers (seed 002): a Keras CNN that names 18 Oxford-102 flower classes from a photo.

No flower photos can be downloaded here, so the reference model is trained on images this
module draws: per class, a flower of 5-9 round petals in one colour around a centre of
another colour, at a random place, size, rotation and background, with colour jitter. It
proves the serving path (224x224x3 input, 18 classes, batching, threshold) end to end; it
knows nothing about real flowers. Import a real `.keras`/`.h5`/SavedModel with
`save_models.py import flower_classifier FILE` to serve one.

The preprocessing the model expects (input size, colour order, scaling; see
despliegue/preprocessing.py) and the class list live in the model's metadata, so the runner
serves an imported model with other preprocessing too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from despliegue.families.base import Recipe, ReferenceModel
from despliegue.families.image_models import decide_preprocessing, flat_output_warnings
from despliegue.preprocessing import PRESETS

# Oxford-102 category ids the seed serves, with the dataset's own names.
OXFORD102_NAMES: dict[int, str] = {
    41: "barbeton daisy",
    43: "sword lily",
    46: "wallflower",
    51: "petunia",
    58: "geranium",
    73: "water lily",
    74: "rose",
    75: "thorn apple",
    77: "passion flower",
    78: "lotus",
    80: "anthurium",
    81: "frangipani",
    82: "clematis",
    83: "hibiscus",
    88: "cyclamen",
    89: "watercress",
    94: "foxglove",
    95: "bougainvillea",
}
CLASSES = [{"id": key, "name": name} for key, name in OXFORD102_NAMES.items()]
INPUT_SIZE = (224, 224)
PREPROCESSING = {
    "size": list(INPUT_SIZE),
    "scale": 1 / 255,
    "offset": 0.0,
    "channels": "RGB",
    "decided_by": "reference",
}

PETAL_COLOURS = [
    (220, 40, 40),
    (240, 200, 30),
    (150, 60, 200),
    (250, 250, 250),
    (240, 120, 180),
    (40, 90, 220),
]
CENTRE_COLOURS = [(250, 160, 0), (30, 30, 30), (60, 200, 60)]
SEED = 2026
TRAIN_PER_CLASS = 40
HELD_OUT_PER_CLASS = 10


def draw_flower(
    rng: np.random.Generator, class_index: int, size: int = INPUT_SIZE[0]
) -> np.ndarray:
    """One synthetic flower photo of a class: petal colour x centre colour identify it."""
    from PIL import Image, ImageDraw

    petal = PETAL_COLOURS[class_index // len(CENTRE_COLOURS)]
    centre = CENTRE_COLOURS[class_index % len(CENTRE_COLOURS)]
    background = tuple(int(v) for v in rng.integers(20, 130, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    radius = rng.uniform(0.2, 0.38) * size
    turn = rng.uniform(0, 2 * np.pi)
    petals = int(rng.integers(5, 10))

    def jitter(colour: tuple[int, int, int]) -> tuple[int, ...]:
        return tuple(int(np.clip(v + rng.normal(0, 15), 0, 255)) for v in colour)

    petal_colour, reach, petal_radius = jitter(petal), radius * 0.6, radius * 0.35
    for k in range(petals):
        angle = turn + 2 * np.pi * k / petals
        px, py = cx + np.cos(angle) * reach, cy + np.sin(angle) * reach
        draw.ellipse(
            [px - petal_radius, py - petal_radius, px + petal_radius, py + petal_radius],
            fill=petal_colour,
        )
    core = radius * 0.25
    draw.ellipse([cx - core, cy - core, cx + core, cy + core], fill=jitter(centre))
    return np.asarray(image)


def synthetic_set(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = np.stack([draw_flower(rng, int(label)) for label in labels])
    return images, labels


def preprocess(images: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    return images.astype(np.float32) * preprocessing["scale"] + preprocessing["offset"]


def build_reference() -> ReferenceModel:
    from despliegue.tensorflow_runtime import configure_tensorflow

    tf = configure_tensorflow()
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x_train, y_train = synthetic_set(rng, TRAIN_PER_CLASS)
    x_test, y_test = synthetic_set(rng, HELD_OUT_PER_CLASS)
    # Average-pool 4x first: the 224x224 input the design fixes, at the cost of a 56x56 CNN.
    model = keras.Sequential(
        [
            keras.Input(shape=(*INPUT_SIZE, 3)),
            keras.layers.AveragePooling2D(4),
            keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(48, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(48, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ],
        name="flower_classifier_reference",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(preprocess(x_train, PREPROCESSING), y_train, epochs=35, batch_size=32, verbose=0)
    probabilities = model(tf.constant(preprocess(x_test, PREPROCESSING)), training=False).numpy()
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    metadata = {
        "reference": True,
        "task": "image classification, 18 Oxford-102 flower classes",
        "classes": CLASSES,
        "preprocessing": PREPROCESSING,
        "training_data": (
            f"{len(x_train)} synthetic 224x224 flowers drawn by despliegue/families/flowers.py "
            f"({TRAIN_PER_CLASS} per class): each class is one petal colour x centre colour; "
            "no real flower photos (none can be downloaded here)"
        ),
        "feature_ranges": {"pixels": [0, 255], "input_shape": [*INPUT_SIZE, 3]},
        "metrics_held_out": {
            "split": f"{len(x_test)} freshly drawn synthetic images",
            "accuracy": round(accuracy, 4),
        },
        "parameters": int(model.count_params()),
    }
    return ReferenceModel(model=model, metadata=metadata)


def serving_metadata(model_name: str, model: Any, declared: dict[str, Any]) -> dict[str, Any]:
    """Metadata an imported classifier gets: its own input size, the preprocessing detected in
    it or declared (pixels / 255 if neither), our classes."""
    preprocessing = decide_preprocessing(model, declared.get("preprocessing"), PRESETS["unit"])
    return {"classes": CLASSES, "preprocessing": preprocessing.to_metadata()}


def probe(model: Any) -> None:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(f"expected an input of shape (batch, height, width, 3), got {shape}")
    output = np.asarray(model(np.zeros((2, *shape[1:]), dtype=np.float32), training=False))
    if output.shape != (2, len(CLASSES)):
        raise ValueError(f"2 images gave output shape {output.shape}; expected (2, {len(CLASSES)})")
    if not np.all(np.isfinite(output)):
        raise ValueError("the model answered NaN or infinity")


RECIPE = Recipe(
    family="flowers",
    model_name="flower_classifier",
    framework="keras",
    description="Keras CNN: 224x224 RGB photo -> 18 Oxford-102 flower classes",
    build_reference=build_reference,
    probe=probe,
    serving_metadata=serving_metadata,
    review=flat_output_warnings,
)
