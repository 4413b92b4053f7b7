"""The household's gallery sync, piece by piece, on real parts: galleries enrolled from real LFW faces with the shipped
models, messages signed and checked as on the wire, a real mosquitto for the MQTT side. The three-process test over
the real CLI is tests/test_household_cameras.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from door_scene import ENROLL, PERSON_A, PERSON_B, lfw_photo
from mqtt_broker import MOSQUITTO, SKIP_REASON, Broker, Subscriber
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config, ConfigError, HouseholdConfig, MqttConfig, load_config
from edge.embedder import distance
from edge.enroll import enroll_photos
from edge.gallery import Gallery
from edge.household import (
    SCHEMA,
    HouseholdError,
    RejectedMessage,
    Topics,
    canonical,
    decode_message,
    encode_message,
    merge,
    person_id_for,
)
from edge.household_replica import Replica
from edge.household_sync import HouseholdSync
from edge.runner import load_models, open_gallery, thumbnail_embedder

HOUSEHOLD = "home"
KEY = b"0123456789abcdef0123456789abcdef"
TOPICS = Topics.of("doorface", HOUSEHOLD)
EXTRA_PHOTOS = {PERSON_A: ["Tony_Blair_0053", "Tony_Blair_0064"], PERSON_B: ["Serena_Williams_0032"]}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config()


@pytest.fixture(scope="module")
def models(config):
    return load_models(config, threads=1)


@pytest.fixture(scope="module")
def faces(shared_data, models, tmp_path_factory) -> dict[str, list[tuple[np.ndarray, bytes]]]:
    """(embedding, thumbnail) of each enrollment and extra photo of the two persons, made once."""
    out = {}
    folder = tmp_path_factory.mktemp("faces")
    spec = models.embedder.spec
    for name in (PERSON_A, PERSON_B):
        with Gallery.open(folder / f"{name}.sqlite", embedder_key=spec.key, embedder_sha256=spec.sha256,
                          dim=spec.dim, metric=spec.metric) as gallery:
            photos = [lfw_photo(shared_data, s) for s in ENROLL[name] + EXTRA_PHOTOS[name]]
            report = enroll_photos(gallery, name, photos, models.detector, models.embedder)
            assert report.enrolled == len(photos)
            out[name] = [(s.vector, s.thumbnail) for s in gallery.faces(name)]
    return out


class Camera:
    """One camera's gallery and replica, in this process."""

    def __init__(self, folder: Path, name: str, models, **replica_args) -> None:
        spec = models.embedder.spec
        self.gallery = Gallery.open(folder / f"{name}.sqlite", embedder_key=spec.key, embedder_sha256=spec.sha256,
                                    dim=spec.dim, metric=spec.metric)
        self.replica = Replica(self.gallery, household=HOUSEHOLD, camera=name, **replica_args)
        self.name = name

    def add(self, faces, person: str, which: slice, as_name=None) -> None:
        chosen = faces[person][which]
        self.gallery.add(as_name or person, np.stack([v for v, _ in chosen]), [f"photo{i}" for i in range(len(chosen))],
                         [t for _, t in chosen])

    def view(self) -> dict[str, list[str]]:
        """name → sorted hashes of its embeddings: what recognition sees."""
        return {p.name: sorted(np.asarray(s.vector, "<f4").tobytes().hex()[:16] for s in self.gallery.faces(p.name))
                for p in self.gallery.persons()}


def wire(state, sender: Camera, receiver: Camera):
    """A state through the wire format: signed by the sender, checked by the receiver."""
    topic = TOPICS.person(state.person_id)
    payload = encode_message(state, topic=topic, household=HOUSEHOLD, camera=sender.name, key=KEY)
    received, origin = decode_message(topic, payload, person_id=state.person_id, household=HOUSEHOLD, key=KEY,
                                      max_bytes=1 << 20, local=receiver.replica.local)
    assert origin == sender.name
    return received


def exchange(*cameras: Camera, rounds: int = 10) -> None:
    """Every camera's pass, then what it publishes delivered to every camera (itself too, as the broker echoes it),
    until nobody has anything new to say."""
    for _ in range(rounds):
        for cam in cameras:
            cam.replica.sync_pass()
        outgoing = [(cam, state) for cam in cameras for state in cam.replica.to_publish()]
        if not outgoing:
            return
        for sender, state in outgoing:
            for receiver in cameras:
                receiver.replica.receive(wire(state, sender, receiver))
    raise AssertionError("the cameras did not converge")


