"""MTCNN latency on the on-device runtime: per stage, float vs int8, 1 and 2 threads, against a MAC floor.

Runs the real detector (``edge.detector.MtcnnDetector``) over frames of the shared test videos resized to
640×480. Each stage runner is wrapped in a timer, so P-Net time is the sum of its pyramid calls and R-Net / O-Net
time covers every crop of the frame; ``total`` is the wall time of ``detector(frame)`` (resizes, NMS and crops
included). Every frame is run once untimed first, because P-Net builds one interpreter per pyramid shape on first
use.

MACs are counted from each model's op details (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) on an interpreter
without the default delegate, so the graph is the one the converter wrote. P-Net is counted at every pyramid shape
the detector actually ran; R-Net and O-Net per crop, times the mean crops per frame. The floor is
``MACs / (GMAC/s per core × threads)``.

Never imports TensorFlow: it measures ``edge.interpreter``'s backend (ai_edge_litert or tflite_runtime).

    python -m bench.bench_mtcnn [--frames 40] [--threads 1 2] [--out bench/results] [--models DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np

from bench.machine import machine_info
from bench.macs import count_macs, graph_interpreter
from converters import datasets
from edge.detector import MtcnnDetector
from edge.manifest import Manifest
from edge.mtcnn import DEFAULT_PARAMS, CascadeParams, pyramid_scales

VIDEOS = ("facenet_pytorch_video.mp4", "short_hamilton_clip.mp4")
FRAME_SIZE = (640, 480)  # (width, height), the detector's working resolution on the device
DEFAULT_FRAMES_PER_VIDEO = 40
DEFAULT_REPEATS = 5  # timed passes over the frames after the warm-up pass, interleaved across configurations
DEFAULT_THREADS = (1, 2)
DEFAULT_OUT = Path("bench/results")
# XNNPACK int8 convolutions reach about this many multiply-accumulates per second per core on this machine.
DEFAULT_GMACS_PER_CORE = 43.0
PERCENTILE = 90

STAGES = ("pnet", "rnet", "onet")
VARIANTS: dict[str, tuple[str, str, str]] = {
    "float": ("pnet_float", "rnet_float", "onet_float"),
    "int8": ("pnet", "rnet", "onet"),
}
INT8 = "int8"

COUNTS = ("faces", "rnet_crops", "onet_crops")

DEFAULT_NAME = "mtcnn_latency"

MS = 1e3
GIGA = 1e9
MEGA = 1e6


# ------------------------------------------------------------------------------------------------------ frames


def _frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def load_frames(frames_per_video: int, size: tuple[int, int] = FRAME_SIZE) -> tuple[list[np.ndarray], list[str]]:
    """``frames_per_video`` RGB frames from each test video, evenly spread over the whole clip."""
    frames: list[np.ndarray] = []
    sources: list[str] = []
    folder = datasets.data_dir("video")
    for name in VIDEOS:
        path = folder / name
        count = _frame_count(path)
        wanted = set(np.linspace(0, max(count - 1, 0), frames_per_video).round().astype(int).tolist())
        for index, frame in enumerate(datasets.iter_video_frames(path, size=size, step=1)):
            if index in wanted:
                frames.append(frame)
                sources.append(f"{name}:{index}")
    if not frames:
        raise RuntimeError(f"no frames decoded from {folder} ({', '.join(VIDEOS)})")
    return frames, sources


# ------------------------------------------------------------------------------------------------------ timing


class TimedRunner:
    """Wraps a stage runner; accumulates this frame's seconds, calls and crops (R-Net / O-Net batch size)."""

    def __init__(self, runner: Callable[[np.ndarray], Any]):
        self.runner = runner
        self.shape_ms: dict[tuple[int, ...], list[float]] = {}
        """Milliseconds of every timed call, by input shape (P-Net: by pyramid level)."""
        self.reset()

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.items = 0

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return sorted(self.shape_ms)

    def __call__(self, array: np.ndarray) -> Any:
        start = time.perf_counter()
        out = self.runner(array)
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.calls += 1
        self.items += len(array) if array.ndim == 4 else 1
        self.shape_ms.setdefault(tuple(array.shape), []).append(elapsed * MS)
        return out

    def clear_history(self) -> None:
        self.shape_ms = {shape: [] for shape in self.shape_ms}


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "median": float(np.median(arr)),
        f"p{PERCENTILE}": float(np.percentile(arr, PERCENTILE)),
    }


