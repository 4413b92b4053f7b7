"""The runtime on aarch64, emulated: a Debian Bookworm arm64 root (Python 3.11, as Raspberry Pi OS Bookworm) run by
qemu-user as a Pi 4's Cortex-A72 (.ci/aarch64.sh), with the aarch64 wheels a Pi's pip would install.

In it, `doorface detect` and `doorface compare` run on real faces from ../shared, and every shipped int8 model gives
the x86 outputs on the same inputs, with ai-edge-litert (numpy 2) and with tflite-runtime (numpy < 2). int8 kernels
of another instruction set differ by rounding only, hence the tolerances below. install.sh's choice of interpreter
wheel is made there by the root's own pip (slow: builds or reuses the root, then emulates every model).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from aarch64_probe import int8_keys, run_all
from checkout import checkout_copy, clean_env
from conftest import REPO_ROOT

from edge import interpreter as tfl
from edge.align import align_face
from edge.detector import MtcnnDetector
from edge.embedder import EmbedderSpec
from edge.image_io import load_image
from edge.manifest import Manifest

SCRIPT = REPO_ROOT / ".ci" / "aarch64.sh"
PROBE = Path(__file__).with_name("aarch64_probe.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.system() != "Linux", reason="needs Linux (chroot, mount namespaces)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap, chroot and mounts need root"),
    pytest.mark.skipif(not (shutil.which("debootstrap") and Path("/usr/bin/qemu-aarch64-static").exists()),
                       reason="needs debootstrap and qemu-user-static (./install.sh --dev installs them)"),
]

# Real faces: one person in two photos, another in a third, and a couple.
IMAGES = ("deepface-unit/img1.jpg", "deepface-unit/img2.jpg", "deepface-unit/img3.jpg", "deepface-unit/couple.jpg")
GUEST_DATA = "/mnt/data"



@dataclass(frozen=True)
class Tolerance:
    """How far the emulated aarch64 results may be from x86's, for one interpreter package.

    Model by model (the same inputs, the same interpreter release on both): int8 kernels of another instruction set
    may round a requantization the other way, so a raw output moves by a step (LSB) of its tensor. ai-edge-litert's
    kernels agree to one step (seen: 1, in P-Net's box offsets). tflite-runtime 2.14's ARM and x86 kernels round
    differently, and through MobileFaceNet's ~50 layers the steps add up (seen: at most 7, 0.9 on average, cosine
    0.993). End to end, a step can tip which of two near-equal candidate boxes non-maximum suppression keeps: the
    face found is the same, its box another candidate's (seen: IoU 0.92), and the chip aligned on it, so its
    embedding, moves with it.
    """

    max_steps: int  # largest raw int8 output difference, in steps of the tensor's scale
    mean_steps: float  # mean of the raw differences over every output value of a model
    min_cosine: float  # each embedder's output on the same chip vs x86's
    max_distance_diff: float  # `doorface compare` distances vs x86 (ai-edge-litert); same verdicts where clear


TOLERANCES = {
    "ai-edge-litert": Tolerance(max_steps=1, mean_steps=0.05, min_cosine=0.999, max_distance_diff=0.05),
    "tflite-runtime": Tolerance(max_steps=8, mean_steps=1.0, min_cosine=0.99, max_distance_diff=0.15),
}
MIN_BOX_IOU = 0.85  # `doorface detect`: each face's box vs x86's
MAX_LANDMARK_SHIFT = 0.05  # `doorface detect`: landmarks, as a fraction of the face's side
MAX_SCORE_DIFF = 0.01  # face probabilities

INTERPRETERS = {
    # name: (requirements replacing the wheel's interpreter requirement, the module that must be imported)
    "ai-edge-litert": ([], "ai_edge_litert"),
    "tflite-runtime": (["tflite-runtime", "numpy<2"], "tflite_runtime"),
}
# The x86 reference of the model-by-model comparison is the same interpreter package (another TFLite release has
# other kernels): this test's own for ai-edge-litert, a venv of its own for tflite-runtime.
X86_TFLITE_RUNTIME = ["tflite-runtime", "numpy<2"]


def aarch64(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOORFACE_HOST_PYTHON": sys.executable}
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env,
                            check=False)
    assert result.returncode == 0, f"{' '.join(args[:3])}…: {result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The doorface wheel built from this checkout (pure Python: the same file a Pi installs)."""
    root = tmp_path_factory.mktemp("aarch64-wheel")
    source = checkout_copy(root / "src")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(root / "dist"), str(source)], capture_output=True, text=True,
                           env=clean_env(root / "home"), check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    (found,) = (root / "dist").glob("doorface-*.whl")
    return found


