"""img_super (seed 001): detector rows and validation scores -> answers for /face and /super.

The runner returns plain detection rows (despliegue/contracts.py) so it knows nothing about the
HTTP schema; these functions turn rows into faces, cut the crops the validation CNN scores,
decide each face's verdict and draw the boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from despliegue.contracts import LANDMARKS, DetectionRow, ModelCard
from despliegue.images import resize
from despliegue.schemas import (
    Box,
    Face,
    FaceResponse,
    ImageFaces,
    ImageVerdict,
    SuperResponse,
    ValidatedFace,
)


def faces_of(
    rows: np.ndarray, minimum_confidence: float, scale: tuple[float, float] = (1.0, 1.0)
) -> list[Face]:
    """Detector rows at or above the confidence threshold, as Face answers; `scale` (x, y)
    maps the coordinates of the image the detector saw to those of the image sent."""
    faces = []
    for row in np.asarray(rows, dtype=float).reshape(-1, DetectionRow.WIDTH):
        if row[DetectionRow.CONFIDENCE] < minimum_confidence:
            continue
        row = row.copy()
        row[list(DetectionRow.X_COLUMNS)] *= scale[0]
        row[list(DetectionRow.Y_COLUMNS)] *= scale[1]
        x, y, width, height = (round(v) for v in row[DetectionRow.BOX])
        points = row[DetectionRow.LANDMARK_POINTS].reshape(len(LANDMARKS), 2)
        faces.append(
            Face(
                box=Box(x=max(0, x), y=max(0, y), width=max(1, width), height=max(1, height)),
                confidence=round(float(row[DetectionRow.CONFIDENCE]), 4),
                landmarks={
                    name: (round(px), round(py))
                    for name, (px, py) in zip(LANDMARKS, points, strict=True)
                },
            )
        )
    return faces


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """The box's pixels (clipped to the image), at least 1x1."""
    height, width = image.shape[:2]
    x0, y0 = min(box.x, width - 1), min(box.y, height - 1)
    x1, y1 = (
        max(x0 + 1, min(width, box.x + box.width)),
        max(y0 + 1, min(height, box.y + box.height)),
    )
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def annotate_image(image: Image.Image, faces: Sequence[Face]) -> Image.Image:
    """A copy of the image with each face's box drawn (green if validated, else red)."""
    drawn = image.copy()
    pen = ImageDraw.Draw(drawn)
    line = max(2, min(image.size) // 150)
    for face in faces:
        colour = (0, 200, 0) if getattr(face, "result", True) else (220, 0, 0)
        b = face.box
        pen.rectangle([b.x, b.y, b.x + b.width, b.y + b.height], outline=colour, width=line)
    return drawn


def face_response(
    faces_per_image: Sequence[list[Face]], drawn: Sequence[str | None], detector: ModelCard
) -> FaceResponse:
    """/face: the faces of each image, with its drawn PNG when asked for."""
    return FaceResponse(
        images=[
            ImageFaces(faces=faces, annotated_png=png)
            for faces, png in zip(faces_per_image, drawn, strict=True)
        ],
        model=detector.tag,
        model_tag=detector.tag,
    )


def crops_to_validate(
    images: Sequence[np.ndarray], faces_per_image: Sequence[list[Face]], size: tuple[int, int]
) -> list[np.ndarray]:
    """Every face of every image, in order, sized (height, width) as the validation CNN takes
    it: one call (one batch) to the validation CNN."""
    return [
        resize(crop(image, face.box), size)
        for image, faces in zip(images, faces_per_image, strict=True)
        for face in faces
    ]


def validated_faces(
    faces_per_image: Sequence[list[Face]], scores: Sequence[float], threshold: float
) -> list[list[ValidatedFace]]:
    """Each face with its score (the crops' order) and result: score >= threshold."""
    if len(scores) != sum(len(faces) for faces in faces_per_image):
        raise ValueError(f"{len(scores)} scores for {sum(map(len, faces_per_image))} faces")
    validated, start = [], 0
    for faces in faces_per_image:
        own, start = scores[start : start + len(faces)], start + len(faces)
        validated.append(
            [
                ValidatedFace(**face.model_dump(), score=round(score, 4), result=score >= threshold)
                for face, score in zip(faces, own, strict=True)
            ]
        )
    return validated


def super_response(
    validated_per_image: Sequence[list[ValidatedFace]],
    drawn: Sequence[str | None],
    threshold: float,
    detector: ModelCard,
    validator: ModelCard,
) -> SuperResponse:
    """/super: per image TRUE when any face passes, with the best score (0 with no face)."""
    return SuperResponse(
        images=[
            ImageVerdict(
                result=any(face.result for face in faces),
                score=max((face.score for face in faces), default=0.0),
                faces=faces,
                annotated_png=png,
            )
            for faces, png in zip(validated_per_image, drawn, strict=True)
        ],
        threshold=threshold,
        detector=detector.tag,
        model=validator.tag,
        model_tag=validator.tag,
    )
