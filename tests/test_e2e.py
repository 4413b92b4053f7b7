"""End to end, with real parts only: the shipped int8 models, real LFW photos, the `doorface` command line, a SQLite
gallery and a real mosquitto started on a free 127.0.0.1 port.

Two persons are enrolled from three photos each; a video composed from OTHER photos of them, then of a stranger,
runs through `doorface run`; a subscriber must see exactly one recognized event for each and one unknown event,
plus valid Home Assistant discovery configs.
"""

from __future__ import annotations

import json
import re

import pytest
from door_scene import PERSON_A, PERSON_B, doorface, enroll_both, write_config
from mqtt_broker import MOSQUITTO, SKIP_REASON, Broker, Subscriber

ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)


def test_door_video_gives_one_event_per_visitor_over_mqtt(tmp_path, door_video, shared_data, cli_env):
    with Broker(tmp_path / "broker") as broker, Subscriber(broker, ("doorface/#", "homeassistant/#")) as sub:
        config = write_config(tmp_path, broker, door_video)
        enroll_both(config, shared_data, cli_env)
        result = doorface("run", "--config", str(config), env=cli_env)
        assert result.returncode == 0, result.stderr
        recognized = [json.loads(p) for p in sub.wait_for("doorface/front_door/recognized", 2)]
        unknown = [json.loads(p) for p in sub.wait_for("doorface/front_door/unknown", 1)]
        sub.wait_until("doorface/front_door/availability", lambda p: p and p[-1] == b"offline")
        discovery = {topic: [json.loads(p) for p in payloads if p]
                     for topic in list(sub.messages) if topic.startswith("homeassistant/")
                     for payloads in [sub.payloads(topic)]}
        presence = {topic: [json.loads(p)["state"] for p in sub.payloads(topic)]
                    for topic in list(sub.messages) if topic.startswith("doorface/front_door/person/")}
        with Subscriber(broker, ("doorface/#",)) as late:  # Home Assistant restarting after the run
            # The broker sends retained messages in no promised order: wait for each topic, not for the first.
            for topic in presence:
                late.wait_for(topic)
            retained = {topic: json.loads(late.retained(topic)[-1]) for topic in presence if late.retained(topic)}

    # Exactly one event per visitor, with the right names, in order.
    assert [e["name"] for e in recognized] == [PERSON_A, PERSON_B]
    assert len(unknown) == 1 and unknown[0]["name"] is None
    # The stranger's unknown-visitor group (the visit log is on by default), for "the same stranger again".
    assert isinstance(unknown[0]["group"], int) and unknown[0]["group_visits"] == 1
    assert all(e["group"] is None for e in recognized)
    for event in recognized + unknown:
        assert event["camera"] == "front_door" and event["embedder"] == "mobilefacenet"
        assert 0.0 <= event["confidence"] <= 1.0 and len(event["box"]) == 4
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", event["timestamp"])
    assert all(e["confidence"] > 0.5 for e in recognized)
    assert len({e["event_id"] for e in recognized + unknown}) == 3
    # The event entity's topic carries the same events.
    assert sorted(json.loads(p)["event_id"] for p in sub.payloads("doorface/front_door/event")) == \
        sorted(e["event_id"] for e in recognized + unknown)

    # Valid Home Assistant discovery: ids, device, origin, availability; the entities the README lists.
    configs = {topic: payloads[-1] for topic, payloads in discovery.items() if payloads}
    components = sorted(topic.split("/")[1] for topic in configs)
    assert components == ["binary_sensor", "binary_sensor", "event", "sensor", "sensor", "sensor"]
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for topic, payload in configs.items():
        parts = topic.split("/")
        assert len(parts) == 5 and parts[-1] == "config" and all(ID_RE.match(p) for p in parts[2:4]), topic
        assert ID_RE.match(payload["unique_id"])
        assert payload["origin"]["name"] == "doorface"
        assert payload["device"]["identifiers"]
        assert any("availability" in k for k in payload)
    event_config = next(c for t, c in configs.items() if t.startswith("homeassistant/event/"))
    assert sorted(event_config["event_types"]) == ["recognized", "unknown"]
    assert event_config["device_class"] == "motion"
    sensors = [c for t, c in configs.items() if t.startswith("homeassistant/binary_sensor/")]
    assert sorted(c["name"] for c in sensors) == sorted([PERSON_A, PERSON_B])
    assert all(c["device_class"] == "presence" and "off_delay" not in c for c in sensors)
    last_seen = [c for t, c in configs.items() if t.endswith("_last_seen/config")]
    assert sorted(c["name"] for c in last_seen) == sorted(f"{p} last seen" for p in (PERSON_A, PERSON_B))
    assert all(c["device_class"] == "timestamp" for c in last_seen)

    # Presence: ON with each person's event, OFF once doorface stopped; what a restarted Home Assistant reads is
    # the truth (nobody at the door, and when each was last seen), never a replayed arrival.
    assert sorted(presence) == sorted(f"doorface/front_door/person/{s}" for s in ("serena_williams", "tony_blair"))
    assert all(states[-1] == "OFF" and "ON" in states for states in presence.values()), presence
    assert {topic: state["state"] for topic, state in retained.items()} == {topic: "OFF" for topic in presence}
    seen = {state["name"]: state["last_seen"] for state in retained.values()}
    by_name = {e["name"]: e["timestamp"] for e in recognized}
    assert all(seen[name] >= by_name[name] for name in by_name)  # seen at or after the event


def test_doorface_run_with_a_wrong_password_says_so(tmp_path, door_video, cli_env):
    with Broker(tmp_path / "broker", password={"door": "right-secret"}) as broker:
        config = write_config(tmp_path, broker, door_video, username="door")
        result = doorface("run", "--config", str(config), "--max-frames", "1",
                          env={**cli_env, "DOORFACE_MQTT_PASSWORD": "wrong-secret"})
    assert result.returncode == 2
    assert "refused" in result.stderr and "door" in result.stderr
    assert "wrong-secret" not in result.stderr and "Traceback" not in result.stderr
