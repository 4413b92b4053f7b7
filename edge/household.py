"""Several doors, one household: the gallery shared between cameras over the household's MQTT broker.

The design, in short (docs/household.md says more):

* **One retained topic per person**, ``<mqtt.prefix>/household/<name-hash>/person/<person-id>``, holding that
  person's whole current state. Retained messages are the durable store: a camera that joins, or comes back after
  being off, subscribes and gets everything; nothing else (no server, no log) is needed. A removed person keeps a
  small retained *tombstone* so that a camera that was off learns of the removal.
* **The state is a CRDT** (a state that merges the same whatever the order): the name is a last-writer-wins register,
  the samples an add/remove set keyed by the sample's content hash, the removal a version. Every change carries a
  version ``(Lamport clock, camera id)``: the clock is bumped past every version a camera has seen, so a change made
  after seeing another one always wins over it, and the camera id breaks ties the same way on every camera (two
  cameras renaming one person at once end with the same name). A sample is alive when added after its person's
  removal and after its own exclusion: a removal wins over every older addition.
* **Local changes are found by comparing**, not by hooks: each pass compares the gallery with the snapshot of it
  taken at the last pass (kept in tables of the gallery file). Whatever changed the gallery (``doorface enroll``,
  ``people rename``, any later Gallery method) becomes a new version, also after a crash between the change and its
  publication. A gallery kind of change that is not a name or a sample set (none yet) is one more case in
  :func:`_local_view` and :meth:`Replica.take_local_changes`.
* **Merging is idempotent**: a camera that holds more than the broker's retained state publishes the merge; one that
  receives what it already has stays quiet. So the broker's copy converges to the union of what every camera knows,
  and a broker that lost its retained messages is refilled at the next connect of any camera.
* **Nothing unchecked is taken in**: every message is signed with HMAC-SHA256 over its topic and canonical JSON with
  the household key; a message that is too large, not of this schema, of another household, badly signed, or whose
  samples name an undeclared embedder or hold vectors of the wrong size is rejected with one log line and changes
  nothing. Only names and embeddings travel (face thumbnails with ``household.share_crops``), each sample tagged with
  the sha256 of the embedder that made it: a camera uses only the samples of its own embedder, re-embeds the others
  from their thumbnail when there is one, and says which people it cannot use.

Materialising the merged state into the gallery goes through the Gallery's own methods (add, rename, remove,
remove_samples); a journal row written before and deleted after makes a pass killed half-way finish the same
changes at the next start instead of taking the half-applied gallery for a local edit.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from edge.config import Config, HouseholdConfig, MqttConfig
from edge.gallery import BUSY_TIMEOUT_S, Gallery, GalleryError, NameTakenError, validate_name
from edge.mqtt import LOGIN_REFUSED, secure_client

log = logging.getLogger(__name__)

SCHEMA = "doorface.household/1"
Version = tuple[int, str]
MAX_CLOCK = 2 ** 53  # JSON numbers stay exact below this in every language
MAX_DIM = 4096
_VECTOR_DTYPE = np.dtype("<f4")
_ID_HEX = re.compile(r"^[0-9a-f]{24}$")
_CAMERA = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MESSAGE_KEYS = {"schema", "household", "person", "from", "state", "sig"}
_STATE_KEYS = {"name", "named", "deleted", "samples", "removed", "embedders"}
_SAMPLE_KEYS = {"id", "added", "embedder", "vector", "crop"}
_EMBEDDER_KEYS = {"key", "sha256", "dim", "metric"}
SOURCE_PREFIX = "household:"


class HouseholdError(RuntimeError):
    """Gallery sync cannot run (configuration, broker, gallery); the message says what to do."""


class RejectedMessage(HouseholdError):
    """A gallery message that failed a check; it changed nothing."""


# --- value types -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedderTag:
    """Which model made an embedding: embeddings of two tags with different sha256 are never compared."""

    key: str
    sha256: str
    dim: int
    metric: str

    def to_json(self) -> dict:
        return {"key": self.key, "sha256": self.sha256, "dim": self.dim, "metric": self.metric}


@dataclass(frozen=True)
class SharedSample:
    id: str  # sample_id(vector): the same embedding has the same id on every camera
    added: Version
    embedder: str  # sha256 of an EmbedderTag of the state
    vector: bytes  # little-endian float32 × dim
    crop: Optional[bytes] = None  # JPEG face thumbnail, only with household.share_crops


@dataclass(frozen=True)
class PersonState:
    """Everything the household knows of one person; :func:`merge` of two states is again one."""

    person_id: str
    name: str
    named: Version
    deleted: Optional[Version]
    samples: tuple[SharedSample, ...]  # sorted by id
    removed: tuple[tuple[str, Version], ...]  # sample id → when it was excluded, sorted by id
    embedders: tuple[EmbedderTag, ...]  # sorted by sha256

    def live_samples(self) -> list[SharedSample]:
        removed = dict(self.removed)
        return [s for s in self.samples if _live(s, removed.get(s.id), self.deleted)]

    @property
    def alive(self) -> bool:
        return bool(self.live_samples())

    @property
    def clock(self) -> int:
        versions = [self.named, *(s.added for s in self.samples), *(v for _, v in self.removed)]
        if self.deleted is not None:
            versions.append(self.deleted)
        return max(v[0] for v in versions)

    def embedder(self, sha256: str) -> Optional[EmbedderTag]:
        return next((e for e in self.embedders if e.sha256 == sha256), None)

    def digest(self) -> str:
        return hashlib.sha256(canonical(state_to_json(self))).hexdigest()


def _live(sample: SharedSample, removed: Optional[Version], deleted: Optional[Version]) -> bool:
    return (removed is None or sample.added > removed) and (deleted is None or sample.added > deleted)


def person_id_for(name: str) -> str:
    """A person's id: from the name they were first enrolled under, so that the same name enrolled on two cameras
    (while apart) is one person; a rename keeps the id."""
    return hashlib.sha256(f"person\n{validate_name(name)}".encode()).hexdigest()[:24]


def sample_id(vector: bytes) -> str:
    return hashlib.sha256(vector).hexdigest()[:24]


def household_hash(name: str) -> str:
    return hashlib.sha256(f"household\n{name}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Topics:
    root: str

    @classmethod
    def of(cls, prefix: str, household: str) -> Topics:
        return cls(f"{prefix}/household/{household_hash(household)}")

    @property
    def persons(self) -> str:
        return f"{self.root}/person/+"

    def person(self, person_id: str) -> str:
        return f"{self.root}/person/{person_id}"

    def barrier(self, client_id: str) -> str:
        return f"{self.root}/sync/{client_id}"

    def person_id_of(self, topic: str) -> Optional[str]:
        head = f"{self.root}/person/"
        return topic[len(head):] if topic.startswith(head) else None


# --- merging ---------------------------------------------------------------------------------------------------------


def empty_state(person_id: str) -> PersonState:
    return PersonState(person_id, "", (0, ""), None, (), (), ())


def compact(state: PersonState) -> PersonState:
    """The same state without what can no longer matter: samples dead for good, exclusions older than the removal,
    embedders no sample uses. Unique for a given meaning, so equal states have equal digests."""
    removed = {sid: v for sid, v in state.removed if state.deleted is None or v > state.deleted}
    samples = tuple(s for s in state.samples if _live(s, removed.get(s.id), state.deleted))
    used = {s.embedder for s in samples}
    return replace(state, samples=samples, removed=tuple(sorted(removed.items())),
                   embedders=tuple(e for e in state.embedders if e.sha256 in used))


def merge(a: PersonState, b: PersonState) -> PersonState:
    """The join of two states of one person: commutative, associative, idempotent."""
    if a.person_id != b.person_id:
        raise ValueError(f"cannot merge the states of two persons ({a.person_id}, {b.person_id})")
    name, named = (a.name, a.named) if (a.named, a.name) >= (b.named, b.name) else (b.name, b.named)
    deleted = max((v for v in (a.deleted, b.deleted) if v is not None), default=None)
    samples: dict[str, SharedSample] = {}
    for s in (*a.samples, *b.samples):
        have = samples.get(s.id)
        if have is None:
            samples[s.id] = s
            continue
        best, other = (s, have) if s.added > have.added else (have, s)
        samples[s.id] = best if best.crop is not None else replace(best, crop=other.crop)
    removed: dict[str, Version] = {}
    for sid, v in (*a.removed, *b.removed):
        removed[sid] = max(v, removed.get(sid, v))
    embedders: dict[str, EmbedderTag] = {}
    for e in sorted((*a.embedders, *b.embedders), key=lambda e: (e.key, e.dim, e.metric), reverse=True):
        embedders[e.sha256] = e  # one tag per model file, the same whichever state came first
    return compact(PersonState(a.person_id, name, named, deleted, tuple(samples[k] for k in sorted(samples)),
                               tuple(sorted(removed.items())), tuple(embedders[k] for k in sorted(embedders))))


# --- the wire format -------------------------------------------------------------------------------------------------


def canonical(obj) -> bytes:
    """The one byte string a JSON value signs as: sorted keys, no spaces, UTF-8 (no floats are ever in it)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def state_to_json(state: PersonState) -> dict:
    return {
        "name": state.name,
        "named": list(state.named),
        "deleted": None if state.deleted is None else list(state.deleted),
        "samples": [{"id": s.id, "added": list(s.added), "embedder": s.embedder, "vector": _b64(s.vector),
                     "crop": None if s.crop is None else _b64(s.crop)} for s in state.samples],
        "removed": [[sid, list(v)] for sid, v in state.removed],
        "embedders": [e.to_json() for e in state.embedders],
    }


