"""Typed, validated configuration: a device YAML from ``device_configs/`` overridden by an optional user YAML.

Every section is a frozen dataclass whose fields carry a description and bounds. Loading rejects unknown keys,
wrong types and out-of-range values with an error that names the file and the dotted key, e.g.
``pi4.yaml: detector.num_threads: must be between 1 and 16, got 0``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from edge.interpreter import parse_device
from edge.mtcnn import DEFAULT_PARAMS, CascadeParams
from edge.resources import bundled_dir

DEFAULT_DEVICE = "generic-x86"


class ConfigError(ValueError):
    """A configuration file is unreadable or holds a bad key or value."""


def _field(default, description: str, *, low=None, high=None, choices=None):
    return field(default=default, metadata={"description": description, "low": low, "high": high,
                                            "choices": choices})


# The CascadeParams a device config may set; the NMS overlaps keep MTCNN's values.
CASCADE_KEYS = ("min_face_size", "scale_factor", "pnet_threshold", "rnet_threshold", "onet_threshold",
                "max_pnet_side")


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's interpreters, and the cascade settings a device may tune (the rest keep MTCNN's values)."""

    num_threads: int = _field(2, "CPU threads for each TFLite interpreter", low=1, high=16)
    device: str = _field("cpu", "'cpu', or 'edgetpu[:usb[:N]|:pci]' for a Coral (falls back to CPU if absent)")
    # The cascade's defaults are edge.mtcnn's (the published MTCNN settings): written once, read here.
    min_face_size: float = _field(DEFAULT_PARAMS.min_face_size, "smallest face side to look for, in frame pixels "
                                                                "(larger is faster)", low=12.0, high=2000.0)
    scale_factor: float = _field(DEFAULT_PARAMS.scale_factor, "ratio between pyramid levels", low=0.3, high=0.95)
    pnet_threshold: float = _field(DEFAULT_PARAMS.pnet_threshold, "P-Net face score to propose a candidate",
                                   low=0.0, high=1.0)
    rnet_threshold: float = _field(DEFAULT_PARAMS.rnet_threshold, "R-Net face score to keep a candidate",
                                   low=0.0, high=1.0)
    onet_threshold: float = _field(DEFAULT_PARAMS.onet_threshold, "O-Net face score to report a face",
                                   low=0.0, high=1.0)
    max_pnet_side: int = _field(DEFAULT_PARAMS.max_pnet_side, "longest image side P-Net searches at; bounds time "
                                                              "on huge images", low=48, high=10000)

    def __post_init__(self) -> None:
        try:
            parse_device(self.device)
        except ValueError as exc:
            raise ConfigError(f"detector.device: {exc}") from None

    def cascade_params(self) -> CascadeParams:
        return dataclasses.replace(DEFAULT_PARAMS, **{name: getattr(self, name) for name in CASCADE_KEYS})


@dataclass(frozen=True)
class EmbedderConfig:
    # MobileFaceNet: at the FAR = 1e-3 operating point it accepts far more genuine faces than dlib's ResNet (LFW
    # table in the README); only undecided tracks are embedded, so its extra milliseconds are rarely paid.
    model: str = _field("mobilefacenet", "manifest key of the face embedder (a face_embedding model of the "
                                         "manifest)")
    num_threads: int = _field(2, "CPU threads for the embedder interpreter", low=1, high=16)
    threshold: str = _field("far_1e-3", "which LFW threshold of the manifest decides 'same person'",
                            choices=("far_1e-3", "best_accuracy"))


ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
DATA_DIR_ENV = "DOORFACE_HOME"


