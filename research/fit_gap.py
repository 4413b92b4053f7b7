"""``python -m research fit-gap``: does a shipped student memorise its training identities, or under-fit them?

It verifies face pairs of a seeded sample of the identities a model trained on and of the identities its run held
out, with the int8 model through the runtime's alignment and embedder, and with the teacher on the same pairs. A
student far better on its own identities than on held-out ones (and better than the teacher there) has learnt
those people rather than faces: more identities are what it needs. A student about as good on both is
under-fitting: capacity or training length limit it, not the data.

The held-out split is the run's (``split_identities`` with the run's seed and validation share); the teacher's
accuracy on it must reproduce the ``teacher_val_accuracy`` that training recorded in the model's entry, which
proves the split is the same. Several ``--models`` folders (say, runs fine-tuned from one shipped run, each
``<run>/models``) or ``--runs`` (each with the models it exported itself, for runs whose models have since been
replaced in the folder they went to) are measured on the same samples, one row pair per run, so that what a recipe
or a share of the data did to each side of the gap can be read off one table. Writes ``<out>/<name>.{json,md}``
(default ``reports/nns_fit_gap``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from research.train_config import CLEAN_TARGET, FLIP_TARGET, TrainConfig

SPLITS = ("trained", "held-out")
# The recorded teacher accuracy is on these very pairs; float sums may differ by a pair or two across threads.
TEACHER_MATCH_TOLERANCE = 0.003
DEFAULT_NAME = "nns_fit_gap"
TRAINED_IDENTITIES = 150  # ~2× the held-out identities of a full run: enough pairs for a 1-pt reading


@dataclass(frozen=True)
class GapRow:
    key: str
    run: str  # the train-nns run the model was exported from (its manifest entry's source)
    split: str  # one of SPLITS
    identities: int
    faces: int
    pairs: int
    student_accuracy: float
    student_auc: float
    teacher_accuracy: float
    teacher_auc: float


def _training(entry) -> dict:
    training = entry.fields.get("training")
    if not training or "teacher_val_accuracy" not in training:
        raise ValueError(f"model '{entry.key}' has no train-nns training record in its manifest entry: fit-gap "
                         "measures students exported by `python -m research train-nns`")
    return training


def sample_identities(faces: Sequence, index: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The faces (indices into ``faces``) of ``count`` identities drawn, seeded, from those of ``index``."""
    labels = np.asarray([f.identity for f in faces])
    names = np.unique(labels[index])
    chosen = np.random.default_rng(seed).choice(names, size=min(count, len(names)), replace=False)
    return index[np.isin(labels[index], chosen)]


def teacher_reference(faces: Sequence, teacher, training: dict, name: str) -> np.ndarray:
    """The teacher's embeddings of ``faces`` as training measured its held-out accuracy: of the clean faces (older
    entries, which record no target, all were), or flip-averaged for a ``--teacher-flip`` run."""
    from edge.embedder import l2_normalise as unit_rows
    from research.teacher import teacher_embeddings

    plain = teacher_embeddings(faces, teacher, desc=f"{teacher.key} {name}")
    if training.get("teacher_target", CLEAN_TARGET) != FLIP_TARGET:
        return plain
    mirrored = teacher_embeddings(faces, teacher, desc=f"{teacher.key} {name} mirrored", mirrored=True)
    return unit_rows(plain + mirrored)