class ConfigBench:
    """One detector (variant × threads): start-up and first-frame latency, a warm-up pass, then timed passes."""

    def __init__(self, variant: str, manifest: Manifest, threads: int, params: CascadeParams = DEFAULT_PARAMS):
        self.variant = variant
        self.keys = VARIANTS[variant]
        self.threads = threads
        start = time.perf_counter()
        base = MtcnnDetector.from_manifest(manifest, num_threads=threads, keys=self.keys, params=params)
        self.construct_ms = (time.perf_counter() - start) * MS
        self.timers = {stage: TimedRunner(getattr(base, stage)) for stage in STAGES}
        self.detector = dataclasses.replace(base, **self.timers)
        self.first_frame_ms = float("nan")
        self.passes = 0
        self.per_frame: dict[str, list[float]] = {key: [] for key in (*STAGES, "total", *COUNTS)}

    def warm_up(self, frames: list[np.ndarray]) -> None:
        """Every frame once, untimed except the very first call (it builds each P-Net pyramid interpreter)."""
        start = time.perf_counter()
        self.detector(frames[0])
        self.first_frame_ms = (time.perf_counter() - start) * MS
        for frame in frames[1:]:
            self.detector(frame)
        for timer in self.timers.values():
            timer.clear_history()

    def timed_pass(self, frames: list[np.ndarray]) -> None:
        for frame in frames:
            for timer in self.timers.values():
                timer.reset()
            start = time.perf_counter()
            detections = self.detector(frame)
            total = time.perf_counter() - start
            for stage in STAGES:
                self.per_frame[stage].append(self.timers[stage].seconds * MS)
            self.per_frame["total"].append(total * MS)
            self.per_frame["faces"].append(len(detections))
            self.per_frame["rnet_crops"].append(self.timers["rnet"].items)
            self.per_frame["onet_crops"].append(self.timers["onet"].items)
        self.passes += 1

    def _best_of_passes(self, key: str) -> list[float]:
        """Per frame, the fastest of the timed passes: robust to load from other processes on a shared machine."""
        return np.asarray(self.per_frame[key]).reshape(self.passes, -1).min(axis=0).tolist()

    def result(self) -> dict:
        pnet = self.timers["pnet"]
        return {
            "variant": self.variant,
            "keys": list(self.keys),
            "threads": self.threads,
            "timed_passes": self.passes,
            "construct_ms": self.construct_ms,
            "first_frame_ms": self.first_frame_ms,
            "ms": {key: _stats(self.per_frame[key]) for key in (*STAGES, "total")},
            "best_of_passes_ms": {key: _stats(self._best_of_passes(key)) for key in (*STAGES, "total")},
            "faces_per_frame": float(np.mean(self.per_frame["faces"])),
            "rnet_crops_per_frame": float(np.mean(self.per_frame["rnet_crops"])),
            "onet_crops_per_frame": float(np.mean(self.per_frame["onet_crops"])),
            "pnet_calls_per_frame": len(pnet.shapes),
            "pnet_shapes": [list(shape) for shape in pnet.shapes],
            "pnet_level_ms": [
                {"shape": list(shape), **_stats(pnet.shape_ms[shape])}
                for shape in sorted(pnet.shapes, key=lambda shape: -shape[0] * shape[1])
                if pnet.shape_ms[shape]
            ],
            "per_frame_ms": {key: self.per_frame[key] for key in (*STAGES, "total")},
        }


# -------------------------------------------------------------------------------------------------------- MACs