def runtime_requirements(wheel: Path) -> list[str]:
    """The wheel's own runtime requirements (Requires-Dist without extras), as a Pi's pip would read them."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


@pytest.fixture(scope="module", params=sorted(INTERPRETERS))
def root_venv(request, wheel) -> tuple[str, str]:
    """(interpreter, venv path in the root): the runtime's aarch64 wheels and doorface's wheel, installed."""
    name = request.param
    replacement, _module = INTERPRETERS[name]
    requirements = runtime_requirements(wheel)
    if replacement:
        requirements = [r for r in requirements if not r.startswith("ai-edge-litert")] + replacement
    path = aarch64("env", name, *requirements).stdout.strip().splitlines()[-1]
    aarch64("install", path, str(wheel))
    return name, path


def run_in_root(venv_path: str, shared_data: Path, *args: str, binds: tuple[str, ...] = ()) -> str:
    options = ["--bind", f"{shared_data}:{GUEST_DATA}:ro", "--env", "DOORFACE_HOME=/tmp/doorface-home"]
    for bind in binds:
        options += ["--bind", bind]
    return aarch64("run", *options, "--", f"{venv_path}/bin/python", *args).stdout


def test_the_root_is_python_3_11_on_a_pi_4s_cpu(root_venv, shared_data) -> None:
    name, path = root_venv
    module = INTERPRETERS[name][1]
    facts = json.loads(run_in_root(path, shared_data, "-c", (
        "import ctypes, importlib, json, platform, sys, numpy\n"
        "libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong\n"
        f"importlib.import_module('{module}')\n"
        "print(json.dumps({'machine': platform.machine(), 'python': list(sys.version_info[:2]),"
        " 'hwcap': libc.getauxval(16), 'numpy': numpy.__version__,"
        " 'cpuinfo': open('/proc/cpuinfo').read()}))")))
    assert facts["machine"] == "aarch64" and facts["python"] == [3, 11], facts
    assert "Raspberry Pi 4" in facts["cpuinfo"] and "0xd08" in facts["cpuinfo"]  # Cortex-A72's part number
    # The Cortex-A72 model, not `max`: no LSE atomics (bit 8), no dot product (bit 20), no SVE (bit 22).
    assert facts["hwcap"] & 0b11 == 0b11 and not facts["hwcap"] & ((1 << 8) | (1 << 20) | (1 << 22)), facts
    assert (int(facts["numpy"].split(".")[0]) < 2) == (name == "tflite-runtime"), facts


def _face_side(box: list[float]) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h)


def test_doorface_detect_and_compare_give_the_x86_results(root_venv, shared_data, tmp_path) -> None:
    name, path = root_venv
    tolerance = TOLERANCES[name]
    guest_images = [f"{GUEST_DATA}/{image}" for image in IMAGES]
    emulated = [json.loads(line) for line in run_in_root(
        path, shared_data, f"{path}/bin/doorface", "detect", "--json", *guest_images).splitlines()
        if line.startswith("{")]
    native = subprocess.run([sys.executable, "-m", "edge.cli", "detect", "--json",
                             *[str(shared_data / image) for image in IMAGES]], capture_output=True, text=True,
                            env=clean_env(tmp_path / "home"), check=True)
    native = [json.loads(line) for line in native.stdout.splitlines() if line.startswith("{")]
    assert len(emulated) == len(native) == len(IMAGES)
    for arm, x86 in zip(emulated, native):
        assert len(arm["faces"]) == len(x86["faces"]) > 0, (arm, x86)
        for a, b in zip(arm["faces"], x86["faces"]):
            assert _iou(a["box"], b["box"]) >= MIN_BOX_IOU, (arm["image"], a, b)
            shift = np.abs(np.subtract(a["landmarks"], b["landmarks"])).max() / _face_side(b["box"])
            assert shift <= MAX_LANDMARK_SHIFT, (arm["image"], a, b)
            assert abs(a["score"] - b["score"]) <= MAX_SCORE_DIFF

    pair = IMAGES[:3]
    emulated = json.loads(run_in_root(path, shared_data, f"{path}/bin/doorface", "compare", "--json",
                                      *[f"{GUEST_DATA}/{image}" for image in pair]))
    native = json.loads(subprocess.run([sys.executable, "-m", "edge.cli", "compare", "--json",
                                        *[str(shared_data / image) for image in pair]], capture_output=True,
                                       text=True, env=clean_env(tmp_path / "home"), check=True).stdout)
    assert emulated["model"] == native["model"] and emulated["threshold"] == native["threshold"]
    distances = np.asarray(native["distances"])
    diff = np.abs(np.asarray(emulated["distances"]) - distances).max()
    assert diff <= tolerance.max_distance_diff, (diff, emulated, native)
    clear = np.abs(distances - native["threshold"]) > tolerance.max_distance_diff
    assert (np.asarray(emulated["same"]) == np.asarray(native["same"]))[clear].all(), (emulated, native)
    assert native["same"][0][1] and not native["same"][0][2]  # img1, img2: one person; img3: another


def model_inputs(shared_data: Path) -> dict[str, np.ndarray]:
    """uint8 inputs for every int8 model, from real faces: P-Net on a pyramid-sized image, R-Net and O-Net on the
    detected faces' crops, each embedder on the faces aligned with its own template."""
    manifest = Manifest.load()
    detector = MtcnnDetector.from_manifest(manifest)
    images = [load_image(shared_data / image) for image in IMAGES]
    faces = []
    for image in images:
        found = detector(image)
        faces += [(image, box, marks) for box, marks in zip(found.boxes, found.landmarks)]
    assert len(faces) >= 5

    def crops(size: int) -> np.ndarray:
        out = []
        for image, box, _ in faces:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            patch = image[max(y1, 0):y2, max(x1, 0):x2]
            out.append(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))
        return np.stack(out)

    inputs = {"pnet": np.stack([cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA) for image in images]),
              "rnet": crops(24), "onet": crops(48)}
    for key in int8_keys(manifest):
        entry = manifest.entry(key)
        if entry.task == "face_embedding":
            spec = EmbedderSpec.from_entry(entry)
            inputs[key] = np.stack([align_face(image, marks, spec.template, spec.size) for image, _, marks in faces])
    return inputs


