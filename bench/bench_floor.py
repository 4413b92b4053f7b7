"""The whole pipeline per frame against its MAC floor: every face detected and embedded, stage by stage.

The work is what the usual alternatives do on every frame (no motion gate, no tracking shortcut): the int8 MTCNN
(P-Net over the pyramid, R-Net, O-Net), then every detected face aligned and embedded, on 640×480 frames of the
shared videos, at 1 and 2 threads and at 20 and 40 px minimum face. Per stage it gives ms/frame beside the stage's
**MAC floor**: the multiply-adds the stage's graphs really computed on the frame (counted per ``invoke()`` at the
shape it ran: P-Net's pyramid levels, R-Net / O-Net per crop or per fixed batch with its padding, the embedder per
face), divided by the int8 throughput of one large int8 conv (3×3, 64→64 channels on 112×112) measured on this
machine in the same run at the same thread count. A stage at its floor computes as fast as a big convolution can.

Each model is also checked: its multiply-adds against its float source's (a graph rewrite that duplicates layers
shows here) and how many of its nodes stay outside the XNNPACK delegate (target 0; see ``bench.delegation``).

Every measured run is a fresh process (``bench.floor_worker``) on the ``edge`` code and models of one tree:
``--baseline REF`` checks commit REF out into a temporary git worktree and measures it the same way, its runs
interleaved with this tree's, so both columns see the same machine load. ``--facenet-pytorch PYTHON`` adds
facenet-pytorch (fp32 MTCNN + InceptionResnetV1, random embedder weights: see ``bench.facenet_pytorch_worker``)
run by another Python that has it installed. Per frame the fastest of the ``--repeats`` passes is kept (robust to
load from other processes), then averaged over the frames.

Needs TensorFlow (the converters' extra) to build the probe conv; the measured runs use the edge interpreter only.

    python -m bench.bench_floor [--frames 40] [--threads 1 2] [--min-face-size 20 40] [--repeats 3]
        [--embedder mobilefacenet] [--baseline GIT_REF] [--facenet-pytorch PYTHON] [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Optional

import numpy as np

from bench.bench_mtcnn import VIDEOS, load_frames
from bench.bench_pipeline import baseline_tree
from bench.delegation import delegation
from bench.machine import machine_info
from bench.macs import macs_at
from edge import interpreter as tfl
from edge.config import EmbedderConfig
from edge.manifest import Manifest

ROOT = Path(__file__).resolve().parent.parent
FRAME_SIZE = (640, 480)  # (width, height): what the usual alternatives are compared at
DEFAULT_FRAMES_PER_VIDEO = 40
DEFAULT_THREADS = (1, 2)
DEFAULT_MIN_FACES = (20.0, 40.0)
DEFAULT_REPEATS = 3
DEFAULT_OUT = ROOT / "bench" / "results"
DEFAULT_NAME = "pipeline_floor"
# The probe: one int8 conv large enough to be compute-bound, whose throughput stands for what the CPU can do.
PROBE_SHAPE = (1, 112, 112, 64)
PROBE_FILTERS, PROBE_KERNEL = 64, 3
PROBE_CALIBRATION_SAMPLES = 4

CURRENT, BASELINE, FACENET = "current", "baseline", "facenet_pytorch"
MAC_STAGES = ("pnet", "rnet", "onet", "embed")  # stages whose graphs carry multiply-adds
DETECTOR_STAGES = ("pnet", "rnet", "onet")
ROWS = ("pnet", "rnet", "onet", "detect", "align", "embed", "total")
"""Table rows: detect = the whole MTCNN call (its three nets, the pyramid resizes, NMS and crops), total = detect +
align + embed. Their floors are the sums of their nets' floors; align has no multiply-adds, so no floor."""
FLOOR_OF = {"pnet": ("pnet",), "rnet": ("rnet",), "onet": ("onet",), "detect": DETECTOR_STAGES, "align": (),
            "embed": ("embed",), "total": MAC_STAGES}
INT8_DTYPES = ("int8", "uint8")
MODEL_TASKS = ("face_detection_stage", "face_embedding")
FLOAT_SUFFIX = "_float"
PNET_KEY = "pnet"  # the stage with a free input size: counted per frame over its pyramid

MS, GIGA, MEGA = 1e3, 1e9, 1e6


class BenchError(RuntimeError):
    """A measured run failed or measured nothing: the table would be wrong."""


# ------------------------------------------------------------------------------------------------ the probe


