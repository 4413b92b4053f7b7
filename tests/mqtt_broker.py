"""Test helpers: a real mosquitto broker on 127.0.0.1 (optionally with passwords and TLS) and a collecting
subscriber. No mocks: the publisher is tested against the broker Home Assistant users actually run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")
SKIP_REASON = "mosquitto is not installed (apt-get install mosquitto; CI installs it)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(folder: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throw-away CA, a server certificate for ``host`` (CN and IP SAN) signed by it, and a second unrelated CA
    (to test a wrong CA). Returns their paths by name."""
    if OPENSSL is None:
        raise RuntimeError("openssl is needed to make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    subj = "/CN=doorface test CA"
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"{subj} {ca}", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={host}", cwd=folder)
    (folder / "san.ext").write_text(f"subjectAltName = IP:{host}\nbasicConstraints = CA:FALSE\n"
                                    "keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=folder)
    for key in ("ca.key", "other_ca.key", "server.key"):
        os.chmod(folder / key, 0o600)
    files = {name: folder / f"{name}.crt" for name in ("ca", "other_ca", "server")}
    files["server_key"] = folder / "server.key"
    return files


class Broker:
    """A mosquitto process listening on 127.0.0.1:``port`` (a free one by default). ``password`` maps user names
    to passwords (anonymous logins are then refused); ``tls`` serves TLS with a generated CA (:attr:`ca_file`).
    ``persistent`` keeps sessions (subscriptions, queued QoS 1 messages of offline subscribers) across restarts,
    saved after every change, so a test subscriber misses nothing a publisher sends before it is back."""

    def __init__(self, tmp_dir: Path, port: Optional[int] = None, *, password: Optional[dict[str, str]] = None,
                 tls: bool = False, persistent: bool = False) -> None:
        if MOSQUITTO is None:
            raise RuntimeError(SKIP_REASON)
        self.dir = Path(tmp_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.process: Optional[subprocess.Popen] = None
        self.tls_files: dict[str, Path] = make_tls_files(self.dir / "tls") if tls else {}
        persistence = ["persistence true", f"persistence_location {self.dir}/", "autosave_on_changes true",
                       "autosave_interval 1"]
        lines = [f"listener {self.port} {self.host}", *(persistence if persistent else ["persistence false"]),
                 "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "log_type information"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to user 'mosquitto', who cannot read tmp files
        if password:
            if MOSQUITTO_PASSWD is None:
                raise RuntimeError("mosquitto_passwd is not installed")
            pw_file = self.dir / "passwd"
            for i, (user, secret) in enumerate(password.items()):
                args = [MOSQUITTO_PASSWD, "-b"] + (["-c"] if i == 0 else []) + [str(pw_file), user, secret]
                subprocess.run(args, check=True, capture_output=True)
            os.chmod(pw_file, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw_file}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {self.tls_files['ca']}", f"certfile {self.tls_files['server']}",
                      f"keyfile {self.tls_files['server_key']}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"

    @property
    def ca_file(self) -> Optional[Path]:
        return self.tls_files.get("ca")

    def wait_saved(self, timeout: float = 5.0) -> None:
        """With ``persistent``: wait until the broker saved its state to disk (it saves after every change)."""
        deadline = time.monotonic() + timeout
        while "Saving in-memory database" not in self.log.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not save its database within {timeout} s")
            time.sleep(0.05)

    def start(self, timeout: float = 10.0) -> Broker:
        if self.process is not None and self.process.poll() is None:
            return self
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the broker dies mid-stream, as on a power cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(5)
        self.process = None

    def restart(self) -> Broker:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Subscriber:
    """A paho client that records every message per topic (payload bytes and retain flag)."""

    def __init__(self, broker: Broker, topics: tuple[str, ...] = ("#",), *, username: Optional[str] = None,
                 password: Optional[str] = None, client_id: Optional[str] = None, clean_session: bool = True) -> None:
        self.broker = broker
        self.topics = topics
        self.messages: dict[str, list[tuple[bytes, bool]]] = {}
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{id(self)}",
                                  clean_session=clean_session)
        if username:
            self.client.username_pw_set(username, password)
        if broker.ca_file:
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 1)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(topic, 1) for topic in self.topics])

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.setdefault(message.topic, []).append((bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> Subscriber:
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"test subscriber could not subscribe on port {self.broker.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def payloads(self, topic: str) -> list[bytes]:
        with self._cond:
            return [payload for payload, _ in self.messages.get(topic, [])]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        """The payloads received on ``topic`` once there are at least ``count`` (AssertionError after timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages.get(topic, [])) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = len(self.messages.get(topic, []))
                    raise AssertionError(f"{topic}: got {got} messages, expected {count} within {timeout} s "
                                         f"(topics seen: {sorted(self.messages)})")
                self._cond.wait(remaining)
            return [payload for payload, _ in self.messages[topic]]

    def wait_until(self, topic: str, predicate, timeout: float = 10.0) -> list[bytes]:
        """Wait until ``predicate(payloads of topic)`` is true; returns the payloads."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([p for p, _ in self.messages.get(topic, [])]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{topic}: condition not met within {timeout} s; got "
                                         f"{[p for p, _ in self.messages.get(topic, [])][-5:]}")
                self._cond.wait(remaining)
            return [p for p, _ in self.messages[topic]]

    def retained(self, topic: str) -> list[bytes]:
        with self._cond:
            return [payload for payload, retain in self.messages.get(topic, []) if retain]
