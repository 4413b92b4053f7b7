"""Three doors, one household, end to end: three `doorface` cameras as separate processes (the real CLI), each with
its own gallery and camera name, a real mosquitto with persistence on 127.0.0.1, real LFW faces on a door clip.

The garage camera is off while a person is enrolled at the front door, recognized at the back door, then removed
there, and another renamed; the broker restarts in between; a device without the household key forges a person.
Every camera ends with the same gallery, the garage one included, from its first frame after it comes back.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from door_scene import ENROLL, PERSON_A, PERSON_B, VISITS, doorface, lfw_photo, write_scene
from mqtt_broker import MOSQUITTO, SKIP_REASON, Broker
from paho.mqtt.enums import CallbackAPIVersion

from edge.household import SCHEMA, Topics, person_id_for

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)

HOUSEHOLD = "home"
KEY = "f3a1c2d4e5b60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00"


def camera_config(folder, broker, name: str, clip) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "camera": {"name": name, "source": str(clip)},
        "gallery": {"path": str(folder / "gallery.sqlite"), "watch_interval": 0.5},
        "mqtt": {"host": broker.host, "port": broker.port, "queue_path": str(folder / "outbox.sqlite"),
                 "keepalive": 5, "discovery": False},
        "household": {"name": HOUSEHOLD, "key": KEY, "sync_wait": 15.0},
    }
    path = folder / "doorface.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def names_in(config: str) -> list[str]:
    gallery = yaml.safe_load(Path(config).read_text())["gallery"]["path"]
    with sqlite3.connect(gallery) as conn:
        return sorted(name for (name,) in conn.execute("SELECT name FROM persons"))


def recognized(result) -> list[str]:
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [e["name"] for e in events if e["event_type"] == "recognized"]


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def test_three_cameras_share_one_gallery(tmp_path, shared_data, cli_env):
    clip = write_scene(tmp_path / "door.mp4", [[lfw_photo(shared_data, s) for s in visit] for visit in VISITS[:2]],
                       gap_frames=10)
    photos = {name: [str(lfw_photo(shared_data, s)) for s in stems] for name, stems in ENROLL.items()}
    with Broker(tmp_path / "broker", persistent=True) as broker:
        front, back, garage = (camera_config(tmp_path / name, broker, name, clip)
                               for name in ("front", "back", "garage"))

        # The garage camera enrolls Serena and shares her, then goes off for everything that follows.
        result = ok(doorface("enroll", PERSON_B, *photos[PERSON_B], "--config", garage, env=cli_env))
        assert f"shared with household '{HOUSEHOLD}'" in result.stderr

        # Tony is enrolled at the front door; the back door, started afterwards with an empty gallery, knows both
        # from its first visitor on.
        result = ok(doorface("enroll", PERSON_A, *photos[PERSON_A], "--config", front, env=cli_env))
        assert f"shared with household '{HOUSEHOLD}'" in result.stderr
        broker.restart()  # retained messages are on disk: nothing is lost
        result = ok(doorface("run", "--config", back, "--print-events", env=cli_env))
        assert recognized(result) == [PERSON_A, PERSON_B], result.stderr
        assert names_in(back) == sorted([PERSON_A, PERSON_B])

        # At the back door Tony is removed and Serena renamed; each command shares its change itself.
        ok(doorface("people", "remove", PERSON_A, "--config", back, env=cli_env))
        result = ok(doorface("people", "rename", PERSON_B, "Serena", "--config", back, env=cli_env))
        assert f"shared with household '{HOUSEHOLD}'" in result.stderr

        # A device on the broker without the key forges a person: every camera rejects it.
        forged_id = person_id_for("Mallory")
        vector = base64.b64encode(bytes(4 * 192)).decode()
        topics = Topics.of("doorface", HOUSEHOLD)
        forged = {"schema": SCHEMA, "household": HOUSEHOLD, "person": forged_id, "from": "front", "sig": "0" * 64,
                  "state": {"name": "Mallory", "named": [999, "front"], "deleted": None, "removed": [],
                            "samples": [{"id": "0" * 24, "added": [999, "front"], "embedder": "e" * 64,
                                         "vector": vector, "crop": None}],
                            "embedders": [{"key": "mobilefacenet", "sha256": "e" * 64, "dim": 192,
                                           "metric": "cosine"}]}}
        intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
        intruder.connect(broker.host, broker.port)
        intruder.loop_start()
        intruder.publish(topics.person(forged_id), json.dumps(forged), qos=1, retain=True).wait_for_publish(5)
        intruder.disconnect()
        intruder.loop_stop()
        broker.restart()
        doctor = doorface("doctor", "--config", front, "--no-camera", env=cli_env)
        assert "[FAIL] household" in doctor.stdout and "bad signature" in doctor.stdout, doctor.stdout
        assert f"household '{HOUSEHOLD}' on the broker: Serena; 1 removed" in doctor.stdout

        # The front door no longer recognizes Tony, and knows Serena under her new name.
        result = ok(doorface("run", "--config", front, "--print-events", env=cli_env))
        assert recognized(result) == ["Serena"], result.stderr
        assert names_in(front) == ["Serena"]
        assert result.stderr.count("household: rejected the message") == 1
        assert "bad signature" in result.stderr

        # The garage camera, off during all of it, catches up before its first frame.
        result = ok(doorface("run", "--config", garage, "--print-events", env=cli_env))
        assert recognized(result) == ["Serena"], result.stderr
        assert names_in(garage) == ["Serena"]
        assert "Mallory" not in json.dumps(names_in(garage))


def test_a_change_made_while_the_broker_is_down_is_shared_by_the_next_run(tmp_path, shared_data, cli_env):
    clip = write_scene(tmp_path / "door.mp4", [[lfw_photo(shared_data, s) for s in VISITS[0]]], gap_frames=10)
    broker = Broker(tmp_path / "broker", persistent=True)  # not started yet: the broker is down
    front, back = (camera_config(tmp_path / name, broker, name, clip) for name in ("front", "back"))
    for config in (front, back):
        data = yaml.safe_load(Path(config).read_text())
        data["household"]["sync_wait"] = 1.0
        Path(config).write_text(yaml.safe_dump(data))
    photos = [str(lfw_photo(shared_data, s)) for s in ENROLL[PERSON_A]]
    result = ok(doorface("enroll", PERSON_A, *photos, "--config", front, env=cli_env))
    assert "the change is shared with the other cameras by the next `doorface run`" in result.stderr
    with broker:
        assert recognized(ok(doorface("run", "--config", back, "--print-events", env=cli_env))) == []
        result = ok(doorface("run", "--config", front, "--print-events", env=cli_env))  # shares it at start
        assert recognized(result) == [PERSON_A], result.stderr
        result = ok(doorface("run", "--config", back, "--print-events", env=cli_env))
        assert recognized(result) == [PERSON_A], result.stderr
