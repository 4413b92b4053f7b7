"""The teacher's targets for distillation: its embeddings of the training faces, computed once and cached.

Distillation reads the teacher's embedding of the same face, aligned to *the teacher's* template and run through
the runtime's :class:`edge.embedder.Embedder` once, then cached (keyed by the teacher's sha256 and the data's
digest). The default teacher is MobileFaceNet (float reference if shipped, else int8): it is the best shipped
embedder on LFW (99.17% int8 vs 98.87% for float dlib). The target is the clean face's embedding; with
``--teacher-flip`` it is the mean of the teacher's embeddings of the face and of its mirror image (a second cached
teacher pass), which is one target for both orientations the student sees.

``--teacher-views N`` makes the target consistent with the input instead ("function matching", Beyer et al. 2022,
*Knowledge distillation: a good teacher is patient and consistent*): N augmented views of every face are rendered
from seeded streams (:func:`research.augment.render_view`), the teacher embeds each once (reading the augmented
student chip through a fixed warp onto its own template) and the embeddings are cached; training draws one of a
face's views, re-renders it bit for bit and matches that view's embedding. The paper found that a fixed target lets
a student memorise a small set (training loss falls while held-out accuracy stalls, as ``nns1``'s did here) and that
a target which moves with the input does not; the README's runs table shows what it did here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from converters import datasets
from edge.image_io import load_image
from edge.manifest import Manifest
from research.augment import mirror, render_view
from research.data import cache_root, data_digest
from research.train_config import CLEAN_TARGET, FLIP_TARGET, TEACHER_PREFERENCE, Augmentation, TrainConfig

log = logging.getLogger(__name__)

TEACHER_THREADS = 2


def resolve_teacher(manifest: Manifest, requested: str = "auto") -> str:
    if requested != "auto":
        manifest.entry(requested)  # raises ManifestError naming the key
        return requested
    for key in TEACHER_PREFERENCE:
        if key in manifest.models:
            return key
    raise ValueError(f"{manifest.path} holds none of the teachers {TEACHER_PREFERENCE}; convert one first "
                     "(e.g. `doorface-convert mobilefacenet`) or pass --teacher KEY")


def teacher_target(cfg: TrainConfig) -> str:
    """What the distillation matched, in words (model cards)."""
    if cfg.teacher_views:
        return f"the teacher's embedding of the same augmented view ({cfg.teacher_views} rendered views per face)"
    if cfg.teacher_flip:
        return FLIP_TARGET
    return CLEAN_TARGET


def teacher_embeddings(faces: Sequence[datasets.TrainFace], entry, num_threads: int = TEACHER_THREADS,
                       desc: str = "teacher", mirrored: bool = False) -> np.ndarray:
    """(N, dim) unit embeddings of each face (or of its mirror image) by the teacher, aligned to the teacher's
    own template."""
    from edge.embedder import Embedder

    embedder = Embedder(entry, num_threads=num_threads)
    out = np.zeros((len(faces), embedder.spec.dim), np.float32)
    for i, face in enumerate(tqdm(faces, desc=desc, unit="face", leave=False)):
        image, landmarks = load_image(face.path), face.landmarks
        if mirrored:
            image, landmarks = mirror(image, landmarks)
        out[i] = embedder(image, landmarks)[0]
    return out


def cached_teacher(faces: Sequence[datasets.TrainFace], entry, digest: Optional[str] = None,
                   mirrored: bool = False) -> np.ndarray:
    side = "-mirrored" if mirrored else ""
    path = cache_root() / f"teacher-{entry.key}-{entry.sha256[:16]}-{(digest or data_digest(faces))[:12]}{side}.npz"
    if path.is_file():
        data = np.load(path)
        if data["embeddings"].shape[0] == len(faces):
            return data["embeddings"]
    embeddings = teacher_embeddings(faces, entry, desc=f"teacher {entry.key}{side}", mirrored=mirrored)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embeddings=embeddings, teacher=entry.key, sha256=entry.sha256)
    os.replace(tmp, path)
    return embeddings


def teacher_view_embeddings(chips: np.ndarray, template: np.ndarray, entry, views: int, seed: int,
                            aug: Augmentation, num_threads: int = TEACHER_THREADS) -> np.ndarray:
    """(N, views, dim) unit embeddings by the teacher of each rendered view of each student chip.

    The teacher reads the augmented student chip itself, warped onto its own template (the student's template is
    a scaled copy of the teacher's, so the warp is a fixed rescale), and so sees the same jitter, down-scaling,
    blur, colour, JPEG and flip as the student will.
    """
    from edge.embedder import Embedder

    embedder = Embedder(entry, num_threads=num_threads)
    out = np.zeros((len(chips), views, embedder.spec.dim), np.float32)
    for i in tqdm(range(len(chips)), desc=f"teacher {entry.key} x{views} views", unit="face", leave=False):
        rendered = [render_view(chips[i], seed, i, v, aug) for v in range(views)]
        out[i] = embedder.embed_chips(np.stack([embedder.align(image, template) for image in rendered]))
    return out


def cached_teacher_views(chips: np.ndarray, template: np.ndarray, entry, views: int, seed: int,
                         aug: Augmentation, digest: str) -> np.ndarray:
    """:func:`teacher_view_embeddings`, from the on-disk cache when it exists (keyed by everything a view depends
    on: teacher, data, student template and size, seed, augmentation and number of views)."""
    recipe = hashlib.sha256(np.asarray(template, np.float64).tobytes()
                            + repr((chips.shape[1:], seed, views, dataclasses.asdict(aug))).encode()).hexdigest()
    path = cache_root() / f"teacher-views-{entry.key}-{entry.sha256[:16]}-{digest[:12]}-{recipe[:12]}.npz"
    if path.is_file():
        data = np.load(path)
        if data["embeddings"].shape[:2] == (len(chips), views):
            return data["embeddings"]
        log.warning("ignoring %s: shape %s does not match %d faces x %d views", path, data["embeddings"].shape,
                    len(chips), views)
    embeddings = teacher_view_embeddings(chips, template, entry, views, seed, aug)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embeddings=embeddings, teacher=entry.key, sha256=entry.sha256)
    os.replace(tmp, path)
    return embeddings