def test_changes_on_one_camera_reach_the_other(tmp_path, models, faces):
    a, b = Camera(tmp_path, "front", models), Camera(tmp_path, "back", models)
    a.add(faces, PERSON_A, slice(0, 3))
    exchange(a, b)
    assert b.view() == a.view() and list(b.view()) == [PERSON_A]
    b.gallery.rename(PERSON_A, "Tony")  # rename
    exchange(a, b)
    assert list(a.view()) == ["Tony"]
    a.add(faces, PERSON_A, slice(3, 5), as_name="Tony")  # more samples
    exchange(a, b)
    assert len(b.view()["Tony"]) == 5 and b.view() == a.view()
    first = b.gallery.faces("Tony")[0]
    b.gallery.remove_samples("Tony", [first.id])  # exclude one sample
    exchange(a, b)
    assert len(a.view()["Tony"]) == 4 and a.view() == b.view()
    a.gallery.remove("Tony")
    exchange(a, b)
    assert a.view() == b.view() == {}
    # Sources say where a shared sample came from; thumbnails only travel with share_crops.
    a.add(faces, PERSON_B, slice(0, 1))
    exchange(a, b)
    assert b.gallery.sources(PERSON_B)[0].startswith("household:") and b.gallery.thumbnails(PERSON_B) == []


def test_a_camera_joining_later_gets_everything_and_thumbnails_travel_when_shared(tmp_path, models, faces):
    a = Camera(tmp_path, "front", models, share_crops=True)
    a.add(faces, PERSON_A, slice(0, 3))
    a.add(faces, PERSON_B, slice(0, 2))
    a.replica.sync_pass()
    late = Camera(tmp_path, "garage", models)
    for state in a.replica.to_publish():  # what the broker retains
        late.replica.receive(wire(state, a, late))
    late.replica.sync_pass()
    assert late.view() == a.view()
    assert len(late.gallery.thumbnails(PERSON_A)) == 3


def test_two_cameras_renaming_one_person_at_once_end_with_the_same_name(tmp_path, models, faces):
    a, b = Camera(tmp_path, "front", models), Camera(tmp_path, "back", models)
    a.add(faces, PERSON_A, slice(0, 3))
    exchange(a, b)
    a.gallery.rename(PERSON_A, "Tony")
    b.gallery.rename(PERSON_A, "Mr Blair")
    exchange(a, b)
    assert list(a.view()) == list(b.view()) == ["Tony"]  # same clock: the greater camera id ("front") decides


def test_a_remove_wins_over_an_older_add_and_a_later_enrollment_wins_over_the_remove(tmp_path, models, faces):
    a, b = Camera(tmp_path, "front", models), Camera(tmp_path, "back", models)
    a.add(faces, PERSON_A, slice(0, 3))
    exchange(a, b)
    old = a.replica.state(person_id_for(PERSON_A))
    b.gallery.remove(PERSON_A)
    exchange(a, b)
    a.replica.receive(old)  # the add again, replayed: older than the remove
    exchange(a, b)
    assert a.view() == b.view() == {}
    a.add(faces, PERSON_A, slice(3, 5))  # enrolled again after the remove was seen: a newer version
    exchange(a, b)
    assert list(b.view()) == [PERSON_A] and len(b.view()[PERSON_A]) == 2 and a.view() == b.view()


def test_a_name_given_up_by_a_rename_and_enrolled_again_is_someone_new(tmp_path, models, faces):
    a, b = Camera(tmp_path, "front", models), Camera(tmp_path, "back", models)
    a.add(faces, PERSON_A, slice(0, 3))
    exchange(a, b)
    b.gallery.rename(PERSON_A, "Tony B")
    exchange(a, b)
    a.add(faces, PERSON_B, slice(0, 2), as_name=PERSON_A)  # another face under the name Tony had
    exchange(a, b)
    assert a.view() == b.view()
    assert {name: len(v) for name, v in b.view().items()} == {"Tony B": 3, PERSON_A: 2}


