"""What runners and the API hand each other, named: row layouts and request rows.

A runner answers plain numbers (arrays travel cheaply between the processes and a runner knows
nothing about HTTP); the API turns them into response schemas. Both sides read the layout here,
so neither owns it and a column is named where it is used, not counted.
"""

from __future__ import annotations

from pydantic import BaseModel

# The face detector's five landmarks, in the order of their (x, y) pairs in a detection row.
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
_DETECTION_WIDTH = 5 + 2 * len(LANDMARKS)


class DetectionRow:
    """One face found by the detector: x, y, width, height, confidence, then an (x, y) pair per
    landmark, in image pixels."""

    BOX = slice(0, 4)
    CONFIDENCE = 4
    LANDMARK_POINTS = slice(5, _DETECTION_WIDTH)
    WIDTH = _DETECTION_WIDTH
    # Columns holding x and y coordinates (box origin and size, landmark pairs).
    X_COLUMNS = (0, 2, *range(5, _DETECTION_WIDTH, 2))
    Y_COLUMNS = (1, 3, *range(6, _DETECTION_WIDTH, 2))


class TextVerdictRow:
    """One text classified by the falsetrue runner: label (0 False, 1 Real), then the
    probability of Real (NaN when the model gives no probabilities)."""

    LABEL = 0
    PROBABILITY_REAL = 1
    WIDTH = 2


class PanelRow(BaseModel):
    """One feature vector for one antibiotic's model (the panel runner's batch item)."""

    code: str
    features: list[float]
