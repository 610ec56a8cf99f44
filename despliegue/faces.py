"""Face answers from detector rows: schema objects, crops for validation, drawn boxes.

The runner returns plain rows (x, y, width, height, confidence, 5 landmark pairs) so it knows
nothing about the HTTP schema; these helpers turn rows into answers for /face and /super.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from despliegue.schemas import Box, Face

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def faces_of(
    rows: np.ndarray, minimum_confidence: float, scale: tuple[float, float] = (1.0, 1.0)
) -> list[Face]:
    """Detector rows at or above the confidence threshold, as Face answers; `scale` (x, y)
    maps the coordinates of the image the detector saw to those of the image sent."""
    faces = []
    for row in np.asarray(rows, dtype=float).reshape(-1, 15):
        if row[4] < minimum_confidence:
            continue
        row = row.copy()
        row[[0, 2, *range(5, 15, 2)]] *= scale[0]
        row[[1, 3, *range(6, 15, 2)]] *= scale[1]
        x, y, width, height = (round(v) for v in row[:4])
        points = row[5:].reshape(5, 2)
        faces.append(
            Face(
                box=Box(x=max(0, x), y=max(0, y), width=max(1, width), height=max(1, height)),
                confidence=round(float(row[4]), 4),
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