def measure(key: str, manifest, faces: Optional[Sequence] = None, *, seed: int = TrainConfig.seed,
            val_fraction: float = TrainConfig.val_fraction, trained_identities: int = TRAINED_IDENTITIES,
            teachers=None) -> list[GapRow]:
    """One row per split for the student ``key``. ``teachers`` is the manifest holding the teacher when
    ``manifest`` does not (a run's own models folder holds only the run's models and the detector)."""
    from converters import datasets
    from research.data import split_identities
    from research.teacher import teacher_embeddings
    from research.verification import verification_metrics, verification_pairs

    entry = manifest.entry(key)
    training = _training(entry)
    teacher_key = entry.fields["source"]["teacher"]
    teacher = (manifest if teachers is None or teacher_key in manifest.models else teachers).entry(teacher_key)
    faces = list(faces) if faces is not None else datasets.load_train_faces()
    labels = np.asarray([f.identity for f in faces])
    split = split_identities(list(labels), val_fraction, training.get("fraction", 1.0), seed)
    rows = []
    for name, index in zip(SPLITS, (sample_identities(faces, split.train, trained_identities, seed), split.val)):
        chosen = [faces[i] for i in index]
        pairs = verification_pairs(labels[index], seed)
        student = verification_metrics(teacher_embeddings(chosen, entry, desc=f"{key} {name}"), pairs)
        reference = verification_metrics(teacher_reference(chosen, teacher, training, name), pairs)
        rows.append(GapRow(key, entry.fields["source"]["run"], name, len(np.unique(labels[index])), len(index),
                           student["pairs"], student["accuracy"], student["auc"], reference["accuracy"],
                           reference["auc"]))
    recorded = float(training["teacher_val_accuracy"])
    if abs(rows[1].teacher_accuracy - recorded) > TEACHER_MATCH_TOLERANCE:
        raise ValueError(f"'{key}': the teacher verifies {100 * rows[1].teacher_accuracy:.2f}% of these held-out "
                         f"pairs but {100 * recorded:.2f}% of its run's: this is not the split the model trained "
                         "with; pass the run's --seed and --val-fraction")
    return rows


def markdown(rows: Sequence[GapRow]) -> str:
    lines = ["Face verification on identities each student trained on against the identities its run held out "
             "(train-faces pairs; int8 student and its teacher on the same pairs; `python -m research fit-gap`). "
             "*Gap* is the student's accuracy on trained identities minus held-out ones.", "",
             "| model | run | identities | split | faces | pairs | student acc. | student AUC | teacher acc. | gap |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        pair = [r for r in rows if (r.key, r.run) == (row.key, row.run)]
        gap = pair[0].student_accuracy - pair[-1].student_accuracy
        lines.append(f"| `{row.key}` | `{row.run}` | {row.identities} | {row.split} | {row.faces:,} | {row.pairs:,} | "
                     f"{100 * row.student_accuracy:.2f}% | {row.student_auc:.4f} | {100 * row.teacher_accuracy:.2f}% | "
                     f"{'' if row.split != SPLITS[0] else f'{100 * gap:+.2f} pt'} |")
    return "\n".join(lines) + "\n"


def write(rows: Sequence[GapRow], out: Path, name: str = DEFAULT_NAME) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("json", "md")}
    paths["json"].write_text(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(rows), encoding="utf-8")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", nargs="+", default=["nns1", "nns2"],
                        help="students to measure (default: %(default)s)")
    parser.add_argument("--identities", type=int, default=TRAINED_IDENTITIES,
                        help="trained identities to sample (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="the runs' --seed (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                        help="the runs' held-out share of identities (default: %(default)s)")
    parser.add_argument("--models", type=Path, nargs="+", default=None, metavar="MODELS_DIR",
                        help="models folders of the students, e.g. runs' <run>/models, each measured on the same "
                             "samples (default: quantized_models, which also provides the teacher when a folder "
                             "lacks it)")
    parser.add_argument("--runs", type=Path, nargs="+", default=(), metavar="RUN_DIR",
                        help="train-nns run folders, each measured with the models it exported itself (after any "
                             "--models folders)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for JSON and markdown")
    parser.add_argument("--name", default=DEFAULT_NAME, help="report file name, without extension "
                                                             "(default: %(default)s)")


def main(args) -> int:
    from converters import datasets
    from edge.manifest import Manifest
    from research.run_folder import run_models

    if args.identities < 2:
        raise ValueError(f"--identities must be >= 2, got {args.identities}")
    chosen = [Manifest.load(folder) for folder in args.models or ()] + [run_models(run) for run in args.runs]
    manifests = chosen or [Manifest.load()]
    teachers = Manifest.load() if chosen else None
    faces = datasets.load_train_faces()
    rows = [row for manifest in manifests for key in args.keys
            for row in measure(key, manifest, faces, seed=args.seed, val_fraction=args.val_fraction,
                               trained_identities=args.identities, teachers=teachers)]
    paths = write(rows, args.out, args.name)
    print(markdown(rows))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
