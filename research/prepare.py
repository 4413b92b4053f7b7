"""Everything a training run reads, computed (or loaded from the caches) once: :class:`Prepared`.

Before the chips are made, :mod:`research.landmark_check` compares the data's landmarks with our int8 MTCNN on a
seeded sample and refuses to train on a set that disagrees (the runtime aligns with ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from converters import datasets
from converters.fetch import sources
from edge.embedder import l2_normalise as unit_rows
from edge.manifest import Manifest
from research import landmark_check, nns
from research.data import Split, cached_chips, data_digest, split_identities
from research.teacher import cached_teacher, cached_teacher_views, resolve_teacher
from research.train_config import TrainConfig


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything training reads, computed (or loaded from the cache) once per run."""

    faces: list
    split: Split
    chips: np.ndarray  # (N, h, w, 3) uint8, every train-faces row, aligned to the student's template
    targets: np.ndarray  # (N, teacher dim) unit teacher embeddings of the clean faces
    view_targets: Optional[np.ndarray]  # (N, views, teacher dim) of rendered views, with --teacher-views; else None
    teacher_key: str
    teacher_sha256: str
    input_shape: tuple[int, int, int]
    data_sha256: str
    landmarks: landmark_check.LandmarkAgreement  # the data's landmarks against our MTCNN


def prepare(cfg: TrainConfig, manifest: Manifest, input_shape: Optional[tuple[int, int, int]] = None,
            faces: Optional[list] = None) -> Prepared:
    """Faces, identity split, cached aligned chips and cached teacher embeddings."""
    arch = nns.ARCHITECTURES[cfg.arch]
    input_shape = tuple(input_shape or arch.input_shape)
    if faces is None:
        faces = datasets.load_train_faces()
        data_sha = sources.sha256_file(datasets.data_dir("train-faces") / "manifest.csv")
    else:
        data_sha = data_digest(faces)
    digest = data_digest(faces)
    landmarks = check_landmarks(faces, manifest, seed=cfg.seed)
    size = (input_shape[1], input_shape[0])
    chips = cached_chips(faces, nns.alignment_template(size), size, digest)
    teacher = manifest.entry(resolve_teacher(manifest, cfg.teacher))
    targets = cached_teacher(faces, teacher, digest)
    if cfg.teacher_flip:
        targets = unit_rows(targets + cached_teacher(faces, teacher, digest, mirrored=True))
    view_targets = None
    if cfg.teacher_views:
        view_targets = cached_teacher_views(chips, nns.alignment_template(size), teacher, cfg.teacher_views,
                                            cfg.seed, cfg.augmentation, digest)
    split = split_identities([f.identity for f in faces], cfg.val_fraction, cfg.fraction, cfg.seed)
    return Prepared(list(faces), split, chips, targets, view_targets, teacher.key, teacher.sha256, input_shape,
                    data_sha, landmarks)


def check_landmarks(faces: Sequence[datasets.TrainFace], manifest: Manifest,
                    seed: int = 0) -> landmark_check.LandmarkAgreement:
    """The data's landmarks (the ``mtcnn`` package's) against our int8 MTCNN on a seeded sample; training refuses
    to start when they disagree, since the runtime aligns with ours."""
    from edge.detector import MtcnnDetector

    agreement = landmark_check.measure(faces, MtcnnDetector.from_manifest(manifest), seed=seed)
    tqdm.write(f"train-faces landmarks vs our MTCNN: {agreement.line()}")
    if not agreement.agrees:
        raise ValueError(f"the training faces' landmarks disagree with our MTCNN ({agreement.line()}; worst: "
                         f"{agreement.worst}): chips would be framed unlike the runtime's. Re-detect the "
                         "landmarks of the set with `doorface detect`, or fix its manifest.csv")
    return agreement
