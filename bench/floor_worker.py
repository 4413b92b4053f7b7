"""One measured run of ``bench.bench_floor`` in its own process, on the ``edge`` package of a given tree.

The tree is this checkout or a baseline commit's worktree: ``edge`` is imported from ``--code-root`` (checked), the
models from its ``quantized_models/``, so a baseline is measured with its own code and models while the
instrument (this file, the frames, the probe model) stays the same. Nothing here imports ``edge`` before
``--code-root`` is first on ``sys.path``; that is why the imports of ``edge`` are inside :func:`measure`.

What one run does, on every frame: the MTCNN detector, then every detected face aligned and embedded (no motion
gate, no tracking: the work the usual alternatives do per frame). Each stage runner is wrapped in a clock, and
every ``invoke()`` of the backend's interpreters is logged with the input shape it ran at, so the parent counts
the multiply-adds the graphs really computed (P-Net's pyramid shapes, R-Net / O-Net per crop or per fixed batch,
padding included). The int8 conv probe is timed at the same thread count before and after the timed pass.

    python -m bench.floor_worker --code-root DIR --frames FRAMES.npy --probe PROBE.tflite --threads 2 \
        --min-face-size 20 --embedder mobilefacenet

Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

MS = 1e3
DETECTOR_STAGES = ("pnet", "rnet", "onet")
STAGES = (*DETECTOR_STAGES, "detect", "align", "embed", "total")
PROBE_WARMUP, PROBE_INVOKES = 2, 8


class InvokeLog:
    """Every ``invoke()`` of every interpreter of ``interpreter_class``, as the input shape it ran at, and how many
    times tensors were (re)allocated.

    The class's ``allocate_tensors`` and ``invoke`` are wrapped for the life of this process (a worker process
    measures one thing and exits): allocation notes the input shape, each invoke appends it.
    """

    def __init__(self, interpreter_class: Any):
        self.shapes: list[tuple[int, ...]] = []
        self.allocations = 0
        allocate, invoke = interpreter_class.allocate_tensors, interpreter_class.invoke
        shapes = self.shapes

        def logged_allocate(interp):
            result = allocate(interp)
            interp.bench_input_shape = tuple(int(v) for v in interp.get_input_details()[0]["shape"])
            self.allocations += 1
            return result

        def logged_invoke(interp):
            shapes.append(interp.bench_input_shape)
            return invoke(interp)

        interpreter_class.allocate_tensors = logged_allocate
        interpreter_class.invoke = logged_invoke


class StageClock:
    """Wraps a stage runner: this frame's seconds, inputs (crops; 1 for an image) and invokes by input shape."""

    def __init__(self, runner: Callable[[np.ndarray], Any], log: InvokeLog):
        self.runner = runner
        self.log = log
        self.invokes: Counter = Counter()
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.items = 0

    def __call__(self, array: np.ndarray) -> Any:
        first = len(self.log.shapes)
        start = time.perf_counter()
        out = self.runner(array)
        self.seconds += time.perf_counter() - start
        self.items += len(array) if array.ndim == 4 else 1
        self.invokes.update(self.log.shapes[first:])
        return out


def probe_seconds(tfl: Any, content: bytes, threads: int) -> float:
    """The fastest of a few invokes of the probe model (one large int8 conv) at ``threads``."""
    interp = tfl.make_interpreter(content, num_threads=threads)
    interp.allocate_tensors()
    spec = tfl.input_specs(interp)[0]
    rng = np.random.default_rng(0)
    interp.set_tensor(spec.index, rng.integers(-128, 128, size=spec.shape, dtype=np.int8).astype(spec.dtype))
    times = []
    for i in range(PROBE_WARMUP + PROBE_INVOKES):
        start = time.perf_counter()
        interp.invoke()
        if i >= PROBE_WARMUP:
            times.append(time.perf_counter() - start)
    return min(times)


