"""Tracks and votes: one decision per visit instead of one per frame.

A single frame's match is noisy (blur, pose, lighting), and a door camera sees the same person for dozens of
frames. The tracker follows each face over frames (box overlap first, then embedding distance for a face whose box
jumped or that was missed for a few frames) and lets every embedded frame vote. A track is decided once:

- ``recognized`` as soon as one person has at least ``min_votes`` accepted matches and at least ``vote_fraction``
  of the track's embedded frames (so one lucky frame never names a stranger);
- ``unknown`` once ``unknown_after`` embedded frames went by and no person reached ``min_votes``.

A track that ends undecided is decided with the same rules on what it saw: a recognized person if the vote allows,
``unknown`` if it was embedded at least ``unknown_after`` times, else nothing (a face glimpsed too briefly). After a
decision the track is only followed, not embedded, which is where most of the pipeline's time goes.

A person recognized again within ``visit_gap`` seconds of their last sighting (the track broke while they turned
away, say) is the same visit: no second event.

The tracker is pure bookkeeping over boxes, embeddings and matches; it never sees an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

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


@dataclass(frozen=True)
class TrackUpdate:
    """The result of one detection frame: each face's track id, and the decisions taken on this frame."""

    track_ids: tuple[int, ...]
    decisions: tuple[Decision, ...]


@dataclass
class _Track:
    id: int
    box: np.ndarray
    last_seen: float
    missed: int = 0
    embedding_sum: Optional[np.ndarray] = None
    embedded: int = 0
    votes: dict = field(default_factory=dict)  # name -> list of (probability, distance)
    best_probability: list = field(default_factory=list)  # per embedded frame: P(best person)
    best_distance: list = field(default_factory=list)  # per embedded frame, when the gallery is not empty
    decided: Optional[str] = None
    name: Optional[str] = None

    def mean_embedding(self) -> Optional[np.ndarray]:
        if self.embedding_sum is None:
            return None
        norm = float(np.linalg.norm(self.embedding_sum))
        return self.embedding_sum / norm if norm > 0 else None


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


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

    Per frame with detections: ``assign(boxes)`` gives each box its track (or None for a new face) so the caller
    can skip embedding faces of decided tracks; then ``update(...)`` with the embeddings and matches it computed
    returns each face's track and the decisions taken on this frame.
    """

    def __init__(self, config: TrackerConfig, *, reid_distance: float, metric: str = "cosine"):
        self.config = config
        self.reid_distance = reid_distance
        self.metric = metric
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._person_last_seen: dict[str, float] = {}
        self.stats = {"tracks": 0, "recognized": 0, "unknown": 0, "undecided": 0, "same_visit": 0}

    @property
    def active(self) -> int:
        return len(self._tracks)

    def boxes(self) -> dict[int, np.ndarray]:
        return {tid: t.box.copy() for tid, t in self._tracks.items()}

    def is_decided(self, track_id: Optional[int]) -> bool:
        track = self._tracks.get(track_id) if track_id is not None else None
        return track is not None and track.decided is not None

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
        assigned = list(assigned)
        self._reidentify(assigned, embeddings)
        decisions: list[Decision] = []
        seen: set[int] = set()
        ids: list[int] = []
        for i, box in enumerate(boxes):
            track = self._tracks.get(assigned[i]) if assigned[i] is not None else None
            if track is None:
                track = _Track(id=self._next_id, box=box.copy(), last_seen=timestamp)
                self._tracks[track.id] = track
                self._next_id += 1
                self.stats["tracks"] += 1
            track.box, track.last_seen, track.missed = box.copy(), timestamp, 0
            seen.add(track.id)
            ids.append(track.id)
            if embeddings[i] is not None and track.decided is None:
                self._observe(track, np.asarray(embeddings[i], dtype=np.float64), matches[i])
            if track.decided == RECOGNIZED:
                self._person_last_seen[track.name] = timestamp
            elif track.decided is None:
                decision = self._decide(track, final=False, timestamp=timestamp)
                if decision is not None:
                    decisions.append(decision)
        for tid in [t for t in self._tracks if t not in seen]:
            track = self._tracks[tid]
            track.missed += 1
            if track.missed > self.config.max_missed:
                decisions.extend(self._end(track))
        return TrackUpdate(tuple(ids), tuple(decisions))

    def finish(self) -> list[Decision]:
        """End every track (the source ended): decide the undecided ones on what they saw."""
        decisions: list[Decision] = []
        for track in list(self._tracks.values()):
            decisions.extend(self._end(track))
        return decisions

    def _reidentify(self, assigned: list[Optional[int]], embeddings: Sequence[Optional[np.ndarray]]) -> None:
        """Attach unassigned embedded faces to unassigned tracks whose mean embedding is close enough."""
        free_tracks = [t for t in self._tracks.values() if t.id not in assigned and t.embedded]
        free_faces = [i for i, tid in enumerate(assigned) if tid is None and embeddings[i] is not None]
        if not free_tracks or not free_faces:
            return
        means = np.stack([t.mean_embedding() for t in free_tracks])
        faces = np.stack([np.asarray(embeddings[i], dtype=np.float64) for i in free_faces])
        closeness = -distance(means, faces, self.metric)
        for r, c in greedy_pairs(closeness, -self.reid_distance):
            assigned[free_faces[c]] = free_tracks[r].id

    def _observe(self, track: _Track, embedding: np.ndarray, match: Optional[Match]) -> None:
        track.embedding_sum = embedding if track.embedding_sum is None else track.embedding_sum + embedding
        track.embedded += 1
        if match is None:
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

    def _decide(self, track: _Track, *, final: bool, timestamp: float) -> Optional[Decision]:
        cfg = self.config
        name, count = self._leader(track)
        if name is not None and count >= cfg.min_votes and count >= cfg.vote_fraction * track.embedded:
            track.decided, track.name = RECOGNIZED, name
            last = self._person_last_seen.get(name)
            self._person_last_seen[name] = timestamp
            if last is not None and timestamp - last <= cfg.visit_gap:
                self.stats["same_visit"] += 1
                return None
            self.stats["recognized"] += 1
            probabilities = [p for p, _ in track.votes[name]]
            distances = [d for _, d in track.votes[name]]
            return self._decision(track, RECOGNIZED, name, float(np.mean(probabilities)),
                                  float(np.median(distances)), count, timestamp)
        if track.embedded >= cfg.unknown_after and (count < cfg.min_votes or final):
            track.decided = UNKNOWN
            self.stats["unknown"] += 1
            confidence = 1.0 - float(np.mean(track.best_probability)) if track.best_probability else 1.0
            distance = float(np.median(track.best_distance)) if track.best_distance else None
            return self._decision(track, UNKNOWN, None, confidence, distance, track.embedded, timestamp)
        if final:
            self.stats["undecided"] += 1
        return None

    def _end(self, track: _Track) -> list[Decision]:
        del self._tracks[track.id]
        if track.decided is not None:
            return []
        decision = self._decide(track, final=True, timestamp=track.last_seen)
        return [decision] if decision is not None else []

    @staticmethod
    def _decision(track: _Track, kind: str, name: Optional[str], confidence: float, distance: Optional[float],
                  frames: int, timestamp: float) -> Decision:
        box = tuple(round(float(v), 1) for v in track.box)
        return Decision(track.id, kind, name, min(max(confidence, 0.0), 1.0), distance, box, frames, timestamp)
