"""Tracks and votes: one decision per visit instead of one per frame.

A single frame's match is noisy (blur, pose, lighting), and a door camera sees the same person for dozens of
frames. A track is one person: it follows a face over detection frames by box overlap (and by embedding, for a face
whose box jumped), and every embedded frame of it votes. It ends once its face has been missing for
``max_missing`` seconds, so the next visitor standing where the last one stood is a new track and a new decision.

A track is decided once:

- ``recognized`` as soon as one person has at least ``min_votes`` accepted matches and at least ``vote_fraction``
  of the track's embedded frames (so one lucky frame never names a stranger);
- ``unknown`` once ``unknown_after`` embedded frames went by and no person reached ``min_votes``.

After a decision the track is no longer embedded on every frame (that is where most of the pipeline's time goes),
only every ``recheck_every`` seconds, and at once when its face comes back after a missed detection. Every
embedding a track takes is compared with the track's own mean embedding: ``swap_frames`` consecutive ones farther
than the matcher's threshold are another person in the same box (two visitors close together, one stepped in
front, or a new one where the last one stood; for a recognized track, so are ones the matcher accepts as another
enrolled person), and the track is split: the old one ends, a new one starts from
those embeddings and is decided afresh.

A track that ends undecided is decided with the same rules on what it saw: a recognized person if the vote allows,
``unknown`` if it was embedded at least ``unknown_after`` times. If it saw too little for either, its embeddings
are kept for ``visit_gap`` seconds, and a face that matches them by embedding continues it (a visitor glimpsed, then
facing the camera) rather than starting from nothing. A decision is never inherited by a face that was not
re-identified by its embedding.

The same person again within ``visit_gap`` seconds of their last sighting is the same visit: no second event. For
a recognized track that is the same name; for an unknown one, a mean embedding within ``visitor_distance`` of a
recent visitor's (an unknown one, or a household member who came back without being recognized). That distance is
stricter than the matcher's threshold (``same_visitor_probability`` on the embedder's calibration): it is searched
against every recent visitor, and taking a new stranger for the last one would swallow their event, while the
same person's frames minutes apart lie far closer than that. Anyone else is a new visit, however soon they come.
A recognized person's visit ends when they have not been seen for ``visit_gap`` seconds: the update of that frame
names them in ``departed`` (their presence turns off; a new sighting is a new visit and a new event).

The tracker is pure bookkeeping over boxes, embeddings and matches; it never sees an image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from edge.boxes import iou_matrix
from edge.config import TrackerConfig
from edge.embedder import distance
from edge.events import RECOGNIZED, UNKNOWN
from edge.matcher import Match


@dataclass(frozen=True)
class Decision:
    """What a track turned out to be. ``confidence`` and ``distance`` as described on :class:`edge.events.Event`."""

    track_id: int
    kind: str
    name: Optional[str]
    confidence: float
    distance: Optional[float]
    box: tuple[float, float, float, float]
    frames: int
    timestamp: float
    embedding: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # the track's mean, unit


@dataclass(frozen=True)
class TrackUpdate:
    """The result of one detection frame: each face's track id, the decisions taken on this frame, and the visits of
    recognized persons that ended on it (``(name, last seen)``: not seen for ``visit_gap`` seconds)."""

    track_ids: tuple[int, ...]
    decisions: tuple[Decision, ...]
    departed: tuple[tuple[str, float], ...] = ()


def _unit(vector: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if vector is None:
        return None
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else None


@dataclass
class _Visitor:
    """A recent visit: whom its event named (or would have: a same-visit track joins the visit it repeats), the
    sum of its tracks' embeddings, and when it was last seen."""

    kind: str
    name: Optional[str]
    embedding_sum: np.ndarray
    last_seen: float


@dataclass
class _Track:
    id: int
    box: np.ndarray
    last_seen: float
    missed: int = 0  # detection frames since it was last seen
    embedding_sum: Optional[np.ndarray] = None
    embedded: int = 0
    votes: dict = field(default_factory=dict)  # name -> list of (probability, distance)
    best_probability: list = field(default_factory=list)  # per voting frame: P(best person)
    best_distance: list = field(default_factory=list)  # per voting frame, when the gallery is not empty
    decided: Optional[str] = None
    name: Optional[str] = None
    last_embedded: float = -math.inf
    recheck: bool = False  # came back after a missed detection and not embedded since
    strict: int = 0  # embeddings still to be held to visitor_distance: the track came back after a miss
    unlike: list = field(default_factory=list)  # consecutive (embedding, match) far from the track's mean
    visitor: Optional[_Visitor] = None

    def mean_embedding(self) -> Optional[np.ndarray]:
        return _unit(self.embedding_sum)