def model_macs(manifest: Manifest, keys: tuple[str, str, str], pnet_shapes: list[list[int]]) -> dict:
    """MACs of P-Net summed over the pyramid shapes (one frame), and of R-Net / O-Net per crop."""
    pnet_content, rnet_content, onet_content = (manifest.entry(k).read_verified() for k in keys)
    levels = []
    for shape in pnet_shapes:
        macs = count_macs(graph_interpreter(pnet_content, (1, *shape)))
        levels.append({"shape": list(shape), "macs": sum(macs.values())})
    rnet_ops = count_macs(graph_interpreter(rnet_content))
    onet_ops = count_macs(graph_interpreter(onet_content))
    return {
        "pnet_per_frame": sum(level["macs"] for level in levels),
        "pnet_levels": levels,
        "rnet_per_crop": sum(rnet_ops.values()),
        "onet_per_crop": sum(onet_ops.values()),
        "rnet_ops": rnet_ops,
        "onet_ops": onet_ops,
    }


def floors(macs: dict, config: dict, gmacs_per_core: float) -> dict:
    """Per stage: MACs per frame, floor ms at ``config``'s threads, measured mean / floor."""
    per_frame = {
        "pnet": macs["pnet_per_frame"],
        "rnet": macs["rnet_per_crop"] * config["rnet_crops_per_frame"],
        "onet": macs["onet_per_crop"] * config["onet_crops_per_frame"],
    }
    per_frame["total"] = sum(per_frame.values())
    rate = gmacs_per_core * GIGA * config["threads"]
    out = {}
    for stage, n in per_frame.items():
        floor_ms = n / rate * MS
        measured = config["ms"][stage]["mean"]
        out[stage] = {
            "macs_per_frame": n,
            "floor_ms": floor_ms,
            "measured_ms": measured,
            "measured_over_floor": measured / floor_ms if floor_ms > 0 else None,
        }
    return out


