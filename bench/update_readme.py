"""Paste generated blocks into README.md and every docs/*.md.

Each block between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` is replaced by what its source
gives: a markdown file that a benchmark or evaluation script wrote (BLOCKS), or a table built here from a result
file, the manifest or the code itself (GENERATORS; ``cli_<command>`` blocks come from ``edge/cli.py``). Figures in
the docs therefore always come from a real run; re-run this after a benchmark, an evaluation or a change of the
config schema, the CLI or the MQTT topics.

    python -m bench.update_readme [--check]

``--check`` rewrites nothing and exits 1 when a block is stale. :func:`broken_links` lists relative links (and
their ``#anchors``) in these files that point nowhere; ``tests/test_docs.py`` runs both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS_DIR = ROOT / "docs"
COMMAND = "python -m bench.update_readme"
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
    "pipeline_floor": ROOT / "bench" / "results" / "pipeline_floor.md",
    "demo": ROOT / "bench" / "results" / "demo.md",
    "visits": ROOT / "bench" / "results" / "visits.md",
    "household": ROOT / "bench" / "results" / "household.md",
}
MANIFEST = ROOT / "quantized_models" / "manifest.json"
CARDS = ROOT / "quantized_models" / "cards"
RESULTS = {
    "lfw": ROOT / "reports" / "lfw_eval.json",
    "mtcnn": ROOT / "reports" / "mtcnn_eval.json",
    "visits": ROOT / "bench" / "results" / "visits.json",
    "pipeline": ROOT / "bench" / "results" / "pipeline.json",
    "embedders": ROOT / "bench" / "results" / "embedder_latency.json",
    "floor": ROOT / "bench" / "results" / "pipeline_floor.json",
    "aarch64": ROOT / "bench" / "results" / "aarch64.json",
}
DEVICE_CONFIGS = ROOT / "device_configs"
CONFIG_SOURCE = ROOT / "edge" / "config.py"
DISCOVERY_SOURCE = ROOT / "edge" / "discovery.py"
CLI_SOURCE = ROOT / "edge" / "cli.py"
# The camera and the person of the MQTT and Home Assistant examples (README step 3 configures this camera name).
EXAMPLE_CAMERA, EXAMPLE_PERSON = "front_door", "Anna"

Generator = Callable[[Path], str]
"""Builds a block's body for the document it is pasted into (links are made relative to that document)."""


def doc_files() -> list[Path]:
    """The files whose generated blocks this script keeps up to date: README.md and docs/*.md."""
    return [README, *sorted(DOCS_DIR.glob("*.md"))]


def _link(doc: Path, target: Path) -> str:
    """``target`` as a relative link from ``doc``."""
    return Path(os.path.relpath(target, doc.parent)).as_posix()


