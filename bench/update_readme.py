"""Paste generated result tables into README.md.

Each block between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` is replaced by the markdown file
that the scripts wrote (see BLOCKS). Figures in the README therefore always come from a real run; re-run the
script after `doorface-convert evaluate mtcnn` or `python -m bench.bench_mtcnn`.

    python -m bench.update_readme [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = {
    "mtcnn_eval": ROOT / "reports" / "mtcnn_eval.md",
    "mtcnn_latency": ROOT / "bench" / "results" / "mtcnn_latency.md",
    "mtcnn_latency_door": ROOT / "bench" / "results" / "mtcnn_latency_door.md",
    "embedder_latency": ROOT / "bench" / "results" / "embedder_latency.md",
    "lfw_eval": ROOT / "reports" / "lfw_eval.md",
}
MANIFEST = ROOT / "quantized_models" / "manifest.json"


def models_table() -> str:
    """The shipped models, straight from the manifest."""
    models = json.loads(MANIFEST.read_text(encoding="utf-8"))["models"]
    rows = ["| key | file | input | dtype | size | int8 vs float (held-out) | card |", "|---|---|---|---|---|---|---|"]
    for key, entry in sorted(models.items()):
        agreement = entry.get("agreement", {})
        if "int8_vs_float" in agreement:
            agree_text = f"face prob mean abs diff {agreement['int8_vs_float']['face_prob_mean_abs_diff']:.4f}"
        elif "int8_vs_float_cosine_mean" in agreement:
            agree_text = f"cosine to float {agreement['int8_vs_float_cosine_mean']:.4f} (mean)"
        else:
            agree_text = "float reference"
        shape = "×".join("any" if d < 0 else str(d) for d in entry["input"]["shape"])
        rows.append(f"| `{key}` | `{entry['file']}` | {shape} | {entry['input']['dtype']} | "
                    f"{entry['size_bytes'] / 1024:.0f} KiB | {agree_text} | [card](quantized_models/cards/{key}.md) |")
    return "Models shipped in `quantized_models/` (from `manifest.json`).\n\n" + "\n".join(rows)


GENERATORS = {"models": (MANIFEST, models_table)}
PATTERN = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def render(readme_text: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name in GENERATORS:
            source, make = GENERATORS[name]
            body = make()
        else:
            source = BLOCKS.get(name)
            if source is None:
                raise SystemExit(f"README block '{name}' has no source; known: {', '.join([*BLOCKS, *GENERATORS])}")
            if not source.is_file():
                raise SystemExit(f"{source} is missing: run the script that writes it first")
            body = source.read_text(encoding="utf-8").strip()
        note = f"*Generated from `{source.relative_to(ROOT)}` by `python -m bench.update_readme`.*"
        return f"{match.group(1)}{body}\n\n{note}\n{match.group(4)}"

    return PATTERN.sub(replace, readme_text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = parser.parse_args(argv)
    current = README.read_text(encoding="utf-8")
    updated = render(current)
    if args.check:
        if updated != current:
            print("README.md is out of date: run python -m bench.update_readme", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
