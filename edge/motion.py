"""Motion first: an empty door costs a frame difference, not a face detection.

A door camera looks at an empty door most of the time. Like Frigate, doorface compares each detection frame with
the previous one on a small, blurred grey copy; the detector then searches only a window around what moved and
around the faces it is following, and on an idle door it does not run at all. Every ``motion.full_frame_every``
seconds it searches the whole frame whatever moved, so a face that arrived without moving enough is found late,
never lost.

The window is a quarter of the frame (half of each side) centred on what it must cover, or the whole frame: P-Net
binds one interpreter per input shape and pyramid level, so one window size adds one set of shapes, not one per
frame (each set costs a few MB of interpreter arenas).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import cv2
import numpy as np

from edge.config import MotionConfig

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels, x2/y2 exclusive

FULL = "full"  # the whole frame is searched
WINDOW = "window"  # a window around motion and live faces
IDLE = "idle"  # nothing moved and no face is followed: no search
BLUR_KERNEL = (5, 5)  # sensor noise off the small grey copy before differencing


@dataclass(frozen=True)
class SearchArea:
    """Where to look for faces on one frame: ``box`` is None exactly when ``kind`` is :data:`IDLE`."""

    kind: str
    box: Optional[Box]


def small_grey(image: np.ndarray, width: int) -> np.ndarray:
    """The RGB frame as a blurred grey copy ``width`` pixels wide (the aspect kept)."""
    h, w = image.shape[:2]
    size = (width, max(1, round(h * width / w)))
    # Bilinear, not area: 6x cheaper on a 640x480 frame, and the blur below does the averaging that matters.
    grey = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2GRAY)
    return cv2.GaussianBlur(grey, BLUR_KERNEL, 0)


def moved_box(previous: np.ndarray, current: np.ndarray, threshold: int, min_area: float) -> Optional[Box]:
    """Bounding box (in the small copy's pixels) of what changed by more than ``threshold`` grey levels, or None
    when less than ``min_area`` of the picture changed. Lone changed pixels (noise) are eroded away first."""
    if previous.shape != current.shape:
        raise ValueError(f"frames of different sizes: {previous.shape} and {current.shape}")
    mask = (cv2.absdiff(previous, current) > threshold).astype(np.uint8)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
    if mask.mean() < min_area:
        return None
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def union(boxes: Iterable[Iterable[float]]) -> Optional[tuple[float, float, float, float]]:
    rows = np.asarray([list(b) for b in boxes], dtype=np.float64).reshape(-1, 4)
    if len(rows) == 0:
        return None
    return float(rows[:, 0].min()), float(rows[:, 1].min()), float(rows[:, 2].max()), float(rows[:, 3].max())


def window_around(box: tuple[float, float, float, float], pad: float, frame_shape: tuple[int, ...]) -> Box:
    """The window that searches ``box`` grown by ``pad`` on every side: a quarter of the frame (half of each side)
    centred on it and kept inside the frame, or the whole frame where a quarter would not hold it."""
    height, width = frame_shape[:2]
    x1, y1, x2, y2 = box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad
    if x2 - x1 > width // 2 or y2 - y1 > height // 2:
        return 0, 0, width, height
    out = []
    for low, high, side in ((x1, x2, width), (y1, y2, height)):
        size = side // 2
        start = min(max(int(round((low + high) / 2 - size / 2)), 0), side - size)
        out.append((start, start + size))
    (wx1, wx2), (wy1, wy2) = out
    return wx1, wy1, wx2, wy2


class MotionGate:
    """``gate.plan(image, timestamp, face_boxes)`` → the :class:`SearchArea` of that detection frame."""

    def __init__(self, config: MotionConfig):
        self.config = config
        self._previous: Optional[np.ndarray] = None
        self._last_full: Optional[float] = None

    def plan(self, image: np.ndarray, timestamp: float, face_boxes: Iterable[Iterable[float]]) -> SearchArea:
        height, width = image.shape[:2]
        if not self.config.enabled:
            return SearchArea(FULL, (0, 0, width, height))
        grey = small_grey(image, min(self.config.width, width))
        previous, self._previous = self._previous, grey
        # A clock that stepped back (a camera reconnect, NTP) counts as due, or full searches would pause until it
        # caught up.
        due = (self._last_full is None or timestamp < self._last_full
               or timestamp - self._last_full >= self.config.full_frame_every)
        if due or previous is None or previous.shape != grey.shape:
            self._last_full = timestamp
            return SearchArea(FULL, (0, 0, width, height))
        regions = list(face_boxes)
        moved = moved_box(previous, grey, self.config.threshold, self.config.min_area)
        if moved is not None:
            sx, sy = width / grey.shape[1], height / grey.shape[0]
            regions.append((moved[0] * sx, moved[1] * sy, moved[2] * sx, moved[3] * sy))
        covered = union(regions)
        if covered is None:
            return SearchArea(IDLE, None)
        pad = self.config.pad + self.config.margin * max(covered[2] - covered[0], covered[3] - covered[1])
        window = window_around(covered, pad, image.shape)
        if window == (0, 0, width, height):
            self._last_full = timestamp
            return SearchArea(FULL, window)
        return SearchArea(WINDOW, window)
