"""The ``train-nns`` configuration and its command-line options, apart from the trainer.

Kept free of cv2, TensorFlow and the model code so that ``python -m research --help`` and argument errors stay fast;
:mod:`research.train_nns` does the work. A run's ``config.json`` stores :meth:`TrainConfig.to_json` and
``--resume`` reads it back with :meth:`TrainConfig.from_json`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# The architectures of research.nns; repeated here (and checked against it by a test) so that building the
# parser does not import the model code.
ARCHITECTURE_NAMES = ("nns1", "nns2", "nns2fc")
# What --resume may change of a stored run: how long it trains and how fast. Every other setting is the run's recipe.
RESUME_OVERRIDES = ("epochs", "threads")
# TrainConfig fields whose command-line option is not --<field-with-dashes>.
OPTION_NAMES = {"learning_rate": "--lr"}
# A run folder keeps its own exported models, wherever --out copied them: the files in EXPORT_DIR, their manifest
# entries in EXPORT_ENTRIES (research.export writes them; research.run_folder.run_models, compare-runs and
# fit-gap read them).
EXPORT_DIR, EXPORT_ENTRIES = "export", "export.json"
# Issue 6: int8 may cost at most this much LFW accuracy against the float model it was quantized from.
MAX_INT8_LFW_LOSS_POINTS = 0.3
# How model cards name the distillation targets that the held-out teacher accuracy is measured with
# (research.teacher.teacher_target); fit-gap reads them back to reproduce that accuracy.
CLEAN_TARGET = "the teacher's embedding of the clean face"
FLIP_TARGET = "the mean of the teacher's embeddings of the clean face and of its mirror image"
TEACHER_PREFERENCE = ("mobilefacenet_float", "mobilefacenet", "dlib_resnet_float", "dlib_resnet")


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of the door-camera augmentations (see :mod:`research.augment`)."""

    flip: float = 0.5
    max_rotation_deg: float = 8.0
    max_scale: float = 0.08  # ± relative
    max_shift: float = 0.05  # ± fraction of the chip size
    downscale: float = 0.35  # probability of down-and-up scaling
    downscale_range: tuple[float, float] = (0.3, 0.8)  # of the chip size
    blur: float = 0.25
    blur_sigma: tuple[float, float] = (0.4, 1.4)
    colour: float = 0.8
    brightness: float = 0.25  # ± additive, fraction of the range
    contrast: float = 0.25  # ± relative
    saturation: float = 0.3  # ± relative
    grey: float = 0.1
    jpeg: float = 0.35
    jpeg_quality: tuple[int, int] = (30, 90)


