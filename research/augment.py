"""The door-camera augmentation of aligned training chips, its seeded rendered views, and mirroring a face.

:func:`augment` makes one door-camera-like variant of a chip: small similarity jitter (rotation, scale, shift:
alignment error), down-and-up scaling (a face far from the camera), Gaussian blur (focus, motion), colour
(brightness, contrast, saturation; sometimes grey: IR night mode), JPEG re-compression (stream artefacts),
horizontal flip. Its probabilities and ranges are a :class:`research.train_config.Augmentation`.

With ``--teacher-views`` the augmented views are fixed rather than fresh: view ``v`` of face ``i`` is
:func:`render_view`, drawn from its own seeded stream, so the teacher can embed it once and training can re-render
it bit for bit in every epoch (see :mod:`research.teacher`).

:func:`mirror` flips a whole image with its landmarks, for the teacher's flip-averaged target (``--teacher-flip``).
"""

from __future__ import annotations

import cv2
import numpy as np

from research.train_config import Augmentation

# The 5 landmarks of a mirrored face, in the data's order (left eye, right eye, nose, left mouth, right mouth; "left"
# = image left): the eyes and the mouth corners trade places, the nose stays.
MIRRORED_LANDMARKS = (1, 0, 2, 4, 3)
VIEW_STREAM = 7  # keeps the rendered views' random streams apart from the batch sampler's


def _jitter_matrix(size: tuple[int, int], rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """A random similarity transform about the chip centre (2×3)."""
    width, height = size
    angle = rng.uniform(-aug.max_rotation_deg, aug.max_rotation_deg)
    scale = 1.0 + rng.uniform(-aug.max_scale, aug.max_scale)
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, scale)
    matrix[:, 2] += rng.uniform(-aug.max_shift, aug.max_shift, 2) * (width, height)
    return matrix


def augment(chip: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    """One door-camera-like variant of an aligned uint8 RGB chip (same shape and dtype)."""
    height, width = chip.shape[:2]
    out = cv2.warpAffine(chip, _jitter_matrix((width, height), rng, aug), (width, height),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < aug.downscale:
        factor = rng.uniform(*aug.downscale_range)
        small = cv2.resize(out, (max(1, round(width * factor)), max(1, round(height * factor))),
                           interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < aug.blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*aug.blur_sigma))
    if rng.random() < aug.colour:
        pixels = out.astype(np.float32)
        grey = pixels @ np.float32([0.299, 0.587, 0.114])
        saturation = 0.0 if rng.random() < aug.grey else 1.0 + rng.uniform(-aug.saturation, aug.saturation)
        pixels = grey[..., None] + saturation * (pixels - grey[..., None])
        contrast = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
        pixels = (pixels - pixels.mean()) * contrast + pixels.mean() + rng.uniform(-1, 1) * aug.brightness * 255
        out = np.clip(pixels, 0, 255).astype(np.uint8)
    if rng.random() < aug.jpeg:
        quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))
        ok, encoded = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]
    if rng.random() < aug.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def view_rng(seed: int, face: int, view: int) -> np.random.Generator:
    """The random stream of one rendered view: the same view is re-rendered bit for bit in every epoch and run."""
    return np.random.default_rng([seed, VIEW_STREAM, face, view])


def render_view(chip: np.ndarray, seed: int, face: int, view: int, aug: Augmentation) -> np.ndarray:
    """View ``view`` of face ``face``: :func:`augment` of its chip, from :func:`view_rng`."""
    return augment(chip, view_rng(seed, face, view), aug)


def mirror(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image flipped left-right and its 5 landmarks moved with it, relabelled so that "left eye" is still the
    one on the image's left (pixel centres at integer x, as OpenCV's warps take them)."""
    flipped = np.asarray(landmarks, np.float64)[list(MIRRORED_LANDMARKS)]
    flipped[:, 0] = (image.shape[1] - 1) - flipped[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped
