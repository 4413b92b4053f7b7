"""The LFW View-2 protocol pieces: pairs parsing and the verification metrics on plain inputs."""

from __future__ import annotations

import numpy as np
import pytest

from converters.evaluate import lfw as evaluate_lfw
from converters.evaluate.lfw import best_threshold, load_pairs, roc_auc, ten_fold, threshold_at_far


def test_real_pairs_file_has_10_folds_of_300_plus_300(shared_data):
    pairs = load_pairs(shared_data / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    for fold in range(10):
        in_fold = [p for p in pairs if p.fold == fold]
        assert sum(p.same for p in in_fold) == 300 and sum(not p.same for p in in_fold) == 300
    assert all((shared_data / "lfw" / "images" / p.a).is_file() for p in pairs[:50])
    same = next(p for p in pairs if p.same)
    assert same.a.split("/")[0] == same.b.split("/")[0]


def test_malformed_pairs_file(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("1 1\nA 1 2\nB 1 C 2 extra\n")
    with pytest.raises(ValueError, match="line 3"):
        load_pairs(bad)
    bad.write_text("ten folds\n")
    with pytest.raises(ValueError, match="first line"):
        load_pairs(bad)


def test_best_threshold_separable_and_roc():
    d = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([True, True, True, False, False, False])
    threshold, acc = best_threshold(d, same)
    assert acc == 1.0 and 0.3 < threshold < 0.7
    assert roc_auc(d, same) == 1.0
    assert roc_auc(d, ~same) == 0.0
    assert roc_auc(np.ones(4), np.array([True, False, True, False])) == 0.5  # all ties


def test_threshold_at_far_accepts_at_most_the_allowed_negatives():
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.uniform(0, 0.5, 3000), rng.uniform(0.3, 1.0, 3000)])
    same = np.arange(6000) < 3000
    threshold, tar = threshold_at_far(d, same, far=1e-3)
    assert (d[~same] <= threshold).sum() <= 3
    assert tar == pytest.approx((d[same] <= threshold).mean())


def test_ten_fold_uses_held_out_thresholds():
    rng = np.random.default_rng(1)
    same = np.tile(np.r_[np.ones(30, bool), np.zeros(30, bool)], 10)
    d = np.where(same, rng.normal(0.3, 0.1, 600), rng.normal(0.7, 0.1, 600))
    folds = np.repeat(np.arange(10), 60)
    result = ten_fold(d, same, folds)
    assert len(result["fold_accuracies"]) == 10 and 0.9 < result["accuracy_mean"] <= 1.0
    assert result["same_distance_mean"] < result["different_distance_mean"]


def test_fit_calibration_recovers_a_known_logistic():
    rng = np.random.default_rng(0)
    distances = rng.uniform(0.0, 0.3, 20000)
    slope, intercept = -60.0, 4.6
    same = rng.random(len(distances)) < 1.0 / (1.0 + np.exp(-(intercept + slope * distances)))
    fitted_slope, fitted_intercept = evaluate_lfw.fit_calibration(distances, same)
    assert abs(fitted_slope - slope) < 3.0
    assert abs(fitted_intercept - intercept) < 0.3


def test_record_in_manifest_states_the_int8_cost(tmp_path):
    """Thresholds, accuracy and, for an int8 model measured beside its float reference, what int8 cost."""
    import json
    import shutil

    from edge.manifest import Manifest, default_models_dir

    shipped = Manifest.load(default_models_dir())
    keys = ("mobilefacenet", "mobilefacenet_float")
    entries = {k: shipped.entry(k).fields for k in keys}
    for key in keys:
        shutil.copyfile(shipped.entry(key).path, tmp_path / entries[key]["file"])
    (tmp_path / "manifest.json").write_text(json.dumps({"models": entries}), encoding="utf-8")

    def result(accuracy):
        return {"threshold_best_accuracy": 0.6, "threshold_far_1e-3": 0.5, "calibration": {"intercept": 5.0,
                "slope": -9.0}, "accuracy_mean": accuracy, "accuracy_std": 0.004, "roc_auc": 0.999,
                "tar_at_far_1e-3": 0.98}

    results = {"models": {"mobilefacenet": result(0.9930), "mobilefacenet_float": result(0.9937)}}
    evaluate_lfw.record_in_manifest(results, Manifest.load(tmp_path))
    written = json.loads((tmp_path / "manifest.json").read_text())["models"]
    assert written["mobilefacenet"]["accuracy"]["int8_loss_points"] == pytest.approx(0.07)
    assert written["mobilefacenet"]["accuracy"]["float_reference_lfw_accuracy"] == 0.9937
    assert "int8_loss_points" not in written["mobilefacenet_float"]["accuracy"]
    assert written["mobilefacenet"]["thresholds"]["far_1e-3"] == 0.5
    assert "int8_loss_points" in (tmp_path / "cards" / "mobilefacenet.md").read_text()
