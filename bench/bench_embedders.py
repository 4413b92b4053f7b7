"""Embedder latency, float vs int8, 1 and 2 threads, with each model's MACs and parameter count.

Every ``face_embedding`` model of the manifest is timed on real aligned faces (train-faces crops aligned with the
model's own template), through the runtime's :class:`edge.embedder.Embedder`. No TensorFlow.

    python -m bench.bench_embedders [--threads 1 2] [--invokes 50] [--record]

``--record`` also writes each model's medians into its manifest entry (``latency``) and regenerates its card, so
that a card states the speed measured here, with the machine it was measured on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from bench.machine import machine_info
from bench.macs import macs_at, parameter_count
from converters import manifest_io
from converters.datasets import load_train_faces
from converters.quantize.tflite_tools import call_times_ms
from edge.embedder import Embedder
from edge.image_io import load_image
from edge.manifest import Manifest

DEFAULT_OUT = Path("bench/results")
NAME = "embedder_latency"
DEFAULT_INVOKES = 50
FACES = 16


def aligned_faces(embedder: Embedder) -> np.ndarray:
    faces = load_train_faces()[:FACES]
    return np.stack([embedder.align(load_image(f.path), f.landmarks) for f in faces])


def time_model(entry, threads: int, invokes: int) -> dict:
    embedder = Embedder(entry, num_threads=threads)
    chips = aligned_faces(embedder)
    embedder.embed_chips(chips[:2])  # warm-up
    times = call_times_ms(lambda i: embedder.embed_chips(chips[i % len(chips)][None]), invokes)
    return {"mean_ms": float(np.mean(times)), "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90))}


def record_in_manifest(manifest: Manifest, rows: list[dict], machine: dict) -> None:
    """Each row's medians into its manifest entry's ``latency`` block; the cards are regenerated."""
    fields = {}
    for row in rows:
        latency = {"median_ms_by_threads": {t: round(r["median_ms"], 3) for t, r in row["threads"].items()},
                   "machine": f"{machine['cpu_model'] or machine['processor']}, {machine['cpu_count']} CPUs",
                   "interpreter": f"{machine['backend']} {machine['backend_version'] or ''}".strip(),
                   "measured_by": "python -m bench.bench_embedders --record"}
        fields[row["key"]] = {"latency": latency}
    manifest_io.merge_fields(manifest.path.parent, fields)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--invokes", type=int, default=DEFAULT_INVOKES)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--record", action="store_true",
                        help="write the medians into the manifest entries and regenerate their cards")
    args = parser.parse_args(argv)
    manifest = Manifest.load(args.models)
    keys = [k for k, e in sorted(manifest.models.items()) if e.task == "face_embedding" and e.edgetpu_of is None]
    if not keys:
        print(f"{manifest.path} lists no face_embedding model", file=sys.stderr)
        return 1
    rows = []
    for key in keys:
        entry = manifest.entry(key)
        content = entry.read_verified()
        macs = macs_at(content)
        row = {"key": key, "dtype": entry.input.dtype, "input": list(entry.input.shape), "macs": macs,
               "params": parameter_count(content), "size_bytes": len(content), "threads": {}}
        for threads in args.threads:
            print(f"[bench] {key} × {threads} thread(s)", file=sys.stderr, flush=True)
            row["threads"][str(threads)] = time_model(entry, threads, args.invokes)
        rows.append(row)
    report = {"machine": machine_info(), "invokes": args.invokes, "models": rows}
    lines = [f"Embedder latency per aligned face ({args.invokes} invokes, median ms); {machine_info()['cpu_count']} "
             "CPUs, XNNPACK. MACs and parameters from the model graph.", "",
             "| model | input | dtype | MMAC | params (M) | size | " +
             " | ".join(f"{t} thread{'s' if t > 1 else ''} ms" for t in args.threads) + " |",
             "|---|---|---|---:|---:|---:|" + "---:|" * len(args.threads)]
    for row in rows:
        size = "×".join(str(d) for d in row["input"][1:3])
        cells = " | ".join(f"{row['threads'][str(t)]['median_ms']:.2f}" for t in args.threads)
        lines.append(f"| `{row['key']}` | {size} | {row['dtype']} | {row['macs'] / 1e6:.0f} | "
                     f"{row['params'] / 1e6:.2f} | {row['size_bytes'] / 2**20:.1f} MiB | {cells} |")
    markdown = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / f"{NAME}.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    if args.record:
        record_in_manifest(manifest, rows, report["machine"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
