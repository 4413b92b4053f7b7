"""Compose a door-camera video from real photos: each visitor walks slowly across a 640×480 frame, with empty
frames between visits. Used by the end-to-end tests and the fault tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

FRAME_SIZE = (640, 480)
FPS = 10.0
FACE_SIDE = 300  # an LFW photo (250×250, face ≈ 110 px) shown at this size: a face of ≈ 130 px


def _backdrop(rng: np.random.Generator) -> np.ndarray:
    w, h = FRAME_SIZE
    base = np.full((h, w, 3), (96, 104, 110), dtype=np.uint8)  # a grey door frame
    noise = rng.normal(0, 4, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def visit_frames(photos: Sequence[Path], frames_per_photo: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each photo shown for ``frames_per_photo`` frames, drifting right and growing a little (walking closer)."""
    out = []
    w, h = FRAME_SIZE
    for photo in photos:
        image = cv2.imread(str(photo))
        if image is None:
            raise FileNotFoundError(photo)
        for k in range(frames_per_photo):
            side = FACE_SIDE + 2 * k
            face = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
            frame = _backdrop(rng)
            x = 120 + 4 * k
            y = max(0, (h - side) // 2 - 20)
            frame[y:y + side, x:x + side] = face[: h - y, : w - x]
            out.append(frame)
    return out


def write_scene(path: Path, visits: Sequence[Sequence[Path]], *, frames_per_photo: int = 10,
                gap_frames: int = 20, seed: int = 0) -> Path:
    """An mp4 of the visits in order, ``gap_frames`` empty frames before, between and after them."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, FRAME_SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for frame in [_backdrop(rng) for _ in range(gap_frames)]:
            writer.write(frame)
        for photos in visits:
            for frame in visit_frames(photos, frames_per_photo, rng):
                writer.write(frame)
            for _ in range(gap_frames):
                writer.write(_backdrop(rng))
    finally:
        writer.release()
    return path


PERSON_A = "Tony Blair"
PERSON_B = "Serena Williams"
ENROLL = {PERSON_A: ["Tony_Blair_0018", "Tony_Blair_0032", "Tony_Blair_0048"],
          PERSON_B: ["Serena_Williams_0001", "Serena_Williams_0003", "Serena_Williams_0014"]}
VISITS = [["Tony_Blair_0053", "Tony_Blair_0064"], ["Serena_Williams_0032", "Serena_Williams_0040"],
          ["Hugo_Chavez_0002", "Hugo_Chavez_0027"]]


def lfw_photo(shared_data: Path, stem: str) -> Path:
    return shared_data / "lfw" / "images" / stem.rsplit("_", 1)[0] / f"{stem}.jpg"


def doorface(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def door_video(folder: Path, shared_data: Path) -> Path:
    """The standard scene: person A, person B (other photos than their enrollment ones), then a stranger."""
    visits = [[lfw_photo(shared_data, s) for s in visit] for visit in VISITS]
    return write_scene(folder / "door.mp4", visits)


def write_config(folder: Path, broker, scene: Path, **mqtt_extra) -> Path:
    """A user config for the scene: gallery and event queue in ``folder``; MQTT to ``broker`` (None: disabled)."""
    mqtt = {"enabled": False} if broker is None else {
        "host": broker.host, "port": broker.port, "queue_path": str(folder / "outbox.sqlite"), "keepalive": 5,
        **mqtt_extra}
    config = {
        "camera": {"name": "front_door", "source": str(scene)},
        "gallery": {"path": str(folder / "gallery.sqlite")},
        "mqtt": mqtt,
    }
    path = folder / "doorface.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def enroll_both(config: Path, shared_data: Path, env: dict) -> None:
    for name, stems in ENROLL.items():
        result = doorface("enroll", name, *[str(lfw_photo(shared_data, s)) for s in stems], "--config", str(config),
                          env=env)
        assert result.returncode == 0, result.stderr
        assert f"enrolled {name!r}: 3 new face(s)" in result.stderr