def _version(value, where: str) -> Version:
    if (not isinstance(value, list) or len(value) != 2 or isinstance(value[0], bool) or not isinstance(value[0], int)
            or not 0 < value[0] < MAX_CLOCK or not isinstance(value[1], str) or not _CAMERA.match(value[1])):
        raise RejectedMessage(f"{where}: expected a version [clock, camera id], got {str(value)[:60]}")
    return int(value[0]), str(value[1])


def _keys(obj, keys: set[str], where: str) -> dict:
    if not isinstance(obj, dict) or set(obj) != keys:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise RejectedMessage(f"{where}: expected the fields {sorted(keys)}, got {got}")
    return obj


def _unb64(text, where: str) -> bytes:
    if not isinstance(text, str):
        raise RejectedMessage(f"{where}: expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RejectedMessage(f"{where}: not valid base64") from None


def state_from_json(obj, person_id: str, local: EmbedderTag) -> PersonState:
    """A state from its JSON, every field checked; :class:`RejectedMessage` says the first thing wrong."""
    obj = _keys(obj, _STATE_KEYS, "state")
    try:
        name = validate_name(obj["name"])
    except GalleryError as exc:
        raise RejectedMessage(f"state.name: {exc}") from None
    named = _version(obj["named"], "state.named")
    deleted = None if obj["deleted"] is None else _version(obj["deleted"], "state.deleted")
    for key in ("samples", "removed", "embedders"):
        if not isinstance(obj[key], list):
            raise RejectedMessage(f"state.{key}: expected a list")
    embedders: dict[str, EmbedderTag] = {}
    for e in obj["embedders"]:
        e = _keys(e, _EMBEDDER_KEYS, "state.embedders[]")
        if not (isinstance(e["key"], str) and isinstance(e["sha256"], str) and _SHA256.match(e["sha256"])
                and isinstance(e["dim"], int) and not isinstance(e["dim"], bool) and 0 < e["dim"] <= MAX_DIM
                and isinstance(e["metric"], str)):
            raise RejectedMessage(f"state.embedders: not a valid embedder: {str(e)[:120]}")
        tag = EmbedderTag(e["key"], e["sha256"], e["dim"], e["metric"])
        if tag.sha256 == local.sha256 and (tag.dim, tag.metric) != (local.dim, local.metric):
            raise RejectedMessage(f"embedder {tag.key} (sha256 {tag.sha256[:12]}…) declared with dim {tag.dim} / "
                                  f"{tag.metric}, but that model gives {local.dim} / {local.metric}")
        embedders[tag.sha256] = tag
    samples: dict[str, SharedSample] = {}
    for s in obj["samples"]:
        s = _keys(s, _SAMPLE_KEYS, "state.samples[]")
        tag = embedders.get(s["embedder"]) if isinstance(s["embedder"], str) else None
        if tag is None:
            raise RejectedMessage(f"a sample of {name!r} names an unknown embedder {str(s['embedder'])[:70]!r} "
                                  "(not declared in the message)")
        vector = _unb64(s["vector"], "sample vector")
        if len(vector) != tag.dim * _VECTOR_DTYPE.itemsize:
            raise RejectedMessage(f"a sample of {name!r} has {len(vector)} bytes; embedder {tag.key} gives "
                                  f"{tag.dim * _VECTOR_DTYPE.itemsize}")
        values = np.frombuffer(vector, dtype=_VECTOR_DTYPE)
        if not np.all(np.isfinite(values)) or not np.any(values):
            raise RejectedMessage(f"a sample of {name!r} is not a finite, non-zero embedding")
        if s["id"] != sample_id(vector):
            raise RejectedMessage(f"a sample of {name!r} has id {str(s['id'])[:30]!r}, not its content's")
        crop = None if s["crop"] is None else _unb64(s["crop"], "sample crop")
        samples[s["id"]] = SharedSample(s["id"], _version(s["added"], "sample.added"), tag.sha256, vector, crop)
    removed: dict[str, Version] = {}
    for item in obj["removed"]:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) or not _ID_HEX.match(item[0]):
            raise RejectedMessage(f"state.removed: expected [sample id, version], got {str(item)[:60]}")
        removed[item[0]] = _version(item[1], "state.removed[]")
    return compact(PersonState(person_id, name, named, deleted, tuple(samples[k] for k in sorted(samples)),
                               tuple(sorted(removed.items())), tuple(embedders[k] for k in sorted(embedders))))


