"""``python -m research train-nns``: train an NNS1/NNS2 embedder (:mod:`research.nns`) and ship it in int8.

Data
    ``train-faces`` (LFW-disjoint CelebA crops, 5 landmarks each). Identities, not images, are split: a seeded 5% of
    them is held out for the per-epoch validation; ``--fraction`` keeps a seeded share of the *training*
    identities (nested: the 25% set is inside the 50% set), for the learning curve. LFW is never read before the
    final evaluation: it is the test set. Every face is aligned once with :func:`edge.align.align_face` onto the
    student's template and cached as uint8 ``.npy`` under ``$DOORFACE_CACHE/nns`` (default
    ``~/.cache/doorface/nns``), keyed by the template, chip size and the data manifest's sha256. Before that,
    :mod:`research.landmark_check` compares the data's landmarks with our int8 MTCNN on a seeded sample and
    refuses to train on a set that disagrees (the runtime aligns with ours).

Teacher
    Distillation reads the teacher's embedding of the same face, aligned to *the teacher's* template and run
    through the runtime's :class:`edge.embedder.Embedder` once, then cached (keyed by the teacher's sha256 and the
    data manifest's). The default teacher is MobileFaceNet (float reference if shipped, else int8): it is the best
    shipped embedder on LFW (99.17% int8 vs 98.87% for float dlib). It is 192-D, so the student's 128-D embedding
    goes through a trainable linear head (128 → 192, no bias) for the cosine loss; the head is dropped at export.
    A linear head alone would let the student's own 128-D geometry drift from the teacher's (only the head's
    output is matched), and verification uses the student's cosine, so a second term matches the batch's
    cosine-similarity matrix of student and teacher directly (relational distillation, no head involved).

Loss
    ``distill · (1 - cos(head(s), t)) + relation · mean((S Sᵀ - T Tᵀ)²) + triplet · FaceNet triplet``, where the
    triplet loss (margin 0.2 on squared distances of unit vectors) mines semi-hard negatives online in batches of
    P identities × K faces: for each anchor-positive pair the closest negative that is farther than the positive
    (FaceNet section 3.2), or the farthest negative when none is.

Augmentation (door camera)
    small similarity jitter (rotation, scale, shift: alignment error), down-and-up scaling (a face far from the
    camera), Gaussian blur (focus, motion), colour (brightness, contrast, saturation; sometimes grey: IR night
    mode), JPEG re-compression (stream artefacts), horizontal flip. The teacher's target stays the clean face's;
    with ``--teacher-flip`` it is the mean of the teacher's embeddings of the face and of its mirror image (a
    second cached teacher pass), which is one target for both orientations the student sees.

    ``--teacher-views N`` makes the target consistent with the input instead ("function matching", Beyer et al.
    2022, *Knowledge distillation: a good teacher is patient and consistent*): N augmented views of every face are
    rendered from seeded streams, the teacher embeds each once (reading the augmented student chip through a
    fixed warp onto its own template) and the embeddings are cached; training draws one of a face's views,
    re-renders it bit for bit and matches that view's embedding. The paper found that a fixed target lets a student
    memorise a small set (training loss falls while held-out accuracy stalls, as ``nns1``'s did here) and that a
    target which moves with the input does not; the README's runs table shows what it did here.

Export
    Post-training full-integer quantization (per-channel weights, int8 input/output) calibrated on 4000
    un-augmented training-identity chips; batch norm folds into the convolutions and ReLU6 bounds every activation,
    which is what makes plain PTQ enough here. The int8 model must parse as fully int8; its cosine to the float
    model on held-out identities is recorded. Keys ``<key>`` (int8) and ``<key>_float`` (the float reference), where
    ``<key>`` is the architecture's class (:attr:`research.nns.Architecture.key`, so ``nns2fc`` ships as ``nns2``), go
    into the ``--out`` folder's manifest, with cards, only at the end of a successful run; then the LFW
    protocol (:mod:`converters.evaluate.lfw`) runs on both and writes its thresholds into the manifest.

Run folder ``runs/<arch>-<timestamp>/``: ``config.json``, ``history.json``, ``loss.png``, ``checkpoint.npz``
(every epoch; ``--resume`` continues from it), ``export/`` with ``export.json`` (the run's own int8 and float models
and their manifest entries, see :func:`run_models`) and ``lfw.json`` / ``lfw.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from converters import datasets, manifest_io
from converters.fetch import sources
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge.align import align_face
from edge.embedder import l2_normalise as unit_rows
from edge.image_io import load_image
from edge.manifest import MANIFEST_NAME, Manifest, default_models_dir
from research import landmark_check, nns
from research.train_config import (
    CLEAN_TARGET,
    EXPORT_DIR,
    EXPORT_ENTRIES,
    FLIP_TARGET,
    MAX_INT8_LFW_LOSS_POINTS,
    TEACHER_PREFERENCE,
    Augmentation,
    TrainConfig,
    add_arguments,
    config_from_args,
    resume_conflicts,
)

log = logging.getLogger(__name__)

RUNS_DIR = Path("runs")
CACHE_SUBDIR = "nns"
TEACHER_THREADS = 2
# The 5 landmarks of a mirrored face, in the data's order (left eye, right eye, nose, left mouth, right mouth; "left"
# = image left): the eyes and the mouth corners trade places, the nose stays.
MIRRORED_LANDMARKS = (1, 0, 2, 4, 3)
VIEW_STREAM = 7  # keeps the rendered views' random streams apart from the batch sampler's
CHECKPOINT_NAME = "checkpoint.npz"
# int8 LFW loss of nns1: 0.45 pt with 500 faces at 34 epochs (0.20 with 2000); 0.40 with 2000 at 60 epochs (0.05
# with 4000): the better trained the model, the more calibration it wants.
CALIBRATION_FACES = 4000
AGREEMENT_FACES = 200
MIN_INT8_COSINE = 0.98  # int8 vs float on held-out faces; below this PTQ has gone wrong
VAL_SAME_PAIRS_PER_IDENTITY = 20  # caps the 30-image identities' share of the validation pairs
EVAL_BATCH = 128
NORM_EPSILON = 1e-12
SEMI_HARD_SENTINEL = 1e9  # "no candidate" distance inside the vectorised mining
LICENSE = ("research use only: trained on CelebA crops (CelebA agreement: non-commercial research use only), "
           "distilled from a shipped teacher")


# ------------------------------------------------------------------------------------------------------- data


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


def resolve_teacher(manifest: Manifest, requested: str = "auto") -> str:
    if requested != "auto":
        manifest.entry(requested)  # raises ManifestError naming the key
        return requested
    for key in TEACHER_PREFERENCE:
        if key in manifest.models:
            return key
    raise ValueError(f"{manifest.path} holds none of the teachers {TEACHER_PREFERENCE}; convert one first "
                     "(e.g. `doorface-convert mobilefacenet`) or pass --teacher KEY")


def mirror(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image flipped left-right and its 5 landmarks moved with it, relabelled so that "left eye" is still the
    one on the image's left (pixel centres at integer x, as OpenCV's warps take them)."""
    flipped = np.asarray(landmarks, np.float64)[list(MIRRORED_LANDMARKS)]
    flipped[:, 0] = (image.shape[1] - 1) - flipped[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


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


def view_rng(seed: int, face: int, view: int) -> np.random.Generator:
    """The random stream of one rendered view: the same view is re-rendered bit for bit in every epoch and run."""
    return np.random.default_rng([seed, VIEW_STREAM, face, view])


def render_view(chip: np.ndarray, seed: int, face: int, view: int, aug: Augmentation) -> np.ndarray:
    """View ``view`` of face ``face``: :func:`augment` of its chip, from :func:`view_rng`."""
    return augment(chip, view_rng(seed, face, view), aug)


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


# ------------------------------------------------------------------------------------------------ augmentation


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


def normalise(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips → the model's float input, ``(pixel - 127.5) / 128``."""
    return ((np.asarray(chips, np.float32) - nns.PIXEL_MEAN) / nns.PIXEL_STD).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- batches


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
    ((N, views, dim), :func:`cached_teacher_views`) each face is one of its rendered views, drawn at random, and
    that view's own teacher embedding.
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


# ------------------------------------------------------------------------------------------------------ losses


def l2_normalise(x):
    import tensorflow as tf

    return x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True), NORM_EPSILON))


