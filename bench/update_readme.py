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
    "nns2_learning_curve": ROOT / "reports" / "nns2_learning_curve.md",
    "nns2_learning_curve_same_steps": ROOT / "reports" / "nns2_learning_curve_same_steps.md",
    "nns1_learning_curve_same_steps": ROOT / "reports" / "nns1_learning_curve_same_steps.md",
    "nns_runs": ROOT / "reports" / "nns_runs.md",
    "nns_fit_gap": ROOT / "reports" / "nns_fit_gap.md",
    "nns1_finetune_fit_gap": ROOT / "reports" / "nns1_finetune_fit_gap.md",
    "nns1_learning_curve_fit_gap": ROOT / "reports" / "nns1_learning_curve_fit_gap.md",
    "nns2_learning_curve_fit_gap": ROOT / "reports" / "nns2_learning_curve_fit_gap.md",
    "pipeline": ROOT / "bench" / "results" / "pipeline.md",
    "demo": ROOT / "bench" / "results" / "demo.md",
    "visits": ROOT / "bench" / "results" / "visits.md",
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


CONFIG_SOURCE = ROOT / "edge" / "config.py"


def config_table() -> str:
    """Every configuration key with its default, bounds and description, straight from edge/config.py."""
    import dataclasses

    from edge.config import Config

    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for section in dataclasses.fields(Config):
        factory = section.default_factory
        if factory is dataclasses.MISSING or not dataclasses.is_dataclass(factory):
            continue
        for f in dataclasses.fields(factory):
            meta = f.metadata
            if meta.get("low") is not None:
                allowed = f"{meta['low']:g} … {meta['high']:g}"
            elif meta.get("choices"):
                allowed = " / ".join(f"`{c}`" for c in meta["choices"])
            else:
                allowed = str(f.type).replace("Optional[", "").rstrip("]") + (" or none" if "Optional" in str(f.type)
                                                                            else "")
            default = "none" if f.default is None else f"`{f.default}`"
            meaning = meta.get("description", "").replace("|", "\\|")
            rows.append(f"| `{section.name}.{f.name}` | {default} | {allowed} | {meaning} |")
    return "\n".join(rows)


DISCOVERY_SOURCE = ROOT / "edge" / "discovery.py"


def mqtt_reference() -> str:
    """The messages of one recognized event and the discovery configs, built by edge/discovery.py itself for a
    camera ``door`` with one enrolled person ``Anna`` (ids and timestamps fixed so the README is stable)."""
    from edge.discovery import Topics, discovery_messages, event_messages
    from edge.events import Event

    event = Event(kind="recognized", camera="door", name="Anna", confidence=0.9731, distance=0.0512,
                  box=(212.4, 96.0, 301.7, 207.5), track_id=7, timestamp=1795478400.25, embedder="mobilefacenet",
                  frames=3, event_id="5f0c1e7a9b2d4c6e8f0a1b2c3d4e5f60")
    topics = Topics("doorface", "door")
    lines = ["Messages of one `recognized` event (QoS 1; `doorface/door/unknown` is the same with `\"name\": null`):",
             "", "| topic | retained | payload |", "|---|---|---|"]
    for m in event_messages(event, topics):
        lines.append(f"| `{m.topic}` | {'yes' if m.retain else 'no'} | `{m.payload.decode()}` |")
    lines.append(f"| `{topics.availability}` | yes | `online`; `offline` on a clean stop and as the last will |")
    lines.append(f"| `{topics.face}` | no | the face crop as JPEG, only with `mqtt.publish_crops: true` |")
    lines += ["", "Home Assistant discovery configs (retained; re-sent when `homeassistant/status` says `online`):", ""]
    configs = discovery_messages("door", ["Anna"], publish_crops=True, presence_off_delay=300.0)
    lines += ["| topic | entity |", "|---|---|"]
    for m in configs:
        body = json.loads(m.payload)
        lines.append(f"| `{m.topic}` | {body.get('name')} |")
    presence = next(json.loads(m.payload) for m in configs if "/binary_sensor/" in m.topic)
    lines += ["", "The presence sensor's config, for example:", "", "```json", json.dumps(presence, indent=2), "```"]
    return "\n".join(lines)


