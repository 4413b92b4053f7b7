"""One frame through the rooms: motion → detect → quality gate → align → embed → match → track/vote → events.

:class:`Recognizer` holds the stage objects and owns no I/O: frames come in, :class:`FrameResult` values (with the
events decided on that frame) go out. Reading a camera and publishing are the caller's (``edge.runner``).
Faces of tracks that are already decided are followed but not embedded: after the first second of a visit the
pipeline costs little more than detection, and detection itself runs only where something moved or a face is
followed (:mod:`edge.motion`): an idle door costs a frame difference.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional

import cv2
import numpy as np

from edge import motion, quality
from edge.config import Config
from edge.events import Departure, Event
from edge.faces import Detections
from edge.matcher import Match, Matcher
from edge.sources import Frame
from edge.tracker import Decision, Tracker

STAGES = ("motion", "detect", "align", "embed", "match", "track")
CROP_JPEG_QUALITY = 85


@dataclass(frozen=True)
class FaceResult:
    box: tuple[float, float, float, float]
    score: float
    track_id: Optional[int]
    quality: str  # one of edge.quality.REASONS
    match: Optional[Match]  # None when the face was not embedded


@dataclass(frozen=True)
class FrameResult:
    index: int
    timestamp: float
    detected: bool  # False on frames skipped by tracker.detect_every
    faces: tuple[FaceResult, ...]
    events: tuple[Event, ...]
    departures: tuple[Departure, ...] = ()


def encode_jpeg(rgb: np.ndarray, jpeg_quality: int = CROP_JPEG_QUALITY) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("JPEG encoding of a face crop failed")
    return data.tobytes()


class Recognizer:
    """``recognizer.process(frame)`` → :class:`FrameResult`; ``recognizer.finish()`` → the last events."""

    def __init__(self, detector: Callable, embedder, matcher: Matcher, tracker: Tracker, config: Config, *,
                 keep_crops: bool = False, clock: Callable[[], float] = time.perf_counter):
        self.detector = detector
        self.embedder = embedder
        self.matcher = matcher
        self.tracker = tracker
        self.quality = config.quality
        self.detect_every = config.tracker.detect_every
        self.motion = motion.MotionGate(config.motion)
        self.camera = config.camera.name
        self.keep_crops = keep_crops
        self._clock = clock
        # track id -> (rank, chip) of its best embedded face so far (see _keep_best), for the event's crop
        self._chips: dict[int, tuple[float, np.ndarray]] = {}
        self._last_timestamp = 0.0
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.counts = Counter()  # frames, detected frames, faces, embedded, and rejections by reason

    def process(self, frame: Frame) -> FrameResult:
        self.counts["frames"] += 1
        self._last_timestamp = frame.timestamp
        if frame.index % self.detect_every:
            return FrameResult(frame.index, frame.timestamp, False, (), ())
        self.counts["detected_frames"] += 1
        image = frame.image
        start = self._clock()
        area = self.motion.plan(image, frame.timestamp, self.tracker.boxes().values())
        t0 = self._clock()
        self.seconds["motion"] += t0 - start
        self.counts[f"search_{area.kind}"] += 1
        detections = self._detect(image, area)
        t1 = self._clock()
        self.seconds["detect"] += t1 - t0
        assigned = self.tracker.assign(detections.boxes)
        verdicts = [quality.geometry_verdict(box, marks, self.quality)
                    for box, marks in zip(detections.boxes, detections.landmarks)]
        chips: dict[int, np.ndarray] = {}
        for i, (track_id, verdict) in enumerate(zip(assigned, verdicts)):
            if verdict != quality.OK or not self.tracker.wants_embedding(track_id, frame.timestamp):
                continue
            chip = self.embedder.align(image, detections.landmarks[i])
            verdicts[i] = quality.chip_verdict(chip, self.quality)
            if verdicts[i] == quality.OK:
                chips[i] = chip
        t2 = self._clock()
        self.seconds["align"] += t2 - t1
        vectors = self.embedder.embed_chips(np.stack(list(chips.values()))) if chips else None
        t3 = self._clock()
        self.seconds["embed"] += t3 - t2
        found = self.matcher.match(vectors) if vectors is not None else []
        t4 = self._clock()
        self.seconds["match"] += t4 - t3
        embeddings: list[Optional[np.ndarray]] = [None] * len(detections)
        matches: list[Optional[Match]] = [None] * len(detections)
        for row, i in enumerate(chips):
            embeddings[i], matches[i] = vectors[row], found[row]
        update = self.tracker.update(frame.timestamp, detections.boxes, assigned, embeddings, matches)
        final_ids = update.track_ids
        if self.keep_crops:
            for i, chip in chips.items():
                self._keep_best(final_ids[i], chip, detections.boxes[i], float(detections.scores[i]))
        events = tuple(self._event(d) for d in update.decisions)
        if self._chips:  # drop the chips of tracks that ended undecided
            for track_id in set(self._chips) - set(self.tracker.boxes()):
                del self._chips[track_id]
        self.seconds["track"] += self._clock() - t4
        self.counts["faces"] += len(detections)
        self.counts["embedded"] += len(chips)
        self.counts.update(f"rejected_{v}" for v in verdicts if v != quality.OK)
        faces = tuple(
            FaceResult(tuple(float(v) for v in box), float(score), final_ids[i], verdicts[i], matches[i])
            for i, (box, score) in enumerate(zip(detections.boxes, detections.scores))
        )
        departures = tuple(Departure(self.camera, name, seen) for name, seen in update.departed)
        return FrameResult(frame.index, frame.timestamp, True, faces, events, departures)

    def _keep_best(self, track_id: int, chip: np.ndarray, box, score: float) -> None:
        """The best face of a track is the one seen at the largest size (the most detail in the chip), as sure a
        face as the detector says: the one a person reviewing visits recognises most easily."""
        x1, y1, x2, y2 = (float(v) for v in box)
        rank = min(x2 - x1, y2 - y1) * score
        kept = self._chips.get(track_id)
        if kept is None or rank >= kept[0]:
            self._chips[track_id] = (rank, chip)

    def _detect(self, image: np.ndarray, area: motion.SearchArea) -> Detections:
        if area.kind == motion.IDLE:
            return Detections.empty()
        if area.kind == motion.FULL:
            return self.detector(image)
        x1, y1, x2, y2 = area.box
        return self.detector(np.ascontiguousarray(image[y1:y2, x1:x2])).shifted(x1, y1)

    def finish(self) -> tuple[Event, ...]:
        """The source ended: decide the tracks still open."""
        return tuple(self._event(d) for d in self.tracker.finish())

    def end_visits(self) -> tuple[Departure, ...]:
        """The run is over: the visits still on end (each recognized person's presence turns off)."""
        return tuple(Departure(self.camera, name, seen) for name, seen in self.tracker.end_visits())

    def _event(self, decision: Decision) -> Event:
        _, chip = self._chips.pop(decision.track_id, (0.0, None))
        return Event(
            kind=decision.kind,
            camera=self.camera,
            name=decision.name,
            confidence=decision.confidence,
            distance=decision.distance,
            box=decision.box,
            track_id=decision.track_id,
            timestamp=decision.timestamp,
            embedder=self.embedder.spec.key,
            frames=decision.frames,
            crop_jpeg=encode_jpeg(chip) if chip is not None else None,
            embedding=decision.embedding,
        )

    def stats(self) -> dict:
        """Counters and mean milliseconds per detection frame for each stage."""
        frames = max(self.counts["detected_frames"], 1)
        return {
            "counts": dict(self.counts),
            "ms_per_detected_frame": {k: round(1000 * v / frames, 2) for k, v in self.seconds.items()},
            "tracker": dict(self.tracker.stats),
        }