def _load(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the script that writes it first")
    return json.loads(path.read_text(encoding="utf-8"))


def _models() -> dict:
    return _load(MANIFEST)["models"]


# ---------------------------------------------------------------------------------------------- the models


def models_table(doc: Path) -> str:
    """The shipped models, straight from the manifest."""
    rows = ["| key | file | input | dtype | size | int8 vs float (held-out) | card |", "|---|---|---|---|---|---|---|"]
    for key, entry in sorted(_models().items()):
        agreement = entry.get("agreement", {})
        if "int8_vs_float" in agreement:
            agree_text = f"face prob mean abs diff {agreement['int8_vs_float']['face_prob_mean_abs_diff']:.4f}"
        elif "int8_vs_float_cosine_mean" in agreement:
            agree_text = f"cosine to float {agreement['int8_vs_float_cosine_mean']:.4f} (mean)"
        else:
            agree_text = "float reference"
        if "edgetpu_of" in entry:  # a compiled variant has its CPU model's card
            agree_text = f"EdgeTPU variant of `{entry['edgetpu_of']}`"
        shape = "×".join("any" if d < 0 else str(d) for d in entry["input"]["shape"])
        card = _link(doc, CARDS / f"{entry.get('edgetpu_of', key)}.md")
        rows.append(f"| `{key}` | `{entry['file']}` | {shape} | {entry['input']['dtype']} | "
                    f"{entry['size_bytes'] / 1024:.0f} KiB | {agree_text} | [card]({card}) |")
    return "Models shipped in `quantized_models/` (from `manifest.json`).\n\n" + "\n".join(rows)


def _family(key: str) -> str:
    return key[:-len("_float")] if key.endswith("_float") else key


def licenses_table(doc: Path) -> str:
    """Each shipped model's licence (the manifest's ``license`` field) and where its weights come from."""
    groups: dict[tuple, list[str]] = {}
    for key, entry in sorted(_models().items()):
        source = entry.get("source", {})
        if "package" in source:
            origin = (f"{source.get('registry', '')} `{source['package']}` {source.get('version', '')}".strip()
                      + (f" ([home]({source['homepage']}))" if source.get("homepage") else ""))
        elif "data" in source:
            origin = f"trained in this repository on {source['data']}" + (
                f", distilled from `{source['teacher']}`" if source.get("teacher") else "")
        else:
            origin = "see the card"
        family = "MTCNN" if key.startswith(("pnet", "rnet", "onet")) else _family(key)
        groups.setdefault((family, entry.get("license", "not recorded"), origin), []).append(key)
    rows = ["| models | licence (manifest `license`) | weights from |", "|---|---|---|"]
    for (_family_name, license_text, origin), keys in groups.items():
        cards = ", ".join(f"[`{k}`]({_link(doc, CARDS / f'{k}.md')})" for k in keys)
        rows.append(f"| {cards} | {license_text.replace('|', '/')} | {origin} |")
    return "\n".join(rows)


EMBEDDER_LATENCY = RESULTS["embedders"]
# Issue 6's LFW accuracy targets; the FLOP budgets are MAX_FLOPS of the NNS module and the int8 loss limit
# MAX_INT8_LFW_LOSS_POINTS of its training config.
NNS_TARGETS = (("nns1", 0.990), ("nns2", 0.970))
NNS_SPEEDUP_TARGET, NNS_SPEEDUP_KEYS = 5.0, ("nns2", "mobilefacenet")


def nns_targets(doc: Path) -> str:
    """Where the NNS-class embedders stand against their targets: accuracy and int8 cost from the manifest (written
    by the LFW protocol), FLOPs from the entries' model block, latency from bench/results/embedder_latency.json."""
    from research.nns import MAX_FLOPS
    from research.train_config import MAX_INT8_LFW_LOSS_POINTS

    models = _models()
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
    return ("Issue 6's targets against the shipped models (accuracy: the LFW protocol; latency: "
            "`bench/results/embedder_latency.json`).\n\n" + "\n".join(rows))


# ------------------------------------------------------------------------------------------ the headline


def headline(doc: Path) -> str:
    """A few figures a user asks for first, each from its result file."""
    from edge.config import EmbedderConfig

    default = EmbedderConfig().model
    lfw = _load(RESULTS["lfw"])
    visits = _load(RESULTS["visits"])
    pipeline = _load(RESULTS["pipeline"])
    mtcnn = _load(RESULTS["mtcnn"])
    embedders = {r["key"]: r for r in _load(RESULTS["embedders"])["models"]}
    rows = ["| what | result | from |", "|---|---|---|"]

    model = lfw["models"][default]
    rows.append(f"| Face verification, LFW View-2 ({lfw['pairs']:,} pairs), int8 `{default}` (the default) | "
                f"{100 * model['accuracy_mean']:.2f} ± {100 * model['accuracy_std']:.2f}% accuracy; "
                f"{100 * model['tar_at_far_1e-3']:.1f}% of same-person pairs accepted at 1 false accept in 1,000 | "
                f"`{RESULTS['lfw'].relative_to(ROOT)}` |")
    totals = visits["totals"]
    rows.append(f"| Door visits given exactly the event due ({len(visits['clips'])} seeded synthetic door clips, "
                f"`{visits['embedder']}`) | {totals['correct_visits']} of {totals['visits']}; "
                f"{totals['false_accepts']} false accepts, {totals['duplicates']} duplicate events | "
                f"`{RESULTS['visits'].relative_to(ROOT)}` |")
    from bench.bench_pipeline import IDLE_DOOR

    runs = [r for r in pipeline["runs"] if r["video"] != IDLE_DOOR]
    idle = [r for r in pipeline["runs"] if r["video"] == IDLE_DOOR]
    fps = [r["fps"] for r in runs]
    sizes = sorted({"×".join(str(v) for v in r["frame_size"]) for r in runs})
    rows.append(f"| End to end, {', '.join(sizes)} video, {min(r['threads'] for r in runs)}–"
                f"{max(r['threads'] for r in runs)} threads | {min(fps):.1f}–{max(fps):.1f} fps (target ≥ "
                f"{pipeline['targets']['fps']:g}); peak RSS ≤ {max(r['peak_rss_mb'] for r in runs):.0f} MB; start-up "
                f"≤ {max(r['startup_s'] for r in runs):.2f} s | `{RESULTS['pipeline'].relative_to(ROOT)}` |")
    if idle:
        ms = [r["ms_per_frame"] for r in idle]
        sizes = sorted({"×".join(str(v) for v in r["frame_size"]) for r in idle})
        rows.append(f"| An idle door (nobody there), {', '.join(sizes)}: motion first, no detector | "
                    f"{min(ms):.1f}–{max(ms):.1f} ms per frame | `{RESULTS['pipeline'].relative_to(ROOT)}` |")
    agreement = mtcnn["agreement"]
    rows.append(f"| int8 MTCNN finds the faces float MTCNN finds ({agreement['images']:,} images) | "
                f"{100 * agreement['recall']:.1f}% | `{RESULTS['mtcnn'].relative_to(ROOT)}` |")
    one = embedders.get(default, {}).get("threads", {}).get("1")
    if one:
        rows.append(f"| Embedding one face, int8 `{default}`, 1 thread | {one['median_ms']:.2f} ms (median) | "
                    f"`{RESULTS['embedders'].relative_to(ROOT)}` |")
    archs, models = {}, []
    for key in ("embedders", "visits"):
        m = _load(RESULTS[key]).get("machine", {})
        arch = m.get("arch") or next((a for a in ("x86_64", "aarch64", "armv7l") if a in m.get("platform", "")), "")
        if arch:
            archs.setdefault((arch, m.get("cpu_count", m.get("cpus"))), None)
        if m.get("cpu_model"):
            models.append(m["cpu_model"])
    on_pi = any(arch.startswith(("aarch64", "arm")) for arch, _ in archs)
    where = "; ".join(f"{arch}{f' with {cpus} CPUs' if cpus else ''}" for arch, cpus in archs) or "the CI machine"
    where += f" ({', '.join(dict.fromkeys(models))})" if models else ""
    return ("\n".join(rows) + f"\n\nMeasured on {where}"
            + ("." if on_pi else "; no result file from a Raspberry Pi yet.")
            + " Details and the machine of each table: [performance](" + _link(doc, DOCS_DIR / "performance.md")
            + ") and [models](" + _link(doc, DOCS_DIR / "models.md") + ").")


def floor_summary(doc: Path) -> str:
    """The whole pipeline per frame (every face detected and embedded) against its MAC floor, beside the baseline
    and facenet-pytorch where they were measured, and what each int8 model costs over its float source."""
    floor = _load(RESULTS["floor"])
    base = floor["codes"].get("baseline")
    fp = any("facenet_pytorch" in s for s in floor["settings"])
    header = "| minimum face | threads | ms per frame | MAC floor | × floor |"
    rule = "|---|---|---|---|---|"
    if base:
        header += f" before (`{base['commit']}`) |"
        rule += "---|"
    if fp:
        header += " facenet-pytorch |"
        rule += "---|"
    rows = [header, rule]
    for s in floor["settings"]:
        total = s["current"]["stages"]["total"]
        row = (f"| {s['min_face_size']:g} px | {s['threads']} | **{total['ms']:.1f}** | {total['floor_ms']:.1f} | "
               f"{total['over_floor']:.1f}× |")
        if base:
            row += f" {s['baseline']['stages']['total']['ms']:.1f} |"
        if fp:
            other = s.get("facenet_pytorch")
            row += f" {other['stages']['total']['ms']:.0f} |" if other else " – |"
        rows.append(row)
    models = floor["codes"]["current"]["models"]
    ratios = ", ".join(f"`{m['key']}` {m['int8_over_float']:.2f}×" for m in models if m["int8_over_float"])
    outside = ", ".join(f"`{m['key']}` {m['delegation']['undelegated']}" for m in models
                        if m["delegation"]["undelegated"]) or "none"
    machine = floor["machine"]
    width, height = floor["frame_size"]
    return ("\n".join(rows) + f"\n\n{floor['frames']} frames of the test videos at {width}×{height}, every face "
            f"detected and embedded (`{floor['embedder']}`) on every frame; {machine['cpu_model'] or 'CPU'}, "
            f"{machine['cpu_count']} CPUs, load average {machine['loadavg']['before'][0]:.1f} when it began. The floor "
            "is the frame's multiply-adds at the speed of one large int8 "
            f"conv on the same machine. int8 multiply-adds over the float source: {ratios}. Nodes left outside "
            f"XNNPACK: {outside}. Stage by stage: [performance]({_link(doc, DOCS_DIR / 'performance.md')}"
            "#the-pipeline-against-its-mac-floor).")


# ------------------------------------------------------------------------------------- configs and devices


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def aarch64_tier(doc: Path) -> str:
    """The emulated Raspberry Pi tier: what it proves and how long CI spends on it, cold and cached."""
    result = _load(RESULTS["aarch64"])
    cold, cached = result["runs"]["cold"], result["runs"]["cached"]
    machine = result["machine"]
    cpus = f"{machine['cpu_count']} x86-64 CPUs" + (f" ({machine['cpu_model']})" if machine.get("cpu_model") else "")
    return (f"CI also runs the runtime on an emulated Raspberry Pi 4: a {result['emulated']}. There `doorface "
            "detect` and `doorface compare` on real faces, and every shipped int8 model, give the x86 results "
            "(within rounding) with ai-edge-litert and with tflite-runtime, and `install.sh` picks its interpreter "
            f"wheel ([development]({_link(doc, DOCS_DIR / 'development.md')}#emulated-raspberry-pi-aarch64)). "
            f"These {cached['passed']} tests take {_minutes(cold['seconds'])} with an empty cache and "
            f"{_minutes(cached['seconds'])} cached, on {cpus}.")


def _first_sentence(comment: str) -> str:
    text = comment.lstrip("#").strip()
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def _device_files() -> list[Path]:
    return sorted(DEVICE_CONFIGS.glob("*.yaml"))


def devices_table(doc: Path) -> str:
    """The device configs: what hardware each is for (its first comment line) and what it sets."""
    from edge.config import load_config

    rows = ["| `--device-config` | hardware | detector / embedder threads | accelerator | smallest face searched |",
            "|---|---|---|---|---|"]
    for path in _device_files():
        first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")), "")
        config = load_config(path.stem)
        device = config.detector.device
        accelerator = "none (CPU, XNNPACK)" if device == "cpu" else f"`{device}`, else the CPU with one warning"
        rows.append(f"| [`{path.stem}`]({_link(doc, path)}) | {_first_sentence(first)} | "
                    f"{config.detector.num_threads} / {config.embedder.num_threads} | {accelerator} | "
                    f"{config.detector.min_face_size:g} px |")
    return "\n".join(rows)


def device_overrides(doc: Path) -> str:
    """Every key each device config sets over the defaults."""
    import yaml

    rows = ["| device config | keys it sets |", "|---|---|"]
    for path in _device_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}

        def flat(d: dict, prefix: str = "") -> list[str]:
            out = []
            for k, v in d.items():
                out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"`{prefix}{k}: {v}`"]
            return out

        keys = [k for k in flat(data) if not k.startswith("`device_name:")]
        rows.append(f"| [`{path.stem}`]({_link(doc, path)}) | {', '.join(keys) or 'none'} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """Plain text for a table cell: a ``|`` would split the cell, a ``<name>`` would vanish as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _yaml_value(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _allowed(f) -> str:
    meta = f.metadata
    if meta.get("low") is not None:
        return f"{meta['low']:g} … {meta['high']:g}"
    if meta.get("choices"):
        return " / ".join(f"`{c}`" for c in meta["choices"])
    kind = str(f.type)
    return kind.replace("Optional[", "").rstrip("]") + (" or none" if "Optional" in kind else "")


def config_table(doc: Path) -> str:
    """Every configuration key with its default, bounds and description, straight from edge/config.py: the top-level
    keys, then one table per section."""
    import dataclasses

    from edge.config import Config

    header = ["| key | default | allowed | meaning |", "|---|---|---|---|"]

    def row(name: str, f) -> str:
        meaning = _cell(f.metadata.get("description", ""))
        return f"| `{name}` | {_yaml_value(f.default)} | {_allowed(f)} | {meaning} |"

    top, sections = [], []
    for section in dataclasses.fields(Config):
        factory = section.default_factory
        if factory is dataclasses.MISSING or not dataclasses.is_dataclass(factory):
            top.append(row(section.name, section))
            continue
        lines = [f"### `{section.name}`", "", f"{section.metadata.get('description', '').capitalize()}.", "",
                 *header]
        lines += [row(f"{section.name}.{f.name}", f) for f in dataclasses.fields(factory)]
        sections.append("\n".join(lines))
    return "\n\n".join(["### Top level", "\n".join([*header, *top]), *sections])


# ----------------------------------------------------------------------------------- MQTT and Home Assistant


def _example_event():
    from edge.events import Event

    return Event(kind="recognized", camera=EXAMPLE_CAMERA, name=EXAMPLE_PERSON, confidence=0.9731, distance=0.0512,
                 box=(212.4, 96.0, 301.7, 207.5), track_id=7, timestamp=1795478400.25, embedder="mobilefacenet",
                 frames=3, event_id="5f0c1e7a9b2d4c6e8f0a1b2c3d4e5f60")


def ha_slug(text: str) -> str:
    """Home Assistant's ``slugify`` for the ids it derives (lower case, runs of other characters become ``_``)."""
    import unicodedata

    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "_", folded).strip("_")


def _entities(configs) -> list[tuple[str, dict, str]]:
    """(topic, config, default entity id) of each discovery config: HA names an entity ``<device> <entity>``."""
    out = []
    for m in configs:
        body = json.loads(m.payload)
        component = m.topic.split("/")[1]
        out.append((m.topic, body, f"{component}.{ha_slug(body['device']['name'] + ' ' + body['name'])}"))
    return out


def _example_configs():
    from edge.config import MqttConfig
    from edge.discovery import discovery_messages

    mqtt = MqttConfig()
    return discovery_messages(EXAMPLE_CAMERA, [EXAMPLE_PERSON], prefix=mqtt.prefix,
                              discovery_prefix=mqtt.discovery_prefix, publish_crops=True)


def mqtt_reference(doc: Path) -> str:
    """The messages of one recognized event and the discovery configs, built by edge/discovery.py itself for the
    example camera with one enrolled person (ids and timestamps fixed so the docs are stable)."""
    import edge.discovery
    from edge.config import MqttConfig
    from edge.discovery import Topics, event_messages, slugify
    from edge.events import iso_utc

    presence_off = getattr(edge.discovery, "presence_off", None)
    mqtt = MqttConfig()
    event = _example_event()
    topics = Topics(mqtt.prefix, EXAMPLE_CAMERA)
    lines = [f"Messages of one `recognized` event for camera `{EXAMPLE_CAMERA}`, in the order they are sent (QoS 1; "
             f"`{topics.kind('unknown')}` carries an `unknown` event, the same JSON with `\"name\": null`):",
             "", "| topic | retained | payload |", "|---|---|---|"]
    for m in event_messages(event, topics):
        lines.append(f"| `{m.topic}` | {'yes' if m.retain else 'no'} | `{m.payload.decode()}` |")
    if presence_off is not None:
        off = presence_off(topics, slugify(EXAMPLE_PERSON), EXAMPLE_PERSON, iso_utc(event.timestamp))
        lines.append(f"| `{off.topic}` | {'yes' if off.retain else 'no'} | `{off.payload.decode()}`: when "
                     f"{EXAMPLE_PERSON}'s visit ends, when doorface stops, and at its next start |")
    lines.append(f"| `{topics.availability}` | yes | `online`; `offline` on a clean stop and as the last will |")
    lines.append(f"| `{topics.face}` | no | the face crop as JPEG, sent first, only with `mqtt.publish_crops: true` |")
    lines += ["", f"Home Assistant discovery configs (retained; re-sent when `{mqtt.discovery_prefix}/status` says "
                  "`online`), and the entity id Home Assistant gives each by default:", "",
              "| topic | entity | default entity id |", "|---|---|---|"]
    configs = _example_configs()
    entities = _entities(configs)
    for topic, body, entity_id in entities:
        lines.append(f"| `{topic}` | {body.get('name')} | `{entity_id}` |")
    presence = next(body for topic, body, _ in entities if "/binary_sensor/" in topic)
    lines += ["", "The presence sensor's config, for example:", "", "```json", json.dumps(presence, indent=2), "```"]
    return "\n".join(lines)


def ha_automation(doc: Path) -> str:
    """Example automations whose entity ids and topics are the ones edge/discovery.py publishes."""
    import yaml

    from edge.config import MqttConfig
    from edge.discovery import Topics, slugify

    ids = {topic.split("/")[3]: entity_id for topic, _, entity_id in _entities(_example_configs())}
    topics = Topics(MqttConfig().prefix, EXAMPLE_CAMERA)
    visitor, person, face = ids["event"], ids[f"person_{slugify(EXAMPLE_PERSON)}"], ids["face"]
    text = f"""\
```yaml
# automations.yaml (or Settings > Automations > Create > Edit in YAML, one automation at a time)
- alias: "Door: unknown visitor"
  triggers:
    - trigger: state
      entity_id: {visitor}
      not_from: unavailable       # not when doorface comes back online
  conditions:
    - condition: state
      entity_id: {visitor}
      attribute: event_type
      state: unknown
  actions:
    - action: notify.mobile_app_my_phone    # your phone's notify action
      data:
        title: "Someone at the door"
        message: >-
          Not one of the household
          ({{{{ (trigger.to_state.attributes.confidence * 100) | round }}}}% sure).
        data:
          image: /api/image_proxy/{face}  # only with mqtt.publish_crops: true

- alias: "Door: {EXAMPLE_PERSON} arrives"
  triggers:
    - trigger: state
      entity_id: {person}
      from: "off"
      to: "on"
  actions:
    - action: light.turn_on
      target:
        entity_id: light.hallway

- alias: "Door: every recognized visit, straight from MQTT"
  triggers:
    - trigger: mqtt
      topic: {topics.kind("recognized")}
  conditions:
    - condition: template         # skip events that waited in the queue (mqtt.stale_after)
      value_template: "{{{{ trigger.payload_json.stale is not defined }}}}"
  actions:
    - action: logbook.log
      data:
        name: Door
        message: >-
          {{{{ trigger.payload_json.name }}}} at the door
          ({{{{ trigger.payload_json.event_id }}}})
```"""
    yaml.safe_load(text.split("\n", 1)[1].rsplit("```", 1)[0])  # the example must stay valid YAML
    return text


# ------------------------------------------------------------------------------------------------ the CLI


@contextlib.contextmanager
def _columns(width: int):
    """argparse wraps usage lines to the terminal's width: fix it, so the docs do not depend on the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subcommands() -> dict:
    import argparse as ap

    from edge.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, ap._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}


def _common_dests(subs: dict) -> set[str]:
    dests = [{a.dest for a in sub._actions} for sub, _ in subs.values()]
    return set.intersection(*dests) - {"help"}


def _option_rows(actions) -> list[str]:
    import argparse as ap

    rows = ["| option | meaning |", "|---|---|"]
    for a in actions:
        if isinstance(a, ap._HelpAction):
            continue
        if a.option_strings:
            name = ", ".join(a.option_strings) + (f" {a.metavar or a.dest.upper()}" if a.nargs != 0 else "")
        else:
            name = a.metavar or a.dest
            if a.choices:
                name = " \\| ".join(a.choices)
        text = a.help or (f"default: `{a.default}`" if a.default not in (None, ap.SUPPRESS)
                          else {"+": "one or more", "*": "any number, or none"}.get(a.nargs, ""))
        text = _cell(text)
        rows.append(f"| `{name}` | {text} |")
    return rows


def cli_commands(doc: Path) -> str:
    """The `doorface` commands and what each does, from edge/cli.py."""
    rows = ["| command | what it does |", "|---|---|"]
    for name, (_, text) in _subcommands().items():
        rows.append(f"| [`doorface {name}`](#doorface-{name}) | {text} |")
    return "\n".join(rows)


def cli_common(doc: Path) -> str:
    """The options every `doorface` command takes."""
    subs = _subcommands()
    common = _common_dests(subs)
    sub, _ = next(iter(subs.values()))
    return "\n".join(_option_rows([a for a in sub._actions if a.dest in common]))


def cli_options(command: str) -> Generator:
    def make(doc: Path) -> str:
        subs = _subcommands()
        if command not in subs:
            raise SystemExit(f"{doc}: block cli_{command}: `doorface {command}` does not exist "
                             f"(commands: {', '.join(subs)})")
        sub, _ = subs[command]
        common = _common_dests(subs)
        with _columns(100):
            lines = sub.format_usage().strip().splitlines()
        # argparse indents continuation lines under "usage: doorface CMD "; the docs drop the "usage: ".
        usage = "\n".join([lines[0][len("usage: "):], *(line[len("usage: "):] for line in lines[1:])])
        rows = _option_rows([a for a in sub._actions if a.dest not in common])
        common_link = "[options every command takes](#options-every-command-takes)"
        tail = [*rows, "", f"and the {common_link}."] if len(rows) > 2 else [f"Only the {common_link}."]
        return "\n".join(["```text", usage, "```", "", *tail])

    return make


GENERATORS: dict[str, tuple[Path, Generator]] = {
    "models": (MANIFEST, models_table),
    "licenses": (MANIFEST, licenses_table),
    "nns_targets": (MANIFEST, nns_targets),
    "headline": (RESULTS["lfw"].parent, headline),
    "floor_summary": (RESULTS["floor"], floor_summary),
    "devices": (DEVICE_CONFIGS, devices_table),
    "aarch64": (RESULTS["aarch64"], aarch64_tier),
    "device_overrides": (DEVICE_CONFIGS, device_overrides),
    "config": (CONFIG_SOURCE, config_table),
    "mqtt": (DISCOVERY_SOURCE, mqtt_reference),
    "ha_automation": (DISCOVERY_SOURCE, ha_automation),
    "cli_commands": (CLI_SOURCE, cli_commands),
    "cli_common": (CLI_SOURCE, cli_common),
}
PREFIX_GENERATORS: dict[str, tuple[Path, Callable[[str], Generator]]] = {"cli_": (CLI_SOURCE, cli_options)}
PATTERN = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)
HEADLINE_SOURCES = "`reports/`, `bench/results/`"


def source_of(name: str):
    """``(source path, generator or None)`` of a block name; KeyError when no source is known."""
    if name in GENERATORS:
        return GENERATORS[name]
    for prefix, (source, factory) in PREFIX_GENERATORS.items():
        if name.startswith(prefix):
            return source, factory(name[len(prefix):])
    if name in BLOCKS:
        return BLOCKS[name], None
    raise KeyError(name)


# Blocks whose generator imports the NNS modules, which need the converters' extras (a runtime-only install lacks
# them): tests/test_docs.py checks these only where they import.
NEEDS_CONVERT_EXTRA = frozenset({"nns_targets"})


def render(text: str, doc: Path = README, *, skip: frozenset = frozenset()) -> str:
    """``text`` (the content of ``doc``) with every generated block rebuilt from its source; blocks named in
    ``skip`` are left as they are."""

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name in skip:
            return match.group(0)
        try:
            source, make = source_of(name)
        except KeyError:
            raise SystemExit(f"{doc}: block '{name}' has no source; known: "
                             f"{', '.join([*BLOCKS, *GENERATORS, *(p + '<command>' for p in PREFIX_GENERATORS)])}"
                             ) from None
        if make is not None:
            body = make(doc)
        else:
            if not source.is_file():
                raise SystemExit(f"{source} is missing: run the script that writes it first")
            body = source.read_text(encoding="utf-8").strip()
        where = HEADLINE_SOURCES if name == "headline" else f"`{source.relative_to(ROOT).as_posix()}`"
        note = f"*Generated from {where} by `{COMMAND}`.*"
        return f"{match.group(1)}{body}\n\n{note}\n{match.group(4)}"

    return PATTERN.sub(replace, text)


def stale_docs(*, skip: frozenset = frozenset()) -> list[Path]:
    """The docs whose generated blocks (other than ``skip``) differ from what their sources give now."""
    return [doc for doc in doc_files() if render(text := doc.read_text(encoding="utf-8"), doc, skip=skip) != text]


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------------------------------------- links

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped (``-`` and ``_`` kept), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = github_anchor(heading)
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(docs=None) -> list[str]:
    """``file: link (why)`` for every relative link or image in ``docs`` whose file, or ``#anchor`` in a markdown
    file, does not exist. Links in code blocks or inline code are not links; URLs are not checked."""
    problems = []
    for doc in docs or doc_files():
        text = doc.read_text(encoding="utf-8")
        prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
        for target in _LINK.findall(prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # http:, https:, mailto:
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            where = f"{_shown(doc)}: {target}"
            if not path.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
                problems.append(f"{where} (no heading #{anchor} in {_shown(path)})")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a generated block is stale")
    args = parser.parse_args(argv)
    stale = []
    for doc in doc_files():
        current = doc.read_text(encoding="utf-8")
        updated = render(current, doc)
        if updated == current:
            continue
        stale.append(doc)
        if not args.check:
            doc.write_text(updated, encoding="utf-8")
            print(f"updated {doc.relative_to(ROOT)}")
    if args.check and stale:
        print(f"out of date: {', '.join(str(d.relative_to(ROOT)) for d in stale)}: run {COMMAND}", file=sys.stderr)
        return 1
    if not stale:
        print("every generated block is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