def default_data_dir() -> Path:
    """Where the gallery and the event queue live: ``$DOORFACE_HOME`` or ``~/.local/share/doorface``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "doorface"


@dataclass(frozen=True)
class CameraConfig:
    name: str = _field("door", "camera id used in MQTT topics and Home Assistant ids ([A-Za-z0-9_-])")
    source: str = _field("0", "'picamera2[:N]', an OpenCV device index, an rtsp:// or http(s):// URL, a video "
                              "file or a folder of images")
    width: int = _field(640, "frames are scaled down to fit width x height (live cameras are asked for it)",
                        low=64, high=8192)
    height: int = _field(480, "see width", low=64, high=8192)
    reconnect_max_delay: float = _field(30.0, "longest wait between reconnect attempts of a live source, seconds",
                                        low=0.1, high=3600.0)

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.name):
            raise ConfigError(f"camera.name: only letters, digits, '_' and '-' are allowed, got {self.name!r}")


@dataclass(frozen=True)
class QualityConfig:
    min_face_size: float = _field(40.0, "smallest face side (px) worth embedding; smaller faces are tracked only",
                                  low=8.0, high=4000.0)
    # On LFW's faces the 64-px sharpness is above 100 for 99% of them, and below it for ~98% of the same faces
    # blurred with a 3-px Gaussian (tests/test_quality.py checks both on real faces).
    min_sharpness: float = _field(100.0, "variance of the Laplacian of the aligned face (grey, 64x64) below which it "
                                         "is too blurred to embed", low=0.0, high=100000.0)
    max_yaw: float = _field(0.45, "largest left/right turn, as the nose offset from the eyes' midline over the "
                                  "eye distance (0 = frontal)", low=0.0, high=2.0)
    max_pitch: float = _field(0.35, "largest up/down tilt, as the deviation of the nose height from a frontal "
                                   "face's, over the eye-to-mouth distance", low=0.0, high=2.0)


@dataclass(frozen=True)
class TrackerConfig:
    detect_every: int = _field(1, "run the detector every k-th frame; tracks carry the faces in between",
                               low=1, high=30)
    iou_threshold: float = _field(0.3, "smallest box overlap to continue a track", low=0.0, high=1.0)
    max_missing: float = _field(0.5, "seconds a track survives without a detection; a face found later starts a "
                                     "new track, re-identified by its embedding", low=0.0, high=60.0)
    min_votes: int = _field(3, "matching frames needed before a 'recognized' event", low=1, high=100)
    vote_fraction: float = _field(0.6, "share of a track's embedded frames that must agree on one person",
                                  low=0.0, high=1.0)
    unknown_after: int = _field(8, "embedded frames without a confident match before an 'unknown' event",
                                low=1, high=1000)
    recheck_every: float = _field(0.5, "seconds between two embeddings of a decided track's face, to catch another "
                                       "person in the track", low=0.05, high=3600.0)
    swap_frames: int = _field(2, "consecutive embeddings unlike the track's before it is split (another person "
                                 "stepped in)", low=1, high=100)
    same_visitor_probability: float = _field(0.99, "an unknown face is a visitor seen within visit_gap only when "
                                                   "the embedder's calibrated probability that they are the same "
                                                   "person is at least this (never looser than the match threshold)",
                                             low=0.5, high=0.999999)
    visit_gap: float = _field(30.0, "the same person again within this many seconds of their last sighting is the "
                                    "same visit (no new event): the same name, or for an unknown face an embedding "
                                    "that matches the earlier visitor's", low=0.0, high=86400.0)


@dataclass(frozen=True)
class MotionConfig:
    """Look for motion before faces: an idle door skips the detector, a busy one searches around what moved."""

    enabled: bool = _field(True, "search for faces only where something moved or a face is followed (and the whole "
                                 "frame every full_frame_every seconds); off: the whole frame every time")
    full_frame_every: float = _field(2.0, "seconds between two searches of the whole frame, motion or not: the "
                                          "longest a face that arrived without moving can go unseen",
                                     low=0.0, high=60.0)
    width: int = _field(160, "width of the grey copy of the frame that motion is looked for in, pixels",
                        low=32, high=1280)
    threshold: int = _field(15, "grey-level change (0-255) of a pixel between two frames that counts as motion",
                            low=1, high=255)
    min_area: float = _field(0.002, "share of the frame that must change before it counts as motion (below: "
                                    "noise, flicker)", low=0.0, high=1.0)
    pad: int = _field(32, "pixels the search window reaches at least beyond motion and followed faces",
                      low=0, high=2000)
    margin: float = _field(0.15, "and beyond that, this share of the longer side of what it covers", low=0.0,
                           high=4.0)


@dataclass(frozen=True)
class MatchConfig:
    margin: float = _field(0.02, "smallest distance gap between the best and second-best person to accept the "
                                 "best", low=0.0, high=2.0)


@dataclass(frozen=True)
class GalleryConfig:
    path: Optional[str] = _field(None, "SQLite gallery file (default: $DOORFACE_HOME/gallery.sqlite)")
    thumbnails: bool = _field(True, "keep a small face thumbnail per enrolled photo, for checking enrollments")
    watch_interval: float = _field(5.0, "seconds between two looks of a running `doorface run` at the gallery for "
                                        "people enrolled, renamed or removed meanwhile", low=0.1, high=3600.0)

    def resolved_path(self) -> Path:
        return Path(self.path).expanduser() if self.path else default_data_dir() / "gallery.sqlite"


@dataclass(frozen=True)
class EnrollConfig:
    """How `doorface enroll` picks faces: from a video, which frames; from a photo with several faces, which face."""

    samples: int = _field(10, "faces `doorface enroll --video` keeps (--samples overrides)", low=1, high=1000)
    min_gap: int = _field(5, "frames between two samples of a video enrollment: consecutive frames are near copies "
                             "of one pose", low=1, high=1000)
    seconds: float = _field(20.0, "longest `doorface enroll --video` capture, in seconds (--seconds overrides)",
                            low=1.0, high=3600.0)
    dominant_face_ratio: float = _field(2.0, "a photo with several faces is enrolled from its largest face when that "
                                             "face's side is at least this many times every other's (a false "
                                             "detection, someone far behind); else it is refused", low=1.1,
                                        high=100.0)


@dataclass(frozen=True)
class VisitsConfig:
    """The visit log: each event's best face crop and embedding, kept on the device for review (`doorface serve`)."""

    enabled: bool = _field(True, "keep each visit's face crop (a small JPEG) and embedding in the gallery file, "
                                 "for `doorface visitors` and `doorface serve`; nothing leaves the device")
    days: float = _field(7.0, "keep visits this many days; older ones (crop and embedding) are deleted",
                         low=0.01, high=3650.0)
    max_mb: float = _field(200.0, "and at most this many megabytes of crops and embeddings; the oldest go first",
                           low=1.0, high=100000.0)
    max_samples: int = _field(10, "faces an unknown group gives the person it is named as (its latest visits')",
                              low=1, high=1000)


