"""The training faces as the student sees them: the identity split, the aligned-chip cache, the model's input.

``train-faces`` (LFW-disjoint CelebA crops, 5 landmarks each). Identities, not images, are split: a seeded share of
them (5% by default) is held out for the per-epoch validation; ``--fraction`` keeps a seeded share of the
*training* identities (nested: the 25% set is inside the 50% set), for the learning curve. LFW is never read before
the final evaluation: it is the test set. Every face is aligned once with :func:`edge.align.align_face` onto the
student's template and cached as uint8 ``.npy`` under ``$DOORFACE_CACHE/nns`` (default ``~/.cache/doorface/nns``),
keyed by the template, chip size and a digest of the face list (:func:`data_digest`), which also keys the
teacher's caches (:mod:`research.teacher`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from converters import datasets
from converters.fetch import sources
from converters.quantize import tflite_tools
from edge.align import align_face
from edge.image_io import load_image
from research import nns

log = logging.getLogger(__name__)

CACHE_SUBDIR = "nns"


@dataclass(frozen=True)
class Split:
    """Indices into ``load_train_faces()``: training faces (of the kept identities) and held-out validation faces."""

    train: np.ndarray
    val: np.ndarray
    train_identities: int
    val_identities: int


def split_identities(identities: Sequence[str], val_fraction: float, fraction: float, seed: int) -> Split:
    """Identity-disjoint train/validation split; ``fraction`` keeps a nested share of the training identities."""
    names = np.array(sorted(set(identities)))
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = max(1, int(round(val_fraction * len(names))))
    val_names = set(names[order[:n_val]].tolist())
    train_pool = names[order[n_val:]]
    n_train = max(2, int(round(fraction * len(train_pool))))
    train_names = set(train_pool[:n_train].tolist())  # a prefix of one permutation: smaller sets nest
    ids = np.asarray(identities)
    train = np.flatnonzero(np.isin(ids, list(train_names)))
    val = np.flatnonzero(np.isin(ids, list(val_names)))
    return Split(train, val, len(train_names), len(val_names))


def cache_root() -> Path:
    folder = sources.cache_dir() / CACHE_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def data_digest(faces: Sequence[datasets.TrainFace]) -> str:
    """A digest of the face list (paths, identities, landmarks): cache files are valid for this list only."""
    digest = hashlib.sha256()
    for face in faces:
        digest.update(f"{face.path.name}|{face.path.parent.name}|{face.identity}|".encode())
        digest.update(np.asarray(face.landmarks, np.float32).tobytes())
    return digest.hexdigest()


def align_all(faces: Sequence[datasets.TrainFace], template: np.ndarray, size: tuple[int, int],
              desc: str = "align") -> np.ndarray:
    """(N, h, w, 3) uint8 RGB chips, each face aligned with the runtime's alignment."""
    width, height = size
    chips = np.zeros((len(faces), height, width, 3), np.uint8)
    for i, face in enumerate(tqdm(faces, desc=desc, unit="face", leave=False)):
        chips[i] = align_face(load_image(face.path), face.landmarks, template, size)
    return chips


def cached_chips(faces: Sequence[datasets.TrainFace], template: np.ndarray, size: tuple[int, int],
                 digest: Optional[str] = None) -> np.ndarray:
    """Aligned chips of every face, from the on-disk cache when it exists (written atomically otherwise)."""
    key = hashlib.sha256(np.asarray(template, np.float64).tobytes() + repr(tuple(size)).encode()).hexdigest()
    path = cache_root() / f"chips-{size[0]}x{size[1]}-{key[:12]}-{(digest or data_digest(faces))[:12]}.npy"
    if path.is_file():
        chips = np.load(path)
        if chips.shape == (len(faces), size[1], size[0], 3):
            return chips
        log.warning("ignoring %s: shape %s does not match %d faces", path, chips.shape, len(faces))
    chips = align_all(faces, template, size, desc=f"align {size[0]}x{size[1]}")
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, chips)
    os.replace(tmp, path)
    return chips


def normalise(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips → the students' float input, ``(pixel - 127.5) / 128`` (the converters' one helper)."""
    return tflite_tools.normalise(chips, nns.PIXEL_MEAN, nns.PIXEL_STD)
