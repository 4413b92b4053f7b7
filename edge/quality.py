"""Quality gate: which detected faces are worth embedding.

An embedding of a tiny, blurred or strongly turned face is far from its person's template and, worse, can land near
somebody else's. Such faces are still tracked (the tracker sees every box), but they do not vote. The gate is cheap:
size and pose come from the box and the 5 landmarks, sharpness from the aligned chip the embedder needs anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import QualityConfig

OK = "ok"
TOO_SMALL = "too_small"
TURNED = "turned"
TILTED = "tilted"
BLURRED = "blurred"
REASONS = (OK, TOO_SMALL, TURNED, TILTED, BLURRED)

# Nose height between the eyes' midpoint (0) and the mouth's midpoint (1) of a frontal face: the median over LFW's
# published MTCNN landmarks (MTCNN puts the nose tip lower than the ArcFace template's 0.495).
FRONTAL_NOSE_HEIGHT = 0.54
# Side of the grey face image that sharpness is measured on (see sharpness()).
SHARPNESS_SIDE = 64


@dataclass(frozen=True)
class Pose:
    """``yaw``: the nose's offset from the eyes' midline over the eye distance (signed, 0 = frontal; about ±0.3 at
    45°). ``pitch``: the nose height between eyes and mouth minus a frontal face's (signed)."""

    yaw: float
    pitch: float


def face_pose(landmarks: np.ndarray) -> Pose:
    """Pose from 5 landmarks in detector order, measured in the face's own axes so that head roll does not count."""
    marks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = marks
    eye_mid = (left_eye + right_eye) / 2
    mouth_mid = (mouth_left + mouth_right) / 2
    across = right_eye - left_eye
    eye_distance = float(np.hypot(*across))
    if eye_distance < 1e-6:
        return Pose(yaw=float("inf"), pitch=float("inf"))
    u = across / eye_distance
    v = np.array([-u[1], u[0]])  # pointing down the face
    yaw = float(np.dot(nose - eye_mid, u) / eye_distance)
    eye_to_mouth = float(np.dot(mouth_mid - eye_mid, v))
    if eye_to_mouth < 1e-6:
        return Pose(yaw=yaw, pitch=float("inf"))
    pitch = float(np.dot(nose - eye_mid, v) / eye_to_mouth) - FRONTAL_NOSE_HEIGHT
    return Pose(yaw=yaw, pitch=pitch)


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip at a fixed size: low when the face is blurred (motion, focus).

    The chip is first brought to SHARPNESS_SIDE pixels so that one threshold serves every embedder (a 150-px dlib
    chip and a 112-px MobileFaceNet chip of the same face would otherwise score differently).
    """
    grey = cv2.cvtColor(np.ascontiguousarray(chip), cv2.COLOR_RGB2GRAY) if chip.ndim == 3 else chip
    grey = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def geometry_verdict(box: np.ndarray, landmarks: np.ndarray, config: QualityConfig) -> str:
    """The reason a face is rejected before alignment (size, pose), or ``ok``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if min(x2 - x1, y2 - y1) < config.min_face_size:
        return TOO_SMALL
    pose = face_pose(landmarks)
    if abs(pose.yaw) > config.max_yaw:
        return TURNED
    if abs(pose.pitch) > config.max_pitch:
        return TILTED
    return OK


def chip_verdict(chip: np.ndarray, config: QualityConfig) -> str:
    """The reason an aligned chip is rejected (blur), or ``ok``."""
    return BLURRED if sharpness(chip) < config.min_sharpness else OK
