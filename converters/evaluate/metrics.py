"""Detection and landmark metrics, pure numpy so they can be tested with hand-computed inputs.

Boxes are ``[x1, y1, x2, y2]`` in pixels (continuous coordinates: width = x2 - x1), landmarks (5, 2) in the
doorface order left eye, right eye, nose, left mouth, right mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.boxes import as_boxes, iou_matrix

DEFAULT_IOU_THRESHOLD = 0.5
LEFT_EYE, RIGHT_EYE = 0, 1


@dataclass(frozen=True, eq=False)
class MatchResult:
    """One-to-one prediction ↔ ground-truth assignment; the index arrays are int64 and possibly empty."""

    matches: np.ndarray  # (K, 2) pred_idx, gt_idx
    unmatched_pred: np.ndarray  # (P - K,)
    unmatched_gt: np.ndarray  # (G - K,)


def match_boxes(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> MatchResult:
    """Greedy matching as in PASCAL VOC: the most confident prediction picks first, taking its best free gt.

    Greedy-by-score (not Hungarian) is the standard for detection AP, so duplicates of one face become false
    positives rather than being matched to a neighbouring face.
    """
    pred, gt = as_boxes(pred_boxes, "pred_boxes"), as_boxes(gt_boxes, "gt_boxes")
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != pred.shape[0]:
        raise ValueError(f"match_boxes: {scores.shape[0]} scores for {pred.shape[0]} predicted boxes")
    ious = iou_matrix(pred, gt)
    gt_free = np.ones(gt.shape[0], dtype=bool)
    matches: list[tuple[int, int]] = []
    for p in np.argsort(-scores, kind="stable"):
        candidates = np.where(gt_free & (ious[p] >= iou_threshold), ious[p], -1.0)
        if gt.shape[0] and candidates.max() >= 0:
            g = int(candidates.argmax())
            gt_free[g] = False
            matches.append((int(p), g))
    pairs = np.array(matches, dtype=np.int64).reshape(-1, 2)
    return MatchResult(
        matches=pairs,
        unmatched_pred=np.setdiff1d(np.arange(pred.shape[0]), pairs[:, 0]).astype(np.int64),
        unmatched_gt=np.flatnonzero(gt_free).astype(np.int64),
    )


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


@dataclass(frozen=True)
class DetectionCounts:
    """True/false positives and misses; summed over images with ``+`` so rates are pooled, not averaged."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        if not isinstance(other, DetectionCounts):
            return NotImplemented
        return DetectionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def count_detections(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_ignore: np.ndarray | None = None,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
) -> DetectionCounts:
    """TP/FP/FN for one image. A hit on an ignored gt counts as neither TP nor FP; a missed ignored gt is no FN."""
    gt = as_boxes(gt_boxes, "gt_boxes")
    ignore = np.zeros(gt.shape[0], dtype=bool) if gt_ignore is None else np.asarray(gt_ignore, dtype=bool).reshape(-1)
    if ignore.shape[0] != gt.shape[0]:
        raise ValueError(f"count_detections: {ignore.shape[0]} ignore flags for {gt.shape[0]} gt boxes")
    result = match_boxes(pred_boxes, pred_scores, gt, iou_threshold)
    matched_ignored = ignore[result.matches[:, 1]]
    return DetectionCounts(
        tp=int(np.count_nonzero(~matched_ignored)),
        fp=int(result.unmatched_pred.shape[0]),
        fn=int(np.count_nonzero(~ignore[result.unmatched_gt])),
    )


def _points(a: np.ndarray | list, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected (K, 2) landmark points, got shape {arr.shape}")
    return arr


def _mean_point_distance(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = _points(pred, "pred"), _points(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"landmarks: pred shape {pred.shape} != ref shape {ref.shape}")
    return float(np.linalg.norm(pred - ref, axis=1).mean())


def landmark_error_box(pred: np.ndarray, ref: np.ndarray, box: np.ndarray) -> float:
    """Mean point error / sqrt(w*h) of the reference box: scale-free and defined for profile faces too."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64).reshape(4)
    size = np.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))
    if size <= 0:
        raise ValueError(f"landmark_error_box: reference box {box} has zero area")
    return _mean_point_distance(pred, ref) / float(size)


def landmark_nme_interocular(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean point error / distance between the reference eyes (the usual 300-W style normalisation)."""
    ref_pts = _points(ref, "ref")
    if ref_pts.shape[0] <= RIGHT_EYE:
        raise ValueError("landmark_nme_interocular: ref needs at least the two eye points")
    interocular = float(np.linalg.norm(ref_pts[LEFT_EYE] - ref_pts[RIGHT_EYE]))
    if interocular <= 0:
        raise ValueError("landmark_nme_interocular: reference eyes coincide (interocular distance 0)")
    return _mean_point_distance(pred, ref_pts) / interocular


def centre_face_index(boxes: np.ndarray, image_shape: tuple[int, ...]) -> int | None:
    """Index of the box that contains the image centre and whose own centre is nearest to it, else None.

    LFW images are centred on the labelled person, so this picks the face the label belongs to.
    ``image_shape`` is numpy-style (h, w[, c]).
    """
    b = as_boxes(boxes, "boxes")
    if len(image_shape) < 2:
        raise ValueError(f"centre_face_index: image_shape {image_shape} must be (h, w[, c])")
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
    contains = (b[:, 0] <= cx) & (cx <= b[:, 2]) & (b[:, 1] <= cy) & (cy <= b[:, 3])
    if not contains.any():
        return None
    dist = np.hypot((b[:, 0] + b[:, 2]) / 2.0 - cx, (b[:, 1] + b[:, 3]) / 2.0 - cy)
    return int(np.argmin(np.where(contains, dist, np.inf)))
