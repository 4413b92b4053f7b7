"""The EdgeTPU path (device_configs/pi4-coral.yaml): compiled variants when the delegate loads, else the CPU int8
models with one clear log line, and `doorface doctor` saying which path and why.

No Coral runtime, accelerator or compiled model exists here: the missing-library path is this machine's real one;
the loaded-library path fakes only the delegate loader (``edge.interpreter.load_delegate``), never a model, and the
models that run are the shipped ones.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from edge import interpreter as tfl
from edge.accelerator import place_models
from edge.config import load_config
from edge.detector import MTCNN_KEYS, MtcnnDetector
from edge.doctor import check_device, check_models
from edge.image_io import load_image
from edge.manifest import Manifest, ManifestError, ModelIntegrityError, default_models_dir
from edge.runner import load_models

CORAL = "pi4-coral"
EMBEDDER = load_config(CORAL).embedder.model
KEYS = (*MTCNN_KEYS, EMBEDDER)
PHOTO = ("group-photos", "sample1.jpg")

needs_no_coral_runtime = pytest.mark.skipif(ctypes.util.find_library("edgetpu") is not None,
                                            reason="the Coral runtime is installed here: its absence cannot be seen")


class LoadedDelegate:
    """What ``load_delegate`` returns when the Coral runtime and an accelerator are there."""


@pytest.fixture()
def delegate_loads(monkeypatch) -> list[str]:
    """The Coral runtime 'installed' at its boundary: load_delegate succeeds; returns the devices asked for."""
    asked: list[str] = []

    def fake_load_delegate(device: str) -> LoadedDelegate:
        tfl.parse_device(device)  # the real one's validation of the device string
        asked.append(device)
        return LoadedDelegate()

    monkeypatch.setattr(tfl, "load_delegate", fake_load_delegate)
    return asked


def _edgetpu_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "EdgeTPU" in r.getMessage()]


def _models_with(tmp_path: Path, variants: Callable[[Path], dict]) -> Path:
    """A copy of the shipped models whose manifest also lists ``variants(folder)`` (key -> entry)."""
    folder = tmp_path / "models"
    shutil.copytree(default_models_dir(), folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["models"].update(variants(folder))
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _variant(models: Path, of: str, file: str, data: bytes, *, shape=None, sha256=None) -> dict:
    """A manifest entry for an EdgeTPU variant of ``of`` whose file holds ``data`` (here: not a compiled model)."""
    cpu = json.loads((default_models_dir() / "manifest.json").read_text(encoding="utf-8"))["models"][of]
    (models / file).write_bytes(data)
    return {"file": file, "sha256": sha256 or hashlib.sha256(data).hexdigest(), "size_bytes": len(data),
            "edgetpu_of": of, "task": cpu["task"], "input": {**cpu["input"], "shape": shape or cpu["input"]["shape"]}}


@needs_no_coral_runtime
def test_without_the_coral_runtime_the_cpu_models_run_after_one_line_saying_so(caplog, shared_data) -> None:
    config = load_config(CORAL)
    with caplog.at_level(logging.INFO):
        models = load_models(config, threads=1)
        faces = models.detector(load_image(shared_data.joinpath(*PHOTO)))
    assert len(faces) >= 3  # the shipped CPU int8 models ran
    assert models.placement.device == "cpu" and models.placement.fell_back and not models.placement.on_edgetpu
    (line,) = _edgetpu_lines(caplog)
    assert "edgetpu:usb configured, but its delegate did not load" in line
    assert "libedgetpu.so.1) is not installed" in line and "./install.sh --coral" in line, line


def test_with_the_runtime_but_no_compiled_model_the_cpu_models_run_after_one_line(delegate_loads, caplog,
                                                                                   shared_data) -> None:
    config = load_config(CORAL)
    with caplog.at_level(logging.INFO):
        models = load_models(config, threads=1)
        faces = models.detector(load_image(shared_data.joinpath(*PHOTO)))
        vectors = models.embedder(load_image(shared_data.joinpath(*PHOTO)), faces.landmarks[:2])
    assert delegate_loads == ["edgetpu:usb"]  # probed once; no interpreter was given the fake
    assert len(faces) >= 3 and vectors.shape == (2, models.embedder.spec.dim)
    assert models.placement.fell_back and models.placement.variants == {}
    (line,) = _edgetpu_lines(caplog)
    assert "edgetpu:usb delegate loaded, but" in line
    assert f"lists no *_edgetpu.tflite model for {', '.join(KEYS)}" in line and "doorface-convert edgetpu" in line


def test_the_compiled_variants_in_the_manifest_are_chosen_per_stage(delegate_loads, tmp_path, caplog) -> None:
    folder = _models_with(tmp_path, lambda folder: {
        "pnet_edgetpu_480x640": _variant(folder, "pnet", "mtcnn_pnet_480x640_edgetpu.tflite", b"a",
                                         shape=[1, 480, 640, 3]),
        "pnet_edgetpu_340x454": _variant(folder, "pnet", "mtcnn_pnet_340x454_edgetpu.tflite", b"b",
                                         shape=[1, 340, 454, 3]),
        "onet_edgetpu": _variant(folder, "onet", "mtcnn_onet_edgetpu.tflite", b"c", shape=[8, 48, 48, 3]),
    })
    manifest = Manifest.load(folder)
    with caplog.at_level(logging.INFO):
        placement = place_models(manifest, "edgetpu:usb", KEYS)
    assert placement.device == "edgetpu:usb" and placement.on_edgetpu and not placement.fell_back
    assert [v.key for v in placement.variants_of("pnet")] == ["pnet_edgetpu_340x454", "pnet_edgetpu_480x640"]
    assert placement.variants_of("rnet") == () and placement.variants_of("onet")[0].input.shape == (8, 48, 48, 3)
    (line,) = _edgetpu_lines(caplog)
    assert "pnet (2 input shapes), onet on the EdgeTPU" in line
    assert f"rnet, {EMBEDDER} on the CPU (no compiled model in the manifest)" in line
    assert "pnet_edgetpu_480x640" not in [k for k, e in manifest.models.items() if e.edgetpu_of is None]


def test_a_compiled_variant_whose_sha256_differs_is_refused_before_it_runs(delegate_loads, tmp_path) -> None:
    folder = _models_with(tmp_path, lambda folder: {
        "onet_edgetpu": _variant(folder, "onet", "mtcnn_onet_edgetpu.tflite", b"compiled", shape=[8, 48, 48, 3],
                                 sha256="0" * 64)})
    manifest = Manifest.load(folder)
    with pytest.raises(ModelIntegrityError, match=r"'onet_edgetpu' file .*mtcnn_onet_edgetpu.tflite does not match "
                                                  r"the manifest .*expected 000000000000"):
        MtcnnDetector.from_manifest(manifest, device="edgetpu:usb")
    assert delegate_loads == ["edgetpu:usb"]
    config = replace(load_config(CORAL), models_dir=str(folder))
    checks = {c.name: c for c in check_models(config)}
    assert checks["model onet"].ok and not checks["model onet_edgetpu"].ok
    assert "does not match the manifest" in checks["model onet_edgetpu"].detail


@pytest.mark.parametrize(("change", "message"), [
    ({"edgetpu_of": "nowhere"}, "edgetpu_of 'nowhere', which is not a CPU model"),
    ({"edgetpu_of": "pnet_edgetpu"}, "edgetpu_of 'pnet_edgetpu', which is not a CPU model"),
    ({"file": "mtcnn_pnet_int8.tflite"}, "must end with _edgetpu.tflite"),
    ({"size_bytes": 0}, "size_bytes must be a positive integer"),
    ({"size_bytes": None}, "size_bytes must be a positive integer"),
    ({"input": {"shape": [1, -1, -1, 3], "dtype": "int8", "mean": 127.5, "std": 128.0}}, "must be static"),
    ({"input": {"shape": [1, 12, 12, 3], "dtype": "int8", "mean": 0.0, "std": 1.0}}, "input normalisation of 'pnet'"),
    ({"task": "face_embedding"}, "the task and input normalisation of 'pnet'"),
])
def test_a_malformed_edgetpu_entry_is_refused_saying_what_is_wrong(tmp_path, change, message) -> None:
    folder = _models_with(tmp_path, lambda folder: {"pnet_edgetpu": {
        **_variant(folder, "pnet", "mtcnn_pnet_12x12_edgetpu.tflite", b"x", shape=[1, 12, 12, 3]), **change}})
    with pytest.raises(ManifestError, match="EdgeTPU model 'pnet_edgetpu'.*" + re.escape(message)):
        Manifest.load(folder)


def test_doctor_says_which_path_and_why(delegate_loads) -> None:
    with_runtime = check_device(load_config(CORAL))
    assert not with_runtime.ok
    assert with_runtime.line().startswith("[FAIL] accelerator: edgetpu:usb delegate loaded, but ")
    assert "fix: compile them with `doorface-convert edgetpu --device-config <your config>`" in with_runtime.line()
    cpu = check_device(load_config("pi4"))
    assert cpu.ok and cpu.line() == "[ok] accelerator: the CPU int8 models (no accelerator configured)"


@needs_no_coral_runtime
def test_doctor_without_the_coral_runtime(tmp_path) -> None:
    env = {"DOORFACE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    doctor = subprocess.run([sys.executable, "-m", "edge.cli", "doctor", "--device-config", CORAL, "--no-camera"],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    lines = doctor.stdout.splitlines()
    (line,) = [i for i, text in enumerate(lines) if text.startswith("[FAIL] accelerator:")]
    assert "edgetpu:usb configured, but its delegate did not load (the Coral runtime (libedgetpu.so.1) is not " \
           "installed" in lines[line] and "the CPU int8 models run instead" in lines[line], doctor.stdout
    assert lines[line + 1].strip() == "fix: install the Coral runtime (`./install.sh --coral`) and plug the " \
                                      "accelerator in"
    assert "[ok] inference:" in doctor.stdout  # the CPU models did run
    assert doctor.returncode == 1