def semi_hard_triplet_loss(embeddings, labels, margin: float):
    """FaceNet's triplet loss with online semi-hard mining over every anchor-positive pair of the batch.

    ``embeddings`` are unit vectors; distances are squared euclidean. Returns (mean loss over anchor-positive
    pairs, fraction of those pairs with a non-zero loss).
    """
    import tensorflow as tf

    distances = tf.maximum(2.0 - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True), 0.0)
    same = tf.equal(labels[:, None], labels[None, :])
    positive_pairs = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
    d_ap = distances[:, :, None]  # (anchor, positive, 1)
    d_an = distances[:, None, :]  # (anchor, 1, negative)
    negative = tf.logical_not(same)[:, None, :]
    farther = tf.logical_and(negative, d_an > d_ap)
    closest_farther = tf.reduce_min(tf.where(farther, d_an, SEMI_HARD_SENTINEL), axis=2)
    farthest = tf.reduce_max(tf.where(negative, d_an, -SEMI_HARD_SENTINEL), axis=2)
    d_neg = tf.where(tf.reduce_any(farther, axis=2), closest_farther, farthest)
    losses = tf.maximum(distances - d_neg + margin, 0.0)
    mask = tf.cast(positive_pairs, tf.float32)
    pairs = tf.maximum(tf.reduce_sum(mask), 1.0)
    loss = tf.reduce_sum(losses * mask) / pairs
    active = tf.reduce_sum(tf.cast(losses > 0.0, tf.float32) * mask) / pairs
    return loss, active


