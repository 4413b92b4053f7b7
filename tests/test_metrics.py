"""Pure-logic tests of converters.evaluate.metrics with hand-computed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from converters.evaluate.metrics import (
    DetectionCounts,
    centre_face_index,
    count_detections,
    landmark_error_box,
    landmark_nme_interocular,
    match_boxes,
)

REF = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], dtype=np.float32)


# ----------------------------------------------------------------------------------------------- match_boxes


def test_match_greedy_by_score_duplicates_become_unmatched() -> None:
    gt = np.array([[0, 0, 10, 10], [100, 100, 110, 110]])
    pred = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [100, 100, 110, 110], [50, 50, 60, 60]])
    scores = np.array([0.6, 0.9, 0.8, 0.7])
    r = match_boxes(pred, scores, gt)
    # pred 1 (score .9, IoU 0.818 with gt 0) claims gt 0 first; the exact duplicate pred 0 is left over.
    np.testing.assert_array_equal(r.matches, [[1, 0], [2, 1]])
    np.testing.assert_array_equal(r.unmatched_pred, [0, 3])
    assert r.unmatched_gt.shape == (0,)


def test_match_takes_highest_iou_free_gt() -> None:
    gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]])
    pred = np.array([[2, 0, 12, 10], [0, 0, 10, 10]])
    r = match_boxes(pred, [0.9, 0.5], gt)
    np.testing.assert_array_equal(r.matches, [[0, 1], [1, 0]])


def test_match_falls_back_to_second_best_gt_when_best_taken() -> None:
    gt = np.array([[0, 0, 10, 10], [1, 0, 11, 10]])
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    r = match_boxes(pred, [0.9, 0.8], gt)
    np.testing.assert_array_equal(r.matches, [[0, 0], [1, 1]])


def test_match_respects_threshold() -> None:
    gt = np.array([[0, 0, 10, 10]])
    pred = np.array([[5, 0, 15, 10]])  # IoU 1/3
    assert match_boxes(pred, [1.0], gt, iou_threshold=0.5).matches.shape == (0, 2)
    assert match_boxes(pred, [1.0], gt, iou_threshold=0.3).matches.shape == (1, 2)


@pytest.mark.parametrize(("n_pred", "n_gt"), [(0, 0), (0, 2), (2, 0)])
def test_match_empty_inputs(n_pred: int, n_gt: int) -> None:
    pred = np.tile([0, 0, 10, 10], (n_pred, 1))
    gt = np.tile([0, 0, 10, 10], (n_gt, 1))
    r = match_boxes(pred, np.ones(n_pred), gt)
    assert r.matches.shape == (0, 2)
    np.testing.assert_array_equal(r.unmatched_pred, np.arange(n_pred))
    np.testing.assert_array_equal(r.unmatched_gt, np.arange(n_gt))


def test_match_rejects_score_count_mismatch() -> None:
    with pytest.raises(ValueError, match="scores"):
        match_boxes(np.zeros((2, 4)), [1.0], np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------ count_detections


def test_counts_without_ignore() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 0, 30, 10], [80, 80, 90, 90]])
    c = count_detections(pred, [0.9, 0.8, 0.7, 0.6], gt)
    assert c == DetectionCounts(tp=2, fp=2, fn=1)
    assert c.recall == pytest.approx(2 / 3)
    assert c.precision == pytest.approx(0.5)


def test_counts_ignored_gt_is_neither_tp_fp_nor_fn() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    ignore = np.array([False, True, True])
    pred = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])  # hits the kept gt and one ignored gt; misses an ignored
    assert count_detections(pred, [0.9, 0.8], gt, ignore) == DetectionCounts(tp=1, fp=0, fn=0)


def test_counts_empty_cases() -> None:
    assert count_detections(np.zeros((0, 4)), [], np.zeros((0, 4))) == DetectionCounts(0, 0, 0)
    assert count_detections(np.zeros((0, 4)), [], [[0, 0, 1, 1]]) == DetectionCounts(0, 0, 1)
    assert count_detections([[0, 0, 1, 1]], [1.0], np.zeros((0, 4)), np.zeros(0, bool)) == DetectionCounts(0, 1, 0)


def test_counts_reject_ignore_length_mismatch() -> None:
    with pytest.raises(ValueError, match="ignore"):
        count_detections(np.zeros((0, 4)), [], [[0, 0, 1, 1]], [True, False])


def test_detection_counts_rates_add_and_nan() -> None:
    total = DetectionCounts(1, 0, 1) + DetectionCounts(2, 1, 0)
    assert total == DetectionCounts(3, 1, 1)
    assert total.recall == pytest.approx(0.75)
    assert total.precision == pytest.approx(0.75)
    assert math.isnan(DetectionCounts().recall)
    assert math.isnan(DetectionCounts().precision)
    assert sum([DetectionCounts(1, 0, 0)] * 3, DetectionCounts()) == DetectionCounts(3, 0, 0)


# ----------------------------------------------------------------------------------------------- landmarks


def test_landmark_error_box() -> None:
    pred = REF + [3.0, 4.0]  # every point off by 5 px
    assert landmark_error_box(pred, REF, [0, 0, 100, 25]) == pytest.approx(5 / 50)
    assert landmark_error_box(REF, REF, [0, 0, 10, 10]) == 0.0


def test_landmark_error_box_mean_over_points() -> None:
    pred = REF.copy()
    pred[2] += [10.0, 0.0]  # one point off by 10 → mean 2
    assert landmark_error_box(pred, REF, [0, 0, 20, 20]) == pytest.approx(2 / 20)


def test_landmark_nme_interocular() -> None:
    pred = REF + [0.0, 4.0]
    assert landmark_nme_interocular(pred, REF) == pytest.approx(4 / 40)


def test_landmark_errors_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="zero area"):
        landmark_error_box(REF, REF, [5, 5, 5, 10])
    with pytest.raises(ValueError, match="shape"):
        landmark_error_box(REF[:4], REF, [0, 0, 10, 10])
    same_eyes = REF.copy()
    same_eyes[1] = same_eyes[0]
    with pytest.raises(ValueError, match="interocular"):
        landmark_nme_interocular(REF, same_eyes)


# ---------------------------------------------------------------------------------------- centre_face_index


def test_centre_face_picks_nearest_containing_box() -> None:
    boxes = np.array([[0, 0, 60, 60], [90, 90, 170, 170], [100, 100, 160, 160], [110, 80, 250, 250]])
    # image centre (125, 125): boxes 1, 2, 3 contain it; 1 and 2 are centred on it (1 first by index).
    assert centre_face_index(boxes, (250, 250, 3)) == 1
    assert centre_face_index(boxes[[0, 3, 2]], (250, 250)) == 2


def test_centre_face_containment_beats_distance() -> None:
    # Box 0's centre (125, 100) is nearer but it does not contain (125, 125); box 1 does.
    boxes = np.array([[120, 95, 130, 105], [0, 0, 130, 130]])
    assert centre_face_index(boxes, (250, 250)) == 1


def test_centre_face_none_when_nothing_contains_centre() -> None:
    assert centre_face_index(np.array([[0, 0, 10, 10]]), (250, 250)) is None
    assert centre_face_index(np.zeros((0, 4)), (250, 250)) is None


def test_centre_face_uses_hw_order() -> None:
    # Tall image 100 (h) x 400 (w): centre is x=200, y=50.
    boxes = np.array([[25, 175, 75, 225], [175, 25, 225, 75]])
    assert centre_face_index(boxes, (100, 400)) == 1