def test_three_cameras_converge_whatever_the_order_of_messages(tmp_path, models, faces):
    rng = random.Random(7)
    cams = [Camera(tmp_path, name, models) for name in ("front", "back", "garage")]
    cams[0].add(faces, PERSON_A, slice(0, 3))
    cams[1].add(faces, PERSON_B, slice(0, 2))
    exchange(*cams)
    for step in range(12):  # random edits, each followed by a partial, shuffled delivery
        cam = rng.choice(cams)
        names = list(cam.view())
        action = rng.choice(["rename", "add", "exclude", "remove", "enroll"])
        if action == "enroll" or not names:
            person = rng.choice([PERSON_A, PERSON_B])
            if person not in cam.view():
                cam.add(faces, person, slice(rng.randrange(0, 3), 5))
        elif action == "rename":
            cam.gallery.rename(names[0], f"{names[0].split()[0]} {step}")
        elif action == "add":
            cam.gallery.add(names[0], faces[PERSON_A][step % 5][0][None], ["extra"])
        elif action == "exclude" and len(cam.gallery.faces(names[0])) > 1:
            cam.gallery.remove_samples(names[0], [cam.gallery.faces(names[0])[0].id])
        elif action == "remove":
            cam.gallery.remove(names[-1])
        cam.replica.sync_pass()
        messages = [(c, s) for c in cams for s in c.replica.to_publish()]
        rng.shuffle(messages)
        for sender, state in messages[: rng.randrange(0, len(messages) + 1)]:
            receiver = rng.choice(cams)
            receiver.replica.receive(wire(state, sender, receiver))
    exchange(*cams)
    views = [c.view() for c in cams]
    assert views[0] == views[1] == views[2]
    digests = [{pid: s.digest() for pid, s in c.replica.states().items()} for c in cams]
    assert digests[0] == digests[1] == digests[2]


def test_merge_is_commutative_associative_and_idempotent(tmp_path, models, faces):
    a, b, c = (Camera(tmp_path, name, models) for name in ("front", "back", "garage"))
    for cam, which, name in ((a, slice(0, 2), PERSON_A), (b, slice(1, 4), "Tony"), (c, slice(3, 5), PERSON_A)):
        cam.add(faces, PERSON_A, which, as_name=name)
        cam.replica.sync_pass()
    pid = person_id_for(PERSON_A)
    b.replica.receive(replace(b.replica.states()[person_id_for("Tony")], person_id=pid))
    sa, sb, sc = (cam.replica.state(pid) for cam in (a, b, c))
    assert merge(sa, sb) == merge(sb, sa)
    assert merge(merge(sa, sb), sc) == merge(sa, merge(sb, sc))
    assert merge(sa, sa) == sa