def import_edge(code_root: Path) -> str:
    """Put ``code_root`` first on the path and make sure ``edge`` comes from there (else the run is void); the
    package's folder."""
    if "edge" in sys.modules:
        raise RuntimeError("edge was imported before the code root was chosen")
    sys.path.insert(0, str(code_root))
    edge = importlib.import_module("edge")
    found = Path(edge.__file__).resolve().parent.parent
    if found != code_root.resolve():
        raise RuntimeError(f"edge imported from {found}, not from {code_root}: the measurement would be void")
    return str(Path(edge.__file__).resolve().parent)


def _shape_counts(counts: Counter) -> list:
    """``[[shape, invokes], ...]``, JSON-ready."""
    return [[list(shape), n] for shape, n in sorted(counts.items())]


def measure(code_root: Path, frames_path: Path, probe_path: Path, threads: int, min_face_size: float,
            embedder_key: str) -> dict:
    edge_dir = import_edge(code_root)
    from edge import interpreter as tfl
    from edge.detector import MTCNN_KEYS, MtcnnDetector
    from edge.embedder import Embedder
    from edge.manifest import Manifest
    from edge.mtcnn import DEFAULT_PARAMS

    log = InvokeLog(tfl.backend().interpreter_class)
    manifest = Manifest.load(code_root / "quantized_models")
    params = dataclasses.replace(DEFAULT_PARAMS, min_face_size=min_face_size)
    start = time.perf_counter()
    base = MtcnnDetector.from_manifest(manifest, num_threads=threads, params=params)
    embedder = Embedder(manifest.entry(embedder_key), num_threads=threads)
    startup_ms = (time.perf_counter() - start) * MS
    clocks = {stage: StageClock(getattr(base, stage), log) for stage in DETECTOR_STAGES}
    detector = dataclasses.replace(base, **clocks)
    clocks["embed"] = StageClock(embedder.embed_chips, log)
    frames = np.load(frames_path)
    probe = probe_path.read_bytes()

    def one_frame(frame: np.ndarray) -> dict[str, float]:
        for clock in clocks.values():
            clock.reset()
        t0 = time.perf_counter()
        detections = detector(frame)
        t1 = time.perf_counter()
        chips = [embedder.align(frame, marks) for marks in detections.landmarks]
        t2 = time.perf_counter()
        if chips:
            clocks["embed"](np.stack(chips))
        t3 = time.perf_counter()
        ms = {stage: clocks[stage].seconds * MS for stage in DETECTOR_STAGES}
        ms.update(detect=(t1 - t0) * MS, align=(t2 - t1) * MS, embed=(t3 - t2) * MS, total=(t3 - t0) * MS)
        return {**ms, "faces": len(detections), "rnet_crops": clocks["rnet"].items,
                "onet_crops": clocks["onet"].items}

    for frame in frames:  # warm-up: P-Net interpreters per pyramid shape, XNNPACK's packed weights
        one_frame(frame)
    for clock in clocks.values():
        clock.invokes.clear()
    probes = [probe_seconds(tfl, probe, threads)]
    allocations = log.allocations
    rows = [one_frame(frame) for frame in frames]
    allocations = log.allocations - allocations  # a runtime that plans once per frame size allocates none here
    probes.append(probe_seconds(tfl, probe, threads))

    keys = {**dict(zip(DETECTOR_STAGES, MTCNN_KEYS)), "embed": embedder_key}
    return {
        "code_root": str(code_root),
        "edge": edge_dir,
        "threads": threads,
        "min_face_size": min_face_size,
        "frames": len(frames),
        "startup_ms": startup_ms,
        "per_frame": {key: [row[key] for row in rows] for key in (*STAGES, "faces", "rnet_crops", "onet_crops")},
        "invokes": {stage: {"model": key, "shapes": _shape_counts(clocks[stage].invokes)}
                    for stage, key in keys.items()},
        "probe_seconds": min(probes),
        "allocations": allocations,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code-root", type=Path, required=True)
    parser.add_argument("--frames", type=Path, required=True, help="(N, H, W, 3) uint8 RGB frames, .npy")
    parser.add_argument("--probe", type=Path, required=True, help="the int8 conv probe model (.tflite)")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--min-face-size", type=float, required=True)
    parser.add_argument("--embedder", required=True, help="manifest key of the embedder")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.code_root, args.frames, args.probe, args.threads, args.min_face_size,
                             args.embedder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