EMBEDDER_LATENCY = ROOT / "bench" / "results" / "embedder_latency.json"
# Issue 6's LFW accuracy targets; the FLOP budgets are converters.nns.MAX_FLOPS and the int8 loss limit
# converters.train_config.MAX_INT8_LFW_LOSS_POINTS.
NNS_TARGETS = (("nns1", 0.990), ("nns2", 0.970))
NNS_SPEEDUP_TARGET, NNS_SPEEDUP_KEYS = 5.0, ("nns2", "mobilefacenet")


def nns_targets() -> str:
    """Where the NNS-class embedders stand against their targets: accuracy and int8 cost from the manifest (written
    by the LFW protocol), FLOPs from the entries' model block, latency from bench/results/embedder_latency.json."""
    from converters.nns import MAX_FLOPS
    from converters.train_config import MAX_INT8_LFW_LOSS_POINTS

    models = json.loads(MANIFEST.read_text(encoding="utf-8"))["models"]
    rows = ["| target | reached | met |", "|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    for key, target in NNS_TARGETS:
        budget = MAX_FLOPS[key]
        entry = models.get(key)
        if entry is None or "accuracy" not in entry:
            rows.append(f"| `{key}`: LFW ≥ {100 * target:.1f}% | not shipped or not measured | **no** |")
            continue
        acc = entry["accuracy"]
        rows.append(f"| `{key}`: LFW ≥ {100 * target:.1f}% (int8) | {100 * acc['lfw_accuracy']:.2f} ± "
                    f"{100 * acc['lfw_accuracy_std']:.2f}% | {verdict(acc['lfw_accuracy'] >= target)} |")
        if "int8_loss_points" in acc:
            loss = acc["int8_loss_points"]
            rows.append(f"| `{key}`: int8 loses ≤ {MAX_INT8_LFW_LOSS_POINTS} pt | {loss:+.2f} pt (float "
                        f"{100 * acc['float_reference_lfw_accuracy']:.2f}%) | "
                        f"{verdict(loss <= MAX_INT8_LFW_LOSS_POINTS)} |")
        if "model" in entry:
            flops = entry["model"]["flops"]
            rows.append(f"| `{key}`: ≤ {budget / 1e6:.0f}M FLOPs (2 × MACs) | {flops / 1e6:.1f}M FLOPs, "
                        f"{entry['model']['params'] / 1e6:.2f}M params | {verdict(flops <= budget)} |")
    if EMBEDDER_LATENCY.is_file():
        bench = {r["key"]: r for r in json.loads(EMBEDDER_LATENCY.read_text(encoding="utf-8"))["models"]}
        fast, slow = (bench.get(k, {}).get("threads", {}).get("1") for k in NNS_SPEEDUP_KEYS)
        if fast and slow:
            speedup = slow["median_ms"] / fast["median_ms"]
            rows.append(f"| `{NNS_SPEEDUP_KEYS[0]}` ≥ {NNS_SPEEDUP_TARGET:.0f}× faster than int8 "
                        f"`{NNS_SPEEDUP_KEYS[1]}` (1 thread) | {fast['median_ms']:.2f} vs {slow['median_ms']:.2f} ms: "
                        f"{speedup:.1f}× | {verdict(speedup >= NNS_SPEEDUP_TARGET)} |")
    return ("Issue 6's targets against the shipped models (accuracy: LFW protocol above; latency: "
            "`bench/results/embedder_latency.json`).\n\n" + "\n".join(rows))


GENERATORS = {"models": (MANIFEST, models_table), "nns_targets": (MANIFEST, nns_targets),
              "config": (CONFIG_SOURCE, config_table), "mqtt": (DISCOVERY_SOURCE, mqtt_reference)}
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