def distillation_losses(student_unit, projected_unit, teacher_unit):
    """(cosine loss through the head, relational loss on the student's own similarity matrix)."""
    import tensorflow as tf

    cosine = tf.reduce_mean(1.0 - tf.reduce_sum(projected_unit * teacher_unit, axis=-1))
    student_sim = tf.matmul(student_unit, student_unit, transpose_b=True)
    teacher_sim = tf.matmul(teacher_unit, teacher_unit, transpose_b=True)
    relation = tf.reduce_mean(tf.square(student_sim - teacher_sim))
    return cosine, relation


LOSS_NAMES = ("loss", "distill", "relation", "triplet", "active_triplets")


def make_head(teacher_dim: int, embedding_dim: int = nns.EMBEDDING_DIM):
    """The training-only linear projection from the student's embedding to the teacher's space."""
    import keras

    head = keras.layers.Dense(teacher_dim, use_bias=False, name="distill_head")
    head.build((None, embedding_dim))
    return head


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int):
    import keras

    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, total - warmup),
                                                      warmup_target=cfg.learning_rate, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def make_train_step(student, head, optimizer, cfg: TrainConfig) -> Callable:
    """A compiled step: (images, teacher targets, labels) → dict of the loss terms (see LOSS_NAMES)."""
    import tensorflow as tf

    variables = student.trainable_variables + head.trainable_variables
    optimizer.build(variables)

    @tf.function(reduce_retracing=True)
    def step(images, targets, labels):
        with tf.GradientTape() as tape:
            raw = student(images, training=True)
            unit = l2_normalise(raw)
            distill, relation = distillation_losses(unit, l2_normalise(head(unit)), l2_normalise(targets))
            triplet, active = semi_hard_triplet_loss(unit, labels, cfg.triplet_margin)
            loss = cfg.distill_weight * distill + cfg.relation_weight * relation + cfg.triplet_weight * triplet
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss, "distill": distill, "relation": relation, "triplet": triplet,
                "active_triplets": active}

    return step


# -------------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class Pairs:
    a: np.ndarray
    b: np.ndarray
    same: np.ndarray


def verification_pairs(labels: np.ndarray, seed: int, per_identity: int = VAL_SAME_PAIRS_PER_IDENTITY) -> Pairs:
    """Same pairs (at most ``per_identity`` per identity) and as many random different pairs."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    same_a, same_b = [], []
    for identity in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == identity)
        combos = [(i, j) for n, i in enumerate(members) for j in members[n + 1:]]
        for k in rng.permutation(len(combos))[:per_identity]:
            same_a.append(combos[k][0])
            same_b.append(combos[k][1])
    diff_a, diff_b = [], []
    while len(diff_a) < len(same_a):
        i, j = rng.integers(0, len(labels), 2)
        if labels[i] != labels[j]:
            diff_a.append(i)
            diff_b.append(j)
    same = np.r_[np.ones(len(same_a), bool), np.zeros(len(diff_a), bool)]
    return Pairs(np.asarray(same_a + diff_a, int), np.asarray(same_b + diff_b, int), same)


def verification_metrics(embeddings: np.ndarray, pairs: Pairs) -> dict:
    """Best-threshold accuracy and ROC AUC of cosine distance on ``pairs`` (unit embeddings)."""
    from converters.evaluate.lfw import best_threshold, roc_auc

    distances = 1.0 - np.sum(embeddings[pairs.a] * embeddings[pairs.b], axis=1)
    threshold, accuracy = best_threshold(distances, pairs.same)
    return {"accuracy": accuracy, "auc": roc_auc(distances, pairs.same), "threshold": threshold,
            "pairs": int(len(pairs.same))}


def embed(model, inputs: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Unit embeddings of normalised inputs by a Keras model (inference mode)."""
    outs = [np.asarray(model(inputs[i:i + batch], training=False)) for i in range(0, len(inputs), batch)]
    raw = np.concatenate(outs) if outs else np.zeros((0, nns.EMBEDDING_DIM), np.float32)
    return unit_rows(raw)


# ------------------------------------------------------------------------------------------- checkpoint, history


