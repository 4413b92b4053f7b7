"""The model table: ``quantized_models/manifest.json`` read, validated and checked against the files.

Schema (``{"models": {key: entry}}``), the fields the runtime reads::

    file        model file name, relative to the manifest's folder
    sha256      hex digest of that file; checked at every load
    task        "face_detection_stage" (MTCNN nets) or "face_embedding"
    input       {"shape": [1, h, w, 3] (-1 = any), "dtype": "int8", "channels": "RGB",
                 "mean": 127.5, "std": 128.0, "scale": s, "zero_point": z}  (scale, zero_point: the int8
                input's quantization)

EdgeTPU variants (what ``edgetpu_compiler`` made of a CPU model) are entries of their own, with the fields above
and::

    file        ends with ``_edgetpu.tflite``
    size_bytes  the file's size
    edgetpu_of  the key of the CPU int8 model it replaces (same task and input normalisation); a model with a
                dynamic input (P-Net) has one variant per input shape it was compiled for, given by input.shape,
                which must then be fully static

Their sha256 is checked at every load, like any model's.

The converter writes more (provenance, licence, calibration set, agreement, size); see the model cards.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edge.resources import bundled_dir

MANIFEST_NAME = "manifest.json"
EDGETPU_SUFFIX = "_edgetpu.tflite"
MODELS_ENV = "DOORFACE_MODELS"
RESTORE_HINT = (
    "restore it with `git checkout -- quantized_models/` (a source checkout), reinstall doorface "
    "(`pip install --force-reinstall doorface`), or rebuild it with `doorface-convert`"
)


class ManifestError(ValueError):
    """The manifest is missing, malformed, or lacks a model."""


class ModelIntegrityError(RuntimeError):
    """A model file is missing or differs from the manifest's sha256."""


def default_models_dir() -> Path:
    """``$DOORFACE_MODELS`` if set, else the bundled ``quantized_models/`` (see :mod:`edge.resources`)."""
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else bundled_dir("quantized_models")


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]
    dtype: str
    channels: str
    mean: float
    std: float


@dataclass(frozen=True)
class ModelEntry:
    key: str
    path: Path
    sha256: str
    task: str
    input: InputSpec
    fields: dict
    """The whole manifest entry, for readers of fields beyond the ones above."""
    edgetpu_of: Optional[str] = None
    """For an EdgeTPU variant, the key of the CPU model it replaces; None for a CPU model."""

    def read_verified(self) -> bytes:
        """The model's bytes, after checking they exist and match the manifest's sha256."""
        if not self.path.is_file():
            raise ModelIntegrityError(f"model '{self.key}' file {self.path} is missing; {RESTORE_HINT}")
        data = self.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ModelIntegrityError(
                f"model '{self.key}' file {self.path} does not match the manifest "
                f"(sha256 {digest[:12]}…, expected {self.sha256[:12]}…): it was modified or corrupted; {RESTORE_HINT}"
            )
        return data


def _require(entry: dict, key: str, name: str, where: Path) -> Any:
    if key not in entry:
        raise ManifestError(f"{where}: model '{name}' lacks the field '{key}'")
    return entry[key]


def _parse_entry(name: str, entry: Any, folder: Path, where: Path) -> ModelEntry:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: model '{name}' must be an object")
    spec = _require(entry, "input", name, where)
    try:
        input_spec = InputSpec(
            shape=tuple(int(v) for v in spec["shape"]),
            dtype=str(spec["dtype"]),
            channels=str(spec.get("channels", "RGB")),
            mean=float(spec["mean"]),
            std=float(spec["std"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: model '{name}' has a bad 'input' field: {exc!r}") from exc
    if input_spec.std == 0:
        raise ManifestError(f"{where}: model '{name}' input.std must not be 0")
    edgetpu_of = entry.get("edgetpu_of")
    file = str(_require(entry, "file", name, where))
    if edgetpu_of is not None:
        if not file.endswith(EDGETPU_SUFFIX):
            raise ManifestError(f"{where}: EdgeTPU model '{name}' file {file!r} must end with {EDGETPU_SUFFIX} "
                                "(the name edgetpu_compiler gives it)")
        size = _require(entry, "size_bytes", name, where)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ManifestError(f"{where}: EdgeTPU model '{name}' size_bytes must be a positive integer, got {size!r}")
    return ModelEntry(
        key=name,
        path=folder / file,
        sha256=str(_require(entry, "sha256", name, where)).lower(),
        task=str(_require(entry, "task", name, where)),
        input=input_spec,
        fields=entry,
        edgetpu_of=None if edgetpu_of is None else str(edgetpu_of),
    )


def _check_edgetpu_variants(models: dict[str, ModelEntry], where: Path) -> None:
    """Each EdgeTPU variant replaces a CPU model of the same task and normalisation, at a static input shape."""
    for name, entry in models.items():
        if entry.edgetpu_of is None:
            continue
        cpu = models.get(entry.edgetpu_of)
        if cpu is None or cpu.edgetpu_of is not None:
            raise ManifestError(f"{where}: EdgeTPU model '{name}' has edgetpu_of '{entry.edgetpu_of}', which is "
                                "not a CPU model of this manifest")
        if (entry.task, entry.input.mean, entry.input.std, entry.input.channels) != (
                cpu.task, cpu.input.mean, cpu.input.std, cpu.input.channels):
            raise ManifestError(f"{where}: EdgeTPU model '{name}' must have the task and input normalisation of "
                                f"'{cpu.key}', which it replaces")
        if any(d < 1 for d in entry.input.shape):
            raise ManifestError(f"{where}: EdgeTPU model '{name}' input.shape {list(entry.input.shape)} must be "
                                "static (the EdgeTPU compiles one shape)")


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: dict

    @classmethod
    def load(cls, models_dir: Optional[Path] = None) -> Manifest:
        folder = Path(models_dir) if models_dir is not None else default_models_dir()
        path = folder / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ManifestError(f"model manifest {path} not found; {RESTORE_HINT}") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"model manifest {path} is unreadable ({exc}); {RESTORE_HINT}") from exc
        models = raw.get("models") if isinstance(raw, dict) else None
        if not isinstance(models, dict):
            raise ManifestError(f"{path}: expected {{\"models\": {{key: entry}}}}")
        return cls.from_entries(models, folder, path)

    @classmethod
    def from_entries(cls, models: dict, folder: Path, source: Path) -> Manifest:
        """The entries ``models`` (key -> entry, as under a manifest's ``"models"``) with their files in
        ``folder``; ``source`` is the file they were read from, named in errors."""
        folder, source = Path(folder), Path(source)
        parsed = {name: _parse_entry(name, e, folder, source) for name, e in models.items()}
        _check_edgetpu_variants(parsed, source)
        return cls(source, parsed)

    def entry(self, key: str) -> ModelEntry:
        try:
            return self.models[key]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ManifestError(f"{self.path}: no model '{key}' (known: {known})") from None

    def edgetpu_variants(self, key: str) -> tuple[ModelEntry, ...]:
        """The EdgeTPU variants of the CPU model ``key`` (none when nothing was compiled for it), by key."""
        return tuple(e for _, e in sorted(self.models.items()) if e.edgetpu_of == key)
