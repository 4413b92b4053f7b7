"""``python -m research compare-runs RUN...``: finished train-nns runs side by side, with what their recipes differ in.

Run folders (``runs/<arch>-<timestamp>/``) are git-ignored; this report is how their figures get into the
repository and the README. For each run: its recipe, as the ``train-nns`` options it set away from their defaults
(the augmentation by its preset name, see :data:`research.train_config.AUGMENTATIONS`; a fine-tune's source run
and epoch), its length in epochs and optimiser steps, the epochs where the learning rate jumped back up (a
``--resume`` with a longer ``--epochs`` restarts the cosine schedule there), its held-out validation accuracy, its
LFW result (int8 and float) and the faces its int8 export was calibrated on (from ``export.json``).

Writes ``<out>/<name>.{json,md}`` (default ``reports/nns_runs``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from research.learning_curve import CurvePoint, read_run, run_file
from research.train_config import EXPORT_ENTRIES, TrainConfig, augmentation_name, option_text

# Settings that say how a run was executed, not what it learned (threads change speed only).
NOT_RECIPE = ("threads",)
RESTART_JUMP = 1.05  # an epoch whose learning rate exceeds the previous one's by this factor restarted the schedule


@dataclass(frozen=True)
class RunSummary:
    point: CurvePoint  # LFW, data and length, as the learning curve reads them
    recipe: dict  # flattened config: setting → value
    restarts: tuple[int, ...]  # epochs where the learning rate jumped back up
    int8_sha256: str  # of the int8 model the run's LFW result is for
    calibration_faces: int  # post-training quantization samples of that export

    @property
    def int8_loss_points(self) -> float:
        return 100 * (self.point.lfw_float - self.point.lfw_int8)


def recipe_of(config: dict, init: Optional[dict] = None) -> dict:
    """The run's settings, flat; ``init`` (config.json's record of an ``--init-from`` source) names the run and
    epoch the weights came from."""
    cfg = TrainConfig.from_json(config)
    flat = {k: v for k, v in cfg.to_json().items() if k not in NOT_RECIPE and k != "augmentation"}
    flat["augmentation"] = augmentation_name(cfg.augmentation)
    if cfg.init_from:
        flat["init_from"] = f"{init['run']} (epoch {init['epoch']})" if init else Path(cfg.init_from).name
    return flat


def restarts_of(history: Sequence[dict]) -> tuple[int, ...]:
    return tuple(int(h["epoch"]) for prev, h in zip(history, history[1:])
                 if float(h["lr"]) > RESTART_JUMP * float(prev["lr"]))


def read_summary(run_dir: Path) -> RunSummary:
    point = read_run(run_dir)  # raises with a clear message if the run is unfinished

    def load(name: str):
        return json.loads(run_file(run_dir, name).read_text(encoding="utf-8"))

    config, history, lfw, export = (load(n) for n in ("config.json", "history.json", "lfw.json", EXPORT_ENTRIES))
    return RunSummary(point, recipe_of(config["config"], config.get("init")), restarts_of(history),
                      str(lfw["models"][point.key].get("sha256", "")),
                      int(export[point.key]["calibration"]["samples"]))


def differences(summaries: Sequence[RunSummary]) -> list[str]:
    """The recipe settings whose values are not the same in every run (arch and epochs have their own columns)."""
    keys = sorted({k for s in summaries for k in s.recipe} - {"arch", "epochs"})
    return [k for k in keys if len({json.dumps(s.recipe.get(k)) for s in summaries}) > 1]


def recipe_options(recipe: dict) -> str:
    """The settings of a flattened recipe (see :func:`recipe_of`) that are away from train-nns's defaults, as
    options; arch and epochs, which every run sets, have their own columns."""
    defaults = recipe_of(TrainConfig().to_json())
    changed = [k for k in sorted(recipe) if k not in ("arch", "epochs") and recipe[k] != defaults.get(k)]
    return " ".join(option_text(k, recipe[k]) for k in changed) or "defaults"


def markdown(summaries: Sequence[RunSummary], shipped: frozenset[str] = frozenset()) -> str:
    """``shipped``: the sha256 of the int8 models in the manifest; their runs are marked."""
    rows = ["train-nns runs compared (`python -m research compare-runs`); LFW View-2, 6000 pairs, 10-fold, our MTCNN "
            "+ alignment. *Recipe* lists the `train-nns` options a run set away from their defaults (besides "
            "`--arch` and `--epochs`); **shipped** marks the runs whose int8 model is in the manifest. *Epochs* "
            "and *steps* are a run's own: a run started from another's weights (`--init-from`) trained that much "
            "on top of them.", "",
            "| run | arch | recipe | epochs | steps | LR restarts at epoch | held-out val acc. | LFW int8 | "
            "LFW float | int8 loss | TAR @ FAR=1e-3 (int8) | calibration faces |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        p = s.point
        recipe = recipe_options(s.recipe)
        restarts = ", ".join(str(e) for e in s.restarts) or "none"
        run = f"`{p.run}`" + (" **shipped**" if s.int8_sha256 in shipped else "")
        rows.append(f"| {run} | {p.arch} | {recipe} | {p.epochs} | {p.steps:,} | {restarts} | "
                    f"{100 * p.val_accuracy:.2f}% | {100 * p.lfw_int8:.2f} ± {100 * p.lfw_int8_std:.2f}% | "
                    f"{100 * p.lfw_float:.2f}% | {s.int8_loss_points:+.2f} pt | {100 * p.tar_at_far_1e_3:.1f}% | "
                    f"{s.calibration_faces:,} |")
    return "\n".join(rows) + "\n"


def shipped_sha256(models: Path) -> frozenset[str]:
    from edge.manifest import Manifest

    return frozenset(entry.sha256 for entry in Manifest.load(models).models.values())


def write(summaries: Sequence[RunSummary], out: Path, name: str,
          shipped: frozenset[str] = frozenset()) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("json", "md")}
    runs = [{**asdict(s.point), "recipe": s.recipe, "restarts": list(s.restarts), "int8_sha256": s.int8_sha256,
             "int8_loss_points": s.int8_loss_points, "shipped": s.int8_sha256 in shipped} for s in summaries]
    paths["json"].write_text(json.dumps({"runs": runs, "differing_settings": differences(summaries)}, indent=2)
                             + "\n", encoding="utf-8")
    paths["md"].write_text(markdown(summaries, shipped), encoding="utf-8")
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished train-nns run folders")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for JSON and markdown")
    parser.add_argument("--name", default="nns_runs", help="file stem of the report (default: %(default)s)")
    parser.add_argument("--models", type=Path, default=None,
                        help="models folder whose manifest says which runs are shipped (default: quantized_models)")


def main(args) -> int:
    from edge.manifest import default_models_dir

    summaries = [read_summary(Path(d)) for d in args.runs]
    shipped = shipped_sha256(args.models or default_models_dir())
    paths = write(summaries, args.out, args.name, shipped)
    print(markdown(summaries, shipped))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
