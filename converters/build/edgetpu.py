"""``doorface-convert edgetpu``: static-shape int8 models of every stage for one device's camera size, checked
against the EdgeTPU's rules and, when ``edgetpu_compiler`` is on PATH, compiled together.

What is written (``build/edgetpu/<device>/`` by default):

- one P-Net per pyramid level of the camera frame: the shapes come from :class:`edge.mtcnn.Pyramid` itself, for the
  device's ``camera.width`` × ``camera.height`` and its detector settings, so they are exactly the levels the
  runtime feeds P-Net;
- R-Net and O-Net with a fixed batch of **1**. The EdgeTPU maps a tensor only when no more than its 3 innermost
  dimensions are > 1 (:data:`tflite_tools.EDGETPU_MAX_DIMS_ABOVE_ONE`): a batch of B > 1 crops is a
  (B, 24, 24, 3) input, so the very first CONV_2D would fall back to the CPU and, the EdgeTPU having one partition,
  every op after it too (the checker says so for any B > 1: see tests/test_convert_edgetpu.py). Batch 1 maps
  whole; the runtime runs the crops of a frame one invoke each, which on an EdgeTPU costs a USB round trip per
  crop but keeps every multiply-accumulate on the accelerator;
- the embedder of the device config, copied from the shipped models (already int8 at batch 1, static).

Each MTCNN model is rebuilt with :func:`mtcnn_keras.build` (the int8 variant the CPU models ship: PReLU as ReLU
branches and convolutions, all on the EdgeTPU's op list) from the source weights, and quantized on calibration
samples *of its own shape*: the calibration
images of :func:`mtcnn.calibration_images` (never LFW) resized to the camera frame, their pyramid levels for each
P-Net and the float cascade's candidate crops for R-Net and O-Net.

Every model then goes through :func:`tflite_tools.check_edgetpu`; the table and ``edgetpu_report.json`` give each
model's shape, op count and verdict (or the first op that would fall back, and why). With ``edgetpu_compiler``
on PATH all models are compiled in one call (co-compiled: they share the EdgeTPU's 8 MiB parameter cache), the
compiler's ``*_edgetpu.log`` lands beside each ``*_edgetpu.tflite``, and ``manifest.json`` gets the runtime's
entries (:mod:`edge.manifest`). Without it nothing is compiled and no EdgeTPU entry is written.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from tqdm import tqdm

from converters import manifest_io
from converters.build import mtcnn
from converters.build import mtcnn_keras as mk
from converters.fetch import sources
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge import mtcnn as cascade
from edge.config import Config
from edge.manifest import EDGETPU_SUFFIX, Manifest

CROP_BATCH = 1  # R-Net/O-Net: see the module docstring
COMPILER = "edgetpu_compiler"
REPORT_NAME = "edgetpu_report.json"
DEFAULT_CALIBRATION_IMAGES = 120
"""Calibration images (of mtcnn.calibration_images' fit split) used per net; every one yields one sample per
P-Net level and its candidate crops for R-Net/O-Net."""


class CompilerFailed(RuntimeError):
    """``edgetpu_compiler`` exited with an error."""


@dataclass(frozen=True)
class BuiltModel:
    key: str
    """Manifest key of the CPU model (``pnet_<h>x<w>``, ``rnet_b1``, ...)."""
    file: str
    replaces: str
    """The shipped model key it stands in for (pnet, rnet, onet or the embedder's)."""
    shape: tuple[int, ...]
    ops: int
    mapped_ops: int
    verdict: str
    """"maps whole" or the checker's problems."""


def pnet_shapes(width: int, height: int, params: cascade.CascadeParams) -> list[tuple[int, int]]:
    """P-Net input (height, width) per pyramid level of a ``width`` × ``height`` frame, as the runtime builds it."""
    pyramid = cascade.Pyramid.build(np.zeros((height, width, 3), np.uint8), params)
    return [level.shape[:2] for _, level in pyramid.for_pnet()]


def _frames(images: list, width: int, height: int) -> list[np.ndarray]:
    return [cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA) for im in images]


def _pnet_samples(frames: list, params: cascade.CascadeParams) -> dict[tuple[int, int], list[np.ndarray]]:
    samples: dict = {}
    for frame in frames:
        for _, level in cascade.Pyramid.build(frame, params).for_pnet():
            samples.setdefault(level.shape[:2], []).append(
                tflite_tools.normalise(level, mtcnn.PIXEL_MEAN, mtcnn.PIXEL_STD)[None])
    return samples


def _quantized(net, samples: list, label: str) -> bytes:
    bar = tqdm(total=len(samples), desc=f"{label} int8 calibration", unit="sample", leave=False)

    def representative():
        for s in samples:
            bar.update(1)
            yield [s]

    content = tflite_tools.to_tflite(net, representative)
    bar.close()
    if not content:
        raise RuntimeError(f"{label}: the converter produced an empty model")
    return content


def _checked(path: Path, key: str, replaces: str) -> BuiltModel:
    report = tflite_tools.check_edgetpu(path)
    interp = tfl.make_interpreter(path.read_bytes())
    shape = tuple(int(d) for d in interp.get_input_details()[0]["shape_signature"])
    return BuiltModel(key, path.name, replaces, shape, report.ops, report.mapped_ops,
                      "maps whole" if report.compatible else "; ".join(report.problems))


def build_models(config: Config, out_dir: Path, shared: Optional[Path] = None, cache: Optional[Path] = None,
                 calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                 models_dir: Optional[Path] = None) -> list[BuiltModel]:
    """Write and check every static-shape int8 model for ``config``'s camera in ``out_dir``."""
    width, height = config.camera.width, config.camera.height
    params = config.detector.cascade_params()
    if calibration_images < 1:
        raise ValueError(f"calibration_images must be at least 1, got {calibration_images}")
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = pnet_shapes(width, height, params)
    if not shapes:
        raise ValueError(f"a {width}x{height} camera frame has no P-Net level for min_face_size "
                         f"{params.min_face_size}: lower detector.min_face_size or raise the camera size")

    package_dir = sources.extract_all(sources.MTCNN_PYPI, cache)
    weights = {n: mk.load_source_weights(package_dir / f"mtcnn/assets/weights/{n}.lz4") for n in mk.NETS}
    images = mtcnn.calibration_images(shared).split(False)
    # Spread over the set: video frames first, then face crops (the crops give R-Net/O-Net their candidates).
    images = [images[i] for i in np.unique(np.linspace(0, len(images) - 1, calibration_images).astype(int))]
    frames = _frames(images, width, height)
    runners = mtcnn.keras_runners({n: mk.build(n, weights[n], "faithful", batch_size=None) for n in mk.NETS})
    pnet_samples = _pnet_samples(frames, params)
    crop_samples = {}
    for stage, limit in (("rnet", mtcnn.MAX_RNET_CROPS), ("onet", mtcnn.MAX_ONET_CROPS)):
        crops = mtcnn.crop_samples(frames, runners, stage, limit, params)
        if len(crops) == 0:
            raise RuntimeError(f"{stage}: the calibration frames gave no candidate crops at {width}x{height}; "
                               "use more calibration images")
        crop_samples[stage] = [c[None] for c in tflite_tools.normalise(crops, mtcnn.PIXEL_MEAN, mtcnn.PIXEL_STD)]

    built = []
    for h, w in tqdm(shapes, desc="P-Net levels", unit="model"):
        key = f"pnet_{h}x{w}"
        net = mk.build("pnet", weights["pnet"], "int8", batch_size=1, input_hw=(h, w))
        path = out_dir / f"mtcnn_{key}_int8.tflite"
        path.write_bytes(_quantized(net, pnet_samples[(h, w)], key))
        built.append(_checked(path, key, "pnet"))
    for stage in ("rnet", "onet"):
        key = f"{stage}_b{CROP_BATCH}"
        net = mk.build(stage, weights[stage], "int8", batch_size=CROP_BATCH)
        path = out_dir / f"mtcnn_{key}_int8.tflite"
        path.write_bytes(_quantized(net, crop_samples[stage], key))
        built.append(_checked(path, key, stage))

    embedder = Manifest.load(models_dir).entry(config.embedder.model)
    content = embedder.read_verified()
    if any(d < 1 for d in embedder.input.shape) or embedder.input.shape[0] != 1:
        raise ValueError(f"embedder '{embedder.key}' input {list(embedder.input.shape)} is not a static batch of 1")
    path = out_dir / embedder.path.name
    path.write_bytes(content)
    built.append(_checked(path, embedder.key, embedder.key))
    return built


def write_report(built: list[BuiltModel], config: Config, out_dir: Path, compiler: str) -> Path:
    path = out_dir / REPORT_NAME
    path.write_text(json.dumps({
        "device": config.device_name,
        "camera": {"width": config.camera.width, "height": config.camera.height},
        "min_face_size": config.detector.min_face_size,
        "crop_batch": CROP_BATCH,
        "compiler": compiler,
        "models": [asdict(m) for m in built],
    }, indent=2) + "\n", encoding="utf-8")
    return path


def table(built: list[BuiltModel]) -> str:
    rows = [f"{'model':<16} {'shape':<18} {'ops':>4} {'on TPU':>6}  verdict"]
    rows += [f"{m.key:<16} {str(list(m.shape)):<18} {m.ops:>4} {m.mapped_ops:>6}  {m.verdict}" for m in built]
    return "\n".join(rows)


def compile_all(built: list[BuiltModel], out_dir: Path, compiler: str) -> str:
    """Co-compile every model in one ``edgetpu_compiler`` call (one parameter-cache plan for all of them)."""
    run = subprocess.run([compiler, "-s", "-o", str(out_dir), *[str(out_dir / m.file) for m in built]],
                         capture_output=True, text=True, cwd=out_dir)
    if run.returncode != 0:
        raise CompilerFailed(f"{compiler} exited with {run.returncode}: {(run.stdout + run.stderr).strip()[-2000:]}")
    for m in built:
        compiled = out_dir / (Path(m.file).stem + EDGETPU_SUFFIX)
        if not compiled.is_file() or not compiled.with_suffix(".log").is_file():
            raise CompilerFailed(f"{compiler} wrote no {compiled.name} (or its .log) in {out_dir}")
    return run.stdout


def manifest_entries(built: list[BuiltModel], out_dir: Path, models_dir: Optional[Path] = None) -> dict:
    """The shipped CPU models the device uses (copied here: the CPU fallback) and one EdgeTPU entry per compiled
    model, in the runtime's schema (:mod:`edge.manifest`): the output folder is then a complete models folder
    (``DOORFACE_MODELS``)."""
    shipped = Manifest.load(models_dir)
    entries = {}
    for m in built:
        cpu = shipped.entry(m.replaces)
        if not (out_dir / cpu.path.name).is_file():
            shutil.copyfile(cpu.path, out_dir / cpu.path.name)
        entries[cpu.key] = dict(cpu.fields)
        compiled = out_dir / (Path(m.file).stem + EDGETPU_SUFFIX)
        data = compiled.read_bytes()
        spec = tfl.input_specs(tfl.make_interpreter((out_dir / m.file).read_bytes()))[0]
        entries[f"{m.key}_edgetpu"] = {
            **{k: v for k, v in cpu.fields.items() if k not in ("agreement", "calibration", "conversion")},
            "file": compiled.name,
            "sha256": manifest_io.sha256_bytes(data),
            "size_bytes": len(data),
            "edgetpu_of": cpu.key,
            "input": {**cpu.fields["input"], "shape": list(m.shape), "scale": spec.scale,
                      "zero_point": spec.zero_point},
            "compiled_from": {"file": m.file, "sha256": manifest_io.sha256_bytes((out_dir / m.file).read_bytes()),
                              "compiler_log": compiled.with_suffix(".log").name},
        }
    Manifest.from_entries(entries, out_dir, out_dir / "manifest.json")  # what the runtime will read must load
    return entries


def run(config: Config, out_dir: Path, shared: Optional[Path] = None, cache: Optional[Path] = None,
        calibration_images: int = DEFAULT_CALIBRATION_IMAGES, models_dir: Optional[Path] = None) -> list[BuiltModel]:
    """The whole command: build and check, print the table, then compile (or say why not)."""
    built = build_models(config, out_dir, shared, cache, calibration_images, models_dir)
    compiler = shutil.which(COMPILER)
    print(table(built))
    if compiler is None:
        note = f"{COMPILER} is not on PATH: checked only, nothing compiled (no *_edgetpu.tflite, no manifest entry)"
        print(note)
    else:
        note = compile_all(built, out_dir, compiler)
        print(note)
        manifest_io.update_manifest(out_dir, manifest_entries(built, out_dir, models_dir))
        print(f"compiled {len(built)} models together; manifest: {out_dir / 'manifest.json'}")
    print(f"report: {write_report(built, config, out_dir, note)}")
    return built
