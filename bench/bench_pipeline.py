"""End-to-end benchmark of the on-device pipeline: frames per second, time per stage, peak RSS and start-up.

Each (video, threads) run is a fresh process, so that its peak RSS and its start-up are its own. The process runs
exactly what ``doorface run`` runs (``edge.runner``: detector, quality gate, alignment, embedder, matcher, tracker)
with the configured device (generic-x86 by default) on the videos of ``../shared/data/video``, scaled down to fit
640×480 beforehand (as a camera asked for 640×480 delivers them), and a gallery holding the demo's two persons,
enrolled beforehand with ``doorface enroll`` (enrollment is not part of a run's memory or time). MQTT is left out
(it is asynchronous to the loop).

    python -m bench.bench_pipeline [--threads 1 2] [--repeats 2] [--baseline GIT_REF] [--out bench/results]

``--baseline REF`` also measures commit REF (checked out into a temporary git worktree) with the same videos,
gallery and settings, its runs interleaved with this tree's so both see the same machine load, and writes each
setting's baseline fps and the ratio beside this tree's: how a change moved the speed, measured, not remembered.

Start-up is measured from the process's own start (``/proc/self/stat``) to the end of the first frame: the
imports, the sha256 checks, interpreter creation and the first P-Net pyramid all count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
VIDEO_DIR = Path(os.environ.get("DOORFACE_SHARED", ROOT.parent / "shared")) / "data" / "video"
VIDEOS = ("facenet_pytorch_video.mp4", "short_hamilton_clip.mp4")
IDLE_DOOR = "idle door (synthetic)"  # what a door camera sees most of the time: nobody, and sensor noise
IDLE_SECONDS, IDLE_FPS, IDLE_NOISE = 20, 10.0, 4.0
TARGETS = {"fps": 15.0, "peak_rss_mb": 150.0, "startup_s": 1.0}


def _process_age() -> float:
    """Seconds since this process started, from the kernel's start time (clock ticks after boot)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def worker(video: Path, threads: int, gallery_path: Path) -> dict:
    """One measured run in this process (called in a fresh subprocess), on an already enrolled gallery, as
    `doorface run` starts."""
    from edge.config import load_config
    from edge.runner import build_recognizer, load_models, open_gallery
    from edge.sources import open_source

    config = load_config(user_config=os.environ.get("DOORFACE_BENCH_CONFIG"))
    models = load_models(config, threads=threads)
    with open_gallery(config, models.embedder.spec, path=gallery_path, create=False) as gallery:
        recognizer = build_recognizer(config, models, gallery)
    cam = config.camera
    events = frames = 0
    with open_source(str(video), width=cam.width, height=cam.height) as source:
        stream = source.frames()
        first = next(stream)
        recognizer.process(first)  # warm-up: P-Net interpreters for this frame size
        recognizer.seconds = dict.fromkeys(recognizer.seconds, 0.0)
        recognizer.counts.clear()
        # The measured pass: every frame in order, decoding and scaling included, as `doorface run` reads a file.
        start = time.perf_counter()
        for frame in stream:
            events += len(recognizer.process(frame).events)
            frames += 1
        elapsed = time.perf_counter() - start
    events += len(recognizer.finish())
    stats = recognizer.stats()
    counts = stats["counts"]
    h, w = first.image.shape[:2]
    return {
        "video": video.name,
        "frame_size": [w, h],
        "threads": threads,
        "frames": frames,
        "fps": frames / elapsed,
        "ms_per_frame": 1000 * elapsed / frames,
        "stage_ms": stats["ms_per_detected_frame"],
        "faces_per_frame": counts.get("faces", 0) / max(counts.get("detected_frames", 1), 1),
        "embedded_per_frame": counts.get("embedded", 0) / max(counts.get("detected_frames", 1), 1),
        "events": events,
        "peak_rss_mb": _peak_rss_mb(),
    }