def _signature(key: bytes, topic: str, body: dict) -> str:
    return hmac.new(key, topic.encode() + b"\n" + canonical(body), hashlib.sha256).hexdigest()


def encode_message(state: PersonState, *, topic: str, household: str, camera: str, key: bytes) -> bytes:
    body = {"schema": SCHEMA, "household": household, "person": state.person_id, "from": camera,
            "state": state_to_json(state)}
    return canonical({**body, "sig": _signature(key, topic, body)})


def decode_message(topic: str, payload: bytes, *, person_id: str, household: str, key: bytes, max_bytes: int,
                   local: EmbedderTag) -> tuple[PersonState, str]:
    """The state a message carries and the camera that sent it, or :class:`RejectedMessage` (it changes nothing).

    The signature is checked before anything of the state is looked at."""
    if len(payload) > max_bytes:
        raise RejectedMessage(f"{len(payload) // 1024} KiB, over household.max_message_kb "
                              f"({max_bytes // 1024} KiB)")
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise RejectedMessage("not JSON") from None
    message = _keys(message, _MESSAGE_KEYS, "message")
    if message["schema"] != SCHEMA:
        raise RejectedMessage(f"schema {str(message['schema'])[:40]!r}, expected {SCHEMA!r} (a doorface of another "
                              "version? update every camera of the household)")
    if message["household"] != household or message["person"] != person_id:
        raise RejectedMessage("household or person id does not match its topic")
    sig = message.pop("sig")
    if not isinstance(sig, str) or not hmac.compare_digest(sig, _signature(key, topic, message)):
        raise RejectedMessage("bad signature: not signed with this household's key (household.key differs, or "
                              "another device wrote it)")
    sender = message["from"]
    if not isinstance(sender, str) or not _CAMERA.match(sender):
        raise RejectedMessage(f"bad sender {str(sender)[:40]!r}")
    return state_from_json(message["state"], person_id, local), sender