@pytest.fixture(scope="module")
def x86_tflite_runtime(tmp_path_factory) -> Path:
    """An x86 venv holding only tflite-runtime and numpy < 2: the probe runs there with the checkout on its path."""
    target = tmp_path_factory.mktemp("x86-tflite-runtime") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    python = target / "bin" / "python"
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                *X86_TFLITE_RUNTIME], capture_output=True, text=True, timeout=1200, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def x86_outputs(name: str, inputs: dict[str, np.ndarray], folder: Path, request) -> dict[str, np.ndarray]:
    if name == "ai-edge-litert":
        return run_all(inputs)
    python = request.getfixturevalue("x86_tflite_runtime")
    subprocess.run([str(python), str(PROBE), str(folder / "inputs.npz"), str(folder / "x86.npz")], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, timeout=600)
    return _load_npz(folder / "x86.npz")


def test_every_shipped_int8_model_gives_the_x86_outputs(root_venv, shared_data, tmp_path, request) -> None:
    name, path = root_venv
    manifest = Manifest.load()
    inputs = model_inputs(shared_data)
    assert set(int8_keys(manifest)) >= {"pnet", "rnet", "onet", "mobilefacenet"}
    np.savez(tmp_path / "inputs.npz", **inputs)
    run_in_root(path, shared_data, "/mnt/probe/aarch64_probe.py", "/mnt/io/inputs.npz", "/mnt/io/outputs.npz",
                binds=(f"{PROBE.parent}:/mnt/probe:ro", f"{tmp_path}:/mnt/io"))
    emulated = _load_npz(tmp_path / "outputs.npz")
    native = x86_outputs(name, inputs, tmp_path, request)
    assert str(emulated.pop("backend")) == str(native.pop("backend")) == INTERPRETERS[name][1]
    assert set(emulated) == set(native)
    tolerance = TOLERANCES[name]
    worst, mean = {}, {}
    for output, x86 in native.items():
        arm = emulated[output]
        assert arm.shape == x86.shape and arm.dtype == x86.dtype, output
        steps = np.abs(arm.astype(np.int32) - x86.astype(np.int32))
        worst[output], mean[output] = int(steps.max()), float(steps.mean())
    assert max(worst.values()) <= tolerance.max_steps, worst
    assert max(mean.values()) <= tolerance.mean_steps, mean
    for key in int8_keys(manifest):
        if manifest.entry(key).task != "face_embedding":
            continue
        (spec,) = tfl.output_specs(tfl.make_interpreter(manifest.entry(key).read_verified()))
        a, b = (tfl.dequantize(v[f"{key}/0"], spec).reshape(len(inputs[key]), -1) for v in (emulated, native))
        cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() >= tolerance.min_cosine, (key, cosine)


