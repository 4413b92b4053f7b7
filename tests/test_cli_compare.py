"""``doorface compare``: real photos, the shipped detector and embedder, the distance matrix as a user sees it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=180, env=dict(os.environ))


@pytest.mark.parametrize("model", ["dlib_resnet"])
def test_same_person_closer_than_a_different_one(shared_data, model):
    video = shared_data / "video"
    result = run_cli("compare", video / "obama.jpg", video / "obama_small.jpg", video / "biden.jpg", "--json",
                     "--model", model)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == model and len(out["faces"]) >= 3
    best = {}  # each image's most confident face (obama.jpg also has a small false positive on the desk)
    for n, face in enumerate(out["faces"]):
        if face["image"] not in best or face["score"] > out["faces"][best[face["image"]]]["score"]:
            best[face["image"]] = n
    obama, obama_small, biden = (best[str(video / name)] for name in ("obama.jpg", "obama_small.jpg", "biden.jpg"))
    d = out["distances"]
    assert d[obama][obama_small] < d[obama][biden] and d[obama][obama_small] < d[obama_small][biden]
    assert d[obama][obama_small] == d[obama_small][obama] and d[obama][obama] == 0.0
    if out["threshold"] is not None:  # once the LFW run has recorded the shipped threshold
        assert out["same"][obama][obama_small] and not out["same"][obama][biden]


def test_compare_human_output_and_bad_input(shared_data, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    result = run_cli("compare", shared_data / "video" / "obama.jpg", bad, "--model", "dlib_resnet")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "broken.jpg: error: cannot read image" in result.stderr
    assert "[0]" in result.stdout and "distance" in result.stdout
    result = run_cli("compare", shared_data / "video" / "obama.jpg", "--model", "nosuchmodel")
    assert result.returncode == 2 and "no model 'nosuchmodel'" in result.stderr
