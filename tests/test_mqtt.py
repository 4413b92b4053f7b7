"""The MQTT publisher against a real mosquitto on 127.0.0.1: delivery, retained state, last will, discovery, broker
outages, restarts of doorface while the broker is down, TLS and login errors. No mocks."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mqtt_broker import MOSQUITTO, SKIP_REASON, Broker, Subscriber, free_port

from edge.config import ConfigError, MqttConfig
from edge.events import Departure, Event, iso_utc
from edge.mqtt import MqttAuthError, MqttError, MqttPublisher
from edge.outbox import Outbox

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-Pw!"
AVAILABILITY = "doorface/door/availability"


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("tls_broker"), password={"doorface": PASSWORD, "ha": "ha-pw"},
                tls=True) as running:
        yield running


def config_for(broker: Broker, **overrides) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, keepalive=5, **overrides)


def publisher(config: MqttConfig, outbox: Outbox, persons=("Anna", "Ben")) -> MqttPublisher:
    return MqttPublisher(config, "door", outbox, list(persons), reconnect_min_delay=0.2, reconnect_max_delay=1.0)


def recognized(name: str = "Anna", crop=None) -> Event:
    return Event(kind="recognized", camera="door", name=name, confidence=0.93, distance=0.28, box=(1, 2, 30, 40),
                 track_id=1, timestamp=time.time(), embedder="dlib_resnet", frames=4, crop_jpeg=crop)


def unknown() -> Event:
    return Event(kind="unknown", camera="door", name=None, confidence=0.8, distance=None, box=(5, 6, 50, 60),
                 track_id=2, timestamp=time.time(), embedder="dlib_resnet", frames=9)


def event_ids(payloads) -> list[str]:
    return [json.loads(p)["event_id"] for p in payloads]


def last_is(value: bytes):
    return lambda payloads: bool(payloads) and payloads[-1] == value


def test_events_arrive_with_retained_state_and_availability(broker, tmp_path):
    config = config_for(broker, publish_crops=True)
    with Subscriber(broker) as sub, Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox:
        anna, stranger = recognized(crop=b"\xff\xd8 jpeg"), unknown()
        with publisher(config, outbox) as pub:
            assert pub.wait_connected(5)
            assert pub.connected
            pub.publish_event(anna)
            pub.publish_event(stranger)
            assert pub.flush(5)
            stats = pub.stats
            assert stats.delivered == 7 and stats.queued == 0 and stats.in_flight == 0 and stats.connects == 1
        assert [json.loads(p) for p in sub.wait_for("doorface/door/recognized")] == [anna.to_payload()]
        assert [json.loads(p) for p in sub.wait_for("doorface/door/unknown")] == [stranger.to_payload()]
        assert event_ids(sub.wait_for("doorface/door/event", 2)) == [anna.event_id, stranger.event_id]
        assert sub.wait_for("doorface/door/face") == [b"\xff\xd8 jpeg"]
        assert sub.wait_until(AVAILABILITY, last_is(b"offline")) == [b"online", b"offline"]  # clean stop
        assert not pub.connected

    with Subscriber(broker) as late:  # what Home Assistant sees when it (re)starts: the retained state
        assert late.wait_for(AVAILABILITY) == [b"offline"] and late.retained(AVAILABILITY) == [b"offline"]
        last = json.loads(late.wait_for("doorface/door/last_person")[0])
        assert last == {"name": "Anna", "confidence": 0.93, "timestamp": anna.to_payload()["timestamp"],
                        "event_id": anna.event_id}
        # Nobody is at the door once doorface stopped: presence is OFF, and when each was last seen is kept.
        assert [json.loads(p) for p in late.wait_for("doorface/door/person/anna")] == [
            {"state": "OFF", "name": "Anna", "last_seen": anna.to_payload()["timestamp"]}]
        assert [json.loads(p) for p in late.wait_for("doorface/door/person/ben")] == [
            {"state": "OFF", "name": "Ben", "last_seen": None}]
        assert late.wait_for("homeassistant/image/doorface_door/face/config")
        assert not late.payloads("doorface/door/recognized")  # events are not retained


def test_presence_is_on_during_the_visit_and_off_when_it_ends(broker, tmp_path):
    config = config_for(broker)
    anna = recognized("Anna")
    with Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox, publisher(config, outbox) as pub:
        assert pub.wait_connected(5)
        pub.publish_event(anna)
        assert pub.flush(5)
        with Subscriber(broker) as during:  # Home Assistant restarting mid-visit: she is there
            assert json.loads(during.wait_for("doorface/door/person/anna")[0])["state"] == "ON"
        pub.publish_departure(Departure("door", "Anna", anna.timestamp + 2.0))
        assert pub.flush(5)
        with Subscriber(broker) as after:  # and after her visit: she is not, and nothing replays her arrival
            assert [json.loads(p) for p in after.wait_for("doorface/door/person/anna")] == [
                {"state": "OFF", "name": "Anna", "last_seen": iso_utc(anna.timestamp + 2.0)}]
            assert not after.payloads("doorface/door/event")


@pytest.mark.parametrize("mode", ["mark", "drop"])
def test_an_event_that_waited_out_a_broker_outage_is_never_a_fresh_arrival(tmp_path, mode):
    broker = Broker(tmp_path / "broker", free_port())  # down while the visit happens
    config = config_for(broker, stale_after=1.0, stale_events=mode)
    anna = recognized("Anna")
    with Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox:
        pub = publisher(config, outbox).start()
        pub.publish_event(anna)
        time.sleep(1.5)  # longer than stale_after
        with broker, Subscriber(broker) as sub:
            assert pub.wait_connected(5) and pub.flush(5)
            pub.stop()
            sub.wait_until(AVAILABILITY, last_is(b"offline"))
            assert sub.payloads("doorface/door/event") == []  # Home Assistant's event entity never fires it
            assert all(json.loads(p)["state"] == "OFF" for p in sub.payloads("doorface/door/person/anna"))
            late = [json.loads(p) for p in sub.payloads("doorface/door/recognized")]
        assert len(outbox) == 0  # handled, not left queued
    if mode == "mark":
        assert late == [{**anna.to_payload(), "stale": True}]
    else:
        assert late == []


def test_discovery_is_retained_republished_for_home_assistant_and_cleaned_up(broker, tmp_path):
    anna_config = "homeassistant/binary_sensor/doorface_door/person_anna/config"
    ben_config = "homeassistant/binary_sensor/doorface_door/person_ben/config"
    with Subscriber(broker) as sub, Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox:
        with publisher(config_for(broker), outbox, ["Anna", "Ben"]) as pub:
            assert pub.wait_connected(5)
            assert json.loads(sub.wait_for(ben_config)[0])["name"] == "Ben"
            sub.wait_for("homeassistant/event/doorface_door/event/config")
            sub.wait_for("homeassistant/sensor/doorface_door/last_person/config")
            count = len(sub.wait_for(anna_config))
            sub.client.publish("homeassistant/status", "online", qos=1)  # Home Assistant restarted
            sub.wait_for(anna_config, count + 1)
        # Ben is no longer enrolled: his entity and retained state are deleted at the next start.
        with publisher(config_for(broker), outbox, ["Anna"]) as pub:
            assert pub.wait_connected(5)
            sub.wait_until(ben_config, last_is(b""))
            sub.wait_until("doorface/door/person/ben", last_is(b""))
            deadline = time.monotonic() + 5
            while outbox.get_meta("discovery_slugs:homeassistant:door") != '["anna"]':
                assert time.monotonic() < deadline, outbox.get_meta("discovery_slugs:homeassistant:door")
                time.sleep(0.05)
        assert not any(t.startswith("homeassistant/image/") and p for t in sub.messages for p in sub.payloads(t))
    with Subscriber(broker) as late:
        late.wait_for(anna_config)
        time.sleep(0.3)
        assert ben_config not in late.messages  # no retained config left for Ben


LWT_SCRIPT = """
import sys, time
from edge.config import MqttConfig
from edge.mqtt import MqttPublisher
from edge.outbox import Outbox
config = MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), keepalive=5, client_id="doorface-lwt-test")
publisher = MqttPublisher(config, "door", Outbox.open(sys.argv[2], 100), ["Anna"]).start()
assert publisher.wait_connected(10)
print("connected", flush=True)
time.sleep(60)
"""


def test_last_will_says_offline_when_the_process_is_killed(broker, tmp_path):
    with Subscriber(broker) as sub:
        proc = subprocess.Popen([sys.executable, "-c", LWT_SCRIPT, str(broker.port), str(tmp_path / "o.sqlite")],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready and proc.stdout.readline().strip() == "connected", proc.stderr.read()
            sub.wait_until(AVAILABILITY, last_is(b"online"))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            sub.wait_until(AVAILABILITY, last_is(b"offline"), timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    with Subscriber(broker) as late:
        assert late.wait_for(AVAILABILITY) == [b"offline"] and late.retained(AVAILABILITY) == [b"offline"]


def test_broker_killed_mid_stream_loses_no_event(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    broker = Broker(tmp_path / "broker", persistent=True).start()
    # A durable subscriber session: the broker keeps queueing for it while it reconnects after the restart.
    sub = Subscriber(broker, ("doorface/door/event",), client_id="durable-test-sub", clean_session=False).start()
    outbox = Outbox.open(tmp_path / "outbox.sqlite", 1000)
    pub = publisher(config_for(broker), outbox).start()
    try:
        assert pub.wait_connected(5)
        sent = [recognized("Anna" if i % 2 else "Ben") for i in range(5)]
        for event in sent:
            pub.publish_event(event)
        sub.wait_for("doorface/door/event", 5)
        broker.wait_saved()  # the subscriber's session is on disk
        burst = [unknown() for _ in range(3)]
        for event in burst:
            pub.publish_event(event)
        broker.kill()  # mid-stream: some of the burst is in flight, unacknowledged
        down = [recognized() for _ in range(4)] + [unknown() for _ in range(3)]
        for event in down:
            pub.publish_event(event)
        deadline = time.monotonic() + 5
        while pub.connected:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(outbox) >= 4 * 4 + 3 * 2  # everything published while down waits on disk
        broker.start()
        expected = {e.event_id for e in sent + burst + down}
        got = sub.wait_until("doorface/door/event", lambda ps: set(event_ids(ps)) >= expected, timeout=20)
        assert set(event_ids(got)) == expected  # none lost (a duplicate of an in-flight one is allowed)
        assert pub.flush(10) and len(outbox) == 0
        assert pub.stats.connects == 2
        outage = [r.getMessage() for r in caplog.records if r.name.startswith("edge") and r.levelno >= logging.WARNING]
        assert len(outage) == 1 and "lost the connection" in outage[0]  # one warning, no errors
    finally:
        pub.stop()
        sub.stop()
        outbox.close()
        broker.stop()


def test_events_queued_while_the_broker_is_down_survive_a_doorface_restart(tmp_path, caplog):
    broker = Broker(tmp_path / "broker", free_port())  # configured, not running yet
    path = tmp_path / "outbox.sqlite"
    config = config_for(broker)
    events = [recognized("Anna"), unknown(), recognized("Ben")]
    with caplog.at_level(logging.INFO), Outbox.open(path, 100) as outbox:
        first = publisher(config, outbox).start()
        assert first.wait_connected(1.5) is False  # not an error: it keeps retrying
        for event in events:
            first.publish_event(event)
        first.stop(timeout=1)
        assert len(outbox) == 4 + 2 + 4 + 2  # the three events, then Anna's and Ben's presence OFF at the stop
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # one warning however many retries
    assert f"broker 127.0.0.1:{broker.port} unreachable" in warnings[0] and str(path) in warnings[0]

    with broker, Subscriber(broker) as sub, Outbox.open(path, 100) as outbox:
        assert len(outbox) == 12
        with publisher(config, outbox) as second:
            assert second.wait_connected(5)
            assert second.flush(5)
        assert event_ids(sub.wait_for("doorface/door/event", 3)) == [e.event_id for e in events]
        assert len(sub.wait_for("doorface/door/recognized", 2)) == 2
        # Presence queued by the first process is not sent as an arrival by the second: its visits are over.
        assert all(json.loads(p)["state"] == "OFF" for p in sub.payloads("doorface/door/person/anna"))


def test_tls_and_password_login(tls_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("DOORFACE_MQTT_PASSWORD", PASSWORD)
    config = config_for(tls_broker, tls_ca_file=str(tls_broker.ca_file), username="doorface")
    with Subscriber(tls_broker, username="ha", password="ha-pw") as sub, \
            Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox, publisher(config, outbox) as pub:
        assert pub.wait_connected(5)
        event = recognized()
        pub.publish_event(event)
        assert event_ids(sub.wait_for("doorface/door/event")) == [event.event_id]


def test_wrong_password_is_a_clear_error_without_the_password(tls_broker, tmp_path, monkeypatch, caplog):
    wrong = "not-the-Pw-42"
    monkeypatch.setenv("DOORFACE_MQTT_PASSWORD", wrong)
    config = config_for(tls_broker, tls_ca_file=str(tls_broker.ca_file), username="doorface")
    with caplog.at_level(logging.DEBUG), Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox:
        pub = publisher(config, outbox).start()
        try:
            with pytest.raises(MqttAuthError) as info:
                pub.wait_connected(5)
            assert str(info.value) == (
                f"broker 127.0.0.1:{tls_broker.port} refused the login for user 'doorface': bad user name or password, "
                "or not authorized; "
                "check mqtt.username and DOORFACE_MQTT_PASSWORD")
            logins = tls_broker.log.read_text().count("as doorface-door")
            time.sleep(1.0)  # the client stopped retrying (its retry delay is 0.2 s)
            assert tls_broker.log.read_text().count("as doorface-door") == logins
            pub.publish_event(recognized())  # still queued on disk for a restart with the right password
            assert len(outbox) == 4
        finally:
            pub.stop(timeout=1)
        assert pub.error is info.value
    assert wrong not in caplog.text and PASSWORD not in caplog.text
    monkeypatch.delenv("DOORFACE_MQTT_PASSWORD")
    anonymous_config = config_for(tls_broker, tls_ca_file=str(tls_broker.ca_file))
    with Outbox.open(tmp_path / "outbox2.sqlite", 100) as outbox, publisher(anonymous_config, outbox) as anonymous, \
            pytest.raises(MqttAuthError, match="refused the anonymous login.*set mqtt.username and DOORFACE_MQTT"):
        anonymous.wait_connected(5)


def test_tls_with_the_wrong_ca_names_the_ca_file(tls_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("DOORFACE_MQTT_PASSWORD", PASSWORD)
    other_ca = tls_broker.tls_files["other_ca"]
    config = config_for(tls_broker, tls_ca_file=str(other_ca), username="doorface")
    with Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox, publisher(config, outbox) as pub:
        with pytest.raises(MqttError, match=rf"TLS: .*{tls_broker.port} is not valid for mqtt.tls_ca_file "
                                            rf".*other_ca\.crt") as info:
            pub.wait_connected(5)
        assert not isinstance(info.value, MqttAuthError)
    missing = config_for(tls_broker, tls_ca_file=str(tmp_path / "nope.pem"))
    with Outbox.open(tmp_path / "outbox.sqlite", 100) as outbox:
        pub = publisher(missing, outbox)
        with pytest.raises(ConfigError, match=r"mqtt\.tls_ca_file: .*nope\.pem not found"):
            pub.start()
        assert not pub.connected
