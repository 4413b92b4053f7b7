"""The MTCNN cascade (Zhang et al. 2016) as one function over three stage runners.

The same :func:`detect_faces` runs float Keras nets in the converter's checks and int8 TFLite nets on the device:
only the runners differ. A runner takes uint8 RGB pixels and returns float outputs; normalisation and
(de)quantization are the runner's business, because they come from the model (see ``edge.detector``).

Runner contracts (N may be 0):

- P-Net: ``pnet(image (H, W, 3) uint8) -> (face_prob (h, w), box_offsets (h, w, 4))``
- R-Net: ``rnet(crops (N, 24, 24, 3) uint8) -> (face_prob (N,), box_offsets (N, 4))``
- O-Net: ``onet(crops (N, 48, 48, 3) uint8) -> (face_prob (N,), box_offsets (N, 4), landmarks (N, 10))``
  with landmarks as (x1..x5, y1..y5), fractions of the input box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import cv2
import numpy as np

from edge import boxes as bx
from edge.faces import Detections

# Fixed by the networks: P-Net is a 12×12 window sliding with stride 2; R-Net and O-Net take square crops.
PNET_CELL_SIZE = 12
PNET_STRIDE = 2
RNET_INPUT_SIZE = 24
ONET_INPUT_SIZE = 48

PNetRunner = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]
RNetRunner = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]
ONetRunner = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class CascadeParams:
    """Tunables of the cascade. Defaults are the published MTCNN settings."""

    min_face_size: float = 20.0
    """Smallest face side (pixels of the input image) the pyramid looks for; larger is faster."""
    scale_factor: float = 0.709
    """Ratio between pyramid levels (≈ 1/√2: each level halves the area)."""
    pnet_threshold: float = 0.6
    rnet_threshold: float = 0.7
    onet_threshold: float = 0.7
    pnet_nms_per_scale: float = 0.5
    pnet_nms_all_scales: float = 0.7
    rnet_nms: float = 0.7
    onet_nms: float = 0.7
    max_pnet_side: int = 1600
    """P-Net never sees an image side longer than this: huge images are searched for faces of at least
    ``max(side) * 12 / max_pnet_side`` pixels, which bounds time and memory (R-Net/O-Net still crop full
    resolution)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_factor < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1), got {self.scale_factor}")
        if self.min_face_size < PNET_CELL_SIZE:
            raise ValueError(f"min_face_size must be >= {PNET_CELL_SIZE} pixels, got {self.min_face_size}")
        for name in ("pnet_threshold", "rnet_threshold", "onet_threshold", "pnet_nms_per_scale",
                     "pnet_nms_all_scales", "rnet_nms", "onet_nms"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_pnet_side < PNET_CELL_SIZE:
            raise ValueError(f"max_pnet_side must be >= {PNET_CELL_SIZE}, got {self.max_pnet_side}")


DEFAULT_PARAMS = CascadeParams()


def pyramid_scales(height: int, width: int, params: CascadeParams = DEFAULT_PARAMS) -> list[float]:
    """Scales at which P-Net's 12-pixel window covers faces from ``min_face_size`` up to the whole image."""
    first = PNET_CELL_SIZE / params.min_face_size
    first = min(first, params.max_pnet_side / max(height, width))
    scales = []
    scale = first
    while min(height, width) * scale >= PNET_CELL_SIZE:
        scales.append(scale)
        scale *= params.scale_factor
    return scales


def candidate_boxes(prob: np.ndarray, offsets: np.ndarray, scale: tuple[float, float],
                    threshold: float) -> np.ndarray:
    """P-Net cells above ``threshold`` as rows ``[x1, y1, x2, y2, score, dx1, dy1, dx2, dy2]`` in image pixels.

    ``scale`` is the level's (x, y) size ratio to the frame: a level is ``ceil(side × nominal scale)`` pixels, and
    mapping with the nominal scale would shift every box towards the top left.
    """
    ys, xs = np.nonzero(prob >= threshold)
    if ys.size == 0:
        return np.zeros((0, 9), dtype=np.float64)
    sx, sy = scale
    x1 = xs * PNET_STRIDE / sx
    y1 = ys * PNET_STRIDE / sy
    return np.column_stack([x1, y1, x1 + PNET_CELL_SIZE / sx, y1 + PNET_CELL_SIZE / sy, prob[ys, xs],
                            offsets[ys, xs]]).astype(np.float64)


@dataclass(frozen=True)
class Pyramid:
    """The frame at decreasing scales: ``levels[0]`` is the frame itself (scale 1.0), then P-Net's levels.

    Each level is resized from the previous one, so a level costs in proportion to its own size. R-Net and O-Net
    crops are cut from the smallest level that keeps the box at least as large as the crop, so their final
    resize is a cheap bilinear shrink by at most 1/scale_factor instead of an area average over the full frame.
    """

    levels: tuple  # ((scale, image), ...), scales strictly decreasing, levels[0] == (1.0, frame)
    pnet_levels: int  # how many of the last levels P-Net runs on

    @classmethod
    def build(cls, image: np.ndarray, params: CascadeParams = DEFAULT_PARAMS) -> Pyramid:
        height, width = image.shape[:2]
        levels = [(1.0, image)]
        scales = pyramid_scales(height, width, params)  # all <= 1: min_face_size >= the 12-pixel cell
        for scale in scales:
            if scale == 1.0:
                continue  # P-Net runs on the frame itself
            size = (max(int(np.ceil(width * scale)), 1), max(int(np.ceil(height * scale)), 1))
            levels.append((scale, cv2.resize(levels[-1][1], size, interpolation=cv2.INTER_AREA)))
        return cls(tuple(levels), len(scales))

    def for_pnet(self) -> tuple:
        return self.levels[len(self.levels) - self.pnet_levels:]

    def actual_scale(self, level: np.ndarray) -> tuple[float, float]:
        """A level's true (x, y) size ratio to the frame (levels are rounded up to whole pixels)."""
        frame = self.levels[0][1]
        return level.shape[1] / frame.shape[1], level.shape[0] / frame.shape[0]

    def crops(self, boxes: np.ndarray, size: int) -> np.ndarray:
        """Square crops (N, size, size, 3) of frame-pixel boxes, each cut from the best level."""
        out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
        if len(boxes) == 0:
            return out
        scales = np.array([s for s, _ in self.levels])
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        wanted = size / np.maximum(side, 1e-6)
        # The smallest level whose scale still keeps the box >= size (levels are in decreasing scale).
        choice = np.clip(np.searchsorted(-scales, -wanted, side="right") - 1, 0, len(scales) - 1)
        for index in np.unique(choice):
            level = self.levels[index][1]
            mask = choice == index
            out[mask] = bx.crop_resized(level, boxes[mask], size, self.actual_scale(level))
        return out


def propose(pyramid: Pyramid, pnet: PNetRunner, params: CascadeParams) -> np.ndarray:
    """Stage 1: P-Net over the pyramid → square candidate boxes (N, 4) with scores (N,) as column 4."""
    per_scale = []
    for _, level in pyramid.for_pnet():
        prob, offsets = pnet(level)
        cand = candidate_boxes(prob, offsets, pyramid.actual_scale(level), params.pnet_threshold)
        if len(cand):
            cand = cand[bx.nms(cand[:, :4], cand[:, 4], params.pnet_nms_per_scale)]
            per_scale.append(cand)
    if not per_scale:
        return np.zeros((0, 5))
    cand = np.concatenate(per_scale)
    cand = cand[bx.nms(cand[:, :4], cand[:, 4], params.pnet_nms_all_scales)]
    # P-Net's offsets are relative to the 12-pixel cell, so regress with the cell side (no +1 convention).
    side = (cand[:, 2] - cand[:, 0])[:, None]
    regressed = cand[:, :4] + cand[:, 5:9] * side
    return np.column_stack([bx.square(regressed), cand[:, 4]])


def refine(pyramid: Pyramid, candidates: np.ndarray, rnet: RNetRunner, params: CascadeParams) -> np.ndarray:
    """Stage 2: R-Net rescoring and regression → square boxes (N, 4) with scores as column 4."""
    if len(candidates) == 0:
        return np.zeros((0, 5))
    prob, offsets = rnet(pyramid.crops(candidates[:, :4], RNET_INPUT_SIZE))
    keep = prob >= params.rnet_threshold
    boxes, prob, offsets = candidates[keep, :4], prob[keep], offsets[keep]
    order = bx.nms(boxes, prob, params.rnet_nms)
    boxes = bx.regress(boxes[order], offsets[order])
    return np.column_stack([bx.square(boxes), prob[order]])


def output(pyramid: Pyramid, candidates: np.ndarray, onet: ONetRunner, params: CascadeParams) -> Detections:
    """Stage 3: O-Net final score, box and five landmarks."""
    if len(candidates) == 0:
        return Detections.empty()
    boxes = candidates[:, :4]
    prob, offsets, marks = onet(pyramid.crops(boxes, ONET_INPUT_SIZE))
    keep = prob >= params.onet_threshold
    boxes, prob, offsets, marks = boxes[keep], prob[keep], offsets[keep], marks[keep]
    # Landmarks are fractions of the crop that O-Net saw (the box before regression).
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    xs = boxes[:, 0:1] + marks[:, 0:5] * w - 1
    ys = boxes[:, 1:2] + marks[:, 5:10] * h - 1
    landmarks = np.stack([xs, ys], axis=2)
    boxes = bx.regress(boxes, offsets)
    order = bx.nms(boxes, prob, params.onet_nms, bx.Overlap.MIN)
    height, width = pyramid.levels[0][1].shape[:2]
    return Detections(bx.clip(boxes[order], width, height), prob[order], landmarks[order])


def detect_faces(
    image: np.ndarray,
    pnet: PNetRunner,
    rnet: RNetRunner,
    onet: ONetRunner,
    params: CascadeParams = DEFAULT_PARAMS,
) -> Detections:
    """Run the three-stage cascade on one RGB uint8 image (H, W, 3); always returns a :class:`Detections`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"detect_faces needs an RGB uint8 image (H, W, 3), got shape {image.shape} {image.dtype}")
    if min(image.shape[:2]) < PNET_CELL_SIZE:
        return Detections.empty()
    pyramid = Pyramid.build(image, params)
    candidates = propose(pyramid, pnet, params)
    candidates = refine(pyramid, candidates, rnet, params)
    return output(pyramid, candidates, onet, params)
