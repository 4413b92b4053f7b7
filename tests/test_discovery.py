"""Topics, event payloads and Home Assistant discovery configs (pure functions, no broker)."""

from __future__ import annotations

import json
import re

import pytest

from edge import __version__
from edge.discovery import (
    Topics,
    discovery_messages,
    event_messages,
    person_slugs,
    removal_messages,
    slugify,
)
from edge.events import Event

CONFIG_TOPIC = re.compile(r"^homeassistant/(event|sensor|image|binary_sensor)/doorface_door/[a-zA-Z0-9_-]+/config$")
PERSONS = ["Anna", "Zoë Müller", "Ben"]


def configs(persons=PERSONS, **kwargs) -> dict[str, dict]:
    options = dict(prefix="doorface", discovery_prefix="homeassistant", publish_crops=False)
    options.update(kwargs)
    messages = discovery_messages("door", persons, **options)
    assert all(m.retain and m.qos == 1 for m in messages)
    return {m.topic: json.loads(m.payload) for m in messages}


def test_configs_have_valid_ids_origin_device_and_unique_ids():
    found = configs()
    assert all(CONFIG_TOPIC.match(topic) for topic in found), sorted(found)
    unique_ids = [c["unique_id"] for c in found.values()]
    assert len(unique_ids) == len(set(unique_ids)) == 2 + 2 * len(PERSONS)  # presence + last seen per person
    for config in found.values():
        assert config["origin"]["name"] == "doorface" and config["origin"]["sw_version"] == __version__
        assert config["device"]["identifiers"] == ["doorface_door"]
        assert config["device"]["name"] == "doorface door"
        assert config["availability_topic"] == "doorface/door/availability"
        assert re.match(r"^[a-zA-Z0-9_-]+$", config["unique_id"])
    event = found["homeassistant/event/doorface_door/event/config"]
    assert event["event_types"] == ["recognized", "unknown"] and event["state_topic"] == "doorface/door/event"
    assert event["device_class"] == "motion"
    last = found["homeassistant/sensor/doorface_door/last_person/config"]
    assert last["state_topic"] == last["json_attributes_topic"] == "doorface/door/last_person"
    assert last["value_template"] == "{{ value_json.name }}"
    zoe = found["homeassistant/binary_sensor/doorface_door/person_zoe_muller/config"]
    assert zoe["name"] == "Zoë Müller" and zoe["device_class"] == "presence"
    assert zoe["state_topic"] == zoe["json_attributes_topic"] == "doorface/door/person/zoe_muller"
    assert zoe["value_template"] == "{{ value_json.state }}" and zoe["payload_on"] == "ON"
    assert "off_delay" not in zoe  # doorface sends OFF itself when the visit ends
    seen = found["homeassistant/sensor/doorface_door/person_zoe_muller_last_seen/config"]
    assert seen["name"] == "Zoë Müller last seen" and seen["device_class"] == "timestamp"
    assert seen["state_topic"] == "doorface/door/person/zoe_muller" and seen["value_template"] == (
        "{{ value_json.last_seen }}")


def test_image_entity_only_with_crops_and_custom_prefixes():
    assert not any("/image/" in topic for topic in configs())
    found = configs(publish_crops=True, prefix="home/doorface", discovery_prefix="ha")
    image = found["ha/image/doorface_door/face/config"]
    assert image["image_topic"] == "home/doorface/door/face" and image["content_type"] == "image/jpeg"
    assert found["ha/binary_sensor/doorface_door/person_anna/config"]["state_topic"] == "home/doorface/door/person/anna"


def test_support_url_is_optional_and_validated():
    message = discovery_messages("door", [], support_url="https://example.org/doorface")[0]
    assert json.loads(message.payload)["origin"]["support_url"] == "https://example.org/doorface"
    with pytest.raises(ValueError, match="support_url"):
        discovery_messages("door", [], support_url="example.org")


def test_bad_ids_are_rejected():
    with pytest.raises(ValueError, match="camera name"):
        discovery_messages("front door", PERSONS)
    with pytest.raises(ValueError, match="discovery_prefix"):
        discovery_messages("door", PERSONS, discovery_prefix="home/#")
    with pytest.raises(ValueError, match="prefix"):
        Topics("/doorface", "door")
    with pytest.raises(ValueError, match="slug"):
        Topics("doorface", "door").person("Anna")


