"""The converter rebuilds the shipped MTCNN files from nothing, byte for byte (slow: ~5 min of TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edge.manifest import default_models_dir

pytestmark = pytest.mark.slow


def test_doorface_convert_mtcnn_reproduces_the_shipped_models(tmp_path, shared):
    out = tmp_path / "models"
    env = {**os.environ, "DOORFACE_SHARED": str(shared), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "converters.cli", "mtcnn", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Keras vs source max|diff| = 0" in result.stderr + result.stdout
    built = json.loads((out / "manifest.json").read_text())["models"]
    shipped = json.loads((default_models_dir() / "manifest.json").read_text())["models"]
    for key in ("pnet", "rnet", "onet", "pnet_float", "rnet_float", "onet_float"):
        assert built[key]["sha256"] == shipped[key]["sha256"], f"{key} differs from the shipped model"
        assert (out / "cards" / f"{key}.md").read_text() == (default_models_dir() / "cards" / f"{key}.md").read_text()
