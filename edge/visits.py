"""The visit log: who came to the door, with each visit's best face crop and embedding, and unknown visitors grouped.

Every event of ``doorface run`` is recorded here before it is published: its best face crop (the aligned chip the
embedder saw, a small JPEG), the track's mean embedding, and whom it named. The log lives in the gallery's own SQLite
file (WAL: ``doorface serve`` and ``doorface visitors`` read and change it while ``doorface run`` writes), so that:

* a person's visits go with them: removing a person removes their crops and embeddings (a foreign key with
  ``ON DELETE CASCADE``), merging two people moves the visits too;
* naming an unknown group is one transaction: the new person's faces and the visits they came from change together
  or not at all, whichever browser or shell asked first (the second is told the group is gone).

**Grouping.** Unknown visits are clustered incrementally: a new unknown visit joins the group whose mean embedding is
nearest, if that is within the embedder's match threshold from the manifest (the distance under which the matcher
itself would call two faces the same person), else it starts a new group. One matrix product over the groups' means
per visit: thousands of visits cost nothing, and a group's id never changes as it grows (ids are never reused), so a
Home Assistant automation can count "the same unknown person came 3 times this week" from the event's ``group``.

**Retention** (``visits.days``, ``visits.max_mb``): visits older than ``days`` go, then the oldest until the crops
and embeddings fit in ``max_mb``; a group left without visits goes too, and the others' means are recomputed from
the visits they keep. Nothing is written anywhere else. SQLite reuses the freed pages, so the file stops growing
rather than shrinking.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from edge.config import VisitsConfig
from edge.embedder import distance, l2_normalise
from edge.events import RECOGNIZED, UNKNOWN, Event
from edge.gallery import Gallery, GalleryError, Person
from edge.manifest import ModelEntry
from edge.matcher import threshold_from_entry

logger = logging.getLogger(__name__)

_VECTOR_DTYPE = np.dtype("<f4")
SECONDS_PER_DAY = 86400.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS visit_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    vector_sum BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS visits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    kind TEXT NOT NULL,
    timestamp REAL NOT NULL,
    person_id INTEGER REFERENCES persons(id) ON DELETE CASCADE,
    group_id INTEGER REFERENCES visit_groups(id) ON DELETE SET NULL,
    confidence REAL NOT NULL,
    distance REAL,
    embedding BLOB NOT NULL,
    crop BLOB,
    not_person TEXT
);
CREATE INDEX IF NOT EXISTS visits_time ON visits(timestamp);
CREATE INDEX IF NOT EXISTS visits_group ON visits(group_id);
CREATE INDEX IF NOT EXISTS visits_person ON visits(person_id);
"""
_TABLES = ("visit_groups", "visits")
_VISIT_COLUMNS = ("v.id, v.event_id, v.camera, v.kind, v.timestamp, p.name, v.group_id, v.confidence, v.distance, "
                  "v.crop IS NOT NULL, v.not_person")


class VisitError(GalleryError):
    """A request on the visit log failed; the message says what to do."""


class VisitNotFound(VisitError):
    """No visit has that id (it may have expired: visits.days)."""


class GroupNotFound(VisitError):
    """No unknown-visitor group has that id (it was named, added to someone, or its visits expired)."""


@dataclass(frozen=True)
class Visit:
    """One recorded visit. ``person`` is whom it belongs to now (named by the matcher, or later from its group);
    ``not_person`` the person it was wrongly taken for, once corrected."""

    id: int
    event_id: str
    camera: str
    kind: str
    timestamp: float
    person: Optional[str]
    group: Optional[int]
    confidence: float
    distance: Optional[float]
    has_crop: bool
    not_person: Optional[str]

    def to_dict(self) -> dict:
        return {"id": self.id, "event_id": self.event_id, "camera": self.camera, "kind": self.kind,
                "timestamp": self.timestamp, "person": self.person, "group": self.group,
                "confidence": round(self.confidence, 4),
                "distance": None if self.distance is None else round(self.distance, 4),
                "has_crop": self.has_crop, "not_person": self.not_person}


@dataclass(frozen=True)
class VisitorGroup:
    """Unknown visits of (by the embedder's threshold) one person. ``cover`` is the id of its latest visit with a
    crop, for showing it."""

    id: int
    visits: int
    first_seen: float
    last_seen: float
    cover: Optional[int]

    def to_dict(self) -> dict:
        return {"id": self.id, "visits": self.visits, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "cover": self.cover}


