"""Topics, payloads and Home Assistant MQTT discovery configs: pure functions of plain inputs.

Topics (``<prefix>`` defaults to ``doorface``, ``<camera>`` is ``camera.name``):

- ``<prefix>/<camera>/recognized`` and ``<prefix>/<camera>/unknown``: the event JSON (qos 1, not retained).
- ``<prefix>/<camera>/event``: the same JSON, which carries ``event_type``, for Home Assistant's ``event`` entity.
- ``<prefix>/<camera>/last_person``: retained ``{name, confidence, timestamp, event_id}`` of the last recognized
  event.
- ``<prefix>/<camera>/person/<slug>``: retained ``{state: "ON", name, last_seen, confidence, event_id}`` when the
  person's visit starts (their ``recognized`` event), ``{state: "OFF", name, last_seen}`` when it ends (not seen for
  ``tracker.visit_gap`` seconds), when doorface stops, and on its next start after a crash; so the retained state
  Home Assistant reads after a restart of its own is the true one, never a stale arrival.
- ``<prefix>/<camera>/face``: the JPEG face crop, only with ``mqtt.publish_crops`` (not retained).
- ``<prefix>/<camera>/availability``: retained ``online`` / ``offline`` (also the last will).

Discovery configs go to ``<discovery_prefix>/<component>/doorface_<camera>/<object_id>/config`` (retained), all
attached to one device per camera, each with a ``unique_id``, the availability topic and an ``origin`` block.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Optional

from edge import __version__
from edge.events import RECOGNIZED, UNKNOWN, Event
from edge.outbox import Message

ID_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
SLUG_RE = re.compile(r"^[a-z0-9_]+$")
ONLINE = "online"
OFFLINE = "offline"
ORIGIN_NAME = "doorface"
SUPPORT_URL: Optional[str] = None
"""Project page for Home Assistant's ``origin.support_url``; left out of the configs while unset (HA accepts an
origin without it, but drops a config whose support_url is not a valid URL)."""
DEVICE_MODEL = "doorface face recognition camera"
_URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$")


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValueError(f"{what} may only hold letters, digits, '_' and '-', got {value!r}")
    return value


def _check_prefix(value: str, what: str) -> str:
    if not value or any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
        raise ValueError(f"{what} must be a topic without wildcards or leading/trailing '/', got {value!r}")
    return value


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]


def slugify(name: str) -> str:
    """A stable ``[a-z0-9_]`` id for a display name: ``"Zoë Smith"`` → ``"zoe_smith"``.

    Accents are folded (NFKD); every other run of non-alphanumerics becomes ``_``. A name with no latin letter or
    digit at all (``"王"``) gets ``p_`` plus a short hash of the name.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a person name must be a non-empty string, got {name!r}")
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", folded).strip("_")
    return slug or f"p_{_short_hash(name)}"


def person_slugs(persons: Iterable[str]) -> dict[str, str]:
    """Name → slug for all persons, unique: names that slug alike (``"Anna"``, ``"anna"``) each get their slug plus
    ``_`` and a short hash of the name, so neither depends on the order or on which was enrolled first."""
    names = list(dict.fromkeys(persons))
    plain = {name: slugify(name) for name in names}
    counts: dict[str, int] = {}
    for slug in plain.values():
        counts[slug] = counts.get(slug, 0) + 1
    slugs = {name: slug if counts[slug] == 1 else f"{slug}_{_short_hash(name)}" for name, slug in plain.items()}
    if len(set(slugs.values())) != len(slugs):  # a hash suffix ran into another person's plain slug
        raise ValueError(f"person names give clashing ids: {sorted(names)}; rename one of them")
    return slugs


@dataclass(frozen=True)
class Topics:
    """The state topics of one camera."""

    prefix: str
    camera: str

    def __post_init__(self) -> None:
        _check_prefix(self.prefix, "prefix")
        _check_id(self.camera, "camera name")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.camera}"

    def kind(self, kind: str) -> str:
        if kind not in (RECOGNIZED, UNKNOWN):
            raise ValueError(f"event kind must be {RECOGNIZED!r} or {UNKNOWN!r}, got {kind!r}")
        return f"{self.base}/{kind}"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def last_person(self) -> str:
        return f"{self.base}/last_person"

    @property
    def face(self) -> str:
        return f"{self.base}/face"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    def person(self, slug: str) -> str:
        if not SLUG_RE.match(slug):
            raise ValueError(f"person slug must match [a-z0-9_]+, got {slug!r}")
        return f"{self.base}/person/{slug}"


def _json(payload: Mapping) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")


def event_messages(event: Event, topics: Topics, *, slugs: Optional[Mapping[str, str]] = None,
                   publish_crops: bool = False) -> list[Message]:
    """The messages of one event, in the order they are sent: the crop first (so an automation triggered by the
    event finds the new picture), then the person state, then the event itself."""
    payload = _json(event.to_payload())
    messages = []
    if publish_crops and event.crop_jpeg:
        messages.append(Message(topics.face, bytes(event.crop_jpeg), qos=1, retain=False))
    if event.kind == RECOGNIZED:
        name = event.name
        slug = (slugs or {}).get(name) or slugify(name)
        data = event.to_payload()
        messages.append(Message(topics.person(slug), _json({
            "state": "ON", "name": name, "last_seen": data["timestamp"], "confidence": data["confidence"],
            "event_id": event.event_id}), qos=1, retain=True))
        messages.append(Message(topics.last_person, _json({
            "name": name, "confidence": data["confidence"], "timestamp": data["timestamp"],
            "event_id": event.event_id}), qos=1, retain=True))
    messages.append(Message(topics.kind(event.kind), payload, qos=1, retain=False))
    messages.append(Message(topics.event, payload, qos=1, retain=False))
    return messages