def build_probe() -> bytes:
    """One full-integer int8 conv (3×3, 64→64, SAME) on 1×112×112×64, converted with TensorFlow now."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        import tensorflow as tf
    except ImportError:
        raise SystemExit("bench_floor builds its probe conv with TensorFlow: install the converters' extra "
                         "(./install.sh --dev, or pip install '.[convert]')") from None
    inputs = tf.keras.Input(PROBE_SHAPE[1:], batch_size=PROBE_SHAPE[0])
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(PROBE_FILTERS, PROBE_KERNEL, padding="same")(inputs))
    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.uniform(-1, 1, PROBE_SHAPE).astype(np.float32)] for _ in range(PROBE_CALIBRATION_SAMPLES))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(sys.stderr):  # Keras prints its export summary; stdout is the bench's table
        return converter.convert()


# ------------------------------------------------------------------------------------------------- the runs


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _last_json_line(out: subprocess.CompletedProcess, what: str) -> dict:
    if out.returncode != 0:
        raise BenchError(f"{what} failed (exit {out.returncode}):\n{out.stderr.strip()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_edge(code_root: Path, frames: Path, probe: Path, threads: int, min_face: float, embedder: str) -> dict:
    """One measured pass of ``code_root``'s edge pipeline in a fresh process (this tree's worker)."""
    cmd = [sys.executable, "-m", "bench.floor_worker", "--code-root", str(code_root), "--frames", str(frames),
           "--probe", str(probe), "--threads", str(threads), "--min-face-size", f"{min_face:g}",
           "--embedder", embedder]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env())
    return _last_json_line(out, f"the edge worker on {code_root} ({threads} threads, {min_face:g} px)")


def run_facenet(python: str, frames: Path, threads: int, min_face: float) -> dict:
    """One measured pass of facenet-pytorch, under ``python`` (which has it installed)."""
    cmd = [python, str(ROOT / "bench" / "facenet_pytorch_worker.py"), str(frames), str(threads), f"{min_face:g}"]
    # OpenMP's own pool would otherwise start one thread per core whatever torch.set_num_threads says.
    env = {**_env(), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    return _last_json_line(out, f"facenet-pytorch under {python} ({threads} threads, {min_face:g} px)")


@dataclass(frozen=True)
class Code:
    """A tree whose edge pipeline is measured: this checkout, or a baseline commit's worktree."""

    label: str
    root: Path
    commit: str

    @property
    def manifest(self) -> Manifest:
        return Manifest.load(self.root / "quantized_models")


