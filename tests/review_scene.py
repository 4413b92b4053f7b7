"""A gallery with a visit log filled by the real pipeline: a stranger comes to the door three times (three other LFW
photos of one person), an enrolled person once in between. Used by the visit-log and review-page tests."""

from __future__ import annotations

from pathlib import Path

import yaml
from door_scene import ENROLL, doorface, lfw_photo, write_scene

STRANGER = "Colin Powell"
STRANGER_VISITS = ["Colin_Powell_0040", "Colin_Powell_0170", "Colin_Powell_0198"]
KNOWN = "Tony Blair"
KNOWN_VISIT = "Tony_Blair_0053"


def write_review_config(folder: Path, scene: Path) -> Path:
    config = {
        "camera": {"name": "front_door", "source": str(scene)},
        "gallery": {"path": str(folder / "gallery.sqlite")},
        "mqtt": {"enabled": False},
        # The clip's visits are 2 s apart: each is its own visit, not the last one's continuation.
        "tracker": {"visit_gap": 1.0},
    }
    path = folder / "doorface.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stranger_scene(folder: Path, shared_data: Path) -> Path:
    """The stranger, the enrolled person, the stranger twice more; one photo each, all unlike the enrollment ones."""
    stems = [STRANGER_VISITS[0], KNOWN_VISIT, STRANGER_VISITS[1], STRANGER_VISITS[2]]
    return write_scene(folder / "door.mp4", [[lfw_photo(shared_data, stem)] for stem in stems])


def build_visit_log(folder: Path, shared_data: Path, env: dict) -> Path:
    """Enroll the known person, run `doorface run` on the scene; the config's path (its gallery holds the log)."""
    config = write_review_config(folder, stranger_scene(folder, shared_data))
    enrolled = doorface("enroll", KNOWN, *[str(lfw_photo(shared_data, s)) for s in ENROLL[KNOWN]],
                        "--config", str(config), env=env)
    assert enrolled.returncode == 0, enrolled.stderr
    run_clip(config, env)
    return config


def run_clip(config: Path, env: dict) -> list[dict]:
    """`doorface run` on the config's clip: its events (the JSON lines it prints without MQTT)."""
    import json

    result = doorface("run", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