class VisitLog:
    """The visit log of one open gallery (``gallery``'s connection and thread). Construct it once per connection;
    it creates its tables in the gallery file if they are missing."""

    def __init__(self, gallery: Gallery, *, threshold: float, metric: str, settings: Optional[VisitsConfig] = None,
                 clock: Callable[[], float] = time.time):
        if not threshold > 0:
            raise ValueError(f"the grouping threshold must be a positive distance, got {threshold}")
        self.gallery = gallery
        self.threshold = float(threshold)
        self.metric = metric
        self.settings = settings or VisitsConfig()
        self._clock = clock
        have = {name for (name,) in gallery.read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not all(t in have for t in _TABLES):
            with gallery.transaction() as cur:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    cur.execute(statement)

    # --- recording -------------------------------------------------------------------------------------------------

    def record(self, event: Event) -> Event:
        """Keep ``event``'s crop and embedding; the event back with its unknown-visitor ``group`` (and how many
        visits that group holds), for the publisher. An event without an embedding is returned as it is."""
        if event.embedding is None:
            logger.debug("event %s has no embedding: not recorded", event.event_id)
            return event
        vector = self._unit(event.embedding)
        group = count = None
        with self.gallery.transaction() as cur:
            person_id = None
            if event.kind == RECOGNIZED:
                row = cur.execute("SELECT id FROM persons WHERE name = ?", (event.name,)).fetchone()
                person_id = row[0] if row else None
                if row is None:  # renamed or removed since the matcher was built: kept, but nobody's visit
                    logger.warning("visit %s named %r, who is no longer enrolled under that name: recorded without "
                                   "a person", event.event_id, event.name)
            if event.kind == UNKNOWN:
                group = self._assign_group(cur, vector, event.timestamp)
            cur.execute(
                "INSERT INTO visits (event_id, camera, kind, timestamp, person_id, group_id, confidence, distance, "
                "embedding, crop) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, event.camera, event.kind, float(event.timestamp), person_id, group,
                 float(event.confidence), None if event.distance is None else float(event.distance),
                 vector.astype(_VECTOR_DTYPE).tobytes(), event.crop_jpeg))
            self._purge(cur)  # in the same transaction: one commit per visit
            if group is not None:
                count = int(cur.execute("SELECT COUNT(*) FROM visits WHERE group_id = ?", (group,)).fetchone()[0])
        return replace(event, group=group, group_visits=count)

    def purge(self) -> int:
        """Apply the retention policy now; the number of visits deleted."""
        with self.gallery.transaction() as cur:
            return self._purge(cur)

    def _purge(self, cur) -> int:
        oldest_kept = self._clock() - self.settings.days * SECONDS_PER_DAY
        budget = self.settings.max_mb * 1e6
        doomed = [i for (i,) in cur.execute("SELECT id FROM visits WHERE timestamp < ?", (oldest_kept,))]
        total = 0.0
        for visit_id, size in cur.execute("SELECT id, length(embedding) + IFNULL(length(crop), 0) FROM visits "
                                          "WHERE timestamp >= ? ORDER BY timestamp DESC, id DESC",
                                          (oldest_kept,)).fetchall():
            total += size
            if total > budget:
                doomed.append(visit_id)
        if not doomed:
            return 0
        groups = set()
        for start in range(0, len(doomed), 500):
            chunk = doomed[start:start + 500]
            marks = ",".join("?" * len(chunk))
            groups.update(g for (g,) in cur.execute(
                f"SELECT DISTINCT group_id FROM visits WHERE id IN ({marks}) AND group_id IS NOT NULL", chunk))
            cur.execute(f"DELETE FROM visits WHERE id IN ({marks})", chunk)
        self._refresh_groups(cur, groups)
        logger.info("visit log %s: %d visit(s) past the retention policy deleted", self.gallery.path, len(doomed))
        return len(doomed)

    # --- reads -----------------------------------------------------------------------------------------------------

    def visits(self, *, limit: int = 100, kind: Optional[str] = None, group: Optional[int] = None,
               person: Optional[str] = None) -> list[Visit]:
        """The latest visits, newest first, optionally of one kind, group or person."""
        where, params = [], []
        if kind is not None:
            where.append("v.kind = ?")
            params.append(kind)
        if group is not None:
            where.append("v.group_id = ?")
            params.append(int(group))
        if person is not None:
            where.append("v.person_id = ?")
            params.append(self.gallery.person(person).id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self.gallery.read(f"SELECT {_VISIT_COLUMNS} FROM visits v LEFT JOIN persons p ON p.id = v.person_id "
                                 f"{clause}ORDER BY v.timestamp DESC, v.id DESC LIMIT ?", (*params, int(limit)))
        return [_visit(row) for row in rows]

    def visit(self, visit_id: int) -> Visit:
        rows = self.gallery.read(f"SELECT {_VISIT_COLUMNS} FROM visits v LEFT JOIN persons p ON p.id = v.person_id "
                                 "WHERE v.id = ?", (int(visit_id),))
        if not rows:
            raise self._visit_not_found(visit_id)
        return _visit(rows[0])

    def crop(self, visit_id: int) -> bytes:
        """The visit's face crop (JPEG); :class:`VisitNotFound` when there is no such visit or it kept no crop."""
        rows = self.gallery.read("SELECT crop FROM visits WHERE id = ?", (int(visit_id),))
        if not rows or rows[0][0] is None:
            raise self._visit_not_found(visit_id)
        return bytes(rows[0][0])

    def groups(self) -> list[VisitorGroup]:
        """Every unknown-visitor group, the most recently seen first."""
        rows = self.gallery.read(
            "SELECT group_id, COUNT(*), MIN(timestamp), MAX(timestamp), "
            "(SELECT c.id FROM visits c WHERE c.group_id = v.group_id AND c.crop IS NOT NULL "
            " ORDER BY c.timestamp DESC LIMIT 1) "
            "FROM visits v WHERE group_id IS NOT NULL GROUP BY group_id ORDER BY MAX(timestamp) DESC")
        return [VisitorGroup(int(g), int(n), float(a), float(b), None if c is None else int(c))
                for g, n, a, b, c in rows]

    def group(self, group_id: int) -> VisitorGroup:
        found = [g for g in self.groups() if g.id == int(group_id)]
        if not found:
            raise self._group_not_found(group_id)
        return found[0]

    # --- changes (each one transaction) ------------------------------------------------------------------------------

    def name_group(self, group_id: int, name: str) -> Person:
        """The group is a new person ``name``, enrolled from its visits' faces (the latest ``visits.max_samples``); its
        visits become theirs. :class:`~edge.gallery.NameTakenError` if ``name`` is enrolled already."""
        return self._give_group(group_id, name, new_person=True)

    def add_group(self, group_id: int, name: str) -> Person:
        """The group is the enrolled person ``name``: its faces are added to theirs, its visits become theirs."""
        self.gallery.person(name)  # PersonNotFound before anything changes
        return self._give_group(group_id, name, new_person=False)

    def not_person(self, visit_id: int) -> Visit:
        """A recognized visit was someone else: its face becomes an exclusion of the person it was taken for (see
        :meth:`Gallery.exclude`), and the visit an unknown one, grouped like any other."""
        with self.gallery.transaction() as cur:
            row = cur.execute("SELECT v.event_id, p.name, v.embedding, v.crop, v.timestamp FROM visits v "
                              "LEFT JOIN persons p ON p.id = v.person_id WHERE v.id = ?", (int(visit_id),)).fetchone()
            if row is None:
                raise self._visit_not_found(visit_id)
            event_id, name, blob, crop, timestamp = row
            if name is None:
                raise VisitError(f"visit {visit_id} is not anyone's: only a visit named as a person can be marked "
                                 "as not that person")
            vector = self._vector(blob)
            self.gallery.exclude(name, vector, [f"visit:{event_id}"], [None if crop is None else bytes(crop)])
            group = self._assign_group(cur, vector, float(timestamp))
            cur.execute("UPDATE visits SET person_id = NULL, group_id = ?, not_person = ? WHERE id = ?",
                        (group, name, int(visit_id)))
        logger.info("visit %s marked as not %r; now in unknown group %d", visit_id, name, group)
        return self.visit(visit_id)

    # --- internals ---------------------------------------------------------------------------------------------------

    def _give_group(self, group_id: int, name: str, *, new_person: bool) -> Person:
        with self.gallery.transaction() as cur:
            rows = cur.execute("SELECT id, event_id, embedding, crop FROM visits WHERE group_id = ? "
                               "ORDER BY timestamp DESC, id DESC", (int(group_id),)).fetchall()
            if not rows:
                raise self._group_not_found(group_id)
            samples = rows[:self.settings.max_samples]
            person = self.gallery.add(name, np.stack([self._vector(r[2]) for r in samples]),
                                      [f"visit:{r[1]}" for r in samples],
                                      [None if r[3] is None else bytes(r[3]) for r in samples],
                                      new_person=new_person)
            cur.executemany("UPDATE visits SET person_id = ?, group_id = NULL WHERE id = ?",
                            [(person.id, r[0]) for r in rows])
            cur.execute("DELETE FROM visit_groups WHERE id = ?", (int(group_id),))
        logger.info("unknown group %d (%d visits) given to %r", group_id, len(rows), person.name)
        return self.gallery.person(person.name)

    def _assign_group(self, cur, vector: np.ndarray, timestamp: float) -> int:
        """The group this unknown face joins (its mean updated), or a new one."""
        groups = cur.execute("SELECT id, vector_sum FROM visit_groups").fetchall()
        if groups:
            sums = np.stack([self._vector(blob) for _, blob in groups])
            gaps = distance(l2_normalise(sums), vector[None], self.metric)[:, 0]
            best = int(np.argmin(gaps))
            if gaps[best] <= self.threshold:
                group_id = int(groups[best][0])
                cur.execute("UPDATE visit_groups SET vector_sum = ? WHERE id = ?",
                            ((sums[best] + vector).astype(_VECTOR_DTYPE).tobytes(), group_id))
                return group_id
        cur.execute("INSERT INTO visit_groups (created, vector_sum) VALUES (?, ?)",
                    (float(timestamp), vector.astype(_VECTOR_DTYPE).tobytes()))
        return int(cur.lastrowid)

    def _refresh_groups(self, cur, group_ids) -> None:
        """Recompute the means of groups that lost visits; delete the ones left empty."""
        for group_id in group_ids:
            blobs = [b for (b,) in cur.execute("SELECT embedding FROM visits WHERE group_id = ?", (group_id,))]
            if not blobs:
                cur.execute("DELETE FROM visit_groups WHERE id = ?", (group_id,))
            else:
                total = np.sum([self._vector(b) for b in blobs], axis=0)
                cur.execute("UPDATE visit_groups SET vector_sum = ? WHERE id = ?",
                            (total.astype(_VECTOR_DTYPE).tobytes(), group_id))

    def _unit(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape != (self.gallery.dim,) or not np.all(np.isfinite(vector)) or not np.any(vector):
            raise ValueError(f"a visit's embedding must be {self.gallery.dim} finite values, not all zero; got "
                             f"shape {vector.shape}")
        return l2_normalise(vector[None])[0]

    def _vector(self, blob: bytes) -> np.ndarray:
        if len(blob) != self.gallery.dim * _VECTOR_DTYPE.itemsize:
            raise VisitError(f"the visit log in {self.gallery.path} is damaged: an embedding of {len(blob)} bytes, "
                             f"expected {self.gallery.dim * _VECTOR_DTYPE.itemsize}")
        return np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32)

    def _visit_not_found(self, visit_id) -> VisitNotFound:
        return VisitNotFound(f"no visit {visit_id} in {self.gallery.path} (visits older than visits.days are "
                             "deleted); list them with `doorface visits`")

    def _group_not_found(self, group_id) -> GroupNotFound:
        return GroupNotFound(f"no unknown-visitor group {group_id} in {self.gallery.path}: it was named or added to "
                             "someone meanwhile, or its visits expired; list the groups with `doorface visitors`")


def _visit(row: tuple) -> Visit:
    i, event_id, camera, kind, ts, person, group, confidence, dist, has_crop, not_person = row
    return Visit(int(i), str(event_id), str(camera), str(kind), float(ts), person,
                 None if group is None else int(group), float(confidence), None if dist is None else float(dist),
                 bool(has_crop), not_person)


def open_visit_log(gallery: Gallery, config, entry: ModelEntry) -> VisitLog:
    """The visit log of ``gallery`` with the config's retention and the embedder's threshold from its manifest
    ``entry`` (the matcher's: ``embedder.threshold``)."""
    metric = str((entry.fields.get("embedding") or {}).get("metric", "cosine"))
    return VisitLog(gallery, threshold=threshold_from_entry(entry, config.embedder.threshold), metric=metric,
                    settings=config.visits)
