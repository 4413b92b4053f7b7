"""``python -m research learning-curve RUN...``: LFW accuracy against training-set size, from finished train-nns runs.

Each run folder (``runs/<arch>-<timestamp>/``, see :mod:`research.train_nns`) holds its config (the share of
training identities it kept, the faces that made) and its LFW result. The runs must be of one architecture and
one schedule (epochs), so that only the data differs; a smaller share then also means fewer steps, as it would
for anyone training on less data, unless ``--steps-per-epoch`` held the steps equal. The report says what each
doubling of the data bought, on LFW and on the run's held-out train-faces identities (the same for every share): what
more data would buy, and whether it buys more on faces like the training ones than on others.

Writes ``<out>/<arch>_learning_curve.{json,md,png}`` (default ``reports/``): the points and both gains per doubling;
runs that all took the same number of optimiser steps (``--steps-per-epoch``) make an iso-step curve, written as
``<arch>_learning_curve_same_steps``. The curve is a research report, measured on runs other than the shipped
model's: it stays in ``reports/`` (docs/research.md shows it) and out of the manifest and the model cards, which
hold what the runtime and a model's provenance need.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence


@dataclass(frozen=True)
class CurvePoint:
    run: str
    arch: str
    key: str  # the manifest key its models were exported and evaluated under (see research.nns.Architecture)
    fraction: float
    epochs: int
    steps: int  # optimiser steps in all (a smaller share takes fewer per epoch)
    train_identities: int
    train_faces: int
    lfw_int8: float  # accuracy, 10-fold mean
    lfw_int8_std: float
    lfw_float: float
    tar_at_far_1e_3: float  # int8
    val_accuracy: float  # held-out train-faces identities, last epoch


def run_file(run_dir: Path, name: str) -> Path:
    """``run_dir / name`` of a finished run; a clear error when it is missing (the run is unfinished or not one)."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished train-nns run with an LFW result "
                                "(run `python -m research train-nns` to the end, without --no-lfw)")
    return path


def read_run(run_dir: Path) -> CurvePoint:
    """One finished run's point; a clear error if the run has no LFW result yet."""
    run_dir = Path(run_dir)
    config_path, lfw_path, history_path = (run_file(run_dir, n) for n in ("config.json", "lfw.json", "history.json"))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    lfw = json.loads(lfw_path.read_text(encoding="utf-8"))
    history = json.loads(history_path.read_text(encoding="utf-8"))
    arch = config["config"]["arch"]
    from converters.evaluate.lfw import FULL_PROTOCOL_PAIRS  # here: the CLI builds its parser from this module

    if lfw.get("pairs") != FULL_PROTOCOL_PAIRS:
        raise ValueError(f"{lfw_path}: {lfw.get('pairs')} LFW pairs, the curve needs the full "
                         f"{FULL_PROTOCOL_PAIRS}-pair protocol")
    key = config.get("model", {}).get("key", arch)  # runs from before variants exported under their arch name
    int8, float_ = lfw["models"][key], lfw["models"][f"{key}_float"]
    return CurvePoint(run=run_dir.name, arch=arch, key=key, fraction=float(config["config"]["fraction"]),
                      epochs=len(history), steps=sum(int(h.get("steps", 0)) for h in history),
                      train_identities=int(config["data"]["train_identities"]),
                      train_faces=int(config["data"]["train_faces"]), lfw_int8=float(int8["accuracy_mean"]),
                      lfw_int8_std=float(int8["accuracy_std"]), lfw_float=float(float_["accuracy_mean"]),
                      tar_at_far_1e_3=float(int8["tar_at_far_1e-3"]),
                      val_accuracy=float(history[-1]["val_accuracy"]) if history else math.nan)


def collect(run_dirs: Sequence[Path]) -> list[CurvePoint]:
    points = sorted((read_run(Path(d)) for d in run_dirs), key=lambda p: p.train_faces)
    if len(points) < 2:
        raise ValueError("a learning curve needs at least 2 runs (e.g. --fraction 0.25, 0.5 and 1)")
    for what in ("arch", "epochs"):
        values = {getattr(p, what) for p in points}
        if len(values) > 1:
            raise ValueError(f"the runs differ in {what} ({sorted(values)}): only the data share may differ")
    return points


