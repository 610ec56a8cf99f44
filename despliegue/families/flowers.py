"""Flowers (seed 002): a Keras CNN that names 18 Oxford-102 flower classes from a photo.

No flower photos can be downloaded here, so the reference model is trained on images this
module draws: per class, a flower of 5-9 round petals in one colour around a centre of
another colour, at a random place, size, rotation and background, with colour jitter. It
proves the serving path (224x224x3 input, 18 classes, batching, threshold) end to end; it
knows nothing about real flowers. Import a real `.keras`/`.h5`/SavedModel with
`save_models.py import flower_classifier FILE` to serve one.

Open set: the seed answers "Flor no identificada" below a confidence threshold, for photos of
anything else. A classifier trained on flowers alone is confidently wrong on such photos, so
the reference model also learns from real non-flower photos that installed packages ship
(`skimage.data`, scikit-learn's sample images), with a target spread evenly over the 18
classes ("outlier exposure", Hendrycks et al., ICLR 2019): its top confidence on things that
are not flowers stays low, below the threshold. The 18 outputs stay the public contract.
Drawn round things without petals join them: with photos alone, a cup seen from above (the
held-out `coffee`) still passed for a flower, since round is what the drawn flowers are.
Some photos are held out of training; the share of them answered "Flor no identificada" is
measured here and recorded in the model's metadata (`metrics_held_out`).

The preprocessing the model expects (input size, colour order, scaling; see
despliegue/preprocessing.py) and the class list live in the model's metadata, so the runner
serves an imported model with other preprocessing too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from despliegue.drift.baselines import build_baseline, images_summary
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
# Real photos that are not flowers, by their skimage.data name (china: scikit-learn's sample
# image). Trained on: crops of these. Held out: never seen, used to measure the rejection rate.
NON_FLOWERS_TRAIN = (
    "camera", "coins", "hubble_deep_field", "immunohistochemistry", "moon", "page", "text",
    "horse", "brick", "grass", "gravel", "cell", "colorwheel", "clock", "retina", "logo",
    "microaneurysms", "checkerboard", "shepp_logan_phantom", "china",
)  # fmt: skip
NON_FLOWERS_HELD_OUT = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle")
CROPS_PER_PHOTO = 30
ROUND_THINGS = 120
HELD_OUT_CROPS_PER_PHOTO = 20
# Decision threshold the rejection rate is measured at (configuration.yaml's default).
THRESHOLD = 0.5


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


def draw_round_thing(rng: np.random.Generator, size: int = INPUT_SIZE[0]) -> np.ndarray:
    """A drawn thing that is round but has no petals (a plate, a cup from above, a coin): the
    petals, not the roundness, make the reference model's flowers."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(20, 230, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy = rng.uniform(0.3, 0.7, 2) * size
    radius = rng.uniform(0.15, 0.42) * size
    for ring in range(int(rng.integers(1, 4))):
        r = radius * (1 - 0.3 * ring)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.ellipse([cx - r, cy - r * rng.uniform(0.8, 1.0), cx + r, cy + r], fill=colour)
    return np.asarray(image)


