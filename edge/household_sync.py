"""The household's gallery sync over MQTT: a thread per camera that merges what the broker sends and publishes what
the broker lacks (:class:`HouseholdSync`), the one-shot share of ``doorface enroll`` / ``people``
(:func:`sync_change`) and the read-only look of ``doorface doctor`` (:func:`probe_household`). The protocol is
:mod:`edge.household`, the local copy :mod:`edge.household_replica`."""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edge.config import Config, HouseholdConfig, MqttConfig
from edge.gallery import Gallery
from edge.household import (
    ID_HEX,
    EmbedderTag,
    HouseholdError,
    RejectedMessage,
    Topics,
    decode_message,
    encode_message,
)
from edge.household_replica import Reembed, Replica
from edge.mqtt import LOGIN_REFUSED, secure_client

log = logging.getLogger(__name__)
# --- over MQTT -------------------------------------------------------------------------------------------------------


def household_key(config: HouseholdConfig) -> bytes:
    if not config.enabled or not config.key:
        raise HouseholdError("household.name and household.key must be set to share the gallery")
    return config.key.encode()


class HouseholdSync:
    """Keeps one camera's gallery in sync with its household over MQTT, in a thread of its own.

    ``start()`` connects (in the background); :meth:`wait_ready` returns once the broker's retained gallery was taken
    in and this camera's changes were published (or after a timeout: the broker may be down, the thread keeps
    trying). The thread then merges each message as it comes and looks at the gallery every
    ``gallery.watch_interval`` seconds for local changes (its revision counter); :meth:`sync_now` asks for a pass at
    once. Uses its own gallery connection: the caller's ``Gallery`` sees the changes through its revision counter.
    """

    def __init__(self, config: Config, gallery_path: Path, *, embedder_key: str, embedder_sha256: str, dim: int,
                 metric: str, reembed: Optional[Reembed] = None, client_suffix: str = "household",
                 on_change: Optional[Callable[[], None]] = None) -> None:
        household = config.household
        if not household.enabled:
            raise HouseholdError("household.name is not set: this camera has no household to share its gallery with")
        self.config = config
        self.key = household_key(household)
        self.topics = Topics.of(config.mqtt.prefix, household.name)
        self.camera = config.camera.name
        self.client_id = f"{config.mqtt.client_id or 'doorface-' + self.camera}-{client_suffix}-{os.getpid()}"
        self._barrier_topic = self.topics.barrier(re.sub(r"[^A-Za-z0-9_-]", "_", self.client_id))
        self._gallery_args = dict(path=gallery_path, embedder_key=embedder_key, embedder_sha256=embedder_sha256,
                                  dim=dim, metric=metric)
        self._reembed = reembed
        self.on_change = on_change  # told after a pass that changed the gallery (the running matcher's watcher)
        self._inbox: queue.Queue = queue.Queue()
        self._state = threading.Condition()
        self._ready = False  # the retained gallery was taken in since the last connect
        self._in_sync = False
        self._passes = 0
        self._rejected = 0
        self._unusable: list[str] = []
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._client = None
        self._connected = False
        self._barrier_token = ""
        self._barrier_seen = False

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def start(self) -> HouseholdSync:
        mqtt: MqttConfig = self.config.mqtt
        client = secure_client(mqtt, self.client_id)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_log = None
        self._client = client
        self._thread = threading.Thread(target=self._run, name=f"doorface-household-{self.camera}", daemon=True)
        self._thread.start()
        client.connect_async(mqtt.host, mqtt.port, keepalive=mqtt.keepalive)
        client.loop_start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._inbox.put(("stop", None, None))
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._client = self._thread = None

    def __enter__(self) -> HouseholdSync:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- public -----------------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> bool:
        """True once the broker's retained gallery was merged into the local one (and ours published)."""
        return self._wait(lambda: self._ready, timeout)

    def wait_in_sync(self, timeout: float) -> bool:
        """True once the broker holds every person as this camera does (our changes arrived there)."""
        return self._wait(lambda: self._ready and self._in_sync, timeout)

    def sync_now(self) -> None:
        with self._state:
            self._in_sync = False
        self._inbox.put(("pass", None, None))

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def unusable(self) -> list[str]:
        return list(self._unusable)

    def _wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._state:
            while not predicate():
                if self._error is not None:
                    raise HouseholdError(f"household sync stopped: {self._error}") from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state.wait(remaining)
            return True

    # --- paho's thread: only hand over to ours -----------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            where = f"{self.config.mqtt.host}:{self.config.mqtt.port}"
            reason = LOGIN_REFUSED.get(getattr(reason_code, "value", None))
            if reason is not None:  # retrying will not fix it
                client.disconnect()
                self._fail(HouseholdError(f"broker {where} refused the login ({reason}); check mqtt.username and "
                                          f"{self.config.mqtt.password_env}"))
            else:
                log.warning("household: broker %s refused the connection: %s", where, reason_code)
            return
        self._connected = True
        self._barrier_token = f"{time.time_ns()}"
        client.subscribe([(self.topics.persons, 1), (self._barrier_topic, 1)])
        # Retained messages are sent on SUBSCRIBE, before what follows it: when this comes back, we have them all.
        client.publish(self._barrier_topic, self._barrier_token.encode(), qos=1)
        self._inbox.put(("connected", None, None))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected:
            log.warning("household: lost the broker (%s); changes are kept and sent when it is back", reason_code)
        self._connected = False
        with self._state:
            self._ready = False

    def _on_message(self, client, userdata, message) -> None:
        self._inbox.put(("message", message.topic, bytes(message.payload)))

    # --- our thread --------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            gallery = Gallery.open(**self._gallery_args)
        except BaseException as exc:  # reported by wait_ready / wait_in_sync
            self._fail(exc)
            return
        household = self.config.household
        replica = Replica(gallery, household=household.name, camera=self.camera, share_crops=household.share_crops,
                          reembed=self._reembed)
        interval = self.config.gallery.watch_interval
        revision = None
        try:
            while True:
                try:
                    kind, topic, payload = self._inbox.get(timeout=interval)
                except queue.Empty:
                    kind, topic, payload = "tick", None, None
                if kind == "stop":
                    return
                if kind == "connected":
                    self._barrier_seen = False
                    replica.forget_broker()
                    continue
                if kind == "message":
                    if self._take(replica, topic, payload):
                        kind = "barrier"
                    elif not self._barrier_seen:
                        continue  # the retained gallery is still coming: one pass once it is all here
                if not self._inbox.empty() and kind != "pass":
                    continue  # take the whole batch in before a pass
                if kind == "tick" and gallery.revision() == revision:
                    continue
                before = gallery.revision()
                self._pass(replica)
                revision = gallery.revision()
                if revision != before and self.on_change is not None:
                    self.on_change()
        except BaseException as exc:
            self._fail(exc)
        finally:
            replica.close()
            gallery.close()

    def _take(self, replica: Replica, topic: str, payload: bytes) -> bool:
        """Merge one message; True when it is our barrier (every retained message came before it)."""
        if topic == self._barrier_topic:
            seen = payload.decode(errors="replace") == self._barrier_token
            self._barrier_seen = self._barrier_seen or seen
            return seen
        person_id = self.topics.person_id_of(topic)
        if person_id is None:
            return False
        try:
            if not ID_HEX.match(person_id):
                raise RejectedMessage("topic holds no person id")
            state, sender = decode_message(topic, payload, person_id=person_id, household=self.config.household.name,
                                           key=self.key, max_bytes=self.config.household.max_message_kb * 1024,
                                           local=replica.local)
        except RejectedMessage as exc:
            self._rejected += 1
            log.warning("household: rejected the message on %s: %s", topic, exc)
            if replica.state(person_id) is not None:
                replica.broker_lost(person_id)  # it replaced a good retained state there: put ours back
            return False
        if replica.receive(state):
            log.info("household: %r updated by camera %s", state.name, sender)
        return False

    def _pass(self, replica: Replica) -> None:
        unusable = replica.sync_pass()
        if unusable and unusable != self._unusable:
            log.warning("household: cannot use %d person(s) here, enrolled with another embedder than %s: %s; "
                        "enroll them on this camera, or turn household.share_crops on where they were enrolled",
                        len(unusable), replica.local.key, "; ".join(unusable))
        self._unusable = unusable
        published = 0
        limit = self.config.household.max_message_kb * 1024
        if self._barrier_seen and self._connected:
            for state in replica.to_publish():
                topic = self.topics.person(state.person_id)
                payload = encode_message(state, topic=topic, household=self.config.household.name,
                                         camera=self.camera, key=self.key)
                if len(payload) > limit:
                    log.error("household: %r has too many faces to share (%d, %d KiB > household.max_message_kb "
                              "%d): the other cameras would refuse them; remove some of their faces", state.name,
                              len(state.samples), len(payload) // 1024, limit // 1024)
                    continue
                self._client.publish(topic, payload, qos=1, retain=True)
                published += 1
        self._passes += 1
        with self._state:
            if self._barrier_seen and self._connected:
                self._ready = True
            self._in_sync = self._ready and replica.in_sync()
            self._state.notify_all()
        if published:
            log.info("household: published %d person state(s)", published)

    def _fail(self, exc: BaseException) -> None:
        log.error("household sync stopped: %s", exc)
        with self._state:
            self._error = exc
            self._state.notify_all()


def sync_change(config: Config, gallery: Gallery, *, timeout: Optional[float] = None) -> bool:
    """After ``doorface enroll`` / ``people``: publish this gallery's change to the household now, if the broker
    answers within ``household.sync_wait`` seconds (else the next ``doorface run`` does). True when published."""
    if not config.household.enabled or not config.mqtt.enabled:
        return False
    wait = config.household.sync_wait if timeout is None else timeout
    sync = HouseholdSync(config, gallery.path, embedder_key=gallery.embedder_key,
                         embedder_sha256=gallery.embedder_sha256, dim=gallery.dim, metric=gallery.metric,
                         client_suffix="cli")
    with sync:
        try:
            ready = sync.wait_ready(wait)
        except HouseholdError as exc:
            log.warning("household: %s; the change is shared by the next `doorface run`", exc)
            return False
        if not ready:
            log.warning("household: broker %s:%d not reachable within %g s; the change is shared with the other "
                        "cameras by the next `doorface run`", config.mqtt.host, config.mqtt.port, wait)
            return False
        sync.sync_now()
        if not sync.wait_in_sync(max(wait, 1.0)):
            log.warning("household: the broker did not take the change within %g s; the next `doorface run` sends "
                        "it", wait)
            return False
    return True


@dataclass(frozen=True)
class HouseholdProbe:
    """What the broker holds for the household, read without changing anything (``doorface doctor``)."""

    persons: list[str]  # alive people, by name
    removed: int  # tombstones
    rejected: list[str]  # "topic: why" of each message that failed its checks


def probe_household(config: Config, local: EmbedderTag, timeout: float = 5.0) -> HouseholdProbe:
    """Subscribe once, read every retained message of the household, check each as a camera would; publishes only
    the barrier to its own topic. Raises :class:`HouseholdError` when the broker cannot be reached in time."""
    household = config.household
    key = household_key(household)
    topics = Topics.of(config.mqtt.prefix, household.name)
    client_id = f"doorface-probe-{config.camera.name}-{os.getpid()}"
    barrier = topics.barrier(re.sub(r"[^A-Za-z0-9_-]", "_", client_id))
    received: list[tuple[str, bytes]] = []
    done = threading.Event()
    token = str(time.time_ns()).encode()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topics.persons, 1), (barrier, 1)])
            client.publish(barrier, token, qos=1)

    def on_message(client, userdata, message) -> None:
        if message.topic == barrier:
            if bytes(message.payload) == token:
                done.set()
        else:
            received.append((message.topic, bytes(message.payload)))

    client = secure_client(config.mqtt, client_id)
    client.on_connect, client.on_message = on_connect, on_message
    try:
        client.connect(config.mqtt.host, config.mqtt.port, keepalive=max(5, config.mqtt.keepalive))
    except OSError as exc:
        raise HouseholdError(f"broker {config.mqtt.host}:{config.mqtt.port} unreachable: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise HouseholdError(f"broker {config.mqtt.host}:{config.mqtt.port} did not send the household's "
                                 f"gallery within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    persons, removed, rejected = [], 0, []
    for topic, payload in received:
        person_id = topics.person_id_of(topic) or ""
        try:
            state, _ = decode_message(topic, payload, person_id=person_id, household=household.name, key=key,
                                      max_bytes=household.max_message_kb * 1024, local=local)
        except RejectedMessage as exc:
            rejected.append(f"{topic}: {exc}")
            continue
        if state.alive:
            persons.append(state.name)
        else:
            removed += 1
    return HouseholdProbe(sorted(persons), removed, rejected)
