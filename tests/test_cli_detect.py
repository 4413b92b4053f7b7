"""``doorface detect`` as a user runs it: real images, bad inputs, a broken model folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.manifest import Manifest, default_models_dir


def run_cli(*args, env=None, timeout=180):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("bad")
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    text = folder / "notes.png"
    text.write_text("hello")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    return {"corrupt": corrupt, "text": text, "empty": empty, "missing": folder / "missing.jpg", "dir": folder}


def test_detect_json_one_object_per_image_and_draws(tmp_path, shared_data):
    images = [shared_data / "group-photos" / "sample1.jpg", shared_data / "lfw" / "images" / "Aaron_Eckhart" /
              "Aaron_Eckhart_0001.jpg"]
    result = run_cli("detect", *images, "--json", "--draw", tmp_path / "drawn")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    assert len(lines[0]["faces"]) >= 3 and len(lines[1]["faces"]) >= 1
    face = lines[1]["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0.9 < face["score"] <= 1.0
    assert all(len(p) == 2 for p in face["landmarks"])
    drawn = sorted(p.name for p in (tmp_path / "drawn").iterdir())
    assert drawn == ["Aaron_Eckhart_0001_faces.jpg", "sample1_faces.jpg"]


def test_detect_human_output(shared_data):
    result = run_cli("detect", shared_data / "lfw" / "images" / "Colin_Powell" / "Colin_Powell_0040.jpg")
    assert result.returncode == 0, result.stderr
    assert "1 face" in result.stdout and "box [" in result.stdout and "landmarks [[" in result.stdout


def test_bad_inputs_are_reported_and_the_rest_still_processed(bad_files, shared_data):
    good = shared_data / "group-photos" / "sample3.jpg"
    paths = [bad_files[k] for k in ("corrupt", "text", "empty", "missing", "dir")] + [good]
    result = run_cli("detect", *paths, "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(paths)
    errors = {Path(line["image"]).name: line.get("error", "") for line in lines}
    assert "not a decodable image" in errors["corrupt.jpg"]
    assert "not a decodable image" in errors["notes.png"]
    assert "empty" in errors["empty.jpg"]
    assert "not found" in errors["missing.jpg"]
    assert "not a file" in errors[bad_files["dir"].name] or "directory" in errors[bad_files["dir"].name]
    assert errors["sample3.jpg"] == "" and len(lines[-1]["faces"]) >= 1


def test_tampered_model_gives_one_clear_error(tmp_path, shared_data):
    models = tmp_path / "models"
    shutil.copytree(default_models_dir(), models)
    victim = models / Manifest.load(models).entry("pnet").path.name
    victim.write_bytes(victim.read_bytes()[:-10])
    result = run_cli("detect", shared_data / "group-photos" / "sample1.jpg", env={"DOORFACE_MODELS": str(models)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "does not match the manifest" in result.stderr and victim.name in result.stderr
    assert "git checkout" in result.stderr


def test_bad_config_and_arguments(tmp_path, shared_data):
    config = tmp_path / "bad.yaml"
    config.write_text("detector:\n  min_face_size: 3\n")
    image = shared_data / "group-photos" / "sample1.jpg"
    result = run_cli("detect", image, "--config", config)
    assert result.returncode == 2 and "bad.yaml: detector.min_face_size: must be between" in result.stderr
    result = run_cli("detect", image, "--threads", "0")
    assert result.returncode == 2 and "--threads must be >= 1" in result.stderr