def presence_off(topics: Topics, slug: str, name: str, last_seen: Optional[str]) -> Message:
    """The retained OFF state of a person's presence; ``last_seen`` (ISO 8601) is kept for their timestamp sensor."""
    state = {"state": "OFF", "name": name, "last_seen": last_seen}
    return Message(topics.person(slug), _json(state), qos=1, retain=True)


def node_id(camera: str) -> str:
    return f"doorface_{_check_id(camera, 'camera name')}"


def config_topic(discovery_prefix: str, component: str, camera: str, object_id: str) -> str:
    _check_prefix(discovery_prefix, "discovery_prefix")
    _check_id(component, "component")
    _check_id(object_id, "object id")
    return f"{discovery_prefix}/{component}/{node_id(camera)}/{object_id}/config"


def origin(support_url: Optional[str] = SUPPORT_URL) -> dict:
    block = {"name": ORIGIN_NAME, "sw_version": __version__}
    if support_url:
        if not _URL_RE.match(support_url):
            raise ValueError(f"support_url must be an http(s) URL, got {support_url!r}")
        block["support_url"] = support_url
    return block


def device(camera: str) -> dict:
    return {"identifiers": [node_id(camera)], "name": f"doorface {camera}", "manufacturer": "doorface",
            "model": DEVICE_MODEL, "sw_version": __version__}


def _entity(topics: Topics, object_id: str, name: Optional[str], *, support_url: Optional[str]) -> dict:
    unique_id = f"{node_id(topics.camera)}_{_check_id(object_id, 'object id')}"
    return {
        "name": name,
        "unique_id": unique_id,
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device(topics.camera),
        "origin": origin(support_url),
    }


def discovery_messages(camera: str, persons: Iterable[str], *, prefix: str = "doorface",
                       discovery_prefix: str = "homeassistant", publish_crops: bool = False,
                       support_url: Optional[str] = SUPPORT_URL) -> list[Message]:
    """The retained discovery configs of one camera and its enrolled persons.

    Entities: an ``event`` (device class ``motion``: the camera saw a visitor; event types ``recognized`` /
    ``unknown``, attributes = the event payload), a ``sensor`` with the last recognized person's name, an ``image``
    of the last face (only with ``publish_crops``), and per person a presence ``binary_sensor`` (on during their
    visit) and a ``timestamp`` sensor of when they were last seen. Raises ValueError on an id outside
    ``[a-zA-Z0-9_-]``.
    """
    topics = Topics(prefix, camera)
    configs: list[tuple[str, str, dict]] = []

    event = _entity(topics, "event", "Visitor", support_url=support_url)
    event.update(state_topic=topics.event, event_types=[RECOGNIZED, UNKNOWN], device_class="motion",
                 icon="mdi:face-recognition")
    configs.append(("event", "event", event))

    last = _entity(topics, "last_person", "Last person", support_url=support_url)
    last.update(state_topic=topics.last_person, value_template="{{ value_json.name }}",
                json_attributes_topic=topics.last_person, icon="mdi:account-check")
    configs.append(("sensor", "last_person", last))

    if publish_crops:
        face = _entity(topics, "face", "Last face", support_url=support_url)
        face.update(image_topic=topics.face, content_type="image/jpeg")
        configs.append(("image", "face", face))

    for name, slug in person_slugs(persons).items():
        object_id = f"person_{slug}"
        presence = _entity(topics, object_id, name, support_url=support_url)
        presence.update(state_topic=topics.person(slug), value_template="{{ value_json.state }}",
                        payload_on="ON", payload_off="OFF", device_class="presence",
                        json_attributes_topic=topics.person(slug))
        configs.append(("binary_sensor", object_id, presence))
        seen = _entity(topics, f"{object_id}_last_seen", f"{name} last seen", support_url=support_url)
        seen.update(state_topic=topics.person(slug), device_class="timestamp", icon="mdi:account-clock",
                    value_template="{{ value_json.last_seen }}")  # null renders "None": unknown
        configs.append(("sensor", f"{object_id}_last_seen", seen))

    return [Message(config_topic(discovery_prefix, component, camera, object_id), _json(config), qos=1, retain=True)
            for component, object_id, config in configs]


def removal_messages(camera: str, removed_slugs: Iterable[str], *, prefix: str = "doorface",
                     discovery_prefix: str = "homeassistant", publish_crops: bool = True) -> list[Message]:
    """Empty retained messages that delete the discovery configs (and retained presence state) of persons no
    longer enrolled, and the image entity's config when ``publish_crops`` is off."""
    topics = Topics(prefix, camera)
    messages = []
    for slug in dict.fromkeys(removed_slugs):
        messages.append(Message(config_topic(discovery_prefix, "binary_sensor", camera, f"person_{slug}"), b"",
                                qos=1, retain=True))
        messages.append(Message(config_topic(discovery_prefix, "sensor", camera, f"person_{slug}_last_seen"), b"",
                                qos=1, retain=True))
        messages.append(Message(topics.person(slug), b"", qos=1, retain=True))
    if not publish_crops:
        messages.append(Message(config_topic(discovery_prefix, "image", camera, "face"), b"", qos=1, retain=True))
    return messages
