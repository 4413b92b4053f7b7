"""The MQTT publisher: one event per visit to Home Assistant, none lost across broker outages and restarts.

Delivery is at-least-once. :meth:`MqttPublisher.publish_event` first puts the event's messages in the on-disk
:class:`~edge.outbox.Outbox` (one transaction, durable), then a sender thread publishes queued messages with QoS 1
and removes each from the queue only when the broker acknowledged it (PUBACK). A message that was sent but not
acknowledged when the connection dropped, or when ``doorface`` stopped or crashed, is sent again later, so a
consumer may see an event twice but never misses one: de-duplicate on the payload's ``event_id``.

Presence is true state, never a replayed arrival: a person's retained ``ON`` is sent with their event, ``OFF`` when
their visit ends (:meth:`MqttPublisher.publish_departure`) and for everyone present when doorface stops; every
(re)connect sends ``OFF`` for the enrolled persons not present, which also clears an ``ON`` left by a crash. An event
that waited in the queue longer than ``mqtt.stale_after`` (the broker was down) is stale: it never reaches Home
Assistant's event entity or a presence sensor, and is either sent marked ``"stale": true`` on its
``recognized``/``unknown`` topic or dropped (``mqtt.stale_events``).

On every (re)connect the publisher sends the retained ``online`` availability (the retained ``offline`` last will
covers crashes and network loss), the Home Assistant discovery configs (when ``mqtt.discovery`` is on), the
deletions of configs of persons no longer enrolled, and subscribes to ``<discovery_prefix>/status`` to send the
configs again whenever Home Assistant comes back ``online``. Those are not queued on disk: they are re-sent on every
connect anyway. Topics and payloads are documented in :mod:`edge.discovery`.

A broker that is down is not an error: one warning is logged and the client keeps retrying (1 s, doubling up to
30 s) while events wait on disk. A refused login (:class:`MqttAuthError`) or a broker certificate that the
configured CA does not validate (:class:`MqttError`) stops the retries: they will not fix themselves; they are
raised by :meth:`MqttPublisher.wait_connected`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge.config import ConfigError, MqttConfig
from edge.discovery import (
    OFFLINE,
    ONLINE,
    SUPPORT_URL,
    Topics,
    discovery_messages,
    event_messages,
    person_slugs,
    presence_off,
    removal_messages,
)
from edge.events import RECOGNIZED, UNKNOWN, Departure, Event, iso_utc
from edge.outbox import Message, Outbox, OutboxError

log = logging.getLogger(__name__)

# CONNACK reason codes (MQTT 5 numbering, which paho also uses for 3.1.1) that retrying cannot fix.
# mosquitto answers a wrong password with "not authorized" under MQTT 3.1.1, hence the wording of 135.
LOGIN_REFUSED = {134: "bad user name or password", 135: "bad user name or password, or not authorized",
                  138: "banned", 140: "bad authentication method"}


class MqttError(RuntimeError):
    """The publisher cannot reach Home Assistant with this configuration; the message says what to change."""


class MqttAuthError(MqttError):
    """The broker refused the login (user name, password or permissions)."""


@dataclass(frozen=True)
class PublisherStats:
    connected: bool
    queued: int
    """messages waiting in the on-disk queue (including the in-flight ones)"""
    in_flight: int
    """messages sent and not yet acknowledged by the broker"""
    delivered: int
    """messages acknowledged by the broker since start()"""
    dropped_events: int
    """events dropped by the queue bound since the queue was opened"""
    connects: int
    last_error: Optional[str]


_paho_log = logging.getLogger(f"{__name__}.paho")


def _log_paho(client, userdata, level, message) -> None:
    _paho_log.debug("%s", message)


class _Client(paho.Client):
    """paho's client, remembering why the last connection attempt failed (paho only reports *that* it failed)."""

    last_connect_error: Optional[BaseException] = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            rc = super().reconnect()
        except Exception as exc:
            self.last_connect_error = exc
            raise
        self.last_connect_error = None
        return rc