def greedy_pairs(score: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """(row, column) pairs taken best score first, each row and column at most once, score >= minimum."""
    pairs: list[tuple[int, int]] = []
    if score.size == 0:
        return pairs
    rows, cols = np.unravel_index(np.argsort(-score, axis=None, kind="stable"), score.shape)
    used_rows, used_cols = set(), set()
    for r, c in zip(rows.tolist(), cols.tolist()):
        if score[r, c] < minimum:
            break
        if r in used_rows or c in used_cols:
            continue
        pairs.append((r, c))
        used_rows.add(r)
        used_cols.add(c)
    return pairs


class Tracker:
    """Follows faces across frames and decides each track once. See the module docstring for the rules.

    Per frame with detections: ``assign(boxes)`` gives each box its track (or None for a new face), and
    ``wants_embedding(track_id, timestamp)`` says which faces the caller should embed (new faces, undecided tracks,
    decided ones due for a re-check); then ``update(...)`` with the embeddings and matches it computed returns each
    face's track and the decisions taken on this frame.

    ``reid_distance`` is the embedding distance under which two faces are the same person: the matcher's threshold.
    ``visitor_distance`` (default: ``reid_distance``) is the stricter one under which an unknown track's mean
    embedding is the same visitor as a recent visit's: merging two people there would swallow a visitor's event.
    """

    def __init__(self, config: TrackerConfig, *, reid_distance: float, visitor_distance: Optional[float] = None,
                 metric: str = "cosine"):
        self.config = config
        self.reid_distance = reid_distance
        self.visitor_distance = reid_distance if visitor_distance is None else min(visitor_distance, reid_distance)
        self.metric = metric
        self._tracks: dict[int, _Track] = {}
        self._lost: list[_Track] = []  # ended having seen too little to decide; kept for re-identification
        self._visitors: list[_Visitor] = []
        self._next_id = 1
        self.stats = {"tracks": 0, "recognized": 0, "unknown": 0, "undecided": 0, "same_visit": 0, "swaps": 0,
                      "rechecks": 0, "resumed": 0}

    @property
    def active(self) -> int:
        return len(self._tracks)

    def boxes(self) -> dict[int, np.ndarray]:
        return {tid: t.box.copy() for tid, t in self._tracks.items()}

    def wants_embedding(self, track_id: Optional[int], timestamp: float) -> bool:
        """Whether the face given ``track_id`` by :meth:`assign` should be embedded on the frame at ``timestamp``."""
        track = self._tracks.get(track_id) if track_id is not None else None
        if track is None or track.decided is None or track.unlike or track.recheck or track.missed:
            return True
        return timestamp - track.last_embedded >= self.config.recheck_every

    def assign(self, boxes: np.ndarray) -> list[Optional[int]]:
        """Each box's track by overlap (>= iou_threshold, best first), None for boxes that start or re-find one."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = list(self._tracks)
        out: list[Optional[int]] = [None] * len(boxes)
        if not ids or not len(boxes):
            return out
        overlap = iou_matrix(np.stack([self._tracks[t].box for t in ids]), boxes)
        for r, c in greedy_pairs(overlap, max(self.config.iou_threshold, 1e-9)):
            out[c] = ids[r]
        return out

    def update(
        self,
        timestamp: float,
        boxes: np.ndarray,
        assigned: Sequence[Optional[int]],
        embeddings: Sequence[Optional[np.ndarray]],
        matches: Sequence[Optional[Match]],
    ) -> TrackUpdate:
        """Record one detection frame: the faces' track ids and the decisions it completed (ended tracks too)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not (len(boxes) == len(assigned) == len(embeddings) == len(matches)):
            raise ValueError("boxes, assigned, embeddings and matches must have one entry per face")
        departed = self._forget(timestamp)
        assigned = list(assigned)
        self._reidentify(assigned, embeddings)
        decisions: list[Decision] = []
        seen: set[int] = set()
        ids: list[int] = []
        for i, box in enumerate(boxes):
            track = self._tracks.get(assigned[i]) if assigned[i] is not None else None
            if track is None:
                track = self._new_track(box, timestamp)
            if track.missed:
                track.strict = self.config.swap_frames
            if embeddings[i] is not None:
                track = self._take(track, np.asarray(embeddings[i], dtype=np.float64), matches[i], box, timestamp,
                                   decisions)
            elif track.missed and track.decided is not None:
                track.recheck = True  # back after a miss but not embeddable yet: embed it as soon as it is
            track.box, track.last_seen, track.missed = box.copy(), timestamp, 0
            seen.add(track.id)
            ids.append(track.id)
            if track.decided is None:
                decision = self._decide(track, final=False, timestamp=timestamp)
                if decision is not None:
                    decisions.append(decision)
            if track.visitor is not None:
                track.visitor.last_seen = timestamp
        for tid in [t for t in self._tracks if t not in seen]:
            track = self._tracks[tid]
            track.missed += 1
            if timestamp - track.last_seen > self.config.max_missing:
                decisions.extend(self._end(track))
        return TrackUpdate(tuple(ids), tuple(decisions), departed)

    def finish(self) -> list[Decision]:
        """End every track (the source ended): decide the undecided ones on what they saw."""
        decisions: list[Decision] = []
        for track in list(self._tracks.values()):
            decisions.extend(self._end(track))
        self.stats["undecided"] += len(self._lost)
        self._lost.clear()
        return decisions

    def end_visits(self) -> tuple[tuple[str, float], ...]:
        """Nobody is watched any more (the source ended or the run stopped): every recognized visit ends, as
        ``(name, last seen)``."""
        ended = tuple((v.name, v.last_seen) for v in self._visitors if v.kind == RECOGNIZED)
        self._visitors = [v for v in self._visitors if v.kind != RECOGNIZED]
        return ended

    def _new_track(self, box: np.ndarray, timestamp: float) -> _Track:
        track = _Track(id=self._next_id, box=box.copy(), last_seen=timestamp)
        self._tracks[track.id] = track
        self._next_id += 1
        self.stats["tracks"] += 1
        return track

    def _forget(self, timestamp: float) -> tuple[tuple[str, float], ...]:
        """Drop visitors and lost tracks not seen for longer than the visit gap; the recognized visits that ended."""
        gap = self.config.visit_gap
        live = {id(t.visitor) for t in self._tracks.values() if t.visitor is not None}
        ended = [v for v in self._visitors if timestamp - v.last_seen > gap and id(v) not in live]
        self._visitors = [v for v in self._visitors if not any(v is e for e in ended)]
        kept = [t for t in self._lost if timestamp - t.last_seen <= gap]
        self.stats["undecided"] += len(self._lost) - len(kept)
        self._lost = kept
        return tuple((v.name, v.last_seen) for v in ended if v.kind == RECOGNIZED)

    def _reidentify(self, assigned: list[Optional[int]], embeddings: Sequence[Optional[np.ndarray]]) -> None:
        """Attach unassigned embedded faces to the unassigned live tracks whose mean embedding is within
        ``reid_distance`` (a box that jumped), and to the lost ones within ``visitor_distance`` (a face back after
        the track ended), closest first. A lost track found again is live again."""
        taken = set(assigned)
        live = [t for t in self._tracks.values() if t.id not in taken and t.embedded]
        candidates = live + self._lost
        free_faces = [i for i, tid in enumerate(assigned) if tid is None and embeddings[i] is not None]
        if not candidates or not free_faces:
            return
        means = np.stack([t.mean_embedding() for t in candidates])
        faces = np.stack([np.asarray(embeddings[i], dtype=np.float64) for i in free_faces])
        gaps = distance(means, faces, self.metric)
        limits = np.array([self.reid_distance] * len(live) + [self.visitor_distance] * len(self._lost))
        # Distances between unit vectors are at most 2: closest first, and only the pairs within their limit.
        closeness = np.where(gaps <= limits[:, None], 4.0 - gaps, -1.0)
        for r, c in greedy_pairs(closeness, 0.0):
            track = candidates[r]
            if track.id not in self._tracks:
                self._lost.remove(track)
                self._tracks[track.id] = track
                self.stats["resumed"] += 1
            assigned[free_faces[c]] = track.id

    def _take(self, track: _Track, embedding: np.ndarray, match: Optional[Match], box: np.ndarray,
              timestamp: float, decisions: list[Decision]) -> _Track:
        """Count one embedding for ``track``, or for a new track split from it (returned) when it is the
        ``swap_frames``-th in a row unlike the track's mean; the ended track's decision goes to ``decisions``."""
        if track.decided is not None:
            self.stats["rechecks"] += 1
        track.last_embedded, track.recheck = timestamp, False
        if not self._unlike(track, embedding, match):
            track.unlike.clear()
            track.strict = 0
            self._observe(track, embedding, match)
            return track
        track.strict = max(track.strict - 1, 0)
        track.unlike.append((embedding, match))
        if len(track.unlike) < self.config.swap_frames:
            return track
        unlike, track.unlike = track.unlike, []
        decisions.extend(self._end(track))
        self.stats["swaps"] += 1
        new = self._new_track(box, timestamp)
        for vector, vote in unlike:
            self._observe(new, vector, vote)
        new.last_embedded = timestamp
        return new

    def _unlike(self, track: _Track, embedding: np.ndarray, match: Optional[Match]) -> bool:
        """Whether ``embedding`` looks like another person than ``track``'s: farther than ``reid_distance`` from the
        track's mean (``visitor_distance`` while the track is back after a miss: whoever stands there now must be
        re-identified as the one before, not merely not ruled out), or, for a recognized track, accepted by the
        matcher as another enrolled person."""
        mean = track.mean_embedding()
        if mean is None:
            return False
        limit = self.visitor_distance if track.strict else self.reid_distance
        if float(distance(mean, embedding, self.metric)[0, 0]) > limit:
            return True
        return (track.decided == RECOGNIZED and match is not None and match.name is not None
                and match.name != track.name)

    def _observe(self, track: _Track, embedding: np.ndarray, match: Optional[Match]) -> None:
        track.embedding_sum = embedding.copy() if track.embedding_sum is None else track.embedding_sum + embedding
        track.embedded += 1
        if track.visitor is not None:
            track.visitor.embedding_sum = track.visitor.embedding_sum + embedding
        if match is None or track.decided is not None:
            return
        track.best_probability.append(match.probability if match.best is not None else 0.0)
        if match.distance is not None:
            track.best_distance.append(match.distance)
        if match.name is not None:
            track.votes.setdefault(match.name, []).append((match.probability, match.distance))

    def _leader(self, track: _Track) -> tuple[Optional[str], int]:
        if not track.votes:
            return None, 0
        name = max(track.votes, key=lambda n: (len(track.votes[n]), sum(p for p, _ in track.votes[n])))
        return name, len(track.votes[name])

    def _recent_visitor(self, timestamp: float, *, name: Optional[str] = None,
                        embedding: Optional[np.ndarray] = None) -> Optional[_Visitor]:
        """The visit within the visit gap that this one repeats: the same recognized name, or (``embedding``) the
        visitor of any kind whose mean embedding is closest within ``visitor_distance``."""
        recent = [v for v in self._visitors if timestamp - v.last_seen <= self.config.visit_gap]
        if name is not None:
            return next((v for v in recent if v.kind == RECOGNIZED and v.name == name), None)
        if embedding is None or not recent:
            return None
        means = np.stack([_unit(v.embedding_sum) for v in recent])
        gaps = distance(means, embedding, self.metric)[:, 0]
        best = int(np.argmin(gaps))
        return recent[best] if gaps[best] <= self.visitor_distance else None

    def _join_visit(self, track: _Track, kind: str, timestamp: float) -> bool:
        """Link ``track`` to the visit it repeats (True: no event), or to a new visit (False)."""
        if kind == RECOGNIZED:
            visitor = self._recent_visitor(timestamp, name=track.name)
        else:
            visitor = self._recent_visitor(timestamp, embedding=track.mean_embedding())
        if visitor is not None:
            visitor.embedding_sum = visitor.embedding_sum + track.embedding_sum
            visitor.last_seen = max(visitor.last_seen, timestamp)
            track.visitor = visitor
            self.stats["same_visit"] += 1
            return True
        track.visitor = _Visitor(kind, track.name, track.embedding_sum.copy(), timestamp)
        self._visitors.append(track.visitor)
        return False

    def _decide(self, track: _Track, *, final: bool, timestamp: float) -> Optional[Decision]:
        cfg = self.config
        name, count = self._leader(track)
        if name is not None and count >= cfg.min_votes and count >= cfg.vote_fraction * track.embedded:
            track.decided, track.name = RECOGNIZED, name
            if self._join_visit(track, RECOGNIZED, timestamp):
                return None
            self.stats["recognized"] += 1
            probabilities = [p for p, _ in track.votes[name]]
            distances = [d for _, d in track.votes[name]]
            return self._decision(track, RECOGNIZED, name, float(np.mean(probabilities)),
                                  float(np.median(distances)), count, timestamp)
        if track.embedded >= cfg.unknown_after and (count < cfg.min_votes or final):
            track.decided = UNKNOWN
            if self._join_visit(track, UNKNOWN, timestamp):
                return None
            self.stats["unknown"] += 1
            confidence = 1.0 - float(np.mean(track.best_probability)) if track.best_probability else 1.0
            distance_ = float(np.median(track.best_distance)) if track.best_distance else None
            return self._decision(track, UNKNOWN, None, confidence, distance_, track.embedded, timestamp)
        return None

    def _end(self, track: _Track) -> list[Decision]:
        del self._tracks[track.id]
        track.unlike.clear()
        if track.decided is not None:
            return []
        decision = self._decide(track, final=True, timestamp=track.last_seen)
        if decision is not None:
            return [decision]
        if track.decided is None:
            if track.embedded:
                self._lost.append(track)
            else:
                self.stats["undecided"] += 1
        return []

    @staticmethod
    def _decision(track: _Track, kind: str, name: Optional[str], confidence: float, distance: Optional[float],
                  frames: int, timestamp: float) -> Decision:
        box = tuple(round(float(v), 1) for v in track.box)
        mean = track.mean_embedding()
        return Decision(track.id, kind, name, min(max(confidence, 0.0), 1.0), distance, box, frames, timestamp,
                        None if mean is None else mean.astype(np.float32))
