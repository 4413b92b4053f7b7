"""``doorface doctor``: check each part a door camera needs and say what to fix.

Every check returns a :class:`Check` instead of raising, so one broken part never hides the state of the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from edge.config import Config


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if not self.ok and self.fix else "")


def _guard(name: str, fix: str, body: Callable[[], Check]) -> Check:
    try:
        return body()
    except Exception as exc:  # noqa: BLE001 - a doctor reports every failure as a line, whatever its type
        return Check(name, False, f"{type(exc).__name__}: {exc}", fix)


def check_interpreter() -> Check:
    def body() -> Check:
        from edge.interpreter import backend

        be = backend()
        return Check("interpreter", True, f"{be.name}")

    return _guard("interpreter", "`pip install ai-edge-litert` (or tflite-runtime with numpy<2)", body)


def check_models(config: Config) -> list[Check]:
    from edge.detector import MTCNN_KEYS
    from edge.manifest import RESTORE_HINT, Manifest

    try:
        manifest = Manifest.load(config.models_dir)
    except Exception as exc:  # noqa: BLE001
        return [Check("models", False, str(exc), RESTORE_HINT)]
    checks = []
    for key in (*MTCNN_KEYS, config.embedder.model):
        def body(key=key) -> Check:
            entry = manifest.entry(key)
            size = len(entry.read_verified())
            return Check(f"model {key}", True, f"{entry.path.name}, {size / 1e6:.1f} MB, sha256 {entry.sha256[:12]}…")

        checks.append(_guard(f"model {key}", RESTORE_HINT, body))
    return checks


def check_device(config: Config) -> Check:
    def body() -> Check:
        from edge.interpreter import parse_device, resolve_device

        wanted = config.detector.device
        if parse_device(wanted) is None:
            return Check("accelerator", True, "cpu (no accelerator configured)")
        used = resolve_device(wanted)
        if used == wanted:
            return Check("accelerator", True, f"{wanted} delegate loaded")
        return Check("accelerator", False, f"{wanted} requested but not usable; the CPU will be used",
                     "install the Coral runtime (`apt install libedgetpu1-std`) and plug the accelerator in")

    return _guard("accelerator", "", body)


def check_camera(config: Config, source: Optional[str] = None, timeout: float = 5.0) -> Check:
    spec = source or config.camera.source

    def body() -> Check:
        from edge.sources import open_source

        with open_source(spec, width=config.camera.width, height=config.camera.height,
                         reconnect_max_delay=config.camera.reconnect_max_delay) as cam:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                frame = cam.read(timeout=0.2)
                if frame is not None:
                    h, w = frame.image.shape[:2]
                    return Check("camera", True, f"{cam.name}: first frame {w}x{h}")
                if cam.ended:
                    break
        return Check("camera", False, f"{spec}: no frame within {timeout:.0f} s",
                     "check camera.source (`doorface doctor --source ...` to try another) and the cable/URL")

    return _guard("camera", "check camera.source in your config", body)


def check_gallery(config: Config) -> Check:
    def body() -> Check:
        from edge.embedder import EmbedderSpec
        from edge.manifest import Manifest
        from edge.runner import open_gallery

        path = config.gallery.resolved_path()
        if not path.exists():
            return Check("gallery", False, f"{path} does not exist yet",
                         "enroll someone: `doorface enroll NAME photo.jpg`")
        spec = EmbedderSpec.from_entry(Manifest.load(config.models_dir).entry(config.embedder.model))
        with open_gallery(config, spec, create=False) as gallery:
            persons = gallery.persons()
        names = ", ".join(f"{p.name} ({p.embeddings})" for p in persons) or "nobody enrolled"
        return Check("gallery", bool(persons), f"{path}: {names}", "enroll someone: `doorface enroll NAME photo.jpg`")

    return _guard("gallery", "re-enroll into a new gallery, or fix gallery.path", body)


def check_broker(config: Config, timeout: float = 5.0) -> Check:
    mqtt = config.mqtt
    where = f"{mqtt.host}:{mqtt.port}"
    if not mqtt.enabled:
        return Check("mqtt", True, "disabled (mqtt.enabled: false)")

    def body() -> Check:
        from edge.mqtt import probe_broker

        probe_broker(mqtt, timeout=timeout)
        return Check("mqtt", True, f"connected to {where}{' (TLS)' if mqtt.tls_ca_file else ''}")

    return _guard("mqtt", f"start the broker at {where} or fix mqtt.host/port/username/password", body)


def run_checks(config: Config, *, source: Optional[str] = None, camera: bool = True) -> list[Check]:
    checks = [check_interpreter(), *check_models(config), check_device(config)]
    if camera:
        checks.append(check_camera(config, source))
    checks += [check_gallery(config), check_broker(config)]
    return checks