def save_checkpoint(path: Path, student, head, optimizer, epoch: int) -> None:
    """Weights, batch-norm statistics, head and optimizer state in one .npz, replaced atomically."""
    arrays = {f"student_{i}": w for i, w in enumerate(student.get_weights())}
    arrays.update({f"head_{i}": w for i, w in enumerate(head.get_weights())})
    arrays.update({f"optimizer_{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays["epoch"] = np.asarray(epoch)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _restore(data, path: Path, prefix: str, expected: Sequence[tuple]) -> list:
    """The ``prefix`` arrays of a checkpoint, checked against the model's shapes."""
    arrays = [data[f"{prefix}_{i}"] for i in range(len(expected)) if f"{prefix}_{i}" in data.files]
    if len(arrays) != len(expected) or any(a.shape != tuple(s) for a, s in zip(arrays, expected)):
        raise ValueError(f"{path}: its {prefix} arrays do not fit this model (another architecture, width or "
                         "teacher?); start a new run, or point at a checkpoint of the same model")
    return arrays


def load_weights(path: Path, student, head) -> int:
    """Student and head weights (batch-norm statistics included) of a :func:`save_checkpoint` file; returns the
    epoch it was written after."""
    data = np.load(path)
    student.set_weights(_restore(data, path, "student", [w.shape for w in student.get_weights()]))
    head.set_weights(_restore(data, path, "head", [w.shape for w in head.get_weights()]))
    return int(data["epoch"])


def load_checkpoint(path: Path, student, head, optimizer) -> int:
    """Restore what :func:`save_checkpoint` wrote (the optimizer must be built); returns the finished epoch."""
    epoch = load_weights(path, student, head)
    values = _restore(np.load(path), path, "optimizer", [tuple(v.shape) for v in optimizer.variables])
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)
    return epoch


def plot_history(history: list[dict], path: Path, teacher_val: Optional[float] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (losses, val) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("loss", "distill", "relation", "triplet"):
        losses.plot(epochs, [h[name] for h in history], marker="o", label=name)
    losses.set_xlabel("epoch")
    losses.set_ylabel("training loss (epoch mean)")
    losses.set_yscale("log")
    losses.grid(True, alpha=0.3)
    losses.legend()
    val.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", label="student (float)")
    if teacher_val is not None:
        val.axhline(100 * teacher_val, color="grey", linestyle="--", label="teacher")
    val.set_xlabel("epoch")
    val.set_ylabel("held-out identities: verification accuracy (%)")
    val.grid(True, alpha=0.3)
    val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------------ export


def export_models(student, arch: nns.Architecture, input_shape: tuple[int, int, int], width: float,
                  calibration: np.ndarray) -> tuple[bytes, bytes]:
    """(int8, float) TFLite of the student rebuilt with a static batch of 1; calibration = normalised chips."""
    static = nns.build(arch, input_shape, width=width, batch_size=1)
    static.set_weights(student.get_weights())

    def representative():
        for x in calibration:
            yield [x[None].astype(np.float32)]

    int8 = tflite_tools.to_tflite(static, representative)
    float_model = tflite_tools.to_tflite(static)
    if not int8 or not float_model:
        raise RuntimeError("the TFLite converter produced an empty model")
    report = tflite_tools.inspect_model(int8)
    if not report.fully_int8:
        raise RuntimeError(f"the int8 {arch.name} has float ops {sorted(set(report.float_ops))}: a layer type "
                           "outside nns.ALLOWED_LAYERS slipped in")
    return int8, float_model


def run_tflite(content: bytes, inputs: np.ndarray) -> np.ndarray:
    """A batch-1 model on normalised inputs; dequantized, L2-normalised outputs."""
    return unit_rows(tflite_tools.run_batch1(content, inputs, TEACHER_THREADS))


def file_name(key: str) -> str:
    return f"{key}.tflite" if key.endswith("_float") else f"{key}_int8.tflite"


def manifest_entries(key: str, int8: bytes, float_model: bytes, input_shape: tuple[int, int, int],
                     provenance: dict, agreement: np.ndarray, edgetpu: str) -> dict:
    """``{key: int8 entry, key_float: float entry}`` in the embedder schema (see :mod:`edge.embedder`);
    ``edgetpu`` is what :func:`tflite_tools.check_edgetpu` said of the int8 file."""
    import tensorflow as tf

    float_key = f"{key}_float"
    height, width, _ = input_shape
    report = tflite_tools.inspect_model(int8)
    interp = tfl.make_interpreter(int8)
    in_spec = tfl.input_specs(interp)[0]
    template = nns.alignment_template((width, height))
    summary = provenance["model"]
    architecture = summary.get("architecture", key)
    base = {
        "task": "face_embedding",
        "family": key,
        "license": LICENSE,
        "align": {"template": template.tolist(), "size": [width, height],
                  "method": f"ArcFace 112x112 template scaled by {width}/112 and centred vertically in {height}"},
        "embedding": {"dim": nns.EMBEDDING_DIM, "metric": "cosine", "normalise": "l2 on host"},
        "source": {"trained": "here, python -m research train-nns", **provenance["source"]},
        "training": provenance["training"],
        "model": {"architecture": f"{architecture}: {key.upper()}-class Inception (research/nns.py)",
                  "input_hw": [height, width], "params": summary["params"], "macs": summary["macs"],
                  "flops": summary["flops"], "flops_convention": "2 x MACs (FaceNet's tables count MACs)"},
    }
    named = key.upper() if architecture == key else f"{key.upper()} (architecture {architecture})"
    description = (f"{named}: FaceNet-class small Inception embedder ({summary['params']:,} params, "
                   f"{summary['macs'] / 1e6:.1f}M MACs = {summary['flops'] / 1e6:.1f}M FLOPs at {height}x{width}), "
                   "trained on train-faces (LFW-disjoint CelebA) by distillation from "
                   f"{provenance['source']['teacher']} plus a semi-hard triplet loss.")
    int8_entry = {
        **base,
        "file": file_name(key),
        "sha256": manifest_io.sha256_bytes(int8),
        "size_bytes": len(int8),
        "description": description + " Full-integer int8.",
        "input": {"shape": [int(d) for d in in_spec.shape], "dtype": in_spec.dtype.name,
                  "channels": nns.CHANNELS, "mean": nns.PIXEL_MEAN, "std": nns.PIXEL_STD,
                  "scale": in_spec.scale, "zero_point": in_spec.zero_point},
        "calibration": {"samples": provenance["calibration_faces"],
                        "from": "un-augmented train-faces chips of training identities (seeded); never LFW"},
        "agreement": {"faces": int(len(agreement)), "from": "held-out validation identities of train-faces",
                      "int8_vs_float_cosine_mean": round(float(agreement.mean()), 6),
                      "int8_vs_float_cosine_min": round(float(agreement.min()), 6)},
        "conversion": {"tensorflow": tf.__version__,
                       "quantization": "post-training full integer, per-channel weights, int8 input/output; "
                                       "batch norm folded, ReLU6 fused",
                       "ops": sorted(set(report.ops)), "float_ops": sorted(set(report.float_ops)),
                       "edgetpu": edgetpu},
        "float_reference": float_key,
    }
    float_interp = tfl.make_interpreter(float_model)
    float_in = tfl.input_specs(float_interp)[0]
    float_entry = {
        **base,
        "file": file_name(float_key),
        "sha256": manifest_io.sha256_bytes(float_model),
        "size_bytes": len(float_model),
        "description": description + " Float32 reference for the int8 model.",
        "input": {**int8_entry["input"], "shape": [int(d) for d in float_in.shape], "dtype": float_in.dtype.name,
                  "scale": 0.0, "zero_point": 0},
        "calibration": {"samples": 0, "from": "none"},
        "conversion": {"tensorflow": tf.__version__, "quantization": "none (float32)"},
    }
    return {key: int8_entry, float_key: float_entry}


def seed_models_folder(out: Path, source: Path) -> None:
    """Give a fresh ``out`` folder the detector entries and files of ``source``, so that the LFW protocol (our
    MTCNN + alignment) can run against it; existing entries are left alone."""
    from edge.detector import MTCNN_KEYS

    if out.resolve() == source.resolve():
        return
    out.mkdir(parents=True, exist_ok=True)
    present = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8")).get("models", {}) \
        if (out / MANIFEST_NAME).is_file() else {}
    shipped = Manifest.load(source)
    entries = {}
    for key in MTCNN_KEYS:
        if key not in present:
            entry = shipped.entry(key)
            shutil.copyfile(entry.path, out / entry.path.name)
            entries[key] = entry.fields
    if entries:
        manifest_io.update_manifest(out, entries)


# ------------------------------------------------------------------------------------------------ orchestration


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


def configure_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started (a test, or a second run in one process)
        log.debug("TensorFlow threads already configured")


def _epoch_means(rows: list[dict]) -> dict:
    return {name: float(np.mean([float(r[name]) for r in rows])) for name in LOSS_NAMES}


def train(cfg: TrainConfig, prepared: Prepared, run_dir: Path, resume: bool = False):
    """Train (or continue) the student; checkpoint, history and loss.png are written after every epoch.

    Returns the Keras student and the history (one dict per epoch).
    """
    configure_threads(cfg.threads)
    arch = nns.ARCHITECTURES[cfg.arch]
    student = nns.build(arch, prepared.input_shape, width=cfg.width, dropout=cfg.dropout)
    head = make_head(prepared.targets.shape[1])
    labels = np.asarray([f.identity for f in prepared.faces])
    members, weights = identity_table(labels, prepared.split.train)
    steps = cfg.steps_per_epoch or max(1, int(np.ceil(len(prepared.split.train) / cfg.batch_size)))
    optimizer = make_optimizer(cfg, steps)
    step = make_train_step(student, head, optimizer, cfg)

    history_path, checkpoint = run_dir / "history.json", run_dir / CHECKPOINT_NAME
    history: list[dict] = []
    start = 0
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} not found: nothing to resume in {run_dir}")
        start = load_checkpoint(checkpoint, student, head, optimizer)
        history = json.loads(history_path.read_text(encoding="utf-8"))[:start] if history_path.is_file() else []
        tqdm.write(f"resumed {run_dir} after epoch {start}")
    elif cfg.init_from:
        init = Path(cfg.init_from) / CHECKPOINT_NAME
        tqdm.write(f"initialised from {init} (written after its epoch {load_weights(init, student, head)})")

    val_inputs = normalise(prepared.chips[prepared.split.val])
    pairs = verification_pairs(labels[prepared.split.val], cfg.seed)
    teacher_val = verification_metrics(prepared.targets[prepared.split.val], pairs)["accuracy"]
    for epoch in range(start + 1, cfg.epochs + 1):
        started = time.perf_counter()
        dataset = make_dataset(prepared.chips, prepared.targets, members, weights, cfg, steps,
                               seed=cfg.seed * 100_003 + epoch,  # per-epoch seed: a resumed run sees the same data
                               view_targets=prepared.view_targets)
        rows = []
        bar = tqdm(dataset, total=steps, desc=f"{cfg.arch} epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        for images, targets, batch_labels in bar:
            rows.append({k: float(v) for k, v in step(images, targets, batch_labels).items()})
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", trip=f"{rows[-1]['triplet']:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - started
        val = verification_metrics(embed(student, val_inputs), pairs)
        record = {"epoch": epoch, **_epoch_means(rows), "first_batch_loss": rows[0]["loss"],
                  "lr": float(optimizer.learning_rate), "steps": steps, "train_seconds": round(train_seconds, 1),
                  "val_accuracy": val["accuracy"], "val_auc": val["auc"], "val_pairs": val["pairs"],
                  "teacher_val_accuracy": teacher_val}
        history.append(record)
        save_checkpoint(checkpoint, student, head, optimizer, epoch)
        write_json(history_path, history)
        plot_history(history, run_dir / "loss.png", teacher_val)
        tqdm.write(f"{cfg.arch} epoch {epoch}: loss {record['loss']:.4f} (distill {record['distill']:.4f}, "
                   f"relation {record['relation']:.4f}, triplet {record['triplet']:.4f}), "
                   f"val acc {100 * val['accuracy']:.2f}% AUC {val['auc']:.4f} "
                   f"(teacher {100 * teacher_val:.2f}%), {train_seconds:.0f} s")
    return student, history


def teacher_target(cfg: TrainConfig) -> str:
    """What the distillation matched, in words (model cards)."""
    if cfg.teacher_views:
        return f"the teacher's embedding of the same augmented view ({cfg.teacher_views} rendered views per face)"
    if cfg.teacher_flip:
        return FLIP_TARGET
    return CLEAN_TARGET


def export(cfg: TrainConfig, prepared: Prepared, student, history: list[dict], run_dir: Path, out: Path) -> dict:
    """int8 + float TFLite of the trained student, checked, then entries, files and cards into ``out``."""
    rng = np.random.default_rng(cfg.seed)
    calibration_index = np.sort(rng.choice(prepared.split.train, min(CALIBRATION_FACES, len(prepared.split.train)),
                                           replace=False))
    calibration = normalise(prepared.chips[calibration_index])
    held_out = normalise(prepared.chips[prepared.split.val[:AGREEMENT_FACES]])
    arch = nns.ARCHITECTURES[cfg.arch]
    int8, float_model = export_models(student, arch, prepared.input_shape, cfg.width, calibration)
    agreement = np.sum(run_tflite(int8, held_out) * run_tflite(float_model, held_out), axis=1)
    tqdm.write(f"int8 vs float on {len(agreement)} held-out faces: cosine mean {agreement.mean():.4f}, "
               f"min {agreement.min():.4f}")
    if agreement.mean() < MIN_INT8_COSINE:
        raise RuntimeError(f"int8 agrees poorly with float (mean cosine {agreement.mean():.4f} < {MIN_INT8_COSINE}); "
                           "check the calibration set")

    staging = run_dir / EXPORT_DIR
    staging.mkdir(parents=True, exist_ok=True)
    key = arch.key
    (staging / file_name(key)).write_bytes(int8)
    (staging / file_name(f"{key}_float")).write_bytes(float_model)
    edgetpu = tflite_tools.check_edgetpu(staging / file_name(key))
    model = nns.build(arch, prepared.input_shape, width=cfg.width)
    last = history[-1] if history else {}
    provenance = {
        "model": {"architecture": arch.name, "params": nns.count_params(model), "macs": nns.count_macs(model),
                  "flops": nns.count_flops(model)},
        "source": {"teacher": prepared.teacher_key, "teacher_sha256": prepared.teacher_sha256,
                   "data": "train-faces (LFW-disjoint CelebA identities)", "data_manifest_sha256": prepared.data_sha256,
                   "run": run_dir.name},
        "training": {"epochs": len(history), "fraction": cfg.fraction, "width": cfg.width,
                     "train_identities": prepared.split.train_identities, "train_faces": int(len(prepared.split.train)),
                     "val_identities": prepared.split.val_identities, "val_faces": int(len(prepared.split.val)),
                     "teacher_target": teacher_target(cfg),
                     **({"initialised_from": Path(cfg.init_from).name} if cfg.init_from else {}),
                     "loss": f"{cfg.distill_weight} cosine distillation (linear head) + {cfg.relation_weight} "
                             f"relational + {cfg.triplet_weight} semi-hard triplet (margin {cfg.triplet_margin})",
                     "val_accuracy": round(float(last.get("val_accuracy", float("nan"))), 5),
                     "val_auc": round(float(last.get("val_auc", float("nan"))), 5),
                     "teacher_val_accuracy": round(float(last.get("teacher_val_accuracy", float("nan"))), 5),
                     "landmarks_vs_our_mtcnn": {k: v for k, v in prepared.landmarks.to_json().items()
                                                if k in ("faces", "missed", "median_nme", "p95_nme", "agrees")}},
        "calibration_faces": int(len(calibration)),
    }
    entries = manifest_entries(key, int8, float_model, prepared.input_shape, provenance, agreement,
                               "; ".join(edgetpu.problems) or "compatible")
    write_json(run_dir / EXPORT_ENTRIES, entries)

    out.mkdir(parents=True, exist_ok=True)  # the shipped folder is touched only from here on
    for name in entries:
        shutil.copyfile(staging / entries[name]["file"], out / entries[name]["file"])
    manifest_io.update_manifest(out, entries)
    manifest_io.write_cards(out, sorted(entries))
    return entries


def run_models(run_dir: Path) -> Manifest:
    """The models a finished run exported, as a manifest of their own (the shipped folder may hold a later run's by
    now); a clear error for a run that has not exported yet."""
    run_dir = Path(run_dir)
    entries_path = run_dir / EXPORT_ENTRIES
    if not entries_path.is_file():
        raise FileNotFoundError(f"{entries_path} not found: {run_dir} is not a train-nns run that finished its "
                                "export (run it to the end, or `--resume` it)")
    try:
        entries = json.loads(entries_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{entries_path} is not valid JSON ({exc}): export the run again with `--resume "
                         f"{run_dir}`") from exc
    if not isinstance(entries, dict):
        raise ValueError(f"{entries_path}: expected {{key: manifest entry}}, found {type(entries).__name__}: export "
                         f"the run again with `--resume {run_dir}`")
    return Manifest.from_entries(entries, run_dir / EXPORT_DIR, entries_path)


def evaluate_lfw(keys: Sequence[str], out: Path, run_dir: Path) -> dict:
    """The full LFW protocol on ``keys`` of the ``out`` manifest; results into the run folder, thresholds and
    accuracy into the manifest (as ``doorface-convert evaluate lfw`` does)."""
    from converters.evaluate import lfw

    manifest = Manifest.load(out)
    results = lfw.evaluate(list(keys), manifest)
    if results["pairs"] == lfw.FULL_PROTOCOL_PAIRS:
        lfw.record_in_manifest(results, manifest)
    table = lfw.markdown(results, manifest)
    (run_dir / "lfw.md").write_text(table, encoding="utf-8")
    summary = {key: {f: v for f, v in r.items() if f != "distances"} for key, r in results["models"].items()}
    write_json(run_dir / "lfw.json", {"pairs": results["pairs"], "no_face_fallback": results["no_face_fallback"],
                                      "models": summary})
    tqdm.write(table)
    for key in keys:
        warning = int8_loss_warning(key, lfw.int8_loss_points(results, manifest, key))
        if warning:
            log.warning(warning)
    return summary


def int8_loss_warning(key: str, loss_points: Optional[float],
                      limit: float = MAX_INT8_LFW_LOSS_POINTS) -> Optional[str]:
    """A warning when int8 ``key`` loses more than ``limit`` LFW points against its float reference, else None
    (also for a model without one). The int8-vs-float cosine check at export cannot see this: a loss of 0.40 pt
    passed it at 0.9990."""
    if loss_points is None or loss_points <= limit:
        return None
    return (f"int8 {key} loses {loss_points:.2f} pt of LFW against its float reference (limit {limit} pt): raise "
            f"CALIBRATION_FACES (now {CALIBRATION_FACES}) in research/train_nns.py and export again with "
            "--resume RUN_DIR")


def init_source(cfg: TrainConfig) -> dict:
    """The run ``cfg.init_from`` names, checked before anything is written: its checkpoint must exist and it must
    share this run's architecture, width and identity split, or the held-out validation identities would be
    ones the initial weights were trained on."""
    folder = Path(cfg.init_from)
    checkpoint = folder / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--init-from {folder}: {checkpoint} not found; name a train-nns run folder")
    source = TrainConfig.from_json(json.loads((folder / "config.json").read_text(encoding="utf-8"))["config"])
    for name in ("arch", "width", "seed", "val_fraction"):
        if getattr(source, name) != getattr(cfg, name):
            raise ValueError(f"--init-from {folder} trained with {name} {getattr(source, name)!r}, this run has "
                             f"{getattr(cfg, name)!r}: the weights (or the held-out split) would not carry over")
    return {"run": folder.name, "epoch": int(np.load(checkpoint)["epoch"]),
            "checkpoint_sha256": sources.sha256_file(checkpoint)}


def new_run_dir(arch: str, root: Path = RUNS_DIR) -> Path:
    run_dir = root / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def run(cfg: TrainConfig, *, resume: Optional[Path] = None, out: Optional[Path] = None, lfw: bool = True,
        models: Optional[Path] = None,
        resume_epochs: Optional[int] = None, resume_threads: Optional[int] = None) -> Path:
    """Prepare, train (or resume), export into ``out`` and evaluate on LFW; returns the run folder.

    ``out`` defaults to the shipped models folder for a full-data run, and to ``<run>/models`` (seeded with the
    detector) for a ``fraction`` < 1 learning-curve run, which must not replace the shipped model.
    """
    cfg.validate()
    models = Path(models) if models else default_models_dir()
    if resume is not None:
        run_dir = Path(resume)
        stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        stored_cfg = TrainConfig.from_json(stored["config"])
        conflicts = resume_conflicts(stored_cfg, cfg)
        if conflicts:
            raise ValueError(f"--resume {run_dir} keeps the run's own recipe, so {'; '.join(conflicts)} would be "
                             "ignored: drop them, or start a new run (without --resume) to train with them")
        cfg = stored_cfg
        if resume_epochs:
            cfg = dataclasses.replace(cfg, epochs=resume_epochs)
        if resume_threads:
            cfg = dataclasses.replace(cfg, threads=resume_threads)
        init = stored.get("init")  # as checked when the run started; its source may have trained on since
    else:
        init = init_source(cfg) if cfg.init_from else None
        run_dir = new_run_dir(cfg.arch)
    manifest = Manifest.load(models)
    prepared = prepare(cfg, manifest)
    arch = nns.ARCHITECTURES[cfg.arch]
    model = nns.build(arch, prepared.input_shape, width=cfg.width)
    write_json(run_dir / "config.json", {
        "config": cfg.to_json(),
        "data": {"train_identities": prepared.split.train_identities, "train_faces": int(len(prepared.split.train)),
                 "val_identities": prepared.split.val_identities, "val_faces": int(len(prepared.split.val)),
                 "data_manifest_sha256": prepared.data_sha256},
        "landmarks": prepared.landmarks.to_json(),
        "teacher": {"key": prepared.teacher_key, "sha256": prepared.teacher_sha256},
        "init": init,
        "model": {"key": arch.key, "params": nns.count_params(model), "macs": nns.count_macs(model),
                  "flops": nns.count_flops(model), "input_shape": list(prepared.input_shape)},
    })
    student, history = train(cfg, prepared, run_dir, resume=resume is not None)
    if out is None:
        out = models if cfg.fraction >= 1.0 else run_dir / "models"
    seed_models_folder(Path(out), models)
    export(cfg, prepared, student, history, run_dir, Path(out))
    if lfw:
        evaluate_lfw([arch.key, f"{arch.key}_float"], Path(out), run_dir)
    return run_dir


def main(args) -> int:
    run_dir = run(config_from_args(args), resume=args.resume, out=args.out, lfw=args.lfw, models=args.models,
                  resume_epochs=args.epochs, resume_threads=args.threads)
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m research.train_nns", description=__doc__.split("\n")[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(parser.parse_args()))
