"""The train-nns run comparison (:mod:`research.run_report`) over run folders as the trainer writes them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge.manifest import Manifest, default_models_dir
from research import run_report as RR
from research.train_config import AUGMENTATIONS, TrainConfig


def _run(root, name, cfg: TrainConfig, lrs, accuracy, init=None):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "config": cfg.to_json(), "data": {"train_identities": 1345, "train_faces": 9472}, "init": init}))
    history = [{"epoch": e + 1, "lr": lr, "steps": 148, "val_accuracy": accuracy - 0.01} for e, lr in enumerate(lrs)]
    (run / "history.json").write_text(json.dumps(history))
    model = {"accuracy_mean": accuracy, "accuracy_std": 0.01, "tar_at_far_1e-3": accuracy / 4, "sha256": name * 8}
    float_model = {**model, "accuracy_mean": accuracy + 0.002, "sha256": name * 9}
    (run / "export.json").write_text(json.dumps({cfg.arch: {"calibration": {"samples": 2000}}}))
    (run / "lfw.json").write_text(json.dumps({"pairs": 6000, "models": {cfg.arch: model,
                                                                        f"{cfg.arch}_float": float_model}}))
    return run


def test_runs_show_only_the_settings_they_differ_in(tmp_path):
    base = TrainConfig(arch="nns2", epochs=4, threads=1)
    door = _run(tmp_path, "door", base, [3e-3, 2e-3, 1e-3, 0.0], 0.80)
    light = _run(tmp_path, "light", dataclasses.replace(base, augmentation=AUGMENTATIONS["light"], threads=2),
                 [3e-3, 2e-3, 1e-3, 0.0], 0.82)
    # resumed with a longer --epochs: the cosine schedule restarts at epoch 3
    longer = _run(tmp_path, "longer", dataclasses.replace(base, epochs=6), [3e-3, 0.0, 1.5e-3, 1e-3, 5e-4, 0.0], 0.84)
    summaries = [RR.read_summary(r) for r in (door, light, longer)]
    assert RR.differences(summaries) == ["augmentation"]  # threads change speed only; epochs have their own column
    assert [s.restarts for s in summaries] == [(), (), (3,)]
    paths = RR.write(summaries, tmp_path / "out", "cmp", shipped=frozenset({"longer" * 8}))
    text = paths["md"].read_text()
    assert ("| `light` | nns2 | --augmentation light | 4 | 592 | none | 81.00% | 82.00 ± 1.00% | 82.20% | +0.20 pt "
            "| 20.5% | 2,000 |" in text)
    assert "| `longer` **shipped** | nns2 | defaults | 6 | 888 | 3 |" in text
    assert "`door` **shipped**" not in text
    stored = json.loads(paths["json"].read_text())
    assert stored["differing_settings"] == ["augmentation"] and stored["runs"][2]["restarts"] == [3]
    assert [r["shipped"] for r in stored["runs"]] == [False, False, True]


def test_a_run_started_from_another_names_it_and_its_epoch(tmp_path):
    base = TrainConfig(arch="nns1", epochs=2, threads=1)
    start = _run(tmp_path, "nns1-80", base, [3e-3, 0.0], 0.93)
    tuned = _run(tmp_path, "nns1-tuned", dataclasses.replace(base, init_from=str(start), teacher_views=8),
                 [1e-3, 0.0], 0.94, init={"run": "nns1-80", "epoch": 80, "checkpoint_sha256": "0" * 64})
    summaries = [RR.read_summary(r) for r in (start, tuned)]
    assert RR.differences(summaries) == ["init_from", "teacher_views"]
    text = RR.markdown(summaries)
    assert "| `nns1-tuned` | nns1 | --init-from nns1-80 (epoch 80) --teacher-views 8 | 2 | 296 |" in text
    assert "| `nns1-80` | nns1 | defaults |" in text


def test_recipe_options_can_be_typed_back_into_train_nns():
    import argparse

    from research import train_config

    cfg = TrainConfig(arch="nns2", learning_rate=1e-3, dropout=0.0, teacher_flip=True, fraction=0.25,
                      augmentation=AUGMENTATIONS["light"], triplet_weight=0.0, threads=1)
    options = RR.recipe_options(RR.recipe_of(cfg.to_json()))
    assert options == ("--augmentation light --dropout 0 --fraction 0.25 --lr 0.001 --teacher-flip "
                       "--triplet-weight 0")  # threads change speed only: not part of the recipe
    parser = argparse.ArgumentParser()
    train_config.add_arguments(parser)
    again = train_config.config_from_args(parser.parse_args(["--arch", "nns2", *options.split()]))
    assert dataclasses.replace(again, threads=1) == cfg


def test_shipped_runs_are_read_from_the_manifest():
    shipped = RR.shipped_sha256(default_models_dir())
    assert Manifest.load().entry("nns2").sha256 in shipped


def test_hand_edited_augmentation_is_called_custom():
    tweaked = dataclasses.replace(AUGMENTATIONS["door"], blur=0.0)
    assert RR.augmentation_name(tweaked) == "custom"
    assert RR.augmentation_name(AUGMENTATIONS["light"]) == "light"


def test_unfinished_run_is_named(tmp_path):
    run = _run(tmp_path, "running", TrainConfig(), [3e-3], 0.8)
    (run / "lfw.json").unlink()
    with pytest.raises(FileNotFoundError, match="lfw.json"):
        RR.read_summary(run)
    finished_without_export = _run(tmp_path, "no-export", TrainConfig(), [3e-3], 0.8)
    (finished_without_export / "export.json").unlink()
    with pytest.raises(FileNotFoundError, match="export.json not found: .* is not a finished train-nns run"):
        RR.read_summary(finished_without_export)
