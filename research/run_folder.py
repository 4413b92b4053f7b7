"""A train-nns run folder, ``runs/<arch>-<timestamp>/``: making one, writing its JSON files, and reading back the
models it exported.

The folder holds ``config.json``, ``history.json``, ``loss.png``, ``checkpoint.npz`` (every epoch; ``--resume``
continues from it), ``export/`` with ``export.json`` (the run's own int8 and float models and their manifest
entries, see :func:`run_models`) and ``lfw.json`` / ``lfw.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge.manifest import Manifest
from research.train_config import EXPORT_DIR, EXPORT_ENTRIES

RUNS_DIR = Path("runs")


def new_run_dir(arch: str, root: Path = RUNS_DIR) -> Path:
    run_dir = root / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


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
