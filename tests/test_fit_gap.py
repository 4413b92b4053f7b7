"""``python -m research fit-gap`` (:mod:`research.fit_gap`) on the shipped nns2 and real train-faces."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pytest

from edge.manifest import Manifest
from research import fit_gap, run_folder
from research.train_config import EXPORT_DIR, EXPORT_ENTRIES

TRAINED_IDENTITIES = 20


@pytest.fixture(scope="module")
def manifest():
    return Manifest.load()


def test_fit_gap_rebuilds_the_held_out_split_the_shipped_nns2_trained_with(manifest, shared_data, tmp_path):
    # As in a run's own models folder: the student without its teacher, which comes from the shipped manifest.
    run_models = tmp_path / "models"
    run_models.mkdir()
    entry = manifest.entry("nns2")
    shutil.copyfile(entry.path, run_models / entry.path.name)
    (run_models / "manifest.json").write_text(json.dumps({"models": {"nns2": entry.fields}}), encoding="utf-8")
    rows = fit_gap.measure("nns2", Manifest.load(run_models), trained_identities=TRAINED_IDENTITIES,
                           teachers=manifest)
    trained, held_out = rows
    assert [r.split for r in rows] == list(fit_gap.SPLITS)
    training = manifest.entry("nns2").fields["training"]
    assert trained.identities == TRAINED_IDENTITIES and held_out.identities == training["val_identities"]
    assert held_out.faces == training["val_faces"] and held_out.pairs > 0 and trained.pairs > 0
    # The teacher reproduces what training recorded on these pairs; the int8 student is near its float self's.
    assert held_out.teacher_accuracy == pytest.approx(training["teacher_val_accuracy"],
                                                      abs=fit_gap.TEACHER_MATCH_TOLERANCE)
    assert held_out.student_accuracy == pytest.approx(training["val_accuracy"], abs=0.015)
    assert 0.5 < held_out.student_accuracy < held_out.teacher_accuracy

    assert trained.run == held_out.run == entry.fields["source"]["run"]

    paths = fit_gap.write(rows, tmp_path / "reports")
    text = paths["md"].read_text(encoding="utf-8")
    gap = 100 * (trained.student_accuracy - held_out.student_accuracy)
    assert f"{gap:+.2f} pt" in text and text.count(f"| `nns2` | `{trained.run}` |") == 2


def test_fit_gap_measures_several_models_folders_on_the_same_samples(manifest, shared_data, tmp_path):
    # Two runs (here the shipped nns2 under two run names), one as a models folder, one as a run folder with its
    # own export: one row pair each, the gap within each pair.
    entry = manifest.entry("nns2")
    fields = {run: {**entry.fields, "source": {**entry.fields["source"], "run": run}} for run in ("run-a", "run-b")}
    folder = tmp_path / "run-a" / "models"
    folder.mkdir(parents=True)
    shutil.copyfile(entry.path, folder / entry.path.name)
    (folder / "manifest.json").write_text(json.dumps({"models": {"nns2": fields["run-a"]}}), encoding="utf-8")
    run_dir = tmp_path / "run-b"
    (run_dir / EXPORT_DIR).mkdir(parents=True)
    shutil.copyfile(entry.path, run_dir / EXPORT_DIR / entry.path.name)
    (run_dir / EXPORT_ENTRIES).write_text(json.dumps({"nns2": fields["run-b"]}), encoding="utf-8")
    parser = argparse.ArgumentParser()
    fit_gap.add_arguments(parser)
    args = parser.parse_args(["--keys", "nns2", "--identities", str(TRAINED_IDENTITIES), "--models", str(folder),
                              "--runs", str(run_dir), "--out", str(tmp_path / "reports"), "--name", "finetunes"])
    assert fit_gap.main(args) == 0
    rows = [fit_gap.GapRow(**r) for r in json.loads((tmp_path / "reports" / "finetunes.json").read_text())["rows"]]
    assert [(r.run, r.split) for r in rows] == [(run, split) for run in ("run-a", "run-b") for split in fit_gap.SPLITS]
    # The same model on the same seeded samples measures the same in both folders.
    assert [dataclasses.replace(r, run="") for r in rows[:2]] == [dataclasses.replace(r, run="") for r in rows[2:]]
    text = (tmp_path / "reports" / "finetunes.md").read_text(encoding="utf-8")
    gap = 100 * (rows[0].student_accuracy - rows[1].student_accuracy)
    assert text.count(f"{gap:+.2f} pt") == 2 and "| `nns2` | `run-b` |" in text


def test_fit_gap_refuses_another_split_and_models_that_are_not_students(manifest, shared_data):
    with pytest.raises(ValueError, match="not the split the model trained with.*--seed"):
        fit_gap.measure("nns2", manifest, seed=1, trained_identities=2)
    with pytest.raises(ValueError, match="'mobilefacenet' has no train-nns training record"):
        fit_gap.measure("mobilefacenet", manifest)


def test_a_run_that_has_not_exported_is_named(tmp_path):
    run_dir = tmp_path / "nns1-unfinished"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"export\.json not found: .*nns1-unfinished.*--resume"):
        run_folder.run_models(run_dir)
    (run_dir / "export.json").write_text('{"nns1": ', encoding="utf-8")  # cut off mid-write
    with pytest.raises(ValueError, match=r"export\.json is not valid JSON.*--resume"):
        run_folder.run_models(run_dir)
    (run_dir / "export.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"expected \{key: manifest entry\}, found list"):
        run_folder.run_models(run_dir)