def secure_client(config: MqttConfig, client_id: str) -> _Client:
    """A paho client with the configuration's TLS files and login set (not connected).

    Raises :class:`~edge.config.ConfigError` for a missing or unreadable CA / certificate / password file.
    """
    client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                     reconnect_on_failure=True)
    if config.tls_ca_file:
        ca = Path(config.tls_ca_file).expanduser()
        if not ca.is_file():
            raise ConfigError(f"mqtt.tls_ca_file: {ca} not found (the PEM CA certificate that signed the "
                              f"broker's certificate)")
        for key in ("tls_cert_file", "tls_key_file"):
            value = getattr(config, key)
            if value and not Path(value).expanduser().is_file():
                raise ConfigError(f"mqtt.{key}: {Path(value).expanduser()} not found")
        try:
            client.tls_set(ca_certs=str(ca),
                           certfile=str(Path(config.tls_cert_file).expanduser()) if config.tls_cert_file else None,
                           keyfile=str(Path(config.tls_key_file).expanduser()) if config.tls_key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"mqtt.tls_ca_file / tls_cert_file / tls_key_file: cannot load {ca}"
                              f"{' / ' + config.tls_cert_file if config.tls_cert_file else ''}: {exc}") from None
    password = config.password()
    if config.username:
        client.username_pw_set(config.username, password)
    elif password:
        log.warning("a broker password is set (%s or mqtt.password_file) but mqtt.username is not: connecting "
                    "anonymously", config.password_env)
    return client


