"""5-point similarity alignment (Umeyama): exact on exact data, least squares on noise, never a mirror."""

from __future__ import annotations

import numpy as np
import pytest

from edge.align import align_face, similarity_transform

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]])


def _apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_recovers_a_known_similarity():
    angle, scale, shift = np.deg2rad(17.0), 2.3, np.array([40.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (TEMPLATE - shift) @ np.linalg.inv(rot).T
    matrix = similarity_transform(src, TEMPLATE)
    np.testing.assert_allclose(_apply(matrix, src), TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)


def test_least_squares_on_noisy_points_and_no_reflection():
    rng = np.random.default_rng(0)
    src = TEMPLATE * 1.7 + 100 + rng.normal(0, 1.0, TEMPLATE.shape)
    matrix = similarity_transform(src, TEMPLATE)
    assert np.abs(_apply(matrix, src) - TEMPLATE).mean() < 1.5
    mirrored = src * np.array([-1.0, 1.0])  # a left-right mirrored face must not be "fixed" by a reflection
    assert np.linalg.det(similarity_transform(mirrored, TEMPLATE)[:, :2]) > 0


def test_degenerate_points_raise():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), TEMPLATE)
    with pytest.raises(ValueError, match="matching point sets"):
        similarity_transform(np.ones((4, 2)), TEMPLATE)


def test_align_face_puts_landmarks_on_the_template():
    image = np.zeros((300, 300, 3), np.uint8)
    src = TEMPLATE * 2 + 50
    for x, y in src.round().astype(int):
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    chip = align_face(image, src, TEMPLATE, (112, 112))
    assert chip.shape == (112, 112, 3)
    for x, y in TEMPLATE.round().astype(int):
        assert chip[y, x].max() > 100
