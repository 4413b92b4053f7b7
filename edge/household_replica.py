"""This camera's copy of the household gallery: the merged person states kept beside the gallery (tables
``household_*`` in the same SQLite file), the gallery's local changes taken in as new versions, and the merged states
materialised back into the gallery. The protocol itself is :mod:`edge.household`."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from edge.gallery import BUSY_TIMEOUT_S, Gallery, NameTakenError
from edge.household import (
    SOURCE_PREFIX,
    VECTOR_DTYPE,
    EmbedderTag,
    PersonState,
    SharedSample,
    Version,
    compact,
    empty_state,
    merge,
    person_id_for,
    sample_id,
    state_from_json,
    state_to_json,
    to_base64,
)

log = logging.getLogger(__name__)
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
        for s in gallery.faces(person.name):
            raw = np.asarray(s.vector, dtype=VECTOR_DTYPE).tobytes()
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
        raw = None if vector is None else np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()
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
                vectors = np.stack([np.frombuffer(target.samples[sid][1], dtype=VECTOR_DTYPE) for sid in new])
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
        sid: [origin, to_base64(vector), None if crop is None else to_base64(crop)]
        for sid, (origin, vector, crop) in target.samples.items()}})


def _target_from_json(text: Optional[str]) -> Optional[_Target]:
    if text is None:
        return None
    d = json.loads(text)
    return _Target(d["name"], {sid: (origin, base64.b64decode(v), None if c is None else base64.b64decode(c))
                               for sid, (origin, v, c) in d["samples"].items()})