# ------------------------------------------------------------------------------------------------------ report


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    params = dataclasses.replace(DEFAULT_PARAMS, min_face_size=report["min_face_size"])
    cpu = machine["cpu_model"] or machine["processor"] or "unknown CPU"
    width, height = report["frame_size"]
    lines = [
        f"#### MTCNN latency, minimum face {report['min_face_size']:g} px",
        "",
        f"{report['frames']} frames ({', '.join(VIDEOS)}) at {width}×{height}, minimum face size "
        f"{report['min_face_size']:g} px, other cascade params default; "
        f"{cpu}, {machine['cpu_count']} CPUs, {machine['backend']} {machine['backend_version'] or ''} (XNNPACK). "
        f"Mean / p{PERCENTILE} ms per frame.",
        "",
        "| variant | threads | P-Net ms | R-Net ms | O-Net ms | total ms | faces/frame | R-Net crops | O-Net crops "
        "| start-up ms | first frame ms | total best-of-passes ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pct = f"p{PERCENTILE}"
    for config in report["configs"]:
        ms = config["ms"]
        cells = [f"{_fmt(ms[s]['mean'])} / {_fmt(ms[s][pct])}" for s in (*STAGES, "total")]
        lines.append(
            f"| {config['variant']} | {config['threads']} | " + " | ".join(cells) + " | "
            f"{_fmt(config['faces_per_frame'])} | {_fmt(config['rnet_crops_per_frame'], 1)} | "
            f"{_fmt(config['onet_crops_per_frame'], 1)} | {_fmt(config['construct_ms'], 1)} | "
            f"{_fmt(config['first_frame_ms'], 1)} | {_fmt(config['best_of_passes_ms']['total']['mean'])} / "
            f"{_fmt(config['best_of_passes_ms']['total'][pct])} |"
        )
    lines += [
        "",
        f"{report['repeats']} timed passes over the frames, interleaved across rows, after one warm-up pass. P-Net = "
        "sum of its pyramid calls; total = `detector(frame)` wall time (pyramid resizes, NMS and crops included); "
        "crops = R-Net / O-Net inputs per frame; best-of-passes = per frame the fastest pass, then mean / "
        f"p{PERCENTILE}. Start-up = `MtcnnDetector.from_manifest`; first frame = the "
        "first call, which builds one P-Net interpreter per pyramid shape.",
    ]
    int8 = [c for c in report["configs"] if c["variant"] == INT8]
    if int8:
        gmacs = report["gmacs_per_core"]
        floats = [c for c in report["configs"] if c["variant"] != INT8 and "floor" in c]
        header = "| stage | int8 MMAC/frame |" + (" float MMAC/frame |" if floats else "") + " floor ms @1 thread |"
        rule = "|---|---:|" + ("---:|" if floats else "") + "---:|"
        for config in int8:
            header += f" measured ms @{config['threads']}t | measured/floor @{config['threads']}t |"
            rule += "---:|---:|"
        lines += [
            "",
            f"int8 MACs per frame (R-Net / O-Net: per crop × mean crops of the int8 run) against a floor of "
            f"{gmacs:g} GMAC/s per core; the floor at N threads is the 1-thread floor / N. The float column is the "
            "float graphs' MACs (their own crop counts), for comparison.",
            "",
            header,
            rule,
        ]
        for stage in (*STAGES, "total"):
            first = int8[0]["floor"][stage]
            floor_1t = first["floor_ms"] * int8[0]["threads"]
            row = f"| {stage} | {_fmt(first['macs_per_frame'] / MEGA, 1)} |"
            if floats:
                row += f" {_fmt(floats[0]['floor'][stage]['macs_per_frame'] / MEGA, 1)} |"
            row += f" {_fmt(floor_1t, 3)} |"
            for config in int8:
                f = config["floor"][stage]
                row += f" {_fmt(f['measured_ms'])} | {_fmt(f['measured_over_floor'], 1)}× |"
            lines.append(row)
        macs = report["macs"][INT8]
        lines += [
            "",
            f"P-Net pyramid: {len(macs['pnet_levels'])} levels for {width}×{height} "
            f"({len(pyramid_scales(height, width, params))} scales); R-Net {_fmt(macs['rnet_per_crop'] / MEGA, 2)} "
            f"MMAC/crop, O-Net {_fmt(macs['onet_per_crop'] / MEGA, 2)} MMAC/crop.",
        ]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_mtcnn", description=__doc__.split("\n")[0])
    parser.add_argument("--min-face-size", type=float, default=DEFAULT_PARAMS.min_face_size,
                        help="smallest face side in pixels (default: %(default)s, the published MTCNN setting)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="file stem of the results (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES_PER_VIDEO, help="frames per video")
    parser.add_argument("--threads", type=int, nargs="+", default=list(DEFAULT_THREADS), help="thread counts")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed passes over the frames")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and markdown results")
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: quantized_models/)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--gmacs-per-core", type=float, default=DEFAULT_GMACS_PER_CORE,
                        help="int8 conv throughput per core used for the floor")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if any(t < 1 for t in args.threads):
        parser.error("--threads must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    manifest = Manifest.load(args.models)
    frames, sources = load_frames(args.frames)
    params = dataclasses.replace(DEFAULT_PARAMS, min_face_size=args.min_face_size)

    load_before = os.getloadavg()
    benches = []
    for variant in args.variants:  # start-up and first frame first, one configuration at a time
        for threads in args.threads:
            print(f"[bench] {variant} × {threads} thread(s): start-up, warm-up over {len(frames)} frames",
                  file=sys.stderr, flush=True)
            bench = ConfigBench(variant, manifest, threads, params)
            bench.warm_up(frames)
            benches.append(bench)
    for repeat in range(args.repeats):  # timed passes interleaved, so background load hits every config alike
        print(f"[bench] timed pass {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for bench in benches:
            bench.timed_pass(frames)
    load_after = os.getloadavg()

    configs = []
    macs: dict[str, dict] = {}
    for bench in benches:
        config = bench.result()
        if bench.variant not in macs:
            macs[bench.variant] = model_macs(manifest, bench.keys, config["pnet_shapes"])
        config["floor"] = floors(macs[bench.variant], config, args.gmacs_per_core)
        configs.append(config)

    used_keys = sorted({k for v in args.variants for k in VARIANTS[v]})
    report = {
        "frames": len(frames),
        "repeats": args.repeats,
        "frame_sources": sources,
        "frame_size": list(FRAME_SIZE),
        "min_face_size": params.min_face_size,
        "gmacs_per_core": args.gmacs_per_core,
        "machine": {**machine_info(), "loadavg_before": list(load_before), "loadavg_after": list(load_after)},
        "manifest": str(manifest.path),
        "models": {k: {"file": manifest.entry(k).path.name, "sha256": manifest.entry(k).sha256} for k in used_keys},
        "macs": macs,
        "configs": configs,
    }
    markdown = render_markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{args.name}.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