def gain_per_doubling(points: Sequence[CurvePoint], metric: str = "lfw_int8") -> float:
    """Accuracy (a :class:`CurvePoint` field: LFW int8 by default, or ``val_accuracy``) gained per doubling of
    training faces: least squares over log2(faces)."""
    xs = [math.log2(p.train_faces) for p in points]
    ys = [getattr(p, metric) for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else math.nan


def same_steps(points: Sequence[CurvePoint]) -> bool:
    """Whether every run took the same number of optimiser steps (an iso-step curve: only the data differs)."""
    return len({p.steps for p in points}) == 1


def default_name(points: Sequence[CurvePoint]) -> str:
    return f"{points[0].arch}_learning_curve" + ("_same_steps" if same_steps(points) else "")


def markdown(points: Sequence[CurvePoint]) -> str:
    arch = points[0].arch
    rows = [f"Learning curve of `{arch}`: the same recipe ({points[0].epochs} epochs) on nested shares of the "
            "train-faces identities; LFW View-2, 6000 pairs, 10-fold, our MTCNN + alignment "
            "(`python -m research learning-curve`).", "",
            "| share | identities | faces | steps | LFW int8 | LFW float | TAR @ FAR=1e-3 (int8) | held-out val acc. "
            "| run |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        rows.append(f"| {p.fraction:.0%} | {p.train_identities:,} | {p.train_faces:,} | {p.steps:,} | "
                    f"{100 * p.lfw_int8:.2f} ± {100 * p.lfw_int8_std:.2f}% | {100 * p.lfw_float:.2f}% | "
                    f"{100 * p.tar_at_far_1e_3:.1f}% | {100 * p.val_accuracy:.2f}% | `{p.run}` |")
    gain = gain_per_doubling(points)
    if same_steps(points):
        length = (f"Every run took the same {points[0].steps:,} optimiser steps (`--steps-per-epoch`), so a smaller "
                  "share saw each face proportionally more often: the curve separates the data from the training "
                  "length.")
    else:
        length = ("The schedule is fixed in epochs, so a smaller share also trained for proportionally fewer steps: "
                  "the curve is what the same recipe gives on less data, and mixes the effect of data with that of "
                  "training length.")
    held_out = gain_per_doubling(points, "val_accuracy")
    rows += ["", f"Each doubling of the training faces gained {100 * gain:+.2f} points of LFW accuracy (least squares "
                 f"over log2 of the faces, {len(points)} runs), and {100 * held_out:+.2f} points on the held-out "
                 "train-faces identities (float student, the same identities and pairs for every share), whose "
                 f"faces come from the same collection as the training faces where LFW's do not. {length}"]
    return "\n".join(rows) + "\n"


def plot(points: Sequence[CurvePoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    faces = [p.train_faces for p in points]
    ax.errorbar(faces, [100 * p.lfw_int8 for p in points], yerr=[100 * p.lfw_int8_std for p in points],
                marker="o", capsize=3, label="LFW int8")
    ax.plot(faces, [100 * p.lfw_float for p in points], marker="s", linestyle="--", label="LFW float")
    ax.plot(faces, [100 * p.val_accuracy for p in points], marker="^", linestyle=":", label="held-out val")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training faces")
    ax.set_ylabel("verification accuracy (%)")
    length = f"{points[0].steps:,} steps each" if same_steps(points) else f"{points[0].epochs} epochs"
    ax.set_title(f"{points[0].arch}: accuracy against training-set size ({length})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(points: Sequence[CurvePoint], out: Path, name: Optional[str] = None) -> dict[str, Path]:
    """``<out>/<name>.{json,md,png}``; the name defaults to :func:`default_name`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = name or default_name(points)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    paths["json"].write_text(json.dumps({"points": [asdict(p) for p in points],
                                         "gain_per_doubling": gain_per_doubling(points),
                                         "held_out_gain_per_doubling": gain_per_doubling(points, "val_accuracy")},
                                        indent=2) + "\n",
                             encoding="utf-8")
    paths["md"].write_text(markdown(points), encoding="utf-8")
    plot(points, paths["png"])
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="finished train-nns run folders of one architecture and schedule")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for JSON, markdown and PNG")


def main(args) -> int:
    points = collect(args.runs)
    paths = write(points, args.out)
    print(markdown(points))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