@dataclass(frozen=True)
class ReviewConfig:
    """`doorface serve`: the review page of visits, unknown visitors and people."""

    host: str = _field("127.0.0.1", "address to listen on; anything but loopback needs a token (token_env or "
                                    "token_file)")
    port: int = _field(8080, "port to listen on", low=1, high=65535)
    token_env: str = _field("DOORFACE_REVIEW_TOKEN", "environment variable holding the page's access token")
    token_file: Optional[str] = _field(None, "file holding the access token (used when the variable is unset)")
    max_upload_mb: float = _field(8.0, "largest photo the page accepts for enrollment, in megabytes",
                                  low=0.1, high=100.0)
    max_upload_pixels: int = _field(40_000_000, "largest photo (width x height, read from its header before "
                                                "decoding) the page accepts", low=10_000, high=120_000_000)

    def token(self) -> Optional[str]:
        """The access token from the environment, else from token_file; never logged."""
        value = os.environ.get(self.token_env)
        if value:
            return value
        if self.token_file:
            path = Path(self.token_file).expanduser()
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"review.token_file: cannot read {path}: {exc.strerror}") from None
            if not value:
                raise ConfigError(f"review.token_file: {path} is empty; write a long random token in it")
            return value
        return None


def _check_host(host: str) -> None:
    """A host name or address only: a port or a URL scheme in it would fail much later, at connect time."""
    if not host or host != host.strip():
        raise ConfigError(f"mqtt.host: expected a host name or address, got {host!r}")
    if "://" in host:
        bare = host.split("://", 1)[1].split("/", 1)[0]
        raise ConfigError(f"mqtt.host: {host!r} is a URL: write only the host (mqtt.host: {bare.rsplit(':', 1)[0]}); "
                          "the port goes in mqtt.port and TLS is set with mqtt.tls_ca_file")
    try:
        ipaddress.IPv6Address(host)
        return  # "::1" and friends hold colons of their own
    except ValueError:
        pass
    if ":" in host:
        name, _, port = host.rpartition(":")
        name = name.strip("[]")
        raise ConfigError(f"mqtt.host: {host!r} holds a port: write mqtt.host: {name} and mqtt.port: {port}")


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = _field(True, "publish events over MQTT")
    host: str = _field("127.0.0.1", "broker host name or address")
    port: int = _field(1883, "broker port (8883 is the usual TLS port)", low=1, high=65535)
    prefix: str = _field("doorface", "topic prefix: <prefix>/<camera>/recognized, .../unknown, ...")
    client_id: Optional[str] = _field(None, "MQTT client id (default: doorface-<camera>)")
    username: Optional[str] = _field(None, "broker user name")
    password_env: str = _field("DOORFACE_MQTT_PASSWORD", "environment variable holding the broker password")
    password_file: Optional[str] = _field(None, "file holding the broker password (used when the variable is unset)")
    tls_ca_file: Optional[str] = _field(None, "CA certificate (PEM); setting it turns TLS on")
    tls_cert_file: Optional[str] = _field(None, "client certificate (PEM), for brokers that require one")
    tls_key_file: Optional[str] = _field(None, "client key (PEM) of tls_cert_file")
    keepalive: int = _field(30, "seconds between keep-alive pings", low=5, high=3600)
    discovery: bool = _field(True, "publish Home Assistant MQTT discovery configs")
    discovery_prefix: str = _field("homeassistant", "Home Assistant's discovery prefix")
    publish_crops: bool = _field(False, "also publish the face crop of each event (by default no face image "
                                        "leaves the device)")
    stale_after: float = _field(120.0, "seconds after which an event still queued (broker down) is stale: it is "
                                       "never delivered as a fresh arrival (see stale_events)", low=1.0,
                                high=604800.0)
    stale_events: str = _field("mark", "what a stale event becomes: 'mark' sends it on the recognized/unknown "
                                        "topics with \"stale\": true (not to Home Assistant's event entity, not as "
                                        "presence), 'drop' discards it", choices=("mark", "drop"))
    queue_path: Optional[str] = _field(None, "on-disk queue of undelivered events (default: "
                                             "$DOORFACE_HOME/outbox.sqlite)")
    queue_max_events: int = _field(10000, "bound of the queue; the oldest events are dropped beyond it",
                                   low=10, high=10_000_000)

    def __post_init__(self) -> None:
        _check_host(self.host)
        for key in ("prefix", "discovery_prefix"):
            value = getattr(self, key)
            if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
                raise ConfigError(f"mqtt.{key}: must be a topic without wildcards or leading/trailing '/', "
                                  f"got {value!r}")
        if self.tls_cert_file and not self.tls_key_file:
            raise ConfigError("mqtt.tls_key_file: required with tls_cert_file")

    def resolved_queue_path(self) -> Path:
        return Path(self.queue_path).expanduser() if self.queue_path else default_data_dir() / "outbox.sqlite"

    def password(self) -> Optional[str]:
        """The broker password from the environment, else from password_file; never logged."""
        value = os.environ.get(self.password_env)
        if value:
            return value
        if self.password_file:
            path = Path(self.password_file).expanduser()
            try:
                return path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"mqtt.password_file: cannot read {path}: {exc.strerror}") from None
        return None