def synthetic_set(rng: np.random.Generator, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    images = np.stack([draw_flower(rng, int(label)) for label in labels])
    return images, labels


def preprocess(images: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    return images.astype(np.float32) * preprocessing["scale"] + preprocessing["offset"]


def non_flower_photo(name: str) -> np.ndarray:
    """An RGB uint8 photo that ships with scikit-image (or scikit-learn's `china.jpg`)."""
    if name == "china":
        from sklearn.datasets import load_sample_image

        return load_sample_image("china.jpg")
    from skimage import data

    pixels = getattr(data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo pairs: the left view
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:  # boolean or float images
        pixels = (255 * (pixels.astype(np.float32) / max(float(pixels.max()), 1e-6))).astype(
            np.uint8
        )
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return pixels[..., :3]


def random_crops(rng: np.random.Generator, photo: np.ndarray, count: int) -> np.ndarray:
    """The whole photo and `count - 1` random square crops (20-100% of its short side, some
    mirrored), each resized to the model's input size."""
    from PIL import Image

    height, width = photo.shape[:2]
    crops = [Image.fromarray(photo)]
    for _ in range(count - 1):
        side = int(min(height, width) * rng.uniform(0.2, 1.0))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        crops.append(
            crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop
        )
    return np.stack([np.asarray(c.resize(INPUT_SIZE, Image.Resampling.BILINEAR)) for c in crops])


def non_flower_set(rng: np.random.Generator, names: tuple[str, ...], per_photo: int) -> np.ndarray:
    return np.concatenate([random_crops(rng, non_flower_photo(name), per_photo) for name in names])


def tinted(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Half of the images with each colour channel scaled at random: most photos that ship are
    grey, and a model must not learn that "not a flower" means "grey"."""
    gains = np.where(
        rng.random((len(images), 1, 1, 1)) < 0.5, rng.uniform(0.4, 1.6, (len(images), 1, 1, 3)), 1.0
    )
    return np.clip(images * gains, 0, 255).astype(np.uint8)


def small_photos() -> np.ndarray:
    """skimage's 200 LFW pictures (100 faces, 100 other scenes; 25x25 grey), at input size."""
    from PIL import Image
    from skimage import data

    return np.stack(
        [
            np.asarray(
                Image.fromarray((255 * p).astype(np.uint8)).convert("RGB").resize(INPUT_SIZE)
            )
            for p in data.lfw_subset()
        ]
    )


def rejection_rate(probabilities: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Share of images whose top class confidence is below the threshold."""
    return float(np.mean(probabilities.max(axis=1) < threshold))


def build_reference() -> ReferenceModel:
    from despliegue.tensorflow_runtime import configure_tensorflow

    tf = configure_tensorflow()
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    flowers, labels = synthetic_set(rng, TRAIN_PER_CLASS)
    x_test, y_test = synthetic_set(rng, HELD_OUT_PER_CLASS)
    photos = np.concatenate(
        [non_flower_set(rng, NON_FLOWERS_TRAIN, CROPS_PER_PHOTO), small_photos()]
    )
    round_things = np.stack([draw_round_thing(rng) for _ in range(ROUND_THINGS)])
    others = np.concatenate([tinted(rng, photos), round_things])
    others_held_out = non_flower_set(rng, NON_FLOWERS_HELD_OUT, HELD_OUT_CROPS_PER_PHOTO)
    # Targets: one-hot for a flower, an even spread over the 18 classes for anything else.
    targets = np.concatenate(
        [np.eye(len(CLASSES))[labels], np.full((len(others), len(CLASSES)), 1 / len(CLASSES))]
    ).astype(np.float32)
    pixels = np.concatenate([flowers, others])  # uint8: scaled per batch, not all at once
    scale, offset = PREPROCESSING["scale"], PREPROCESSING["offset"]
    training = (
        tf.data.Dataset.from_tensor_slices((pixels, targets))
        .shuffle(len(pixels), seed=SEED)
        .batch(32)
        .map(lambda x, y: (tf.cast(x, tf.float32) * scale + offset, y))
    )
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
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    model.fit(training, epochs=35, shuffle=False, verbose=0)  # the dataset reshuffles each epoch

    def predict(images: np.ndarray) -> np.ndarray:
        batches = [images[i : i + 64] for i in range(0, len(images), 64)]
        return np.concatenate(
            [
                model(tf.constant(preprocess(b, PREPROCESSING)), training=False).numpy()
                for b in batches
            ]
        )

    probabilities = predict(x_test)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == y_test))
    named = 1.0 - rejection_rate(probabilities)
    rejected = rejection_rate(predict(others_held_out))
    trained = predict(flowers)
    metadata = {
        "reference": True,
        "task": "image classification, 18 Oxford-102 flower classes",
        "classes": CLASSES,
        "preprocessing": PREPROCESSING,
        "training_data": (
            f"{len(flowers)} synthetic 224x224 flowers drawn by despliegue/families/flowers.py "
            f"({TRAIN_PER_CLASS} per class): each class is one petal colour x centre colour; "
            "no real flower photos (none can be downloaded here). Open set: "
            f"{len(photos)} real non-flower pictures (crops of {len(NON_FLOWERS_TRAIN)} photos, "
            f"skimage.data: {', '.join(NON_FLOWERS_TRAIN)}, china being scikit-learn's; and "
            "skimage's 200 LFW pictures; half of them colour-tinted) and "
            f"{ROUND_THINGS} drawn round things without petals, with an even target over the "
            "18 classes"
        ),
        "feature_ranges": {"pixels": [0, 255], "input_shape": [*INPUT_SIZE, 3]},
        "metrics_held_out": {
            "split": (
                f"{len(x_test)} freshly drawn synthetic flowers; {len(others_held_out)} images "
                f"of {len(NON_FLOWERS_HELD_OUT)} real photos never trained on "
                f"({', '.join(NON_FLOWERS_HELD_OUT)}: each whole and in random crops)"
            ),
            "accuracy": round(accuracy, 4),
            "threshold": THRESHOLD,
            "flowers_named": round(named, 4),
            "non_flowers_rejected": round(rejected, 4),
        },
        "parameters": int(model.count_params()),
        # Of the flowers trained on (what the model is for), not of the non-flower photos.
        "baseline": build_baseline(
            images_summary(flowers),
            {
                "class": [str(int(i)) for i in trained.argmax(axis=1)],
                "confidence": trained.max(axis=1).tolist(),
            },
            source="reference",
        ),
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
