"""``doorface doctor``: check each part a door camera needs and say what to fix.

Every check returns a :class:`Check` instead of raising, so one broken part never hides the state of the others.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    keys = (*MTCNN_KEYS, config.embedder.model)
    compiled = [v.key for key in keys if key in manifest.models for v in manifest.edgetpu_variants(key)]
    for key in (*keys, *compiled):  # the EdgeTPU variants too: a damaged one fails here, not at start
        def body(key=key) -> Check:
            entry = manifest.entry(key)
            size = len(entry.read_verified())
            return Check(f"model {key}", True, f"{entry.path.name}, {size / 1e6:.1f} MB, sha256 {entry.sha256[:12]}…")

        checks.append(_guard(f"model {key}", RESTORE_HINT, body))
    return checks


def check_device(config: Config) -> Check:
    """Which path the models take on the configured device (EdgeTPU variants or the CPU int8 models) and why."""
    def body() -> Check:
        from edge.accelerator import place_models
        from edge.detector import MTCNN_KEYS
        from edge.manifest import Manifest

        manifest = Manifest.load(config.models_dir)
        placement = place_models(manifest, config.detector.device, (*MTCNN_KEYS, config.embedder.model))
        return Check("accelerator", not placement.fell_back, placement.reason, placement.fix)

    return _guard("accelerator", "set detector.device to a form `doorface doctor` accepts: cpu, edgetpu, "
                                 "edgetpu:usb, edgetpu:usb:N or edgetpu:pci", body)


def _absent_camera_device(spec: str) -> Optional[str]:
    """Why a camera index cannot work, known without opening it (Linux: no ``/dev/videoN``); None if it may."""
    if not (spec.isdigit() and sys.platform.startswith("linux")):
        return None
    device = Path(f"/dev/video{spec}")
    if device.exists():
        return None
    present = sorted(str(p) for p in Path("/dev").glob("video*"))
    return f"no {device}: " + (f"the video devices are {', '.join(present)}" if present else "no camera is attached")


@contextmanager
def _quiet_camera_probe():
    """OpenCV's and the source's retry warnings would bury the check's one line: silenced while it runs."""
    import cv2

    sources_log = logging.getLogger("edge.sources")
    cv_logging = getattr(getattr(cv2, "utils", None), "logging", None)
    level = cv_logging.getLogLevel() if cv_logging is not None else None
    old = sources_log.level
    sources_log.setLevel(logging.ERROR)
    if cv_logging is not None:
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        sources_log.setLevel(old)
        if cv_logging is not None:
            cv_logging.setLogLevel(level)


def check_camera(config: Config, source: Optional[str] = None, timeout: float = 5.0) -> Check:
    spec = source or config.camera.source
    fix = "check camera.source (`doorface doctor --source ...` to try another) and the cable/URL"

    def body() -> Check:
        from edge.sources import open_source

        absent = _absent_camera_device(spec)
        if absent is not None:
            return Check("camera", False, f"{spec}: {absent}", fix)
        with _quiet_camera_probe(), open_source(spec, width=config.camera.width, height=config.camera.height,
                                                reconnect_max_delay=config.camera.reconnect_max_delay) as cam:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                frame = cam.read(timeout=0.2)
                if frame is not None:
                    h, w = frame.image.shape[:2]
                    return Check("camera", True, f"{cam.name}: first frame {w}x{h}")
                if cam.ended:
                    break
        return Check("camera", False, f"{spec}: no frame within {timeout:.0f} s", fix)

    return _guard("camera", "check camera.source: picamera2[:N], a device index (ls /dev/video*), an rtsp:// or "
                            "http(s):// URL, a video file or a folder of images; try another with `doorface doctor "
                            "--source ...`", body)


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


def check_household(config: Config, timeout: float = 5.0) -> Check:
    """What the household's broker holds, every message checked with this camera's key (nothing is changed)."""
    household = config.household
    if not household.enabled:
        return Check("household", True, "not shared with other cameras (household.name unset)")
    if not config.mqtt.enabled:
        return Check("household", False, f"household {household.name!r} is set but MQTT is off",
                     "set mqtt.enabled: true (the gallery is shared through the broker)")

    def body() -> Check:
        from edge.embedder import EmbedderSpec
        from edge.household import EmbedderTag
        from edge.household_sync import probe_household
        from edge.manifest import Manifest

        spec = EmbedderSpec.from_entry(Manifest.load(config.models_dir).entry(config.embedder.model))
        probe = probe_household(config, EmbedderTag(spec.key, spec.sha256, spec.dim, spec.metric), timeout)
        people = ", ".join(probe.persons) or "nobody yet"
        detail = f"household {household.name!r} on the broker: {people}; {probe.removed} removed"
        if probe.rejected:
            return Check("household", False, f"{detail}; {len(probe.rejected)} message(s) rejected: "
                                             f"{probe.rejected[0]}",
                         "give every camera the same household.key; a message written by another device is ignored "
                         "by the cameras, and stays on the broker until cleared: mosquitto_pub -r -n -t TOPIC")
        return Check("household", True, detail)

    return _guard("household", "check the broker (see the mqtt check) and household.name / household.key", body)


INFERENCE_PHOTO = "lin-manuel-miranda.jpg"  # a bundled demo still with one clear face
INFERENCE_FIX = ("the interpreter cannot run the models: reinstall it for this numpy (tflite-runtime needs numpy<2: "
                 "`pip install 'numpy<2' tflite-runtime`; else `pip install --force-reinstall ai-edge-litert`)")


def check_inference(config: Config) -> Check:
    """Every model the runtime uses, run once on a real face: an interpreter built for another numpy, or a model
    the interpreter cannot execute, fails here rather than at the first visitor."""
    def body() -> Check:
        import numpy as np

        from edge.image_io import load_image
        from edge.resources import bundled_dir
        from edge.runner import load_models

        image = load_image(bundled_dir("demo") / INFERENCE_PHOTO)
        models = load_models(config, threads=1)
        start = time.perf_counter()
        faces = models.detector(image)
        detected = time.perf_counter()
        if len(faces) == 0:
            return Check("inference", False, f"the detector found no face in demo/{INFERENCE_PHOTO}",
                         "rebuild the MTCNN models (`doorface-convert mtcnn`) or reinstall doorface")
        vector = models.embedder(image, faces.landmarks[:1])[0]
        embedded = time.perf_counter()
        if not (np.all(np.isfinite(vector)) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3):
            return Check("inference", False, f"{models.embedder.key} gave a non-unit embedding", INFERENCE_FIX)
        return Check("inference", True, f"MTCNN found {len(faces)} face(s) in demo/{INFERENCE_PHOTO} in "
                                        f"{(detected - start) * 1e3:.0f} ms, {models.embedder.key} embedded it in "
                                        f"{(embedded - detected) * 1e3:.0f} ms (first run, 1 thread)")

    return _guard("inference", INFERENCE_FIX, body)


def run_checks(config: Config, *, source: Optional[str] = None, camera: bool = True) -> list[Check]:
    checks = [check_interpreter(), *check_models(config), check_inference(config), check_device(config)]
    if camera:
        checks.append(check_camera(config, source))
    checks += [check_gallery(config), check_broker(config), check_household(config)]
    return checks