# --- the replica: merged states and the gallery ----------------------------------------------------------------------

_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS household_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS household_state (person_id TEXT PRIMARY KEY, state TEXT NOT NULL, digest TEXT NOT NULL,
                                            broker TEXT);
CREATE TABLE IF NOT EXISTS household_local (person_id TEXT PRIMARY KEY, local_id INTEGER NOT NULL,
                                            local_created REAL NOT NULL, name TEXT NOT NULL, samples TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS household_pending (person_id TEXT PRIMARY KEY, before TEXT, target TEXT);
CREATE TABLE IF NOT EXISTS household_derived (origin TEXT NOT NULL, embedder TEXT NOT NULL, vector BLOB,
                                              PRIMARY KEY (origin, embedder));
"""


@dataclass(frozen=True)
class Snapshot:
    """What the gallery held of a person after the last pass: local row, name, local sample id → household sample
    id (the same for this camera's own embeddings; another for one re-embedded from another model's thumbnail)."""

    local_id: int
    local_created: float
    name: str
    samples: dict[str, str]

    def to_json(self) -> str:
        return json.dumps({"local_id": self.local_id, "local_created": self.local_created, "name": self.name,
                           "samples": self.samples}, sort_keys=True)

    @classmethod
    def from_json(cls, text: Optional[str]) -> Optional[Snapshot]:
        if text is None:
            return None
        d = json.loads(text)
        return cls(int(d["local_id"]), float(d["local_created"]), str(d["name"]), dict(d["samples"]))


@dataclass(frozen=True)
class _LocalSample:
    row: int
    vector: bytes
    source: str
    thumbnail: Optional[bytes]


@dataclass(frozen=True)
class _LocalPerson:
    id: int
    created: float
    name: str
    samples: dict[str, _LocalSample]  # by sample_id(vector)


@dataclass(frozen=True)
class _Target:
    name: str
    samples: dict[str, tuple[str, bytes, Optional[bytes]]]  # local sample id → (origin id, vector, crop)


def _local_view(gallery: Gallery) -> dict[tuple[int, float], _LocalPerson]:
    """The gallery as the household sees it, by (row id, created): a row id SQLite reuses after a removal is
    another person when its creation time differs."""
    view = {}
    for person in gallery.persons():
        samples = {}
        for s in gallery.samples(person.name):
            raw = np.asarray(s.vector, dtype=_VECTOR_DTYPE).tobytes()
            samples.setdefault(sample_id(raw), _LocalSample(s.id, raw, s.source, s.thumbnail))
        view[(person.id, person.created)] = _LocalPerson(person.id, person.created, person.name, samples)
    return view


Reembed = Callable[[bytes], Optional[np.ndarray]]
"""A face thumbnail (JPEG) → this camera's embedding of it, or None when no face is found in it."""


class Replica:
    """This camera's copy of the household gallery: the merged states (tables ``household_*`` beside the gallery's
    own, in the same file) and the gallery they are materialised into. Not thread-safe: one per thread."""

    def __init__(self, gallery: Gallery, *, household: str, camera: str, share_crops: bool = False,
                 reembed: Optional[Reembed] = None) -> None:
        self.gallery = gallery
        self.household = household
        self.camera = camera
        self.share_crops = share_crops
        self.reembed = reembed
        self.local = EmbedderTag(gallery.embedder_key, gallery.embedder_sha256, gallery.dim, gallery.metric)
        self._conn = sqlite3.connect(str(gallery.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._transaction() as cur:
            for statement in filter(str.strip, _STORE_SCHEMA.split(";")):
                cur.execute(statement)
            row = cur.execute("SELECT value FROM household_meta WHERE key = 'household'").fetchone()
            if row is not None and row[0] != household:
                log.warning("household: gallery %s was shared with household %r, now %r: its people are shared "
                            "with the new household", gallery.path, row[0], household)
                for table in ("household_state", "household_local", "household_pending", "household_meta"):
                    cur.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            cur.execute("INSERT OR REPLACE INTO household_meta (key, value) VALUES ('household', ?)", (household,))
        self._lock_path = Path(f"{gallery.path}.household.lock")

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn.cursor()
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One pass at a time over this gallery, across processes (``doorface run`` and ``doorface enroll``)."""
        with open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- the stored states ------------------------------------------------------------------------------------------

    def states(self) -> dict[str, PersonState]:
        rows = self._conn.execute("SELECT person_id, state FROM household_state").fetchall()
        return {pid: state_from_json(json.loads(text), pid, self.local) for pid, text in rows}

    def state(self, person_id: str) -> Optional[PersonState]:
        row = self._conn.execute("SELECT state FROM household_state WHERE person_id = ?", (person_id,)).fetchone()
        return None if row is None else state_from_json(json.loads(row[0]), person_id, self.local)

    def _put_state(self, cur: sqlite3.Cursor, state: PersonState) -> None:
        cur.execute("INSERT INTO household_state (person_id, state, digest) VALUES (?, ?, ?) ON CONFLICT(person_id) "
                    "DO UPDATE SET state = excluded.state, digest = excluded.digest",
                    (state.person_id, json.dumps(state_to_json(state)), state.digest()))
        self._see_clock(cur, state.clock)

    def _see_clock(self, cur: sqlite3.Cursor, clock: int) -> None:
        cur.execute("INSERT INTO household_meta (key, value) VALUES ('clock', ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))", (str(clock),))

    def _tick(self, cur: sqlite3.Cursor) -> Version:
        row = cur.execute("SELECT value FROM household_meta WHERE key = 'clock'").fetchone()
        clock = (int(row[0]) if row else 0) + 1
        self._see_clock(cur, clock)
        return clock, self.camera

    def receive(self, state: PersonState) -> bool:
        """Merge a state read from the broker; True when it changed ours. Remembers it as the broker's copy."""
        with self._transaction() as cur:
            row = cur.execute("SELECT state, digest FROM household_state WHERE person_id = ?",
                              (state.person_id,)).fetchone()
            ours = None if row is None else state_from_json(json.loads(row[0]), state.person_id, self.local)
            merged = state if ours is None else merge(ours, state)
            changed = row is None or merged.digest() != row[1]
            if changed:
                self._put_state(cur, merged)
            self._see_clock(cur, state.clock)
            cur.execute("UPDATE household_state SET broker = ? WHERE person_id = ?", (state.digest(), state.person_id))
        return changed

    def forget_broker(self) -> None:
        """After a (re)connect: what the broker holds is known again only from what it sends (it may have lost it)."""
        with self._transaction() as cur:
            cur.execute("UPDATE household_state SET broker = NULL")

    def broker_lost(self, person_id: str) -> None:
        with self._transaction() as cur:
            cur.execute("UPDATE household_state SET broker = NULL WHERE person_id = ?", (person_id,))

    def to_publish(self) -> list[PersonState]:
        """The states the broker does not hold as we do (it lacks something we know)."""
        rows = self._conn.execute("SELECT person_id, state FROM household_state "
                                  "WHERE broker IS NULL OR broker != digest").fetchall()
        return [state_from_json(json.loads(text), pid, self.local) for pid, text in rows]

    def in_sync(self) -> bool:
        return not self._conn.execute("SELECT 1 FROM household_state WHERE broker IS NULL OR broker != digest "
                                      "LIMIT 1").fetchone()

    def _snapshots(self) -> dict[str, Snapshot]:
        rows = self._conn.execute("SELECT person_id, local_id, local_created, name, samples FROM household_local")
        return {pid: Snapshot(int(i), float(c), str(n), json.loads(s)) for pid, i, c, n, s in rows}

    def _put_snapshot(self, cur: sqlite3.Cursor, person_id: str, snap: Optional[Snapshot]) -> None:
        if snap is None:
            cur.execute("DELETE FROM household_local WHERE person_id = ?", (person_id,))
        else:
            cur.execute("INSERT OR REPLACE INTO household_local (person_id, local_id, local_created, name, samples) "
                        "VALUES (?, ?, ?, ?, ?)", (person_id, snap.local_id, snap.local_created, snap.name,
                                                   json.dumps(snap.samples, sort_keys=True)))

    # --- a pass ------------------------------------------------------------------------------------------------------

    def sync_pass(self) -> list[str]:
        """Finish an interrupted pass, take the gallery's local changes in, materialise the merged states into it.
        Returns the names of people this camera cannot use (only other models' embeddings, no thumbnails)."""
        with self.locked():
            self._finish_pending()
            self.take_local_changes()
            return self.materialise()

    def take_local_changes(self) -> int:
        """Each change of the gallery since the last pass becomes a new version of its person; how many persons."""
        view = _local_view(self.gallery)
        changed = 0
        with self._transaction() as cur:
            snaps = self._snapshots()
            for pid, snap in snaps.items():
                person = view.pop((snap.local_id, snap.local_created), None)
                state = self.state(pid) or empty_state(pid)
                if person is None:
                    state = compact(replace(state, deleted=self._tick(cur)))
                    self._put_state(cur, state)
                    self._put_snapshot(cur, pid, None)
                    log.info("household: %r removed here; removing them from every camera", snap.name)
                    changed += 1
                    continue
                updated = self._apply_local(cur, state, snap, person)
                if updated is not None:
                    self._put_state(cur, updated)
                    changed += 1
                self._put_snapshot(cur, pid, Snapshot(person.id, person.created, person.name, {
                    local: snap.samples.get(local, local) for local in person.samples}))
            taken = {pid for pid in snaps}
            for person in sorted(view.values(), key=lambda p: p.created):
                pid = person_id_for(person.name)
                known = self.state(pid)
                if pid in taken or known is not None and known.alive and known.name != person.name:
                    # That name's id belongs to someone renamed since: this is someone new. (The same name, alive
                    # elsewhere, is the same person; a removed one comes back with the new faces.)
                    pid = hashlib.sha256(f"{pid}\n{person.created!r}\n{self.camera}".encode()).hexdigest()[:24]
                    known = self.state(pid)
                taken.add(pid)
                state = known or empty_state(pid)
                empty = Snapshot(person.id, person.created, "", {})
                updated = self._apply_local(cur, state, empty, person) or state
                self._put_state(cur, updated)
                self._put_snapshot(cur, pid, Snapshot(person.id, person.created, person.name,
                                                      {local: local for local in person.samples}))
                log.info("household: %r enrolled here; sharing them with every camera", person.name)
                changed += 1
        return changed

    def _apply_local(self, cur: sqlite3.Cursor, state: PersonState, snap: Snapshot,
                     person: _LocalPerson) -> Optional[PersonState]:
        added = [sid for sid in person.samples if sid not in snap.samples]
        dropped = [origin for local, origin in snap.samples.items() if local not in person.samples]
        renamed = person.name != snap.name
        if not (added or dropped or renamed):
            return None
        version = self._tick(cur)
        name, named = (person.name, version) if renamed else (state.name, state.named)
        new = [SharedSample(sid, version, self.local.sha256, person.samples[sid].vector,
                            person.samples[sid].thumbnail if self.share_crops else None) for sid in added]
        removed = [(origin, version) for origin in dropped]
        embedders = (self.local,) if new else ()
        return merge(state, PersonState(state.person_id, name, named, None, tuple(sorted(new, key=lambda s: s.id)),
                                        tuple(sorted(removed)), embedders))

    def _target(self, state: PersonState) -> Optional[_Target]:
        samples: dict[str, tuple[str, bytes, Optional[bytes]]] = {}
        for s in state.live_samples():
            if s.embedder == self.local.sha256:
                samples[s.id] = (s.id, s.vector, s.crop)
            elif s.crop is not None:
                vector = self._derived(s)
                if vector is not None:
                    samples[sample_id(vector)] = (s.id, vector, s.crop)
        return _Target(state.name, samples) if samples else None

    def _derived(self, sample: SharedSample) -> Optional[bytes]:
        """This camera's embedding of another model's sample, from its thumbnail; computed once and kept."""
        row = self._conn.execute("SELECT vector FROM household_derived WHERE origin = ? AND embedder = ?",
                                 (sample.id, self.local.sha256)).fetchone()
        if row is not None:
            return None if row[0] is None else bytes(row[0])
        if self.reembed is None or sample.crop is None:
            return None  # no models loaded here (doorface people): `doorface run` re-embeds
        vector = self.reembed(sample.crop)
        raw = None if vector is None else np.asarray(vector, dtype=_VECTOR_DTYPE).tobytes()
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO household_derived (origin, embedder, vector) VALUES (?, ?, ?)",
                        (sample.id, self.local.sha256, raw))
        return raw

    def materialise(self) -> list[str]:
        """Make the gallery hold what the merged states say; the names of alive people it cannot hold."""
        unusable = []
        snaps = self._snapshots()
        states = self.states()
        targets = {pid: self._target(state) for pid, state in states.items()}
        # Removals first, so that their names are free for the renames of this pass; then the newest names first.
        names_in_use = {s.name: pid for pid, s in snaps.items() if targets.get(pid) is not None}
        order = [p for p in states if targets[p] is None] + sorted(
            (p for p in states if targets[p] is not None), key=lambda p: (states[p].named, p), reverse=True)
        for pid in order:
            state, target = states[pid], targets[pid]
            if target is None and state.alive:
                models = sorted({e.key for e in state.embedders})
                unusable.append(f"{state.name} (embedder {', '.join(models)}, no thumbnails)")
            snap = snaps.get(pid)
            if target is not None:
                owner = names_in_use.get(target.name)
                if owner is not None and owner != pid or (owner is None and target.name in self.gallery):
                    target = replace(target, name=f"{target.name[:56]} ({pid[:6]})")
                names_in_use[target.name] = pid
            if snap is None and target is None:
                continue
            if snap is not None and target is not None and snap.name == target.name and \
                    set(snap.samples) == set(target.samples):
                continue
            with self._transaction() as cur:
                cur.execute("INSERT OR REPLACE INTO household_pending (person_id, before, target) VALUES (?, ?, ?)",
                            (pid, None if snap is None else snap.to_json(), _target_json(target)))
            self._apply(pid, snap, target)
        return unusable

    def _finish_pending(self) -> None:
        rows = self._conn.execute("SELECT person_id, before, target FROM household_pending").fetchall()
        for pid, before, target in rows:
            log.warning("household: finishing the gallery update of person %s that was interrupted", pid)
            self._apply(pid, Snapshot.from_json(before), _target_from_json(target))

    def _apply(self, pid: str, before: Optional[Snapshot], target: Optional[_Target]) -> None:
        """Bring the gallery from ``before`` to ``target`` with the Gallery's methods; safe to repeat."""
        view = _local_view(self.gallery)
        person = None if before is None else view.get((before.local_id, before.local_created))
        if person is None and target is not None:
            person = next((p for p in view.values() if p.name == target.name), None)
        snap = None
        if target is None:
            if person is not None:
                self.gallery.remove(person.name)
                log.info("household: removed %r (removed on another camera)", person.name)
        else:
            if person is not None and person.name != target.name:
                try:
                    self.gallery.rename(person.name, target.name)
                except NameTakenError:
                    target = replace(target, name=f"{target.name[:56]} ({pid[:6]})")
                    self.gallery.rename(person.name, target.name)
                log.info("household: renamed %r to %r (renamed on another camera)", person.name, target.name)
            have = set() if person is None else set(person.samples)
            new = [sid for sid in target.samples if sid not in have]
            if new:
                vectors = np.stack([np.frombuffer(target.samples[sid][1], dtype=_VECTOR_DTYPE) for sid in new])
                self.gallery.add(target.name, vectors, [f"{SOURCE_PREFIX}{target.samples[sid][0]}" for sid in new],
                                 [target.samples[sid][2] for sid in new])
            known = set() if before is None else set(before.samples)
            gone = [person.samples[sid].row for sid in person.samples if sid in known and sid not in
                    target.samples] if person is not None else []
            if gone:
                self.gallery.remove_samples(target.name, gone)
            if person is None or new or gone:
                log.info("household: %r now has %d face(s) from the household", target.name, len(target.samples))
            created = self.gallery.person(target.name)
            snap = Snapshot(created.id, created.created, target.name,
                            {sid: origin for sid, (origin, _, _) in target.samples.items()})
        with self._transaction() as cur:
            self._put_snapshot(cur, pid, snap)
            cur.execute("DELETE FROM household_pending WHERE person_id = ?", (pid,))


def _target_json(target: Optional[_Target]) -> Optional[str]:
    if target is None:
        return None
    return json.dumps({"name": target.name, "samples": {
        sid: [origin, _b64(vector), None if crop is None else _b64(crop)]
        for sid, (origin, vector, crop) in target.samples.items()}})


def _target_from_json(text: Optional[str]) -> Optional[_Target]:
    if text is None:
        return None
    d = json.loads(text)
    return _Target(d["name"], {sid: (origin, base64.b64decode(v), None if c is None else base64.b64decode(c))
                               for sid, (origin, v, c) in d["samples"].items()})


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
            if not _ID_HEX.match(person_id):
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
