"""5-point face alignment: a least-squares similarity transform (Umeyama 1991) from detected landmarks to an
embedder's template, then one warp. The template and output size come from the embedder's manifest entry.
"""

from __future__ import annotations

import cv2
import numpy as np


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 matrix of the rotation + uniform scale + translation that best maps ``src`` points onto ``dst``.

    Least squares over all points (Umeyama), with the reflection case excluded so faces are never mirrored.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var <= 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` so that ``landmarks`` (5, 2) land on ``template`` (5, 2) in a ``size`` = (w, h) chip."""
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
