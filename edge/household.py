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
  ``_local_view`` and ``Replica.take_local_changes`` of :mod:`edge.household_replica`.
* **Merging is idempotent**: a camera that holds more than the broker's retained state publishes the merge; one that
  receives what it already has stays quiet. So the broker's copy converges to the union of what every camera knows,
  and a broker that lost its retained messages is refilled at the next connect of any camera.
* **Nothing unchecked is taken in**: every message is signed with HMAC-SHA256 over its topic and canonical JSON with
  the household key; a message that is too large, not of this schema, of another household, badly signed, or whose
  samples name an undeclared embedder or hold vectors of the wrong size is rejected with one log line and changes
  nothing. Only names and embeddings travel (face thumbnails with ``household.share_crops``), each sample tagged with
  the sha256 of the embedder that made it: a camera uses only the samples of its own embedder, re-embeds the others
  from their thumbnail when there is one, and says which people it cannot use.

This module is the protocol (versions, merging, the signed wire format); :mod:`edge.household_replica` keeps a
camera's copy and its gallery in step; :mod:`edge.household_sync` runs it over MQTT.

Materialising the merged state into the gallery goes through the Gallery's own methods (add, rename, remove,
remove_samples); a journal row written before and deleted after makes a pass killed half-way finish the same
changes at the next start instead of taking the half-applied gallery for a local edit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from edge.gallery import GalleryError, validate_name

log = logging.getLogger(__name__)

SCHEMA = "doorface.household/1"
Version = tuple[int, str]
MAX_CLOCK = 2 ** 53  # JSON numbers stay exact below this in every language
MAX_DIM = 4096
VECTOR_DTYPE = np.dtype("<f4")
ID_HEX = re.compile(r"^[0-9a-f]{24}$")
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


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def state_to_json(state: PersonState) -> dict:
    return {
        "name": state.name,
        "named": list(state.named),
        "deleted": None if state.deleted is None else list(state.deleted),
        "samples": [{"id": s.id, "added": list(s.added), "embedder": s.embedder, "vector": to_base64(s.vector),
                     "crop": None if s.crop is None else to_base64(s.crop)} for s in state.samples],
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
        if len(vector) != tag.dim * VECTOR_DTYPE.itemsize:
            raise RejectedMessage(f"a sample of {name!r} has {len(vector)} bytes; embedder {tag.key} gives "
                                  f"{tag.dim * VECTOR_DTYPE.itemsize}")
        values = np.frombuffer(vector, dtype=VECTOR_DTYPE)
        if not np.all(np.isfinite(values)) or not np.any(values):
            raise RejectedMessage(f"a sample of {name!r} is not a finite, non-zero embedding")
        if s["id"] != sample_id(vector):
            raise RejectedMessage(f"a sample of {name!r} has id {str(s['id'])[:30]!r}, not its content's")
        crop = None if s["crop"] is None else _unb64(s["crop"], "sample crop")
        samples[s["id"]] = SharedSample(s["id"], _version(s["added"], "sample.added"), tag.sha256, vector, crop)
    removed: dict[str, Version] = {}
    for item in obj["removed"]:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str) or not ID_HEX.match(item[0]):
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
