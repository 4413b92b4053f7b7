"""Write manifest entries and the human-readable card generated from each entry.

The manifest is merged key by key, so converting MTCNN never drops an embedder's entry. Output is byte-stable
(sorted keys, fixed indentation, no timestamps): re-running a conversion gives the same files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edge.manifest import MANIFEST_NAME

CARDS_DIR = "cards"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def update_manifest(models_dir: Path, entries: dict[str, dict]) -> Path:
    path = models_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"models": {}}
    manifest.setdefault("models", {}).update(entries)
    manifest["schema"] = "doorface-manifest/1"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def merge_fields(models_dir: Path, fields_by_key: dict[str, dict]) -> None:
    """Add or replace top-level fields of existing entries (measurements: accuracy, thresholds, latency), leaving
    their other fields alone, and regenerate those entries' cards."""
    path = models_dir / MANIFEST_NAME
    models = json.loads(path.read_text(encoding="utf-8"))["models"]
    missing = sorted(set(fields_by_key) - set(models))
    if missing:
        raise KeyError(f"{path} has no entry {', '.join(missing)} to add fields to")
    update_manifest(models_dir, {key: {**models[key], **fields} for key, fields in fields_by_key.items()})
    write_cards(models_dir, sorted(fields_by_key))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


def render_card(key: str, entry: dict) -> str:
    """A markdown card: every manifest field, grouped, nothing typed by hand."""
    lines = [f"# Model card: `{key}`", "", f"*Generated from `quantized_models/{MANIFEST_NAME}`; do not edit.*", ""]
    if "description" in entry:
        lines += [entry["description"], ""]
    lines += ["| field | value |", "|---|---|"]
    for field in ("file", "sha256", "task", "size_bytes", "license"):
        if field in entry:
            lines.append(f"| {field} | `{_fmt(entry[field])}` |")
    for section in sorted(k for k, v in entry.items() if isinstance(v, dict)):
        lines += ["", f"## {section.replace('_', ' ')}", "", "| field | value |", "|---|---|"]
        for name, value in entry[section].items():
            lines.append(f"| {name} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def write_cards(models_dir: Path, keys) -> list[Path]:
    manifest = json.loads((models_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    out_dir = models_dir / CARDS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key in keys:
        path = out_dir / f"{key}.md"
        path.write_text(render_card(key, manifest["models"][key]), encoding="utf-8")
        written.append(path)
    return written
