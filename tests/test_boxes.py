"""Pure geometry of the detector: NMS, regression, squaring, padded crops, pyramid and P-Net cells."""

from __future__ import annotations

import numpy as np
import pytest

from edge import boxes as bx
from edge import mtcnn
from edge.faces import Detections


def test_nms_keeps_best_of_overlapping_and_all_disjoint():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], float)
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    keep = bx.nms(boxes, scores, 0.5)
    assert keep.tolist() == [1, 2]


def test_nms_min_mode_suppresses_nested_box():
    boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 40]], float)
    scores = np.array([0.9, 0.8])
    assert bx.nms(boxes, scores, 0.7, bx.Overlap.UNION).tolist() == [0, 1]  # IoU 0.09
    assert bx.nms(boxes, scores, 0.7, bx.Overlap.MIN).tolist() == [0]  # inside the bigger one


def test_nms_empty():
    assert bx.nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


def test_regress_uses_plus_one_convention():
    out = bx.regress(np.array([[10.0, 20.0, 19.0, 39.0]]), np.array([[0.1, -0.1, 0.2, 0.0]]))
    # width 10, height 20 with the +1 convention
    np.testing.assert_allclose(out, [[11.0, 18.0, 21.0, 39.0]])


def test_square_keeps_centre():
    out = bx.square(np.array([[0.0, 0.0, 10.0, 20.0]]))
    np.testing.assert_allclose(out, [[-5.0, 0.0, 15.0, 20.0]])


def test_crop_resized_pads_outside_with_black():
    image = np.full((20, 20, 3), 200, np.uint8)
    crops = bx.crop_resized(image, np.array([[-10.0, -10.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]]), 8)
    assert crops.shape == (2, 8, 8, 3) and crops.dtype == np.uint8
    assert crops[0, :3, :3].max() == 0 and crops[0, -3:, -3:].min() == 200  # top-left quadrant outside
    assert (crops[1] == 200).all()


def test_crop_resized_box_fully_outside_is_black_and_empty_input_ok():
    image = np.full((20, 20, 3), 200, np.uint8)
    assert (bx.crop_resized(image, np.array([[100.0, 100.0, 120.0, 120.0]]), 8) == 0).all()
    assert bx.crop_resized(image, np.zeros((0, 4)), 24).shape == (0, 24, 24, 3)


def test_pyramid_scales_cover_min_face_to_whole_image():
    scales = mtcnn.pyramid_scales(480, 640)
    assert scales[0] == pytest.approx(12 / 20)
    assert 480 * scales[-1] >= 12 and 480 * scales[-1] * 0.709 < 12
    np.testing.assert_allclose(np.diff(np.log(scales)), np.log(0.709))


def test_pyramid_scales_cap_huge_images():
    params = mtcnn.CascadeParams(max_pnet_side=1600)
    scales = mtcnn.pyramid_scales(10000, 10000, params)
    assert 10000 * scales[0] <= 1600 + 1e-6


def test_candidate_boxes_map_cells_to_image_pixels():
    prob = np.zeros((5, 6))
    prob[2, 3] = 0.9
    offsets = np.zeros((5, 6, 4))
    offsets[2, 3] = [0.1, 0.2, 0.3, 0.4]
    out = mtcnn.candidate_boxes(prob, offsets, scale=(0.5, 0.5), threshold=0.6)
    # cell (row 2, col 3) at stride 2 is at (6, 4) in the level, i.e. (12, 8) in the image, side 12/0.5 = 24
    np.testing.assert_allclose(out, [[12, 8, 36, 32, 0.9, 0.1, 0.2, 0.3, 0.4]])


def test_cascade_params_validation():
    with pytest.raises(ValueError, match="scale_factor"):
        mtcnn.CascadeParams(scale_factor=1.2)
    with pytest.raises(ValueError, match="min_face_size"):
        mtcnn.CascadeParams(min_face_size=5)
    with pytest.raises(ValueError, match="onet_threshold"):
        mtcnn.CascadeParams(onet_threshold=1.5)


def _stage_runners(face_box):
    """Deterministic stage runners that 'see' one face at ``face_box`` (to test the orchestration only)."""

    def pnet(level):
        h, w = level.shape[:2]
        rows, cols = (h - 12) // 2 + 1, (w - 12) // 2 + 1
        prob = np.zeros((max(rows, 0), max(cols, 0)))
        scale = w / 100.0
        fx1, fy1, fx2, fy2 = np.array(face_box) * scale
        side = fx2 - fx1
        if abs(side - 12) <= 1.5:  # the one pyramid level where the face spans one cell
            r, c = int(round(fy1 / 2)), int(round(fx1 / 2))
            if 0 <= r < rows and 0 <= c < cols:
                prob[r, c] = 0.95
        return prob, np.zeros(prob.shape + (4,))

    def rnet(crops):
        return np.full(len(crops), 0.9), np.zeros((len(crops), 4))

    def onet(crops):
        marks = np.tile([0.3, 0.7, 0.5, 0.35, 0.65, 0.35, 0.35, 0.55, 0.75, 0.75], (len(crops), 1))
        return np.full(len(crops), 0.99), np.zeros((len(crops), 4)), marks

    return pnet, rnet, onet


def test_cascade_orchestration_returns_typed_result_for_one_face():
    image = np.zeros((100, 100, 3), np.uint8)
    pnet, rnet, onet = _stage_runners((30, 30, 60, 60))
    result = mtcnn.detect_faces(image, pnet, rnet, onet, mtcnn.CascadeParams(min_face_size=20))
    assert isinstance(result, Detections) and len(result) == 1
    x1, y1, x2, y2 = result.boxes[0]
    stride = 2 / 0.425  # the fake nets do not regress: boxes are as coarse as one P-Net stride at that level
    assert abs(x1 - 30) < stride and abs(x2 - 60) < stride
    left_eye, right_eye = result.landmarks[0, 0], result.landmarks[0, 1]
    assert left_eye[0] < right_eye[0]