MIN_HOUSEHOLD_KEY_LENGTH = 32
MAKE_KEY = "openssl rand -hex 32"


@dataclass(frozen=True)
class HouseholdConfig:
    """Cameras of one household share their gallery over the MQTT broker (see docs/household.md)."""

    name: Optional[str] = _field(None, "household id ([A-Za-z0-9_-]); cameras with the same name and key share one "
                                       "gallery over MQTT (unset: this camera keeps its own)")
    key: Optional[str] = _field(None, "shared secret that signs every gallery message (HMAC-SHA256), the same on "
                                      f"every camera of the household; at least {MIN_HOUSEHOLD_KEY_LENGTH} "
                                      f"characters, e.g. from `{MAKE_KEY}`")
    sync_wait: float = _field(5.0, "seconds `doorface run` waits at start for the household's gallery from the "
                                   "broker before its first frame (and `enroll`/`people` for the broker to take "
                                   "their change)", low=0.0, high=600.0)
    share_crops: bool = _field(False, "also send the enrolled face thumbnails, so that a camera with another "
                                      "embedder can re-embed them (by default only names and embeddings travel)")
    max_message_kb: int = _field(1024, "largest gallery message accepted, KiB; bigger ones are rejected",
                                 low=16, high=65536)

    def __post_init__(self) -> None:
        if self.name is None:
            return
        if not ID_PATTERN.match(self.name):
            raise ConfigError(f"household.name: only letters, digits, '_' and '-' are allowed, got {self.name!r}")
        if not self.key or len(self.key) < MIN_HOUSEHOLD_KEY_LENGTH:
            have = f"is {len(self.key)} characters" if self.key else "is not set"
            raise ConfigError(f"household.key {have}: gallery sync needs a key of at least "
                              f"{MIN_HOUSEHOLD_KEY_LENGTH} random characters, the same on every camera of household "
                              f"{self.name!r}; make one with `{MAKE_KEY}`")

    @property
    def enabled(self) -> bool:
        return self.name is not None


