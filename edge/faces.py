"""Value types that flow between the pipeline stages.

A detector returns one :class:`Detections` per image, whatever the number of faces: its arrays have a leading
dimension of N (0 included), so callers never branch on shape. :class:`Face` is the per-face view used by the CLI
and by later stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

# Landmark order everywhere in doorface (as seen in the image, "left" = image left).
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def _frozen(array: np.ndarray, dtype: type, shape_tail: tuple[int, ...]) -> np.ndarray:
    out = np.array(array, dtype=dtype, copy=True).reshape((-1, *shape_tail))
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Face:
    """One detected face: box ``[x1, y1, x2, y2]`` in image pixels, score in 0..1, 5×2 landmarks."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def to_dict(self, ndigits: int = 2) -> dict:
        return {
            "box": [round(float(v), ndigits) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in self.landmarks],
        }


@dataclass(frozen=True, eq=False)
class Detections:
    """All faces of one image, sorted by descending score.

    ``boxes`` (N, 4) float32 ``[x1, y1, x2, y2]``; ``scores`` (N,) float32; ``landmarks`` (N, 5, 2) float32 in
    :data:`LANDMARK_NAMES` order. The arrays are read-only.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        boxes = _frozen(self.boxes, np.float32, (4,))
        scores = _frozen(self.scores, np.float32, ()).reshape(-1)
        landmarks = _frozen(self.landmarks, np.float32, (5, 2))
        if not (len(boxes) == len(scores) == len(landmarks)):
            raise ValueError(
                f"Detections arrays disagree: {len(boxes)} boxes, {len(scores)} scores, {len(landmarks)} landmarks"
            )
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "landmarks", landmarks)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))

    def __len__(self) -> int:
        return len(self.scores)

    def shifted(self, dx: float, dy: float) -> Detections:
        """The same faces in a frame where this image's top left corner sits at ``(dx, dy)``."""
        offset = np.array([dx, dy], dtype=np.float32)
        return Detections(self.boxes + np.tile(offset, 2), self.scores, self.landmarks + offset)

    def __iter__(self) -> Iterator[Face]:
        return iter(self.faces)

    @property
    def faces(self) -> tuple[Face, ...]:
        return tuple(
            Face(
                box=tuple(float(v) for v in box),
                score=float(score),
                landmarks=tuple((float(x), float(y)) for x, y in marks),
            )
            for box, score, marks in zip(self.boxes, self.scores, self.landmarks)
        )

    def to_list(self) -> list[dict]:
        return [face.to_dict() for face in self.faces]