# ``--augmentation`` presets. "door" is the default recipe; "light" keeps the geometry and the flip but makes the
# image degradations rare, to test whether the heavy door-camera mix slows an under-fitting student down.
AUGMENTATIONS = {
    "door": Augmentation(),
    "light": Augmentation(downscale=0.1, blur=0.1, colour=0.5, grey=0.05, jpeg=0.1, jpeg_quality=(50, 90)),
}


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "nns2"
    epochs: int = 20
    fraction: float = 1.0  # share of training identities (learning curve)
    batch_identities: int = 16  # P
    per_identity: int = 4  # K
    learning_rate: float = 3e-3  # peak, after the warm-up
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05  # AdamW (decoupled), not on batch-norm parameters or biases
    dropout: float = 0.2  # before the embedding layer
    distill_weight: float = 1.0
    relation_weight: float = 10.0  # its gradient per face is ~1/batch of the cosine term's: rebalanced
    triplet_weight: float = 1.0
    triplet_margin: float = 0.2
    val_fraction: float = 0.05
    seed: int = 0
    width: float = 1.0  # width multiplier of the architecture (1.0 = the shipped budget)
    teacher: str = "auto"  # manifest key, or "auto" = the first of TEACHER_PREFERENCE present
    teacher_flip: bool = False  # distil towards the mean of the teacher's embeddings of the face and its mirror
    teacher_views: int = 0  # 0: the clean face's teacher embedding; N: N augmented views per face, each its own target
    threads: int = 2
    init_from: Optional[str] = None  # a run folder whose last checkpoint starts the student (a fine-tune)
    steps_per_epoch: Optional[int] = None  # None: training faces / batch size; set, for an iso-step learning curve
    augmentation: Augmentation = dataclasses.field(default_factory=Augmentation)

    @property
    def batch_size(self) -> int:
        return self.batch_identities * self.per_identity

    def validate(self) -> None:
        if self.arch not in ARCHITECTURE_NAMES:
            raise ValueError(f"--arch must be one of {list(ARCHITECTURE_NAMES)}, got {self.arch!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.batch_identities < 2 or self.per_identity < 2:
            raise ValueError("triplets need at least 2 identities per batch and 2 faces per identity "
                             f"(got --batch-identities {self.batch_identities}, --per-identity {self.per_identity})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.triplet_weight < 0:
            raise ValueError(f"--triplet-weight must be >= 0, got {self.triplet_weight}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"--warmup-epochs must be >= 0 and less than --epochs {self.epochs}, "
                             f"got {self.warmup_epochs}")
        if self.teacher_views < 0:
            raise ValueError(f"--teacher-views must be >= 0, got {self.teacher_views}")
        if self.teacher_views and self.teacher_flip:
            raise ValueError("--teacher-flip and --teacher-views exclude each other: a view that the augmentation "
                             "flipped already has the teacher's embedding of that mirror image as its target")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"--steps-per-epoch must be >= 1, got {self.steps_per_epoch}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        fields = dict(data)
        augmentation = fields.pop("augmentation", {}) or {}
        augmentation = {k: tuple(v) if isinstance(v, list) else v for k, v in augmentation.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"config.json has unknown fields {unknown}: was it written by another version?")
        return cls(**fields, augmentation=Augmentation(**augmentation))


def augmentation_name(augmentation: Augmentation) -> str:
    """The preset's name (see :data:`AUGMENTATIONS`), or "custom" for a hand-edited mix."""
    for name, preset in AUGMENTATIONS.items():
        if preset == augmentation:
            return name
    return "custom"


def _option_value(name: str, value) -> str:
    return augmentation_name(value) if name == "augmentation" else repr(value)


def option_name(name: str) -> str:
    """The ``train-nns`` option of the TrainConfig field ``name`` (``learning_rate`` -> ``--lr``)."""
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def option_text(name: str, value) -> str:
    """A TrainConfig setting as the ``train-nns`` option that sets it (``--lr 0.001``, ``--teacher-flip``,
    ``--augmentation light``), so that a report's recipe reads as the command line that trained it."""
    option = option_name(name)
    if isinstance(value, bool):
        return option if value else "--no-" + option[2:]
    if isinstance(value, float):
        return f"{option} {value:g}"
    return f"{option} {augmentation_name(value) if isinstance(value, Augmentation) else value}"


def resume_conflicts(stored: TrainConfig, requested: TrainConfig) -> list[str]:
    """The settings of ``requested`` that ``--resume`` would ignore: set away from their defaults and different
    from the stored run's recipe (which a resume keeps, apart from :data:`RESUME_OVERRIDES`)."""
    defaults = TrainConfig()
    conflicts = []
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        asked, kept = getattr(requested, name), getattr(stored, name)
        if name in RESUME_OVERRIDES or asked == getattr(defaults, name) or asked == kept:
            continue
        conflicts.append(f"{option_name(name)} {_option_value(name, asked)} (the run has "
                         f"{_option_value(name, kept)})")
    return conflicts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train-nns`` options (shared by ``python -m research train-nns`` and ``python -m research.train_nns``)."""
    defaults = TrainConfig()
    parser.add_argument("--arch", choices=ARCHITECTURE_NAMES, default=defaults.arch)
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"total epochs (default: {defaults.epochs}; with --resume: the stored total, or "
                             "this new one)")
    parser.add_argument("--fraction", type=float, default=defaults.fraction,
                        help="share of the training identities, for a learning curve (default: %(default)s)")
    parser.add_argument("--batch-identities", type=int, default=defaults.batch_identities,
                        help="P identities per batch (default: %(default)s)")
    parser.add_argument("--per-identity", type=int, default=defaults.per_identity,
                        help="K faces per identity (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="peak learning rate")
    parser.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs,
                        help="epochs of linear warm-up to the peak --lr before the cosine decay (default: "
                             "%(default)s; a fine-tune from --init-from may want less, or a lower --lr: the first "
                             "epochs at the peak undo part of what the source run learnt)")
    parser.add_argument("--dropout", type=float, default=defaults.dropout,
                        help="dropout before the embedding layer (default: %(default)s)")
    parser.add_argument("--triplet-weight", type=float, default=defaults.triplet_weight,
                        help="weight of the labelled triplet loss beside distillation (0: distillation alone, which "
                             "cannot learn the training identities beyond what the teacher knows of them; default: "
                             "%(default)s)")
    parser.add_argument("--width", type=float, default=defaults.width, help="width multiplier (default: 1)")
    parser.add_argument("--teacher", default=defaults.teacher,
                        help=f"teacher manifest key, or auto = first of {', '.join(TEACHER_PREFERENCE)}")
    parser.add_argument("--teacher-flip", action=argparse.BooleanOptionalAction, default=defaults.teacher_flip,
                        help="distil towards the teacher's flip-averaged embedding (face and mirror), the same "
                             "target for a face the augmentation flipped (default: off)")
    parser.add_argument("--teacher-views", type=int, default=defaults.teacher_views, metavar="N",
                        help="consistent distillation: render N augmented views of every face once, run the teacher "
                             "on each, and train the student on those views towards the teacher's embedding of the "
                             "same view (0, the default: fresh augmentations towards the clean face's embedding)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"TensorFlow threads (default: {defaults.threads}; with --resume: the stored value, or "
                             "this one: it changes speed, not results)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--augmentation", choices=sorted(AUGMENTATIONS), default="door",
                        help="augmentation preset (default: %(default)s, the door-camera mix)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="override the steps per epoch (default: training faces / batch size); stored with "
                             "the run, like the rest of its recipe")
    parser.add_argument("--init-from", default=None, metavar="RUN_DIR",
                        help="start a new run from the student (and head) weights of RUN_DIR's last checkpoint, "
                             "with this run's own recipe and a fresh schedule: a fine-tune, e.g. to try another "
                             "teacher target on a trained model")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint (its config is reused)")
    parser.add_argument("--out", type=Path, default=None,
                        help="models folder to write the int8 + float models into (default: the shipped "
                             "quantized_models for --fraction 1, else <run>/models)")
    parser.add_argument("--models", type=Path, default=None,
                        help="models folder holding the teacher and the detector (default: quantized_models)")
    parser.add_argument("--lfw", action=argparse.BooleanOptionalAction, default=True,
                        help="run the LFW protocol on the exported models (default: on)")


def config_from_args(args) -> TrainConfig:
    return TrainConfig(arch=args.arch, epochs=args.epochs or TrainConfig.epochs, fraction=args.fraction,
                       batch_identities=args.batch_identities, per_identity=args.per_identity,
                       learning_rate=args.lr, warmup_epochs=args.warmup_epochs, dropout=args.dropout,
                       triplet_weight=args.triplet_weight,
                       width=args.width, teacher=args.teacher,
                       teacher_flip=args.teacher_flip, teacher_views=args.teacher_views,
                       init_from=str(args.init_from) if args.init_from else None,
                       threads=args.threads or TrainConfig.threads, steps_per_epoch=args.steps_per_epoch,
                       seed=args.seed, augmentation=AUGMENTATIONS[args.augmentation])
