"""Quality gate: pose from landmarks, sharpness, the verdicts; on plain inputs and on real LFW faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge import quality
from edge.config import QualityConfig
from edge.embedder import Embedder
from edge.image_io import load_image

# A frontal face in the detector's landmark order (left eye, right eye, nose, mouth left, mouth right).
FRONTAL = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 71.6], [45.0, 90.0], [75.0, 90.0]])


def rotate(points: np.ndarray, degrees: float, centre=(60.0, 70.0)) -> np.ndarray:
    theta = np.deg2rad(degrees)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return (points - centre) @ rot.T + centre


def test_frontal_face_has_no_yaw_or_pitch():
    pose = quality.face_pose(FRONTAL)
    assert abs(pose.yaw) < 1e-9
    assert abs(pose.pitch) < 1e-9


def test_pose_ignores_roll_and_scale():
    for degrees in (-40, 15, 90):
        pose = quality.face_pose(rotate(FRONTAL, degrees) * 2.5)
        assert abs(pose.yaw) < 1e-9 and abs(pose.pitch) < 1e-9


def test_turned_and_tilted_faces():
    turned = FRONTAL.copy()
    turned[2, 0] += 20  # nose halfway to the right eye
    assert quality.face_pose(turned).yaw == pytest.approx(0.5)
    tilted = FRONTAL.copy()
    tilted[2, 1] = 52.0  # nose almost at eye height: looking up
    assert quality.face_pose(tilted).pitch < -0.4
    assert quality.face_pose(np.zeros((5, 2))).yaw == float("inf")


def test_geometry_verdicts_name_the_reason():
    config = QualityConfig(min_face_size=40, max_yaw=0.45, max_pitch=0.35)
    box = np.array([20.0, 20.0, 100.0, 120.0])
    assert quality.geometry_verdict(box, FRONTAL, config) == quality.OK
    assert quality.geometry_verdict(np.array([0, 0, 30, 30.0]), FRONTAL, config) == quality.TOO_SMALL
    turned = FRONTAL.copy()
    turned[2, 0] += 20
    assert quality.geometry_verdict(box, turned, config) == quality.TURNED
    tilted = FRONTAL.copy()
    tilted[2, 1] = 52.0
    assert quality.geometry_verdict(box, tilted, config) == quality.TILTED


@pytest.fixture(scope="module", params=["mobilefacenet", "dlib_resnet"])
def lfw_chips(request, shared_data):
    embedder = Embedder.from_manifest(request.param)
    rows = [line.split() for line in (shared_data / "lfw" / "landmarks_5pt.txt").read_text().splitlines()
            if line and not line.startswith("#")][:60]
    chips, blurred = [], []
    for row in rows:
        image = load_image(shared_data / "lfw" / "images" / row[0])
        marks = np.array(row[1:11], dtype=float).reshape(5, 2)
        chips.append(embedder.align(image, marks))
        blurred.append(embedder.align(cv2.GaussianBlur(image, (0, 0), 3), marks))
    return chips, blurred


def test_blur_gate_keeps_real_faces_and_rejects_blurred_ones(lfw_chips):
    config = QualityConfig()
    chips, blurred = lfw_chips
    kept = np.mean([quality.chip_verdict(c, config) == quality.OK for c in chips])
    rejected = np.mean([quality.chip_verdict(c, config) == quality.BLURRED for c in blurred])
    assert kept >= 0.95
    assert rejected >= 0.95