def test_cascade_same_type_for_zero_faces_and_tiny_images():
    pnet, rnet, onet = _stage_runners((0, 0, 0, 0))
    for image in (np.zeros((100, 100, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)):
        result = mtcnn.detect_faces(image, pnet, rnet, onet)
        assert isinstance(result, Detections) and len(result) == 0
        assert result.boxes.shape == (0, 4) and result.landmarks.shape == (0, 5, 2)


def test_cascade_rejects_non_rgb_uint8():
    pnet, rnet, onet = _stage_runners((0, 0, 0, 0))
    with pytest.raises(ValueError, match="RGB uint8"):
        mtcnn.detect_faces(np.zeros((50, 50), np.uint8), pnet, rnet, onet)
    with pytest.raises(ValueError, match="RGB uint8"):
        mtcnn.detect_faces(np.zeros((50, 50, 3), np.float32), pnet, rnet, onet)


def test_detections_are_read_only_and_serialisable():
    det = Detections(np.array([[1, 2, 3, 4]]), np.array([0.5]), np.zeros((1, 5, 2)))
    with pytest.raises(ValueError):
        det.boxes[0, 0] = 9
    assert det.to_list() == [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.5, "landmarks": [[0.0, 0.0]] * 5}]
    with pytest.raises(ValueError, match="disagree"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros((2, 5, 2)))


def _naive_nms(boxes, scores, threshold, mode):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        order = [j for j in order if bx.overlap_matrix(boxes[best][None], boxes[j][None], mode)[0, 0] <= threshold]
    return keep


@pytest.mark.parametrize("mode", [bx.Overlap.UNION, bx.Overlap.MIN])
def test_nms_matches_a_naive_reference_on_random_boxes(mode, monkeypatch):
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.hstack([xy, xy + rng.uniform(5, 60, (300, 2))])
    scores = rng.uniform(0, 1, 300)
    expected = _naive_nms(boxes, scores, 0.4, mode)
    assert bx.nms(boxes, scores, 0.4, mode).tolist() == expected
    monkeypatch.setattr(bx, "NMS_BLOCK", 37)  # the blocked path gives the same answer
    assert bx.nms(boxes, scores, 0.4, mode).tolist() == expected


def test_pyramid_levels_and_crops_from_the_right_level():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)
    frame = np.kron(base, np.ones((60, 64, 1), dtype=np.uint8))  # 480x640 of big blocks: smooth at crop scale
    pyramid = mtcnn.Pyramid.build(frame)
    scales = [s for s, _ in pyramid.levels]
    assert scales[0] == 1.0 and all(a > b for a, b in zip(scales, scales[1:]))
    assert [s for s, _ in pyramid.for_pnet()] == mtcnn.pyramid_scales(480, 640)
    boxes = np.array([[100.0, 100.0, 340.0, 340.0], [8.0, 16.0, 40.0, 48.0], [-20.0, -20.0, 100.0, 100.0]])
    from_levels = pyramid.crops(boxes, 24).astype(int)
    direct = bx.crop_resized(frame, boxes, 24).astype(int)  # area-averaged from the full frame
    assert from_levels.shape == (3, 24, 24, 3)
    assert np.abs(from_levels - direct).mean() < 6  # same content; interpolation differs slightly
    assert (from_levels[2, :3, :3] == 0).all()  # outside the frame stays black


# ------------------------------------------------------------------------------------------------ iou_matrix


def test_iou_identical_disjoint_and_half_overlap() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10], [0, 0, 5, 5]], dtype=np.float32)
    # overlap 50 / union 150 = 1/3; contained 25 / 100 = 0.25
    np.testing.assert_allclose(bx.iou_matrix(a, b), [[1.0, 0.0, 1 / 3, 0.25]], rtol=1e-6)


def test_iou_is_symmetric_with_transposed_shape() -> None:
    a = np.array([[0, 0, 4, 4], [2, 2, 6, 6]])
    b = np.array([[1, 1, 3, 3], [2, 2, 6, 6], [10, 10, 11, 11]])
    m = bx.iou_matrix(a, b)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, bx.iou_matrix(b, a).T)
    # a0 ∩ a1 = [2,2,4,4] = 4; union = 16 + 16 - 4 = 28
    np.testing.assert_allclose(bx.iou_matrix(a[:1], a[1:]), [[4 / 28]])


def test_iou_touching_edges_and_degenerate_boxes_are_zero() -> None:
    assert bx.iou_matrix([[0, 0, 10, 10]], [[10, 0, 20, 10]])[0, 0] == 0.0
    assert bx.iou_matrix([[5, 5, 5, 5]], [[5, 5, 5, 5]])[0, 0] == 0.0


@pytest.mark.parametrize(("n", "m"), [(0, 0), (0, 3), (2, 0)])
def test_iou_empty_inputs_give_empty_matrix(n: int, m: int) -> None:
    a = np.zeros((n, 4)) + [0, 0, 1, 1]
    b = np.zeros((m, 4)) + [0, 0, 1, 1]
    assert bx.iou_matrix(a, b).shape == (n, m)
    assert bx.iou_matrix([], b).shape == (0, m)


def test_iou_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        bx.iou_matrix(np.zeros((2, 3)), np.zeros((1, 4)))
