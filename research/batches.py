"""Training batches: P identities × K faces, augmented, with their teacher targets, reproducible from a seed.

The triplet loss mines its negatives inside a batch (:mod:`research.losses`), so a batch holds several faces of each
of its identities; identities are drawn in proportion to their faces, so that each face is drawn about once per
epoch.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from research.augment import augment, render_view
from research.data import normalise
from research.train_config import TrainConfig


def identity_table(labels: np.ndarray, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Per identity among ``indices``: its face indices, and the identity's sampling weight (∝ its faces, so
    that each face is drawn about once per epoch)."""
    groups: dict = {}
    for i in indices:
        groups.setdefault(labels[i], []).append(int(i))
    members = [np.asarray(v) for _, v in sorted(groups.items())]
    counts = np.array([len(m) for m in members], np.float64)
    return members, counts / counts.sum()


def sample_batch(members: list[np.ndarray], weights: np.ndarray, identities: int, per_identity: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """P identities × K faces: (face indices, identity labels 0..P-1). Identities with fewer than K faces repeat
    faces (their augmentations differ)."""
    if len(members) < identities:
        raise ValueError(f"a batch needs {identities} identities but the training split has {len(members)}; "
                         "lower --batch-identities or raise --fraction")
    chosen = rng.choice(len(members), size=identities, replace=False, p=weights)
    faces, labels = [], []
    for label, identity in enumerate(chosen):
        pool = members[identity]
        faces.append(rng.choice(pool, size=per_identity, replace=len(pool) < per_identity))
        labels.append(np.full(per_identity, label))
    return np.concatenate(faces), np.concatenate(labels).astype(np.int32)


def batches(chips: np.ndarray, targets: np.ndarray, members: list[np.ndarray], weights: np.ndarray,
            cfg: TrainConfig, steps: int, seed: int,
            view_targets: Optional[np.ndarray] = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``steps`` augmented batches (inputs, teacher targets, labels), reproducible from ``seed``.

    Without ``view_targets`` each face gets a fresh augmentation and the clean face's ``targets`` row; with them
    ((N, views, dim), :func:`research.teacher.cached_teacher_views`) each face is one of its rendered views, drawn
    at random, and that view's own teacher embedding.
    """
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        index, labels = sample_batch(members, weights, cfg.batch_identities, cfg.per_identity, rng)
        if view_targets is None:
            images = np.stack([augment(chips[i], rng, cfg.augmentation) for i in index])
            batch_targets = targets[index]
        else:
            views = rng.integers(view_targets.shape[1], size=len(index))
            images = np.stack([render_view(chips[i], cfg.seed, i, v, cfg.augmentation) for i, v in zip(index, views)])
            batch_targets = view_targets[index, views]
        yield normalise(images), batch_targets, labels


def make_dataset(chips: np.ndarray, targets: np.ndarray, members: list[np.ndarray], weights: np.ndarray,
                 cfg: TrainConfig, steps: int, seed: int, view_targets: Optional[np.ndarray] = None):
    """A prefetching tf.data pipeline over :func:`batches` (augmentation runs beside the training step)."""
    import tensorflow as tf

    height, width = chips.shape[1:3]
    signature = (tf.TensorSpec((cfg.batch_size, height, width, 3), tf.float32),
                 tf.TensorSpec((cfg.batch_size, targets.shape[1]), tf.float32),
                 tf.TensorSpec((cfg.batch_size,), tf.int32))
    dataset = tf.data.Dataset.from_generator(
        lambda: batches(chips, targets, members, weights, cfg, steps, seed, view_targets),
        output_signature=signature)
    return dataset.prefetch(2)