# ------------------------------------------------------------------ install.sh's interpreter choice, by the real pip

CHOOSE = REPO_ROOT / "deploy" / "install-interpreter.sh"
APT_SITE = "/usr/lib/python3/dist-packages"


def _chosen(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_install_sh_picks_the_interpreter_wheel_in_the_raspberry_pi_os_root(tmp_path) -> None:
    """install.sh's choice made by the root's own pip, from the package index, for a venv that sees apt's numpy
    through --system-site-packages, held to that numpy: what install.sh does on Raspberry Pi OS Bookworm."""
    root = Path(aarch64("root").stdout.strip().splitlines()[-1])
    venv_dir = "/opt/pi-os-venv"
    shutil.rmtree(root / venv_dir.lstrip("/"), ignore_errors=True)
    aarch64("run", "--", "/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", venv_dir)
    apt_numpy = aarch64("run", "--", f"{venv_dir}/bin/python", "-c",
                        "import numpy; print(numpy.__version__)").stdout.strip()
    (tmp_path / "constraints.txt").write_text(f"numpy=={apt_numpy}\n")
    (pip_wheel,) = (root / "usr" / "share" / "python-wheels").glob("pip-*.whl")
    pip = [str(SCRIPT), "run", "--bind", f"{tmp_path}:/mnt/constraints:ro", "--", f"{venv_dir}/bin/python",
           f"/usr/share/python-wheels/{pip_wheel.name}/pip", "install", "--quiet", "--disable-pip-version-check",
           "-c", "/mnt/constraints/constraints.txt"]
    chosen = _chosen(subprocess.run(["bash", str(CHOOSE), *pip], capture_output=True, text=True, timeout=1800,
                                    env={**os.environ, "DOORFACE_HOST_PYTHON": sys.executable}, check=False))
    assert chosen == "interpreter: ai-edge-litert", chosen  # its wheels take Bookworm's numpy 1.24

    onet = Manifest.load().entry("onet").path
    ran = json.loads(aarch64("run", "--bind", f"{onet.parent}:/mnt/models:ro", "--", f"{venv_dir}/bin/python", "-c", (
        "import json, numpy\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        f"interp = Interpreter(model_path='/mnt/models/{onet.name}')\n"
        "interp.allocate_tensors(); interp.invoke()\n"
        "print(json.dumps({'numpy': numpy.__file__, 'version': numpy.__version__,"
        " 'outputs': len(interp.get_output_details())}))")).stdout)
    assert ran["numpy"].startswith(APT_SITE) and ran["version"] == apt_numpy, ran  # apt's numpy kept, not a wheel's
    assert ran["outputs"] == 3


@pytest.mark.parametrize(("release", "python", "glibc_minor", "apt_numpy", "expected"), [
    ("Raspberry Pi OS Bookworm", "3.11", 36, "1.24.2", "ai-edge-litert"),
    ("Raspberry Pi OS Trixie", "3.13", 41, "2.2.4", "ai-edge-litert"),
])
def test_install_sh_picks_a_wheel_that_exists_for_each_pi_os_release(tmp_path, release, python, glibc_minor,
                                                                      apt_numpy, expected) -> None:
    """The same choice for each release's Python, glibc and apt numpy, by pip's resolver for an aarch64 target
    (--dry-run --platform): Trixie's Python 3.13 has no tflite-runtime wheel at all, so it must be ai-edge-litert."""
    (tmp_path / "constraints.txt").write_text(f"numpy=={apt_numpy}\n")
    platforms = [arg for minor in range(glibc_minor, 16, -1) for arg in ("--platform", f"manylinux_2_{minor}_aarch64")]
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:",
           "--implementation", "cp", "--python-version", python, *platforms, "--platform", "manylinux2014_aarch64",
           "-c", str(tmp_path / "constraints.txt")]
    chosen = _chosen(subprocess.run(["bash", str(CHOOSE), *pip], capture_output=True, text=True, timeout=600,
                                    check=False))
    assert chosen == f"interpreter: {expected}", (release, chosen)