def _signed(camera: Camera, state, mutate=None, key=KEY) -> tuple[str, bytes]:
    topic = TOPICS.person(state.person_id)
    message = json.loads(encode_message(state, topic=topic, household=HOUSEHOLD, camera=camera.name, key=key))
    if mutate is not None:
        mutate(message)
        body = {k: v for k, v in message.items() if k != "sig"}
        message["sig"] = hmac.new(key, topic.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()
    return topic, json.dumps(message).encode()


def bad_messages(camera: Camera):
    """(why, topic, payload) of messages a camera must refuse; the signed ones carry the right signature."""
    state = camera.replica.state(person_id_for(PERSON_A))
    topic, good = _signed(camera, state)
    sample = lambda m: m["state"]["samples"][0]  # noqa: E731
    tampered = json.loads(good)
    tampered["state"]["name"] = "Mallory"
    return [
        ("over household.max_message_kb", topic, good + b" " * (1 << 20)),
        ("not JSON", topic, b"\x00garbage"),
        ("schema", *_signed(camera, state, lambda m: m.update(schema="doorface.household/0"))),
        ("expected the fields", *_signed(camera, state, lambda m: m["state"].pop("removed"))),
        ("bad signature", topic, json.dumps(tampered).encode()),
        ("bad signature", *_signed(camera, state, key=b"another household's key, long enough")),
        ("unknown embedder", *_signed(camera, state, lambda m: sample(m).update(embedder="e" * 64))),
        ("bytes; embedder", *_signed(camera, state, lambda m: sample(m).update(
            vector=base64.b64encode(b"\x00" * 40).decode()))),
        ("not a finite", *_signed(camera, state, lambda m: sample(m).update(
            vector=base64.b64encode(np.full(192, np.nan, "<f4").tobytes()).decode()))),
        ("not its content's", *_signed(camera, state, lambda m: sample(m).update(id="0" * 24))),
        ("declared with dim", *_signed(camera, state, lambda m: m["state"]["embedders"][0].update(dim=128))),
        ("does not match its topic", TOPICS.person(person_id_for(PERSON_B)), good),
    ]


def test_every_bad_message_is_rejected_saying_why(tmp_path, models, faces):
    a = Camera(tmp_path, "front", models)
    a.add(faces, PERSON_A, slice(0, 3))
    a.replica.sync_pass()
    for why, topic, payload in bad_messages(a):
        pid = TOPICS.person_id_of(topic)
        with pytest.raises(RejectedMessage, match=why):
            decode_message(topic, payload, person_id=pid, household=HOUSEHOLD, key=KEY, max_bytes=1 << 20,
                           local=a.replica.local)


def _sync_config(broker: Broker, tmp_path: Path, camera: str, **household) -> Config:
    base = load_config()
    return replace(base, camera=replace(base.camera, name=camera),
                   gallery=replace(base.gallery, path=str(tmp_path / f"{camera}.sqlite"), watch_interval=0.2),
                   mqtt=MqttConfig(host=broker.host, port=broker.port, keepalive=5),
                   household=HouseholdConfig(name=HOUSEHOLD, key=KEY.decode(), **household))


def _start(config: Config, models) -> HouseholdSync:
    spec = models.embedder.spec
    return HouseholdSync(config, Path(config.gallery.path), embedder_key=spec.key, embedder_sha256=spec.sha256,
                         dim=spec.dim, metric=spec.metric).start()


def rejections(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "household: rejected" in r.getMessage()]


@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
def test_bad_messages_on_the_broker_change_nothing_and_log_one_line_each(tmp_path, models, faces, caplog):
    writer = Camera(tmp_path, "front", models)
    writer.add(faces, PERSON_A, slice(0, 3))
    writer.replica.sync_pass()
    bad = bad_messages(writer)
    with Broker(tmp_path / "broker") as broker:
        config = _sync_config(broker, tmp_path, "back")
        with open_gallery(config, models.embedder.spec) as gallery:
            revision = gallery.revision()
            sync = _start(config, models)
            try:
                assert sync.wait_in_sync(10)
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="edge.household"), \
                        Subscriber(broker, (TOPICS.persons,)) as watcher:
                    intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id="intruder")
                    intruder.connect(broker.host, broker.port)
                    intruder.loop_start()
                    for _, topic, payload in bad:
                        intruder.publish(topic, payload, qos=1).wait_for_publish(5)
                    intruder.disconnect()
                    intruder.loop_stop()
                    deadline = time.monotonic() + 10
                    while len(rejections(caplog)) < len(bad) and time.monotonic() < deadline:
                        time.sleep(0.1)
                    assert watcher.payloads(TOPICS.person(person_id_for(PERSON_A)))  # they did reach the broker
            finally:
                sync.stop()
            lines = rejections(caplog)
            assert len(lines) == len(bad)
            for (why, _, _), line in zip(bad, lines):
                assert why in line
            assert gallery.revision() == revision and len(gallery) == 0


@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
def test_a_broker_that_lost_its_retained_messages_is_refilled_by_the_next_connect(tmp_path, models, faces):
    with Broker(tmp_path / "broker") as broker:  # no persistence: a restart loses every retained message
        config = _sync_config(broker, tmp_path, "front")
        with open_gallery(config, models.embedder.spec) as gallery:
            gallery.add(PERSON_A, np.stack([v for v, _ in faces[PERSON_A][:3]]), ["a", "b", "c"])
        sync = _start(config, models)
        try:
            assert sync.wait_in_sync(10)
            broker.restart()
            topic = TOPICS.person(person_id_for(PERSON_A))
            with Subscriber(broker, (TOPICS.persons,)) as late:
                payload = late.wait_for(topic, timeout=20)[-1]
            message = json.loads(payload)
            assert message["schema"] == SCHEMA and message["state"]["name"] == PERSON_A
            assert len(message["state"]["samples"]) == 3
        finally:
            sync.stop()


