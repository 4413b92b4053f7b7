"""A wheel, not the checkout: `pip install` of the built wheel into a fresh venv without TensorFlow gives a working
`doorface` outside the repository, and the runtime-only test tier passes there (slow: builds, installs, runs).

This is what a Raspberry Pi install is: no TensorFlow, no converters' extras, models and configs from the package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml
from checkout import checkout_copy, clean_env
from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

PIP_TIMEOUT_S = 1200


def _run(cmd: list, *, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the doorface wheel (with its test extra) and nothing of the converters' extra."""
    root = tmp_path_factory.mktemp("wheel")
    source = checkout_copy(root / "src")
    dist = root / "dist"
    env = clean_env(root / "home")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist,
                  source], cwd=root, env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("doorface-*.whl")
    target = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    installed = _run([target / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                      f"{wheel}[test]"], cwd=root, env=env, timeout=PIP_TIMEOUT_S)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return target


def _demo_events(command: list, cwd: Path, env: dict) -> list[tuple]:
    demo = _run(command, cwd=cwd, env=env)
    assert demo.returncode == 0, demo.stderr[-3000:]
    events = [json.loads(line) for line in demo.stdout.splitlines() if line.startswith("{")]
    return [(e["event_type"], e["name"], e["track_id"], e["frames"], e["box"]) for e in events]


def test_the_installed_wheel_runs_the_demo_outside_the_repository(runtime_venv, tmp_path) -> None:
    env = clean_env(tmp_path / "home")
    python = runtime_venv / "bin" / "python"
    where = _run([python, "-c", "import importlib.util, json, edge.resources as r; print(json.dumps({"
                  "'edge': r.__file__, 'models': str(r.bundled_dir('quantized_models')), "
                  "'tensorflow': importlib.util.find_spec('tensorflow') is not None}))"], cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr
    found = json.loads(where.stdout)
    site = str(runtime_venv.resolve())
    assert found["edge"].startswith(site) and found["models"].startswith(site), found  # the package's, not the repo's
    assert not found["tensorflow"], "a runtime install must not pull TensorFlow in"
    static = Path(found["edge"]).parent / "review" / "static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "app.js", "style.css"}  # the review page, packaged

    installed = _demo_events([runtime_venv / "bin" / "doorface", "demo"], tmp_path, env)
    checkout = _demo_events([sys.executable, "-m", "edge.cli", "demo"], REPO_ROOT, clean_env(tmp_path / "home2"))
    enrolled = yaml.safe_load((REPO_ROOT / "demo" / "demo.yaml").read_text(encoding="utf-8"))["enroll"]
    assert installed and {name for kind, name, *_ in installed if kind == "recognized"} <= set(enrolled)
    assert installed == checkout  # the same models, configs and clip as the checkout's

    doctor = _run([runtime_venv / "bin" / "doorface", "doctor", "--no-camera"], cwd=tmp_path, env=env)
    assert "model mobilefacenet" in doctor.stdout + doctor.stderr, doctor.stdout + doctor.stderr


def test_the_runtime_only_tier_passes_without_the_convert_extra(runtime_venv, tmp_path) -> None:
    """The default test tier on the runtime install: converter tests skip, saying why; everything else passes."""
    env = clean_env(tmp_path / "home")
    result = _run([runtime_venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                   REPO_ROOT / "tests"], cwd=REPO_ROOT, env=env, timeout=1800)
    tail = result.stdout[-4000:]
    assert result.returncode == 0, tail
    assert "needs the convert extra" in result.stdout, tail
    assert " passed" in tail and "error" not in tail.splitlines()[-1], tail
