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


# Above this many boxes the N×N overlap matrix (8·N² bytes) is built in row blocks instead of at once.
NMS_BLOCK = 2048


def areas(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def as_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """``boxes`` as a float64 (N, 4) array (an empty input gives (0, 4)); ValueError naming ``name`` otherwise."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected (N, 4) x1, y1, x2, y2 boxes, got shape {arr.shape}")
    return arr


def iou_matrix(a, b) -> np.ndarray:
    """(N, M) intersection over union of every box of ``a`` with every box of ``b``; 0 where the union is empty.

    The one IoU of the project: the detector's NMS, the tracker and the detection benchmarks all measure it here.
    """
    return overlap_matrix(as_boxes(a, "a"), as_boxes(b, "b"), Overlap.UNION)


def overlap_matrix(a: np.ndarray, b: np.ndarray, mode: Overlap = Overlap.UNION) -> np.ndarray:
    """Overlap of every box of ``a`` (N, 4) with every box of ``b`` (M, 4): (N, M)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a, area_b = areas(a)[:, None], areas(b)[None, :]
    denom = np.minimum(area_a, area_b) if mode == Overlap.MIN else area_a + area_b - inter
    return np.divide(inter, denom, out=np.zeros_like(inter, dtype=np.float64), where=denom > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: Overlap = Overlap.UNION) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in descending score order.

    The overlaps are computed once, vectorised, so the greedy pass is a cheap boolean loop: a frame's NMS calls
    cost well under a millisecond instead of one numpy round trip per kept box.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    ordered = np.asarray(boxes, dtype=np.float64)[order]
    n = len(order)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for start in range(0, n, NMS_BLOCK):
        block = overlap_matrix(ordered[start : start + NMS_BLOCK], ordered, mode) > threshold
        for row, i in enumerate(range(start, min(start + NMS_BLOCK, n))):
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed[i + 1 :] |= block[row, i + 1 :]
    return order[np.asarray(keep, dtype=np.int64)]


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


# Bilinear is exact enough up to this downscale; beyond it, area averaging avoids aliasing (and costs 5-20x more).
BILINEAR_MAX_DOWNSCALE = 2.0


def crop_resized(
    image: np.ndarray, boxes: np.ndarray, size: int, scale: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Crop each box out of ``image`` and resize it to ``size``×``size``.

    ``boxes`` are in the pixels of the frame that ``image`` shows at ``scale`` = (x, y) (a pyramid level, or the
    frame itself at (1, 1)). A box that shrinks by at most BILINEAR_MAX_DOWNSCALE is warped exactly, to the
    sub-pixel (rounding it to whole level pixels would move the landmarks O-Net reads off it); a bigger shrink
    area-averages the box rounded to whole pixels. Outside the image is black, as in the original MTCNN, so faces
    cut by the frame edge keep their geometry. Returns (N, size, size, C).
    """
    height, width = image.shape[:2]
    channels = image.shape[2]
    out = np.zeros((len(boxes), size, size, channels), dtype=image.dtype)
    factors = np.array([scale[0], scale[1], scale[0], scale[1]], dtype=np.float64)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64) * factors):
        bw, bh = max(x2 - x1, 1e-3), max(y2 - y1, 1e-3)
        if max(bw, bh) / size <= BILINEAR_MAX_DOWNSCALE:
            kx, ky = size / bw, size / bh
            # Pixel centres: crop pixel c samples image coordinate (c + 0.5) / k + x1 - 0.5.
            matrix = np.array([[kx, 0.0, (0.5 - x1) * kx - 0.5], [0.0, ky, (0.5 - y1) * ky - 0.5]])
            out[i] = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0).reshape(size, size, channels)
            continue
        ix1, iy1 = int(round(x1)), int(round(y1))
        iw, ih = max(int(round(x2)) - ix1, 1), max(int(round(y2)) - iy1, 1)
        sx1, sy1 = max(ix1, 0), max(iy1, 0)
        sx2, sy2 = min(ix1 + iw, width), min(iy1 + ih, height)
        if sx2 <= sx1 or sy2 <= sy1:
            continue
        patch = np.zeros((ih, iw, channels), dtype=image.dtype)
        patch[sy1 - iy1 : sy2 - iy1, sx1 - ix1 : sx2 - ix1] = image[sy1:sy2, sx1:sx2]
        out[i] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, channels)
    return out