def probe_broker(config: MqttConfig, timeout: float = 5.0) -> None:
    """Connect once with the configuration's address, TLS and login, then disconnect; publishes nothing.

    Raises :class:`MqttAuthError` for a refused login, :class:`MqttError` when the broker is unreachable or its
    certificate is not valid for the CA, :class:`~edge.config.ConfigError` for missing files.
    """
    where = f"{config.host}:{config.port}"
    client = secure_client(config, f"doorface-probe-{os.getpid()}")
    result: dict = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        result["code"] = reason_code
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(config.host, config.port, keepalive=max(5, config.keepalive))
    except ssl.SSLCertVerificationError as exc:
        raise MqttError(f"TLS: the certificate of broker {where} is not valid for mqtt.tls_ca_file "
                        f"{config.tls_ca_file}: {exc.verify_message or exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise MqttError(f"broker {where} unreachable: {exc}") from None
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise MqttError(f"broker {where} accepted the TCP connection but did not answer within {timeout:.0f} s")
        code = result["code"]
        if code.is_failure:
            reason = LOGIN_REFUSED.get(getattr(code, "value", None))
            if reason is not None:
                who = f"user {config.username!r}" if config.username else "the anonymous login"
                raise MqttAuthError(f"broker {where} refused {who}: {reason}; check mqtt.username and "
                                    f"{config.password_env}")
            raise MqttError(f"broker {where} refused the connection: {code}")
    finally:
        client.disconnect()
        client.loop_stop()


def _state_of(message: Message) -> Optional[str]:
    try:
        payload = json.loads(message.payload)
    except ValueError:
        return None
    return payload.get("state") if isinstance(payload, dict) else None


class MqttPublisher:
    """Publishes events of one camera; see the module docstring for the delivery guarantees.

    Nothing connects in ``__init__``: call :meth:`start` (or use it as a context manager) and :meth:`stop`.
    ``publish_event`` is safe to call from any thread, and before ``start`` (the event waits on disk).
    """

    def __init__(self, config: MqttConfig, camera: str, outbox: Outbox, persons: Optional[list[str]] = None, *,
                 reconnect_min_delay: float = 1.0, reconnect_max_delay: float = 30.0, window: int = 20,
                 support_url: Optional[str] = SUPPORT_URL) -> None:
        self.config = config
        self.camera = camera
        self.outbox = outbox
        self.topics = Topics(config.prefix, camera)
        self._persons = list(dict.fromkeys(persons or []))
        self._slugs = person_slugs(self._persons)
        self._reconnect_delays = (reconnect_min_delay, reconnect_max_delay)
        self._window = max(1, int(window))
        self._support_url = support_url
        discovery_messages(camera, self._persons, prefix=config.prefix, discovery_prefix=config.discovery_prefix,
                           publish_crops=config.publish_crops,
                           support_url=support_url)  # validates ids now rather than on the network thread
        self._meta_key = f"discovery_slugs:{config.discovery_prefix}:{camera}"
        self._last_seen_key = f"last_seen:{config.prefix}:{camera}"
        self._kind_topics = {self.topics.kind(RECOGNIZED), self.topics.kind(UNKNOWN)}
        self._present: dict[str, str] = {}  # name -> last seen (ISO 8601) of the persons whose visit is on
        self._started_at = time.time()  # presence queued before this (by a process that crashed) is not true now
        self._client: Optional[_Client] = None
        self._sender: Optional[threading.Thread] = None
        self._state = threading.Condition()
        self._wake = threading.Event()
        self._acked_mids: collections.deque[int] = collections.deque()
        self._reset_state()

    def _reset_state(self) -> None:
        self._connected = False
        self._stopping = False
        self._fatal: Optional[MqttError] = None
        self._last_error: Optional[str] = None
        self._warned_down = False
        self._announce_due = False
        self._announce_mids: set[int] = set()
        self._announce_slugs: Optional[list[str]] = None
        self._in_flight: dict[int, int] = {}  # paho mid -> outbox id; owned by the sender thread
        self._last_sent = 0
        self._delivered = 0
        self._connects = 0
        self._acked_mids.clear()

    # ----------------------------------------------------------------------------------------------- lifecycle

    @property
    def broker(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _make_client(self) -> _Client:
        client = secure_client(self.config, self.config.client_id or f"doorface-{self.camera}")
        # paho reports a broker outage as errors; we log one warning per outage ourselves, paho's lines go to DEBUG.
        client.on_log = _log_paho
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        low, high = self._reconnect_delays
        client.reconnect_delay_set(min_delay=low, max_delay=high)
        client.max_inflight_messages_set(self._window)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> MqttPublisher:
        """Start connecting in the background (returns at once; see :meth:`wait_connected`).

        Raises :class:`~edge.config.ConfigError` for a missing or unreadable CA / certificate / password file.
        """
        if self._client is not None:
            raise RuntimeError("MqttPublisher already started")
        self._reset_state()
        client = self._make_client()
        self._client = client
        log.info("MQTT: connecting to %s as %r%s; %d messages queued in %s", self.broker,
                 self.config.client_id or f"doorface-{self.camera}", " over TLS" if self.config.tls_ca_file else "",
                 len(self.outbox), self.outbox.path)
        self._sender = threading.Thread(target=self._run, name=f"doorface-mqtt-{self.camera}", daemon=True)
        self._sender.start()
        client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive)
        client.loop_start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for up to ``timeout`` seconds, if connected), publish ``offline`` and disconnect.

        Undelivered messages stay on disk for the next start.
        """
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + timeout
        with self._state:
            present = dict(self._present)
        for name, last_seen in present.items():  # nobody is seen any more: their visits end with doorface
            self._depart(name, last_seen)
        if self._connected and self._fatal is None:
            self.flush(timeout)
        with self._state:
            self._stopping = True
        self._wake.set()
        if self._sender is not None:
            self._sender.join(max(0.5, deadline - time.monotonic()))
        if self._connected:
            info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not sent in time: the broker keeps "online"
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
        client.disconnect()
        client.loop_stop()
        self._process_acks()  # PUBACKs that came after the sender ended (it has; this thread owns the state now)
        with self._state:
            self._connected = False
            self._state.notify_all()
        self._client = None
        self._sender = None
        log.info("MQTT: stopped; %d messages left queued in %s", len(self.outbox), self.outbox.path)

    def __enter__(self) -> MqttPublisher:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -------------------------------------------------------------------------------------------------- public

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def error(self) -> Optional[MqttError]:
        """The configuration error that stopped the retries, if any."""
        return self._fatal

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once connected, False after ``timeout`` seconds (the broker may just be down: the client keeps
        retrying). Raises :class:`MqttAuthError` / :class:`MqttError` when the broker refused the login or its
        certificate: those stop the retries."""
        if self._client is None and self._fatal is None:
            raise RuntimeError("MqttPublisher.wait_connected: call start() first")
        deadline = time.monotonic() + timeout
        with self._state:
            while not self._connected and self._fatal is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            if self._fatal is not None:
                raise self._fatal
            return self._connected

    def publish_event(self, event: Event) -> None:
        """Queue the event's messages on disk (one transaction) and wake the sender. Returns at once.

        Delivery is at-least-once: after a lost connection or a restart a message may arrive twice; consumers
        de-duplicate on the payload's ``event_id``. A person not in ``persons`` gets a presence entity announced."""
        if event.name is not None and event.name not in self._slugs:
            self.set_persons([*self._persons, event.name])
        messages = event_messages(event, self.topics, slugs=self._slugs, publish_crops=self.config.publish_crops)
        self.outbox.put(messages)
        if event.name is not None:
            seen = iso_utc(event.timestamp)
            with self._state:
                self._present[event.name] = seen
            self._remember_last_seen(event.name, seen)
        self._wake.set()

    def publish_departure(self, departure: Departure) -> None:
        """Queue the end of a person's visit: their presence turns OFF (retained). Returns at once."""
        self._depart(departure.name, iso_utc(departure.last_seen))

    def _depart(self, name: str, last_seen: str) -> None:
        with self._state:
            self._present.pop(name, None)
            slug = self._slugs.get(name)
        if slug is None:  # removed from the gallery meanwhile: its presence topic was deleted
            return
        self.outbox.put([presence_off(self.topics, slug, name, last_seen)])
        self._remember_last_seen(name, last_seen)
        self._wake.set()

    def _remember_last_seen(self, name: str, last_seen: str) -> None:
        """Kept on disk, so that the OFF sent at the next start does not blank the person's last-seen sensor."""
        known = json.loads(self.outbox.get_meta(self._last_seen_key) or "{}")
        if known.get(name) != last_seen:
            known[name] = last_seen
            self.outbox.set_meta(self._last_seen_key, json.dumps(known, sort_keys=True))

    def set_persons(self, persons: list[str]) -> None:
        """Change the enrolled persons: their presence entities are (re)announced, removed ones deleted."""
        persons = list(dict.fromkeys(persons))
        slugs = person_slugs(persons)
        with self._state:
            self._persons, self._slugs = persons, slugs
            self._announce_due = True
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the on-disk queue is empty (everything acknowledged by the broker); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.outbox) == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wake.set()
            with self._state:
                self._state.wait(min(remaining, 0.2))

    @property
    def stats(self) -> PublisherStats:
        return PublisherStats(connected=self._connected, queued=len(self.outbox), in_flight=len(self._in_flight),
                              delivered=self._delivered, dropped_events=self.outbox.dropped,
                              connects=self._connects, last_error=self._last_error)

    # ------------------------------------------------------------------------------- paho callbacks (its thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            value = getattr(reason_code, "value", None)
            if value in LOGIN_REFUSED:
                self._set_fatal(client, MqttAuthError(self._login_message(LOGIN_REFUSED[value])))
            else:
                self._last_error = f"broker {self.broker} refused the connection: {reason_code}"
                self._warn_down(self._last_error)
            return
        with self._state:
            self._connected = True
            self._connects += 1
            self._announce_due = True
            self._state.notify_all()
        queued = len(self.outbox)
        if self._warned_down:
            log.info("MQTT: connected to %s again; sending %d queued messages", self.broker, queued)
        else:
            log.info("MQTT: connected to %s%s", self.broker, f"; sending {queued} queued messages" if queued else "")
        self._warned_down = False
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        exc = getattr(client, "last_connect_error", None)
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._set_fatal(client, MqttError(
                f"TLS: the certificate of broker {self.broker} is not valid for mqtt.tls_ca_file "
                f"{self.config.tls_ca_file}: {exc.verify_message or exc}; check that this CA signed the broker's "
                f"certificate and that the certificate names {self.config.host!r}"))
            return
        if isinstance(exc, ssl.SSLError):
            reason = f"TLS handshake with {self.broker} failed ({exc}); is it a TLS listener?"
        else:
            reason = f"broker {self.broker} unreachable ({exc or 'connection failed'})"
        self._last_error = reason
        self._warn_down(reason)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._state:
            was_connected = self._connected
            self._connected = False
            self._state.notify_all()
        if was_connected and not self._stopping and self._fatal is None:
            self._last_error = f"lost the connection to {self.broker} ({reason_code})"
            self._warn_down(self._last_error)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # paho holds its message lock here: only hand the mid over, never touch the outbox or our locks.
        self._acked_mids.append(mid)
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        # Home Assistant's birth message: send the configs again (a retained one is old news: we just did).
        if message.payload.strip() == ONLINE.encode() and not message.retain:
            log.info("MQTT: Home Assistant is online again; re-sending discovery configs")
            self._announce_due = True
            self._wake.set()

    def _warn_down(self, reason: str) -> None:
        if not self._warned_down:
            self._warned_down = True
            log.warning("MQTT: %s; events are queued on disk in %s and sent when it is back (retrying every %g-%g s)",
                        reason, self.outbox.path, *self._reconnect_delays)
        else:
            log.debug("MQTT: %s", reason)

    def _login_message(self, reason: str) -> str:
        where = self.config.password_env + (" / mqtt.password_file" if self.config.password_file else "")
        if self.config.username:
            return (f"broker {self.broker} refused the login for user {self.config.username!r}: {reason}; "
                    f"check mqtt.username and {where}")
        return f"broker {self.broker} refused the anonymous login: {reason}; set mqtt.username and {where}"

    def _set_fatal(self, client, error: MqttError) -> None:
        with self._state:
            self._fatal = error
            self._last_error = str(error)
            self._state.notify_all()
        log.error("MQTT: %s. Not retrying; events are queued on disk in %s until doorface is restarted with a "
                  "working configuration", error, self.outbox.path)
        client.disconnect()  # ends paho's network loop: these failures do not fix themselves

    # ------------------------------------------------------------------------------------- sender (own thread)

    def _run(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._process_acks()
                if self._stopping:
                    return
                if self._connected and self._fatal is None:
                    if self._announce_due:
                        self._announce()
                    self._send_pending()
            except OutboxError:
                log.exception("MQTT: the event queue failed; retrying in 1 s")
                time.sleep(1.0)
            except Exception:  # keep the sender alive whatever happens; events stay on disk
                log.exception("MQTT: sender error; retrying in 1 s")
                time.sleep(1.0)

    def _process_acks(self) -> None:
        ids = []
        while self._acked_mids:
            mid = self._acked_mids.popleft()
            outbox_id = self._in_flight.pop(mid, None)
            if outbox_id is not None:
                ids.append(outbox_id)
            elif mid in self._announce_mids:
                self._announce_mids.discard(mid)
                if not self._announce_mids and self._announce_slugs is not None:
                    self.outbox.set_meta(self._meta_key, json.dumps(self._announce_slugs))
                    self._announce_slugs = None
        if ids:
            self.outbox.ack(ids)
            self._delivered += len(ids)
            with self._state:
                self._state.notify_all()

    def _publish(self, message: Message) -> Optional[int]:
        assert self._client is not None
        info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("MQTT: publishing to %s failed: %s", message.topic, paho.error_string(info.rc))
            return None
        return info.mid  # with NO_CONN paho keeps the message and sends it after reconnecting

    def _announce(self) -> None:
        config = self.config
        with self._state:
            self._announce_due = False
            persons, slugs = list(self._persons), dict(self._slugs)
        messages = [Message(self.topics.availability, ONLINE.encode(), qos=1, retain=True)]
        mids: set[int] = set()
        if config.discovery:
            self._client.subscribe(f"{config.discovery_prefix}/status", qos=1)
            current = sorted(slugs.values())
            stored = json.loads(self.outbox.get_meta(self._meta_key) or "[]")
            removed = sorted(set(stored) - set(current))
            if set(stored) != set(current):  # remember the union until Home Assistant got the removals
                self.outbox.set_meta(self._meta_key, json.dumps(sorted(set(stored) | set(current))))
            messages += discovery_messages(self.camera, persons, prefix=config.prefix,
                                           discovery_prefix=config.discovery_prefix,
                                           publish_crops=config.publish_crops,
                                           support_url=self._support_url)
            messages += removal_messages(self.camera, removed, prefix=config.prefix,
                                         discovery_prefix=config.discovery_prefix,
                                         publish_crops=config.publish_crops)
            if removed:
                log.info("MQTT: removing the Home Assistant entities of %d persons no longer enrolled", len(removed))
            self._announce_slugs = current if set(stored) != set(current) else None
        with self._state:
            present = set(self._present)
        last_seen = json.loads(self.outbox.get_meta(self._last_seen_key) or "{}")
        messages += [presence_off(self.topics, slug, name, last_seen.get(name))
                     for name, slug in slugs.items() if name not in present]
        for message in messages:
            mid = self._publish(message)
            if mid is not None:
                mids.add(mid)
        self._announce_mids = mids if self._announce_slugs is not None else set()
        log.debug("MQTT: announced %d messages (availability, discovery)", len(messages))

    def _send_pending(self) -> None:
        room = self._window - len(self._in_flight)
        if room <= 0:
            return
        skipped = []
        for outbox_id, queued in self.outbox.pending(room, after=self._last_sent):
            message = self._fresh(queued)
            if message is None:
                skipped.append(outbox_id)
                self._last_sent = outbox_id
                continue
            mid = self._publish(message)
            if mid is None:
                break
            self._in_flight[mid] = outbox_id
            self._last_sent = outbox_id
        if skipped:
            self.outbox.ack(skipped)

    def _fresh(self, message: Message) -> Optional[Message]:
        """``message`` as it may go out now: as is, marked stale, or None (not to be sent; see the module doc)."""
        queued_at = message.queued_at if message.queued_at is not None else time.time()
        age = time.time() - queued_at
        stale = age > self.config.stale_after
        if message.topic.startswith(f"{self.topics.base}/person/") and _state_of(message) == "ON":
            if stale or queued_at < self._started_at:  # an arrival no longer true (or queued before a crash)
                log.info("MQTT: not sending the presence ON queued %.0f s ago on %s: no longer true", age,
                         message.topic)
                return None
            return message
        if not stale:
            return message
        if message.topic == self.topics.event:
            return None  # Home Assistant's event entity would fire it as a fresh arrival
        if message.topic in self._kind_topics:
            if self.config.stale_events == "drop":
                log.warning("MQTT: dropping a stale event queued %.0f s ago (mqtt.stale_after = %g s)", age,
                            self.config.stale_after)
                return None
            payload = json.loads(message.payload)
            payload["stale"] = True
            log.warning("MQTT: sending an event queued %.0f s ago marked stale (mqtt.stale_after = %g s)", age,
                        self.config.stale_after)
            return Message(message.topic, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode(),
                           message.qos, message.retain)
        return message
