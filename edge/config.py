"""Typed, validated configuration: a device YAML from ``device_configs/`` overridden by an optional user YAML.

Every section is a frozen dataclass whose fields carry a description and bounds. Loading rejects unknown keys,
wrong types and out-of-range values with an error that names the file and the dotted key, e.g.
``pi4.yaml: detector.num_threads: must be between 1 and 16, got 0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from edge.interpreter import parse_device
from edge.mtcnn import CascadeParams

DEVICE_CONFIGS_DIR = Path(__file__).resolve().parent.parent / "device_configs"
DEFAULT_DEVICE = "generic-x86"


class ConfigError(ValueError):
    """A configuration file is unreadable or holds a bad key or value."""


def _field(default, description: str, *, low=None, high=None, choices=None):
    return field(default=default, metadata={"description": description, "low": low, "high": high,
                                            "choices": choices})


@dataclass(frozen=True)
class DetectorConfig:
    num_threads: int = _field(2, "CPU threads for each TFLite interpreter", low=1, high=16)
    device: str = _field("cpu", "'cpu', or 'edgetpu[:usb[:N]|:pci]' for a Coral (falls back to CPU if absent)")
    min_face_size: float = _field(20.0, "smallest face side to look for, in frame pixels (larger is faster)",
                                  low=12.0, high=2000.0)
    scale_factor: float = _field(0.709, "ratio between pyramid levels", low=0.3, high=0.95)
    pnet_threshold: float = _field(0.6, "P-Net face score to propose a candidate", low=0.0, high=1.0)
    rnet_threshold: float = _field(0.7, "R-Net face score to keep a candidate", low=0.0, high=1.0)
    onet_threshold: float = _field(0.7, "O-Net face score to report a face", low=0.0, high=1.0)
    max_pnet_side: int = _field(1600, "longest image side P-Net searches at; bounds time on huge images",
                                low=48, high=10000)

    def __post_init__(self) -> None:
        try:
            parse_device(self.device)
        except ValueError as exc:
            raise ConfigError(f"detector.device: {exc}") from None

    def cascade_params(self) -> CascadeParams:
        return CascadeParams(
            min_face_size=self.min_face_size,
            scale_factor=self.scale_factor,
            pnet_threshold=self.pnet_threshold,
            rnet_threshold=self.rnet_threshold,
            onet_threshold=self.onet_threshold,
            max_pnet_side=self.max_pnet_side,
        )


@dataclass(frozen=True)
class EmbedderConfig:
    model: str = _field("dlib_resnet", "manifest key of the face embedder (a face_embedding model of the manifest)")
    num_threads: int = _field(2, "CPU threads for the embedder interpreter", low=1, high=16)
    threshold: str = _field("far_1e-3", "which LFW threshold of the manifest decides 'same person'",
                            choices=("far_1e-3", "best_accuracy"))


@dataclass(frozen=True)
class Config:
    device_name: str = _field(DEFAULT_DEVICE, "which device_configs/<name>.yaml this came from")
    models_dir: Optional[str] = _field(None, "folder holding manifest.json (default: the bundled models)")
    detector: DetectorConfig = field(default_factory=DetectorConfig, metadata={"description": "face detection"})
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig, metadata={"description": "face embedding"})


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: str, where: str) -> Any:
    kinds = {"int": int, "float": (int, float), "str": str, "bool": bool}
    optional = tp.startswith("Optional[")
    base = tp[len("Optional["):-1] if optional else tp
    if value is None and optional:
        return None
    expected = kinds.get(base)
    if expected is None:
        raise ConfigError(f"{where}: unsupported field type {tp}")
    if isinstance(value, bool) and base != "bool" or not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {base}, got {type(value).__name__} {value!r}")
    return float(value) if base == "float" else value


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, value in data.items():
        f = fields[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            values[name] = _build(f.default_factory, value, key)
            continue
        value = _coerce(value, str(f.type), key)
        meta = f.metadata
        if meta.get("low") is not None and value is not None and not meta["low"] <= value <= meta["high"]:
            raise ConfigError(f"{key}: must be between {meta['low']} and {meta['high']}, got {value}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{key}: must be one of {', '.join(meta['choices'])}, got {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where + '.' if where and not str(exc).startswith(where) else ''}{exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} malformed YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def device_names() -> list[str]:
    return sorted(p.stem for p in DEVICE_CONFIGS_DIR.glob("*.yaml"))


def load_config(device: Optional[str] = None, user_config: Union[str, Path, None] = None) -> Config:
    """The device's YAML (default ``generic-x86``), then the user's YAML on top, validated."""
    user_data: dict = {}
    if user_config is not None:
        user_path = Path(user_config)
        user_data = _read_yaml(user_path)
        try:
            _build(Config, user_data, "")
        except ConfigError as exc:
            raise ConfigError(f"{user_path}: {exc}") from None
    name = device or user_data.get("device_name") or DEFAULT_DEVICE
    device_path = DEVICE_CONFIGS_DIR / f"{name}.yaml"
    if not device_path.is_file():
        raise ConfigError(f"unknown device '{name}': no {device_path} (known: {', '.join(device_names())})")
    device_data = _read_yaml(device_path)
    try:
        _build(Config, device_data, "")
    except ConfigError as exc:
        raise ConfigError(f"{device_path}: {exc}") from None
    merged = _merge(device_data, user_data)
    merged["device_name"] = name
    return _build(Config, merged, "")
