"""Visit accuracy: does every visit at the door give its own event, and the right one?

Over several seeded door clips (``bench/door_clips.py``: ten visitors back to back at the same spot with 1 s, or
0.3 s, of empty door between two of them; five enrolled from other photos of theirs, five strangers, and one
enrolled person back within ``tracker.visit_gap``), each clip runs through exactly what ``doorface run`` runs
(``edge.runner``: the device config's detector, quality gate, embedder, matcher and tracker, reading the clip's mp4)
on a fresh gallery holding the clip's enrolled persons. Every event is scored against the visit it falls in:
correct, missed, false accepts (someone taken for who they are not), false unknowns (an enrolled person announced
as unknown), duplicates (a second event for a visit, or one for the repeat visit) and stray events.

    python -m bench.bench_visits [--seeds 0 1 ... 9] [--gaps 1.0 0.3] [--threads 2] [--out bench/results]

Writes ``visits.json``, ``visits.md`` (the README's block) and ``visits.png`` (each clip's visits and events on a
time line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bench.door_clips import ClipPlan, ClipScore, plan_clip, render_clip, score_events

ROOT = Path(__file__).resolve().parent.parent
LFW_ROOT = Path(os.environ.get("DOORFACE_SHARED", ROOT.parent / "shared")) / "data" / "lfw"
DEFAULT_SEEDS = tuple(range(10))
# 1 s of empty door ends the last visitor's track before the next one comes (tracker.max_missing is 0.5 s); 0.3 s
# does not, so the next visitor takes over the same track and only the re-check by embedding can tell.
DEFAULT_GAPS = (1.0, 0.3)


@dataclass(frozen=True)
class ClipRun:
    """The events of one clip's run (seconds from its first frame, kind, name) and what the run counted."""

    events: tuple[tuple[float, str, Optional[str]], ...]
    frames: int
    seconds: float
    counts: dict
    tracker: dict


def run_clip(plan: ClipPlan, lfw_root: Path, folder: Path, *, config=None, models=None,
             threads: Optional[int] = None) -> ClipRun:
    """Render ``plan`` into ``folder``, enroll its persons into a new gallery there, and run the pipeline on it."""
    from edge.config import load_config
    from edge.enroll import enroll_photos
    from edge.runner import build_recognizer, load_models, open_gallery, run
    from edge.sources import open_source

    config = config or load_config()
    models = models or load_models(config, threads=threads)
    clip = render_clip(plan, lfw_root, folder / f"door-{plan.seed}.mp4")
    with open_gallery(config, models.embedder.spec, path=folder / f"gallery-{plan.seed}.sqlite") as gallery:
        for name, photos in plan.enrollment:
            report = enroll_photos(gallery, name, photos, models.detector, models.embedder,
                                   gate=config.quality, thumbnails=False)
            if report.enrolled == 0:
                raise RuntimeError(f"no face enrolled for {name} from {[str(p) for p in photos]}")
        recognizer = build_recognizer(config, models, gallery)
        first: list[float] = []
        events = []

        def on_frame(result) -> None:
            if not first:
                first.append(result.timestamp)

        cam = config.camera
        with open_source(str(clip), width=cam.width, height=cam.height) as source:
            summary = run(source, recognizer, [events.append], on_frame=on_frame)
    stats = recognizer.stats()
    timed = tuple((round(e.timestamp - first[0], 3), e.kind, e.name) for e in events)
    return ClipRun(timed, summary.frames, summary.seconds, stats["counts"], stats["tracker"])


def measure(seeds: Sequence[int], gaps: Sequence[float], threads: int, lfw_root: Path = LFW_ROOT) -> dict:
    from edge.config import load_config
    from edge.runner import load_models

    try:
        from tqdm import tqdm
    except ImportError:  # the runtime-only install has no tqdm: plain iteration
        def tqdm(items, **_):
            return items

    config = load_config()
    models = load_models(config, threads=threads)
    clips = []
    with tempfile.TemporaryDirectory(prefix="doorface-visits-") as tmp:
        for gap, seed in tqdm([(g, s) for g in gaps for s in seeds], desc="door clips", unit="clip"):
            plan = plan_clip(lfw_root, seed, gap_seconds=gap)
            result = run_clip(plan, lfw_root, Path(tmp), config=config, models=models)
            score = score_events(plan, result.events)
            clips.append({"seed": seed, "gap": gap, "plan": plan, "run": result, "score": score})
    return {"config": config, "threads": threads, "clips": clips}


def _clip_json(clip: dict) -> dict:
    plan: ClipPlan = clip["plan"]
    run: ClipRun = clip["run"]
    score: ClipScore = clip["score"]
    return {
        "seed": clip["seed"],
        "gap_s": clip["gap"],
        "duration_s": round(plan.duration, 1),
        **score.as_dict(),
        "frames": run.frames,
        "fps": round(run.frames / run.seconds, 1) if run.seconds else None,
        "embedded_per_frame": round(run.counts.get("embedded", 0) / max(run.counts.get("detected_frames", 1), 1),
                                    3),
        "tracker": run.tracker,
        "visits_detail": [
            {"person": o.visit.name, "enrolled": o.visit.enrolled, "repeat": o.visit.repeat,
             "start_s": round(o.visit.start, 2), "end_s": round(o.visit.end, 2),
             "expected": list(o.visit.expected) if o.visit.expected else None,
             "events": [list(e) for e in o.events], "correct": o.correct}
            for o in score.outcomes],
    }