@dataclass(frozen=True)
class Config:
    device_name: str = _field(DEFAULT_DEVICE, "which device_configs/<name>.yaml this came from")
    models_dir: Optional[str] = _field(None, "folder holding manifest.json (default: the bundled models)")
    detector: DetectorConfig = field(default_factory=DetectorConfig, metadata={"description": "face detection"})
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig, metadata={"description": "face embedding"})
    camera: CameraConfig = field(default_factory=CameraConfig, metadata={"description": "frame source"})
    quality: QualityConfig = field(default_factory=QualityConfig, metadata={"description": "which faces to embed"})
    tracker: TrackerConfig = field(default_factory=TrackerConfig, metadata={"description": "tracks and votes"})
    motion: MotionConfig = field(default_factory=MotionConfig, metadata={"description": "where to search for "
                                                                                          "faces"})
    match: MatchConfig = field(default_factory=MatchConfig, metadata={"description": "gallery matching"})
    gallery: GalleryConfig = field(default_factory=GalleryConfig, metadata={"description": "enrolled persons"})
    enroll: EnrollConfig = field(default_factory=EnrollConfig, metadata={"description": "enrolling from a video or "
                                                                                          "camera"})
    mqtt: MqttConfig = field(default_factory=MqttConfig, metadata={"description": "MQTT and Home Assistant"})
    household: HouseholdConfig = field(default_factory=HouseholdConfig,
                                       metadata={"description": "one gallery shared by the cameras of a home"})
    visits: VisitsConfig = field(default_factory=VisitsConfig, metadata={"description": "the visit log (face crops "
                                                                                        "kept for review)"})
    review: ReviewConfig = field(default_factory=ReviewConfig, metadata={"description": "the review page "
                                                                                        "(doorface serve)"})


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


# Keys an older doorface read, and what to write instead: an old config gets told, not just refused.
RETIRED_KEYS = {
    "tracker.max_missed": "use tracker.max_missing, in seconds (0.5 is 5 frames at 10 fps)",
    "mqtt.presence_off_delay": "doorface now turns a person's presence off itself when their visit ends "
                               "(tracker.visit_gap seconds after they were last seen)",
}
# Keys people write from other tools' configs, and what they mean here.
KEY_HINTS = {
    "mqtt.user": "did you mean `username`?",
    "mqtt.password": "the password is not written in the config: set the variable named by `password_env` "
                     "(DOORFACE_MQTT_PASSWORD by default) or point `password_file` at a file holding it",
    "mqtt.tls": "TLS is on when `tls_ca_file` is set",
}


def _unknown_key(key: str, name: str, allowed) -> str:
    if key in RETIRED_KEYS:
        return f"{key}: no longer a key: {RETIRED_KEYS[key]}"
    hint = KEY_HINTS.get(key)
    if hint is None:
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else ""
    return f"{key}: unknown key; {hint + ' ' if hint else ''}(allowed: {', '.join(sorted(allowed))})"


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(_unknown_key(f"{prefix}{unknown[0]}", str(unknown[0]), fields))
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


def device_configs_dir() -> Path:
    return bundled_dir("device_configs")


def device_names() -> list[str]:
    return sorted(p.stem for p in device_configs_dir().glob("*.yaml"))


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
    device_path = device_configs_dir() / f"{name}.yaml"
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
