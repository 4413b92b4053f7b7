"""The learning-curve report over train-nns run folders (:mod:`research.learning_curve`)."""

from __future__ import annotations

import json
import math

import pytest

from edge.manifest import MODELS_ENV, Manifest
from research import cli
from research import learning_curve as LC


def _run(root, name, *, fraction, faces, accuracy, epochs=20, arch="nns2", key=None, lfw=True, steps=None,
         val=None):
    """A finished run folder; ``key`` (the manifest key, written since variants exist) is left out by default, as
    in the runs from before. ``val``: held-out accuracy of the last epoch (default: ``accuracy`` - 0.01)."""
    run = root / name
    run.mkdir()
    config = {"config": {"arch": arch, "fraction": fraction},
              "data": {"train_identities": faces // 7, "train_faces": faces}}
    if key:
        config["model"] = {"key": key}
    (run / "config.json").write_text(json.dumps(config))
    val = accuracy - 0.01 if val is None else val
    history = [{"epoch": e + 1, "val_accuracy": val, "steps": steps or faces // 64} for e in range(epochs)]
    (run / "history.json").write_text(json.dumps(history))
    if lfw:
        model = {"accuracy_mean": accuracy, "accuracy_std": 0.01, "tar_at_far_1e-3": accuracy / 4}
        key = key or arch
        (run / "lfw.json").write_text(json.dumps({"pairs": 6000, "models": {key: model, f"{key}_float": model}}))
    return run


@pytest.mark.convert
def test_curve_from_runs_sorted_with_gain_per_doubling(tmp_path):
    runs = [_run(tmp_path, "full", fraction=1.0, faces=8000, accuracy=0.80),
            _run(tmp_path, "quarter", fraction=0.25, faces=2000, accuracy=0.70),
            _run(tmp_path, "half", fraction=0.5, faces=4000, accuracy=0.75)]
    points = LC.collect(runs)
    assert [p.run for p in points] == ["quarter", "half", "full"]
    assert LC.gain_per_doubling(points) == pytest.approx(0.05)
    paths = LC.write(points, tmp_path / "out")
    text = paths["md"].read_text()
    assert "| 25% | 285 | 2,000 | 620 |" in text and "+5.00 points" in text
    assert paths["png"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["gain_per_doubling"] == pytest.approx(0.05)
    assert paths["md"].name == "nns2_learning_curve.md" and "mixes the effect of data" in text


@pytest.mark.convert
def test_runs_of_equal_steps_make_an_iso_step_curve(tmp_path):
    runs = [_run(tmp_path, "full", fraction=1.0, faces=8000, accuracy=0.80, steps=125, val=0.82),
            _run(tmp_path, "quarter", fraction=0.25, faces=2000, accuracy=0.74, steps=125, val=0.72)]
    points = LC.collect(runs)
    assert LC.same_steps(points)
    assert LC.gain_per_doubling(points, "val_accuracy") == pytest.approx(0.05)
    paths = LC.write(points, tmp_path / "out")
    text = paths["md"].read_text()
    assert paths["md"].name == "nns2_learning_curve_same_steps.md"
    assert "the same 2,500 optimiser steps" in text and "+3.00 points of LFW" in text
    assert "+5.00 points on the held-out" in text
    assert json.loads(paths["json"].read_text())["held_out_gain_per_doubling"] == pytest.approx(0.05)


@pytest.mark.convert
def test_the_curve_goes_into_the_report_and_no_models_folder(tmp_path, monkeypatch, capsys):
    """The learning curve is a research report: the command writes the gain per doubling into its JSON under
    --out and leaves the models folder alone; --record, which merged it into the manifest and cards, is gone."""
    runs = [_run(tmp_path, "full", fraction=1.0, faces=8000, accuracy=0.80, steps=125, val=0.82),
            _run(tmp_path, "quarter", fraction=0.25, faces=2000, accuracy=0.74, steps=125, val=0.72)]
    models = tmp_path / "models"
    models.mkdir()
    manifest = models / "manifest.json"
    manifest.write_text(json.dumps({"models": {"nns2": {"file": "nns2_int8.tflite"}}}))
    before = manifest.read_bytes()
    monkeypatch.setenv(MODELS_ENV, str(models))
    out = tmp_path / "reports"
    assert cli.main(["learning-curve", *map(str, runs), "--out", str(out)]) == 0
    report = json.loads((out / "nns2_learning_curve_same_steps.json").read_text())
    assert report["gain_per_doubling"] == pytest.approx(0.03)
    assert report["held_out_gain_per_doubling"] == pytest.approx(0.05)
    assert [(p["train_faces"], p["steps"], p["val_accuracy"]) for p in report["points"]] == [
        (2000, 2500, 0.72), (8000, 2500, 0.82)]
    assert manifest.read_bytes() == before and [p.name for p in models.iterdir()] == ["manifest.json"]
    with pytest.raises(SystemExit):
        cli.main(["learning-curve", *map(str, runs), "--out", str(out), "--record"])
    assert "unrecognized arguments: --record" in capsys.readouterr().err


def test_the_shipped_models_carry_their_provenance_but_no_learning_curve():
    """The manifest and cards hold what the runtime and a model's provenance need (the recipe it trained with);
    learning curves, measured on other runs, live in reports/."""
    manifest = Manifest.load()
    for key in manifest.models:
        entry = manifest.entry(key)
        assert not [f for f in entry.fields if f.startswith("learning_curve")], key
        card = (entry.path.parent / "cards" / f"{key}.md").read_text(encoding="utf-8")
        assert "## learning curve" not in card, key
    for key in ("nns1", "nns2"):
        assert {"epochs", "loss", "train_faces"} <= set(manifest.entry(key).fields["training"]), key


def test_runs_must_share_arch_and_schedule(tmp_path):
    a = _run(tmp_path, "a", fraction=0.5, faces=4000, accuracy=0.75, epochs=20)
    b = _run(tmp_path, "b", fraction=1.0, faces=8000, accuracy=0.80, epochs=50)
    with pytest.raises(ValueError, match="epochs"):
        LC.collect([a, b])
    with pytest.raises(ValueError, match="at least 2"):
        LC.collect([a])


def test_unfinished_run_is_named(tmp_path):
    run = _run(tmp_path, "running", fraction=1.0, faces=8000, accuracy=0.8, lfw=False)
    with pytest.raises(FileNotFoundError, match="lfw.json"):
        LC.read_run(run)


def test_gain_is_undefined_without_a_spread_of_sizes():
    point = LC.CurvePoint("x", "nns2", "nns2", 1.0, 20, 250, 100, 800, 0.8, 0.01, 0.8, 0.2, 0.8)
    assert math.isnan(LC.gain_per_doubling([point, point]))


def test_a_variant_is_read_under_the_key_it_shipped_as(tmp_path):
    run = _run(tmp_path, "fc", fraction=1.0, faces=8000, accuracy=0.86, arch="nns2fc", key="nns2")
    point = LC.read_run(run)
    assert (point.arch, point.key, point.lfw_int8) == ("nns2fc", "nns2", 0.86)