TOTAL_KEYS = ("visits", "expected_events", "correct_visits", "correct", "missed", "false_accepts", "false_unknowns",
              "duplicates", "stray")


def _totals(clips: Sequence[dict]) -> dict:
    return {k: sum(c[k] for c in clips) for k in TOTAL_KEYS}


def report(measured: dict) -> dict:
    config = measured["config"]
    clips = [_clip_json(c) for c in measured["clips"]]
    gaps = sorted({c["gap_s"] for c in clips}, reverse=True)
    return {
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count()},
        "device_config": config.device_name,
        "embedder": config.embedder.model,
        "threads": measured["threads"],
        "tracker": {k: getattr(config.tracker, k) for k in config.tracker.__dataclass_fields__},
        "clip": {"visitors": "5 enrolled (3 other photos each) + 5 strangers + 1 repeat visit",
                 "visit_s": 2.0, "fps": 10.0, "frame": "640x480", "face_px": "90 -> 160"},
        "totals": _totals(clips),
        "totals_by_gap": {f"{g:g}": _totals([c for c in clips if c["gap_s"] == g]) for g in gaps},
        "clips": clips,
    }


def markdown(result: dict) -> str:
    clip = result["clip"]
    lines = [
        f"Visit accuracy over {len(result['clips'])} seeded door clips (`python -m bench.bench_visits`): "
        f"{clip['visitors']}, each visit {clip['visit_s']:g} s with the face growing {clip['face_px']} px at the "
        f"same spot, back to back with a short empty door between two visitors; {clip['frame']} at "
        f"{clip['fps']:g} fps; device config `{result['device_config']}`, `{result['embedder']}`, "
        f"{result['threads']} threads, {result['machine']['arch']}.",
        "",
        "| empty door | clip (seed) | visits | events due | correct visits | missed | false accepts | "
        "false unknowns | duplicates | stray | embedded/frame | fps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for gap, t in result["totals_by_gap"].items():
        for c in (c for c in result["clips"] if f"{c['gap_s']:g}" == gap):
            lines.append(f"| {gap} s | {c['seed']} | {c['visits']} | {c['expected_events']} | {c['correct_visits']} "
                         f"| {c['missed']} | {c['false_accepts']} | {c['false_unknowns']} | {c['duplicates']} | "
                         f"{c['stray']} | {c['embedded_per_frame']:.2f} | {c['fps']:.1f} |")
        lines.append(f"| **{gap} s** | **all** | {t['visits']} | {t['expected_events']} | **{t['correct_visits']}** "
                     f"| {t['missed']} | {t['false_accepts']} | {t['false_unknowns']} | {t['duplicates']} | "
                     f"{t['stray']} | | |")
    lines += ["", "A visit is correct when it gave exactly the event due (none for the repeat visit). False accepts: "
              "a recognized event naming someone the visitor is not; false unknowns: an enrolled visitor announced "
              "as unknown; duplicates: a second event for one visit, or any event for the repeat visit. With 1 s of "
              "empty door the last visitor's track has ended (`tracker.max_missing`) before the next one comes; with "
              "0.3 s the next visitor steps into the same track and is told apart by the re-check of its "
              "embedding. fps: the clip's frames over the run's wall time, decoding included."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Optional[Path]:
    """Each clip as a time line: the visits as bars (green enrolled, grey stranger, hatched repeat, outlined red when
    not correct), each event as a mark on it (a dot where right, a cross where wrong)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    clips = result["clips"]
    fig, ax = plt.subplots(figsize=(13, 0.62 * len(clips) + 1.3))
    for row, clip in enumerate(clips):
        for v in clip["visits_detail"]:
            colour = "#7fbf7f" if v["enrolled"] else "#bdbdbd"
            wrong = not v["correct"]
            ax.barh(row, v["end_s"] - v["start_s"], left=v["start_s"], color=colour,
                    edgecolor="#c62828" if wrong else "black", linewidth=2.5 if wrong else 1.0,
                    hatch="//" if v["repeat"] else None, height=0.55)
            ax.text((v["start_s"] + v["end_s"]) / 2, row - 0.3, v["person"].split()[-1][:10], ha="center",
                    va="bottom", fontsize=6)
            for i, (t, kind, name) in enumerate(v["events"]):
                right = v["expected"] == [kind, name] and i == 0
                ax.plot(t, row, "o" if right else "x", color="#1b5e20" if right else "#c62828", markersize=6,
                        markeredgewidth=2)
    ax.set_yticks(range(len(clips)), [f"seed {c['seed']}, gap {c['gap_s']:g} s" for c in clips], fontsize=7)
    ax.set_ylim(len(clips) - 0.4, -0.8)
    ax.set_xlabel("seconds from the clip's first frame")
    t = result["totals"]
    ax.set_title(f"Visits (green enrolled, grey strangers, hatched: repeat within the visit gap) and events "
                 f"(o right, x wrong; red outline: visit not correct): {t['correct_visits']}/{t['visits']} "
                 "visits correct", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--gaps", type=float, nargs="+", default=list(DEFAULT_GAPS),
                        help="seconds of empty door between two visitors (one set of clips each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = report(measure(args.seeds, args.gaps, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "visits.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(result)
    (args.out / "visits.md").write_text(table, encoding="utf-8")
    png = plot(result, args.out / "visits.png")
    print(json.dumps(result["totals"]))
    print(table)
    print(f"wrote {args.out / 'visits.json'}, visits.md{', visits.png' if png else ''} "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