def _commit(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = out.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+changes" if dirty else "")


# ------------------------------------------------------------------------------------------------ the counts


@cache
def _model_bytes(path: Path) -> bytes:
    return path.read_bytes()


@cache
def _macs(path: Path, shape: tuple[int, ...]) -> int:
    return macs_at(_model_bytes(path), shape)


def _batch(content: bytes) -> int:
    """The batch the graph was converted with (its input's first dimension, read before any resize)."""
    return int(tfl.make_interpreter(content).get_input_details()[0]["shape"][0])


def _macs_per_item(path: Path, pnet_shapes: Optional[list]) -> float:
    """Multiply-adds per frame over P-Net's ``[[shape, invokes per frame], ...]``, else per input (crop or face) of
    one invoke at the model's own shape, a fixed batch's padding shared among its inputs."""
    if pnet_shapes is not None:
        return sum(n * _macs(path, tuple(shape)) for shape, n in pnet_shapes)
    content = _model_bytes(path)
    return macs_at(content) / _batch(content)


def stage_macs(code: Code, run: dict) -> dict[str, float]:
    """Multiply-adds per frame of each MAC stage, from the invokes the run logged and the code's own models."""
    manifest = code.manifest
    out = {}
    ran = {"pnet": run["frames"], "rnet": sum(run["per_frame"]["rnet_crops"]),
           "onet": sum(run["per_frame"]["onet_crops"]), "embed": sum(run["per_frame"]["faces"])}
    for stage in MAC_STAGES:
        logged = run["invokes"][stage]
        if ran[stage] and not logged["shapes"]:
            raise BenchError(f"{code.label}: {stage} ran on {ran[stage]} inputs but no interpreter invoke was seen: "
                             "the runtime calls the model another way (a signature runner?); teach "
                             "bench.floor_worker.InvokeLog to count it")
        path = manifest.entry(logged["model"]).path
        total = sum(n * _macs(path, tuple(shape)) for shape, n in logged["shapes"])
        out[stage] = total / run["frames"]
    return out


def float_source(manifest: Manifest, key: str) -> Optional[str]:
    """The float model an int8 model was converted from: its ``float_reference``, else ``<key>_float``."""
    entry = manifest.models[key]
    ref = entry.fields.get("float_reference") or f"{key}{FLOAT_SUFFIX}"
    return ref if ref in manifest.models and ref != key else None


def model_rows(code: Code, pnet_shapes: list) -> list[dict]:
    """Every shipped int8 MTCNN stage and embedder: multiply-adds per item against its float source, and the nodes
    XNNPACK leaves out. P-Net is counted per frame over ``pnet_shapes`` (``[[shape, invokes per frame], ...]``)."""
    manifest = code.manifest
    rows = []
    for key, entry in sorted(manifest.models.items()):
        if entry.task not in MODEL_TASKS or entry.input.dtype not in INT8_DTYPES:
            continue
        ref = float_source(manifest, key)
        shapes = pnet_shapes if key == PNET_KEY else None
        unit = "frame" if shapes else "face" if entry.task == "face_embedding" else "crop"
        # XNNPACK decides per node; P-Net (free height and width) is checked at its largest pyramid shape.
        check_shape = tuple(max(pnet_shapes, key=lambda s: np.prod(s[0]))[0]) if shapes else None
        macs = _macs_per_item(entry.path, shapes)
        float_macs = _macs_per_item(manifest.entry(ref).path, shapes) if ref else None
        rows.append({
            "key": key,
            "file": entry.path.name,
            "float_source": ref,
            "unit": unit,
            "macs": macs,
            "float_macs": float_macs,
            "int8_over_float": macs / float_macs if float_macs else None,
            "batch": _batch(entry.read_verified()),
            "delegation": delegation(entry.read_verified(), check_shape).to_dict(),
        })
    return rows


# -------------------------------------------------------------------------------------------- the summaries


def _best_of_passes(runs: list[dict], key: str) -> np.ndarray:
    """Per frame, the fastest of the passes."""
    return np.min([run["per_frame"][key] for run in runs], axis=0)


def edge_summary(code: Code, runs: list[dict], gmacs: float) -> dict:
    """One code × setting: per row measured ms (best of passes, then the mean), MACs per frame and floor."""
    macs = stage_macs(code, runs[0])
    measured = {stage: float(_best_of_passes(runs, stage).mean()) for stage in ROWS}
    stages = {}
    for row in ROWS:
        parts = FLOOR_OF[row]
        n = sum(macs[p] for p in parts) if parts else None
        floor = n / (gmacs * GIGA) * MS if n else None
        stages[row] = {
            "ms": measured[row],
            "ms_mean_of_passes": float(np.mean([np.mean(run["per_frame"][row]) for run in runs])),
            "macs_per_frame": n,
            "floor_ms": floor,
            "over_floor": measured[row] / floor if floor else None,
        }
    first = runs[0]
    invokes = {stage: sum(n for _, n in first["invokes"][stage]["shapes"]) / first["frames"] for stage in MAC_STAGES}
    return {
        "commit": code.commit,
        "stages": stages,
        "faces_per_frame": float(np.mean(first["per_frame"]["faces"])),
        "rnet_crops_per_frame": float(np.mean(first["per_frame"]["rnet_crops"])),
        "onet_crops_per_frame": float(np.mean(first["per_frame"]["onet_crops"])),
        "invokes_per_frame": invokes,
        "invoke_shapes": {stage: first["invokes"][stage] for stage in MAC_STAGES},
        "allocations_per_frame": first["allocations"] / first["frames"],
        "edge": first["edge"],
        "startup_ms": min(run["startup_ms"] for run in runs),
        "passes": len(runs),
    }


def facenet_summary(runs: list[dict]) -> dict:
    first = runs[0]
    return {
        "library": first["library"],
        "torch": first["torch"],
        "weights": first["weights"],
        "stages": {stage: {"ms": float(_best_of_passes(runs, stage).mean())}
                   for stage in ("detect", "align", "embed", "total")},
        "faces_per_frame": float(np.mean(first["per_frame"]["faces"])),
        "startup_ms": min(run["startup_ms"] for run in runs),
        "passes": len(runs),
    }


# ------------------------------------------------------------------------------------------------ rendering


def _f(value: Optional[float], digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    cpu = machine["cpu_model"] or machine["processor"] or "unknown CPU"
    width, height = report["frame_size"]
    codes = report["codes"]
    has_base = BASELINE in codes
    has_fp = any(FACENET in s for s in report["settings"])
    rates = ", ".join(f"{g:.0f} GMAC/s at {t} thread{'s' if t != '1' else ''}"
                      for t, g in report["probe"]["gmacs_per_s"].items())
    load = report["machine"]["loadavg"]
    lines = [
        f"#### The pipeline per frame against its MAC floor ({report['embedder']})",
        "",
        f"{report['frames']} frames ({', '.join(VIDEOS)}) at {width}×{height}; every face detected (int8 MTCNN) "
        f"and embedded (int8 `{report['embedder']}`) on every frame, no motion gate, no tracking. {cpu}, "
        f"{machine['cpu_count']} CPUs, {machine['backend']} {machine['backend_version'] or ''} (XNNPACK); "
        f"load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after. ms = per frame the fastest of "
        f"{report['repeats']} pass{'es' if report['repeats'] > 1 else ''}, then the mean. Floor = the stage's "
        "multiply-adds on the frame ÷ one large "
        f"int8 conv's throughput measured in the same run ({rates}; 3×3 conv, 64→64 channels, 112×112).",
        "",
    ]
    header = "| min face | threads | stage | MMAC/frame | floor ms | ms | ×floor |"
    rule = "|---:|---:|---|---:|---:|---:|---:|"
    if has_base:
        header += f" baseline `{codes[BASELINE]['commit']}` MMAC | baseline ms | baseline ×floor |"
        rule += "---:|---:|---:|"
    if has_fp:
        header += " facenet-pytorch ms |"
        rule += "---:|"
    lines += [header, rule]
    for setting in report["settings"]:
        current = setting[CURRENT]
        for row in ROWS:
            s = current["stages"][row]
            mmac = s["macs_per_frame"] / MEGA if s["macs_per_frame"] else None
            ms = f"**{_f(s['ms'])}**" if row == "total" else _f(s["ms"])
            line = (f"| {setting['min_face_size']:g} px | {setting['threads']} | {row} | {_f(mmac, 0)} | "
                    f"{_f(s['floor_ms'], 2)} | {ms} | {_f(s['over_floor'], 1, '×')} |")
            if has_base:
                b = setting[BASELINE]["stages"][row]
                bmac = b["macs_per_frame"] / MEGA if b["macs_per_frame"] else None
                line += f" {_f(bmac, 0)} | {_f(b['ms'])} | {_f(b['over_floor'], 1, '×')} |"
            if has_fp:
                fp = setting.get(FACENET, {}).get("stages", {}).get(row)
                line += f" {_f(fp['ms']) if fp else '–'} |"
            lines.append(line)
    counts = []
    for setting in report["settings"]:
        c = setting[CURRENT]
        counts.append(f"{setting['min_face_size']:g} px: {c['faces_per_frame']:.2f} faces, "
                      f"{c['rnet_crops_per_frame']:.0f} R-Net / {c['onet_crops_per_frame']:.0f} O-Net crops in "
                      f"{c['invokes_per_frame']['rnet']:.0f} / {c['invokes_per_frame']['onet']:.0f} invokes, "
                      f"{c['allocations_per_frame']:.1f} tensor allocations")
    lines += ["", "Per frame: " + "; ".join(dict.fromkeys(counts)) + ". detect = the whole MTCNN call (its nets, "
              "pyramid resizes, NMS, crops); its floor and total's are the sums of their nets' floors."]
    if has_fp:
        fp = next(s[FACENET] for s in report["settings"] if FACENET in s)
        lines.append(f"facenet-pytorch: {fp['library']}, torch {fp['torch']}, fp32; detect = `MTCNN.detect`, align "
                     f"= `MTCNN.extract` (160×160 crops), embed = InceptionResnetV1 on the frame's faces; weights: "
                     f"{fp['weights']}.")
    lines += ["", "Each shipped int8 model: multiply-adds against its float source (P-Net per frame over the "
              f"{width}×{height} pyramid at {report['settings'][0]['min_face_size']:g} px) and the nodes the "
              "XNNPACK delegate leaves to the builtin kernels (target 0).", ""]
    header = "| model | per | int8 MMAC | float MMAC | int8 ÷ float | batch | nodes | outside XNNPACK |"
    rule = "|---|---|---:|---:|---:|---:|---:|---|"
    if has_base:
        header += " baseline int8 ÷ float | baseline outside XNNPACK |"
        rule += "---:|---|"
    lines += [header, rule]
    base_models = {m["key"]: m for m in codes[BASELINE]["models"]} if has_base else {}

    def outside(model: Optional[dict]) -> str:
        if model is None:
            return "–"
        d = model["delegation"]
        return f"{d['undelegated']}" + (f" ({', '.join(d['undelegated_ops'])})" if d["undelegated"] else "")

    for m in codes[CURRENT]["models"]:
        line = (f"| `{m['key']}` | {m['unit']} | {_f(m['macs'] / MEGA, 1)} | "
                f"{_f(m['float_macs'] / MEGA if m['float_macs'] else None, 1)} | "
                f"{_f(m['int8_over_float'], 2, '×')} | {m['batch']} | {m['delegation']['nodes']} | {outside(m)} |")
        if has_base:
            b = base_models.get(m["key"])
            line += f" {_f(b['int8_over_float'] if b else None, 2, '×')} | {outside(b)} |"
        lines.append(line)
    lines += ["", f"Reproduce with `{report['command']}`."]
    return "\n".join(lines) + "\n"


def write_chart(report: dict, path: Path) -> None:
    """Measured vs floor per stage, one panel per (minimum face, threads); the baseline beside when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    faces = sorted({s["min_face_size"] for s in settings})
    threads = sorted({s["threads"] for s in settings})
    rows = [r for r in ROWS if r != "detect"]
    fig, axes = plt.subplots(len(faces), len(threads), figsize=(5.5 * len(threads), 3.6 * len(faces)),
                             squeeze=False)
    series = [(CURRENT, "ms", "measured", "tab:blue"), (CURRENT, "floor_ms", "MAC floor", "tab:green")]
    if BASELINE in report["codes"]:
        series.append((BASELINE, "ms", f"baseline {report['codes'][BASELINE]['commit']}", "tab:gray"))
    width = 0.8 / len(series)
    x = np.arange(len(rows))
    for setting in settings:
        ax = axes[faces.index(setting["min_face_size"])][threads.index(setting["threads"])]
        for i, (code, field, label, color) in enumerate(series):
            values = [setting[code]["stages"][r][field] or 0.0 for r in rows]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=color)
        if FACENET in setting:  # written, not drawn: its bar would flatten the others
            ax.text(0.02, 0.95, f"facenet-pytorch total: {setting[FACENET]['stages']['total']['ms']:.0f} ms",
                    transform=ax.transAxes, va="top", fontsize="small", color="tab:red")
        ax.set_xticks(x, rows)
        ax.set_ylabel("ms per frame")
        ax.set_title(f"min face {setting['min_face_size']:g} px, {setting['threads']} thread(s)")
        ax.legend(fontsize="small")
    fig.suptitle(f"Pipeline per frame vs its MAC floor ({report['frame_size'][0]}×{report['frame_size'][1]}, "
                 f"{report['embedder']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES_PER_VIDEO, help="frames per video")
    parser.add_argument("--threads", type=int, nargs="+", default=list(DEFAULT_THREADS), help="thread counts")
    parser.add_argument("--min-face-size", type=float, nargs="+", default=list(DEFAULT_MIN_FACES),
                        help="smallest face sides searched, in pixels")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="measured passes per setting and code")
    parser.add_argument("--embedder", default=EmbedderConfig().model, help="manifest key of the embedder")
    parser.add_argument("--baseline", metavar="GIT_REF", help="also measure this commit's code and models")
    parser.add_argument("--facenet-pytorch", metavar="PYTHON",
                        help="a Python with facenet-pytorch installed: adds its column")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON, markdown and PNG")
    parser.add_argument("--name", default=DEFAULT_NAME, help="file stem of the results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1 or any(t < 1 for t in args.threads):
        parser.error("--frames, --repeats and --threads must be >= 1")
    if any(f < 12 for f in args.min_face_size):
        parser.error("--min-face-size must be >= 12 (P-Net's cell)")
    return args


def _command(args: argparse.Namespace) -> str:
    parts = ["python -m bench.bench_floor"]
    if args.frames != DEFAULT_FRAMES_PER_VIDEO:
        parts.append(f"--frames {args.frames}")
    if args.threads != list(DEFAULT_THREADS):
        parts.append("--threads " + " ".join(map(str, args.threads)))
    if args.min_face_size != list(DEFAULT_MIN_FACES):
        parts.append("--min-face-size " + " ".join(f"{f:g}" for f in args.min_face_size))
    if args.repeats != DEFAULT_REPEATS:
        parts.append(f"--repeats {args.repeats}")
    if args.embedder != EmbedderConfig().model:
        parts.append(f"--embedder {args.embedder}")
    if args.baseline:
        parts.append(f"--baseline {args.baseline}")
    if args.facenet_pytorch:
        parts.append("--facenet-pytorch PYTHON")
    return " ".join(parts)


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # a runtime-only install has no tqdm: one line per run instead
        return None
    return tqdm(total=total, desc="bench_floor", unit="run")


def measure_all(args: argparse.Namespace, codes: list[Code], frames: Path, probe: Path) -> tuple[dict, dict]:
    """Every (min face, threads) setting, ``repeats`` passes of each code (and facenet-pytorch), interleaved."""
    settings = [(f, t) for f in args.min_face_size for t in args.threads]
    per_pass = len(codes) + (1 if args.facenet_pytorch else 0)
    bar = _progress(len(settings) * args.repeats * per_pass)
    runs: dict = {}
    probe_seconds: dict[int, list[float]] = {}
    try:
        for face, threads in settings:
            for _ in range(args.repeats):
                for code in codes:
                    run = run_edge(code.root, frames, probe, threads, face, args.embedder)
                    runs.setdefault((face, threads, code.label), []).append(run)
                    probe_seconds.setdefault(threads, []).append(run["probe_seconds"])
                    if bar is not None:
                        bar.update()
                if args.facenet_pytorch:
                    runs.setdefault((face, threads, FACENET), []).append(
                        run_facenet(args.facenet_pytorch, frames, threads, face))
                    if bar is not None:
                        bar.update()
    finally:
        if bar is not None:
            bar.close()
    return runs, probe_seconds


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    manifest = Manifest.load(ROOT / "quantized_models")
    manifest.entry(args.embedder)  # an unknown key fails here, before anything is measured
    frame_list, sources = load_frames(args.frames, FRAME_SIZE)
    print(f"[bench_floor] {len(frame_list)} frames; building the int8 probe conv", file=sys.stderr, flush=True)
    probe_content = build_probe()
    probe_macs = macs_at(probe_content)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        frames, probe = Path(tmp) / "frames.npy", Path(tmp) / "probe.tflite"
        np.save(frames, np.stack(frame_list))
        probe.write_bytes(probe_content)
        codes = [Code(CURRENT, ROOT, _commit(ROOT))]
        if args.baseline:
            folder, commit = stack.enter_context(baseline_tree(args.baseline, Path(tmp) / "baseline"))
            codes.append(Code(BASELINE, folder, commit))
        load_before = os.getloadavg()
        runs, probe_seconds = measure_all(args, codes, frames, probe)
        load_after = os.getloadavg()
        gmacs = {t: probe_macs / min(seconds) / GIGA for t, seconds in probe_seconds.items()}
        settings = []
        for face in args.min_face_size:
            for threads in args.threads:
                setting: dict = {"min_face_size": face, "threads": threads}
                for code in codes:
                    setting[code.label] = edge_summary(code, runs[(face, threads, code.label)], gmacs[threads])
                if args.facenet_pytorch:
                    setting[FACENET] = facenet_summary(runs[(face, threads, FACENET)])
                settings.append(setting)
        smallest = min(args.min_face_size)
        code_info = {}
        for code in codes:
            first = runs[(smallest, args.threads[0], code.label)][0]
            pnet = [[shape, n / first["frames"]] for shape, n in first["invokes"]["pnet"]["shapes"]]
            code_info[code.label] = {"commit": code.commit, "models": model_rows(code, pnet)}
    report = {
        "command": _command(args),
        "frames": len(frame_list),
        "frame_sources": sources,
        "frame_size": list(FRAME_SIZE),
        "repeats": args.repeats,
        "embedder": args.embedder,
        "machine": {**machine_info(), "loadavg": {"before": list(load_before), "after": list(load_after)}},
        "probe": {"shape": list(PROBE_SHAPE), "filters": PROBE_FILTERS, "kernel": PROBE_KERNEL, "macs": probe_macs,
                  "gmacs_per_s": {str(t): g for t, g in sorted(gmacs.items())}},
        "codes": code_info,
        "settings": settings,
    }
    markdown = render_markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{args.name}.md").write_text(markdown, encoding="utf-8")
    write_chart(report, args.out / f"{args.name}.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
