"""What the pipeline tells the outside world: one :class:`Event` per visit, and a :class:`Departure` when a
recognized person's visit ends.

The tracker emits an event once per track: ``recognized`` as soon as its vote for one enrolled person is
sufficient, or ``unknown`` once a face has been seen for enough frames without matching anyone. The publisher
sends :meth:`Event.to_payload` as JSON; the same payload is what ``doorface demo`` prints, so the README documents
one shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

import numpy as np

RECOGNIZED = "recognized"
UNKNOWN = "unknown"
EVENT_KINDS = (RECOGNIZED, UNKNOWN)


def new_event_id() -> str:
    return uuid.uuid4().hex


def iso_utc(timestamp: float) -> str:
    """Unix seconds → ``2026-11-23T20:15:00.123Z``."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Event:
    """One visit: a recognized household member or an unknown face.

    ``confidence`` is in 0..1 (see the README: the LFW-calibrated probability that the faces of the track are the
    named person, averaged over the track's voting frames; for ``unknown``, the probability that they are none of
    the enrolled persons). ``distance`` is the track's median embedding distance to the chosen person (for
    ``unknown``: to the nearest person, or None with an empty gallery). ``box`` is ``[x1, y1, x2, y2]`` in frame
    pixels at the moment of the decision. ``crop_jpeg`` (the track's best face, aligned) and ``embedding`` (the
    track's mean embedding, a unit vector) are never part of the payload: they stay on the device in the visit log
    (:mod:`edge.visits`), and the crop is published only when configured. ``group`` is the unknown-visitor group the
    visit log put an ``unknown`` visit in, ``group_visits`` how many visits that group holds with this one (both
    None for a recognized visit or with the visit log off).
    """

    kind: str
    camera: str
    name: Optional[str]
    confidence: float
    distance: Optional[float]
    box: tuple[float, float, float, float]
    track_id: int
    timestamp: float
    embedder: str
    frames: int = 0
    event_id: str = field(default_factory=new_event_id)
    crop_jpeg: Optional[bytes] = field(default=None, repr=False, compare=False)
    embedding: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    group: Optional[int] = None
    group_visits: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")
        if (self.kind == RECOGNIZED) != (self.name is not None):
            raise ValueError("a recognized event needs a name and an unknown event must not have one")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in 0..1, got {self.confidence}")

    def to_payload(self) -> dict:
        """The JSON-ready dict published on ``<prefix>/<camera>/<kind>`` (and printed by ``doorface demo``)."""
        return {
            "event_id": self.event_id,
            "event_type": self.kind,
            "camera": self.camera,
            "name": self.name,
            "confidence": round(float(self.confidence), 4),
            "distance": None if self.distance is None else round(float(self.distance), 4),
            "box": [round(float(v), 1) for v in self.box],
            "track_id": int(self.track_id),
            "frames": int(self.frames),
            "timestamp": iso_utc(self.timestamp),
            "embedder": self.embedder,
            "group": self.group,
            "group_visits": self.group_visits,
        }


@dataclass(frozen=True)
class Departure:
    """A recognized person's visit ended: not seen for ``tracker.visit_gap`` seconds since ``last_seen``."""

    camera: str
    name: str
    last_seen: float