def scaled_copy(video: Path, folder: Path, width: int = 640, height: int = 480) -> Path:
    """The video scaled down to fit width×height (mp4v), as a camera asked for that size would deliver it: the
    measured run then decodes 640×480-class frames, not the source's 1920×1080 (whose decoder alone holds tens of
    MB of reference frames)."""
    import cv2

    reader = cv2.VideoCapture(str(video))
    fps = reader.get(cv2.CAP_PROP_FPS) or 25.0
    out = folder / video.name
    writer = None
    try:
        while True:
            ok, frame = reader.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            scale = min(1.0, width / w, height / h)
            if scale < 1.0:
                frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(frame)
    finally:
        reader.release()
        if writer is not None:
            writer.release()
    return out


def idle_door_clip(folder: Path, width: int = 640, height: int = 480) -> Path:
    """An empty door: one grey scene with fresh sensor noise in every frame (seeded), as an mp4 like the others."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    scene = np.full((height, width, 3), (110, 104, 96), dtype=np.float64)
    scene[:, width // 3: 2 * width // 3] = (70, 60, 52)  # the door in its frame
    out = folder / "idle_door.mp4"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), IDLE_FPS, (width, height))
    try:
        for _ in range(round(IDLE_SECONDS * IDLE_FPS)):
            writer.write(np.clip(scene + rng.normal(0, IDLE_NOISE, scene.shape), 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return out


def enroll_demo_persons(gallery_path: Path) -> None:
    """The demo's two persons, enrolled with `doorface enroll` in their own processes (not measured)."""
    people = yaml.safe_load((ROOT / "demo" / "demo.yaml").read_text(encoding="utf-8"))
    for name, photo in people["enroll"].items():
        subprocess.run([sys.executable, "-m", "edge.cli", "enroll", name, str(ROOT / "demo" / photo), "--gallery",
                        str(gallery_path)], check=True, capture_output=True, cwd=ROOT, env=_env())


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def startup(video: Path, threads: int, gallery_path: Path) -> float:
    """Seconds from process start until the first frame's faces are matched: imports, sha256 checks, interpreters,
    the gallery, the first P-Net pyramid."""
    code = (
        "import os\n"
        "from bench.bench_pipeline import _process_age\n"
        "from edge.config import load_config\n"
        "from edge.runner import build_recognizer, load_models, open_gallery\n"
        "from edge.sources import open_source\n"
        "config = load_config(user_config=os.environ.get('DOORFACE_BENCH_CONFIG'))\n"
        f"models = load_models(config, threads={threads})\n"
        f"with open_gallery(config, models.embedder.spec, path={str(gallery_path)!r}, create=False) as g:\n"
        "    recognizer = build_recognizer(config, models, g)\n"
        f"with open_source({str(video)!r}) as s:\n"
        "    recognizer.process(s.read())\n"
        "print(_process_age())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=_env())
    return float(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def baseline_tree(ref: str, folder: Path):
    """Commit ``ref`` of this repository checked out (detached) into ``folder``, removed afterwards."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(folder), ref], check=True,
                   capture_output=True, text=True)
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        yield folder, commit
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], check=False,
                       capture_output=True)


def run_worker(code_root: Path, video: Path, threads: int, gallery: Path) -> dict:
    """One measured run in a fresh process of the code in ``code_root`` (this tree, or a baseline worktree)."""
    out = subprocess.run([sys.executable, "-m", "bench.bench_pipeline", "--worker", str(video), str(threads),
                          str(gallery)], capture_output=True, text=True, check=True, cwd=code_root, env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_imports(code_root: Path) -> None:
    """Make sure a worker started in ``code_root`` imports that tree's ``edge`` (not the installed one)."""
    out = subprocess.run([sys.executable, "-c", "import edge; print(edge.__file__)"], capture_output=True, text=True,
                         check=True, cwd=code_root, env=_env())
    found = Path(out.stdout.strip()).resolve().parent.parent
    if found != code_root.resolve():
        raise RuntimeError(f"a worker in {code_root} imports edge from {found}: the comparison would be void")


def markdown(rows: list[dict]) -> str:
    lines = [
        f"End to end on this machine ({platform.machine()}, {os.cpu_count()} cores; `python -m bench.bench_pipeline`):"
        " motion first (the detector searches where something moved or a face is followed, and the whole frame"
        " every `motion.full_frame_every`), quality gate, alignment, int8 embedding of undecided tracks (and of"
        " decided ones every `tracker.recheck_every`), matching, tracking. The idle door is a synthetic empty scene"
        " with sensor noise: what a door camera sees most of the time."
        f" Targets: ≥ {TARGETS['fps']:.0f} fps, peak RSS ≤ {TARGETS['peak_rss_mb']:.0f} MB, start-up ≤ "
        f"{TARGETS['startup_s']:.0f} s.",
        "",
        "| video | frame | threads | faces/frame | fps | ms/frame | motion | detect | align | embed | match | track "
        "| peak RSS | start-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = rows and "baseline" in rows[0]
    if baseline:
        lines[0] += (f" Baseline: commit `{rows[0]['baseline']['commit']}`, measured in the same run (its runs "
                     "interleaved with these).")
        lines[2] = lines[2].replace("| fps |", "| fps | baseline fps |").replace("| peak RSS |",
                                                                               "| peak RSS | baseline RSS |")
        lines[3] += "---|---|"
    for r in rows:
        s = r["stage_ms"]
        fps = f"**{r['fps']:.1f}**"
        if baseline:
            fps += f" | {r['baseline']['fps']:.1f} ({r['fps'] / r['baseline']['fps'] - 1:+.0%})"
        lines.append(
            f"| {r['video']} | {r['frame_size'][0]}×{r['frame_size'][1]} | {r['threads']} | "
            f"{r['faces_per_frame']:.1f} | {fps} | {r['ms_per_frame']:.1f} | {s['motion']:.2f} | {s['detect']:.1f} | "
            f"{s['align']:.1f} | {s['embed']:.1f} | {s['match']:.2f} | {s['track']:.2f} | "
            f"{r['peak_rss_mb']:.0f} MB | "
            + (f"{r['baseline']['peak_rss_mb']:.0f} MB | " if baseline else "")
            + f"{r['startup_s']:.2f} s |")
    lines.append("")
    lines.append("Stage columns are milliseconds per frame; start-up is from process start to the first frame's "
                 "faces matched against an existing gallery (best of the repeats); peak RSS is the worst of them.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest is kept")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--baseline", metavar="GIT_REF", help="also measure this commit, interleaved (see above)")
    parser.add_argument("--worker", nargs=3, metavar=("VIDEO", "THREADS", "GALLERY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), int(args.worker[1]), Path(args.worker[2]))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base = stack.enter_context(baseline_tree(args.baseline, Path(tmp) / "baseline")) if args.baseline else None
        if base is not None:
            check_imports(base[0])
        gallery = Path(tmp) / "gallery.sqlite"
        enroll_demo_persons(gallery)
        videos = {name: scaled_copy(VIDEO_DIR / name, Path(tmp)) for name in VIDEOS}
        videos[IDLE_DOOR] = idle_door_clip(Path(tmp))
        for name, video in videos.items():
            for threads in args.threads:
                runs, base_runs = [], []
                for _ in range(args.repeats):
                    runs.append(run_worker(ROOT, video, threads, gallery))
                    if base is not None:
                        base_runs.append(run_worker(base[0], video, threads, gallery))
                best = max(runs, key=lambda r: r["fps"])
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                best["startup_s"] = min(startup(video, threads, gallery) for _ in range(args.repeats))
                if base is not None:
                    best["baseline"] = {"commit": base[1], "fps": max(r["fps"] for r in base_runs),
                                        "peak_rss_mb": max(r["peak_rss_mb"] for r in base_runs)}
                print(f"{name} threads={threads}: {best['fps']:.1f} fps, {best['peak_rss_mb']:.0f} MB, "
                      f"start-up {best['startup_s']:.2f} s"
                      + (f", baseline {best['baseline']['fps']:.1f} fps" if base is not None else ""),
                      file=sys.stderr)
                best["video"] = name
                rows.append(best)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "targets": TARGETS, "runs": rows}
    (args.out / "pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows)
    (args.out / "pipeline.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
