"""install.sh's Raspberry Pi OS path, run for real on this Debian (slow: apt and pip installs).

Pi OS Bookworm is Debian Bookworm with the Raspberry Pi archive on top: `./install.sh --pi-os` takes the very path
a Pi takes (apt's numpy and OpenCV, which picamera2 is built against, seen through --system-site-packages; every
pip install held to that numpy; the interpreter that works with it), on whatever Debian runs the tests. What it
cannot show is picamera2 itself (only in the Raspberry Pi archive) and the aarch64 wheels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from checkout import checkout_copy, clean_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("apt-get") is None or not Path("/usr/bin/python3").exists(),
                       reason="needs a Debian-like system (apt-get, /usr/bin/python3)"),
    pytest.mark.skipif(os.geteuid() != 0 and shutil.which("sudo") is None, reason="apt needs root or sudo"),
]

APT_SITE = "/usr/lib/python3/dist-packages"


def _install(checkout: Path, env: dict, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["./install.sh", "--pi-os", *options], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=1800, check=False)


def _coral_package_reachable() -> bool:
    return subprocess.run(["apt-cache", "show", "libedgetpu1-std"], capture_output=True, check=False).returncode == 0


def test_the_pi_os_path_keeps_apts_numpy_and_opencv_and_runs_every_model(tmp_path) -> None:
    checkout = checkout_copy(tmp_path / "doorface")
    env = clean_env(tmp_path / "home")
    # A .venv made earlier without system packages: apt's picamera2 would be invisible to it.
    subprocess.run(["/usr/bin/python3", "-m", "venv", checkout / ".venv"], check=True)

    result = _install(checkout, env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "recreating it" in log
    assert "include-system-site-packages = true" in (checkout / ".venv" / "pyvenv.cfg").read_text()
    for check in ("interpreter", "model pnet", "model rnet", "model onet", "model mobilefacenet", "inference"):
        assert f"[ok] {check}" in log, log[-4000:]

    python = checkout / ".venv" / "bin" / "python"
    found = subprocess.run([python, "-c", "import json, numpy, cv2; print(json.dumps({'numpy': numpy.__file__, "
                            "'cv2': cv2.__file__}))"], capture_output=True, text=True, check=True)
    where = json.loads(found.stdout)
    assert where["numpy"].startswith(APT_SITE) and where["cv2"].startswith(APT_SITE), where  # apt's, not wheels
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json", "--path",
                             str(next((checkout / ".venv" / "lib").glob("python3*/site-packages")))],
                            capture_output=True, text=True, check=True)
    in_venv = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not in_venv & {"numpy", "opencv-python", "opencv-python-headless"}, in_venv
    assert in_venv & {"ai-edge-litert", "tflite-runtime"}, in_venv

    demo = subprocess.run([checkout / ".venv" / "bin" / "doorface", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert demo.returncode == 0, demo.stderr[-3000:]
    names = {json.loads(line)["name"] for line in demo.stdout.splitlines() if line.startswith("{")}
    assert names == {"Lin-Manuel Miranda"}, demo.stdout  # as the checkout's demo (tests/test_cli_runtime.py)

    # Idempotent: the second run keeps the venv. With --coral it adds Coral's runtime when apt can reach its package,
    # else it says so and prints the exact commands that add Coral's repository (as on this Debian).
    again = _install(checkout, env, "--coral")
    assert again.returncode == 0 and ".venv exists; reusing it" in again.stdout, again.stdout[-3000:]
    if _coral_package_reachable():
        assert "apt-get install libedgetpu1-std" in again.stdout or "Coral runtime: already installed" in again.stdout
    else:
        tail = again.stdout[again.stdout.index("install.sh: --coral: libedgetpu1-std is not in this system's apt"):]
        for command in ("curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o "
                        "/usr/share/keyrings/coral-edgetpu.gpg",
                        'echo "deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com'
                        '/apt coral-edgetpu-stable main" | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list',
                        "sudo apt-get update && sudo apt-get install -y libedgetpu1-std"):
            assert f"  {command}\n" in tail, tail
        assert "[FAIL] accelerator: edgetpu:usb configured, but its delegate did not load" in again.stdout