def test_removal_messages_delete_configs_and_retained_state():
    messages = removal_messages("door", ["bob", "bob"], publish_crops=False)
    assert [(m.topic, m.payload, m.retain) for m in messages] == [
        ("homeassistant/binary_sensor/doorface_door/person_bob/config", b"", True),
        ("homeassistant/sensor/doorface_door/person_bob_last_seen/config", b"", True),
        ("doorface/door/person/bob", b"", True),
        ("homeassistant/image/doorface_door/face/config", b"", True),
    ]
    assert removal_messages("door", [], publish_crops=True) == []


def test_slug_rules():
    assert slugify("Zoë") == "zoe"
    assert slugify("  Anna-Lena  Müller ") == "anna_lena_muller"
    assert slugify("O'Brien, Seán") == "o_brien_sean"
    assert re.match(r"^p_[0-9a-f]{6}$", slugify("王小明"))
    assert slugify("王小明") == slugify("王小明") != slugify("李")
    with pytest.raises(ValueError):
        slugify("  ")


def test_colliding_names_get_distinct_stable_slugs():
    slugs = person_slugs(["Anna", "anna", "ANNA!", "Ben", "Anna"])  # duplicates collapse
    assert len(slugs) == 4 and len(set(slugs.values())) == 4
    assert slugs["Ben"] == "ben"
    assert all(re.match(r"^anna_[0-9a-f]{6}$", slugs[n]) for n in ("Anna", "anna", "ANNA!"))
    assert person_slugs(["Ben", "ANNA!", "anna", "Anna"]) == slugs  # order does not matter
    assert person_slugs(["王", "李"])["王"] != person_slugs(["王", "李"])["李"]
    assert all(re.match(r"^[a-z0-9_]+$", s) for s in slugs.values())


def make_event(kind="recognized", name="Zoë Müller", crop=None) -> Event:
    return Event(kind=kind, camera="door", name=name if kind == "recognized" else None, confidence=0.91,
                 distance=0.31, box=(10, 20, 110, 140), track_id=7, timestamp=1_790_000_000.5, embedder="dlib_resnet",
                 frames=5, crop_jpeg=crop)


def test_event_messages_topics_payloads_and_order():
    topics = Topics("doorface", "door")
    event = make_event(crop=b"\xff\xd8jpeg")
    messages = event_messages(event, topics, slugs=person_slugs(PERSONS), publish_crops=True)
    assert [(m.topic, m.retain) for m in messages] == [
        ("doorface/door/face", False),
        ("doorface/door/person/zoe_muller", True),
        ("doorface/door/last_person", True),
        ("doorface/door/recognized", False),
        ("doorface/door/event", False),
    ]
    assert all(m.qos == 1 for m in messages)
    assert messages[0].payload == b"\xff\xd8jpeg"
    assert json.loads(messages[3].payload) == json.loads(messages[4].payload) == event.to_payload()
    person = json.loads(messages[1].payload)
    assert person["state"] == "ON" and person["name"] == "Zoë Müller" and person["confidence"] == 0.91
    assert person["last_seen"] == event.to_payload()["timestamp"]
    last = json.loads(messages[2].payload)
    assert last == {"name": "Zoë Müller", "confidence": 0.91, "timestamp": person["last_seen"],
                    "event_id": event.event_id}
    # No crop leaves the device unless configured; unknown faces touch no person state.
    assert [m.topic for m in event_messages(event, topics)][0] == "doorface/door/person/zoe_muller"
    unknown = event_messages(make_event("unknown", crop=b"jpeg"), topics, publish_crops=False)
    assert [m.topic for m in unknown] == ["doorface/door/unknown", "doorface/door/event"]
    assert json.loads(unknown[1].payload)["event_type"] == "unknown"


def test_an_unknown_event_tells_home_assistant_its_visitor_group():
    """The same JSON goes to the event entity: an automation reads `group` and `group_visits` off it."""
    event = Event("unknown", "door", None, 0.97, 0.8, (1, 2, 3, 4), 7, 1_800_000_000.0, "mobilefacenet",
                  group=12, group_visits=3)
    messages = event_messages(event, Topics("doorface", "door"))
    assert [m.topic for m in messages] == ["doorface/door/unknown", "doorface/door/event"]
    for message in messages:
        payload = json.loads(message.payload)
        assert payload["event_type"] == "unknown" and payload["group"] == 12 and payload["group_visits"] == 3