@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
def test_a_refused_login_stops_the_sync_saying_so(tmp_path, models, monkeypatch):
    with Broker(tmp_path / "broker", password={"doorface": "right-password"}) as broker:
        config = _sync_config(broker, tmp_path, "front")
        config = replace(config, mqtt=replace(config.mqtt, username="doorface"))
        monkeypatch.setenv(config.mqtt.password_env, "wrong-password")
        sync = _start(config, models)
        try:
            with pytest.raises(HouseholdError, match="refused the login"):
                sync.wait_ready(10)
        finally:
            sync.stop()


def test_a_pass_killed_half_way_is_finished_at_the_next_start(tmp_path, models, faces, monkeypatch):
    a, b = Camera(tmp_path, "front", models), Camera(tmp_path, "back", models)
    a.add(faces, PERSON_A, slice(0, 3))
    exchange(a, b)
    a.gallery.rename(PERSON_A, "Tony")
    a.add(faces, PERSON_A, slice(3, 5), as_name="Tony")
    a.replica.sync_pass()
    for state in a.replica.to_publish():
        b.replica.receive(wire(state, a, b))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")  # stands for SIGKILL: nothing after this point runs

    monkeypatch.setattr(b.gallery, "add", killed)
    with pytest.raises(KeyboardInterrupt):
        b.replica.sync_pass()  # renamed, samples not added yet
    assert list(b.view()) == ["Tony"] and len(b.view()["Tony"]) == 3
    monkeypatch.undo()
    b.replica.close()
    b.replica = Replica(b.gallery, household=HOUSEHOLD, camera="back")  # the next start
    pid = person_id_for(PERSON_A)
    before = b.replica.state(pid).digest()
    b.replica.sync_pass()
    assert b.view() == a.view() and len(b.view()["Tony"]) == 5
    assert b.replica.state(pid).digest() == before  # the half-done update was not taken for a local edit


def test_people_of_another_embedder_are_re_embedded_from_thumbnails_or_named_as_unusable(tmp_path, config, models,
                                                                                         faces, shared_data):
    dlib_config = replace(config, embedder=replace(config.embedder, model="dlib_resnet"))
    dlib = load_models(dlib_config, threads=1)
    other = Camera(tmp_path / "dlib", "garage", dlib, share_crops=True)
    (tmp_path / "dlib").mkdir(exist_ok=True)
    report = enroll_photos(other.gallery, PERSON_A, [lfw_photo(shared_data, s) for s in ENROLL[PERSON_A]],
                           dlib.detector, dlib.embedder)
    assert report.enrolled == 3
    other.replica.sync_pass()
    blind = Camera(tmp_path, "back", models)
    seeing = Camera(tmp_path, "front", models, reembed=thumbnail_embedder(config))
    for cam in (blind, seeing):
        for state in other.replica.to_publish():
            cam.replica.receive(wire(state, other, cam))
    assert blind.replica.sync_pass() == [f"{PERSON_A} (embedder dlib_resnet, no thumbnails)"]
    assert blind.view() == {}
    assert seeing.replica.sync_pass() == []
    vectors = np.stack([s.vector for s in seeing.gallery.faces(PERSON_A)])
    own = np.stack([v for v, _ in faces[PERSON_A][3:]])  # the same person's other photos, this camera's model
    threshold = models.manifest.entry("mobilefacenet").fields["thresholds"][config.embedder.threshold]
    assert len(vectors) == 3 and distance(own, vectors, "cosine").min() < threshold
    seeing.replica.sync_pass()
    assert seeing.replica.to_publish() == [] or all(  # the re-embedded samples are not shared as new ones
        {s.embedder for s in st.samples} == {dlib.embedder.spec.sha256} for st in seeing.replica.to_publish())


def test_the_household_key_must_be_long_and_the_name_an_id():
    with pytest.raises(ConfigError, match="openssl rand -hex 32"):
        HouseholdConfig(name="home", key="short")
    with pytest.raises(ConfigError, match="is not set"):
        HouseholdConfig(name="home")
    with pytest.raises(ConfigError, match="household.name"):
        HouseholdConfig(name="my home", key="k" * 32)
    assert not HouseholdConfig().enabled and HouseholdConfig(name="home", key="k" * 32).enabled
