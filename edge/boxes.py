"""Pure, vectorised box geometry for the detector: IoU, NMS, regression, squaring and padded crops.

Boxes are float arrays of shape (N, 4) ``[x1, y1, x2, y2]`` in image pixels. Every function accepts N = 0 and
returns arrays of the same rank, so the cascade never special-cases an empty stage.
"""

from __future__ import annotations

from enum import Enum

import cv2
import numpy as np


class Overlap(str, Enum):
    """How NMS measures overlap: intersection over union, or over the smaller box (MTCNN's last stage)."""

    UNION = "union"
    MIN = "min"


def areas(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def overlap_with(box: np.ndarray, boxes: np.ndarray, mode: Overlap = Overlap.UNION) -> np.ndarray:
    """Overlap of one box (4,) with many boxes (N, 4)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = areas(box[None])[0]
    others = areas(boxes)
    denom = np.minimum(area, others) if mode == Overlap.MIN else area + others - inter
    return np.divide(inter, denom, out=np.zeros_like(inter, dtype=np.float64), where=denom > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: Overlap = Overlap.UNION) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in descending score order."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[overlap_with(boxes[best], boxes[rest], mode) <= threshold]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply MTCNN's box regression: offsets are fractions of the box width/height (the +1 pixel convention)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the next stage's input is square)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack(
        [
            np.clip(boxes[:, 0], 0, width),
            np.clip(boxes[:, 1], 0, height),
            np.clip(boxes[:, 2], 0, width),
            np.clip(boxes[:, 3], 0, height),
        ],
        axis=1,
    )


def crop_resized(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop each box (rounded to whole pixels) out of ``image`` and resize it to ``size``×``size``.

    Parts of a box outside the image are zero (black), as in the original MTCNN, so faces cut by the frame edge
    keep their geometry. Returns (N, size, size, C) with the image's dtype.
    """
    height, width = image.shape[:2]
    out = np.zeros((len(boxes), size, size, image.shape[2]), dtype=image.dtype)
    rounded = np.round(boxes).astype(np.int64)
    for i, (x1, y1, x2, y2) in enumerate(rounded):
        bw, bh = max(int(x2 - x1), 1), max(int(y2 - y1), 1)
        sx1, sy1 = max(x1, 0), max(y1, 0)
        sx2, sy2 = min(x1 + bw, width), min(y1 + bh, height)
        if sx2 <= sx1 or sy2 <= sy1:
            continue
        if (sx1, sy1, sx2, sy2) == (x1, y1, x1 + bw, y1 + bh):
            patch = image[sy1:sy2, sx1:sx2]
        else:
            patch = np.zeros((bh, bw, image.shape[2]), dtype=image.dtype)
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        interpolation = cv2.INTER_AREA if max(bw, bh) > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (size, size), interpolation=interpolation).reshape(size, size, -1)
    return out
