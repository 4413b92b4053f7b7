"""The main loop: frames from a source through the recognizer, events to the sinks, until the source ends or a stop.

Wiring the stages from a config is here too (``build_recognizer``), so that ``doorface run``, ``doorface demo``
and the benchmarks run the very same pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import cv2
import numpy as np

from edge.accelerator import Placement, place_models
from edge.config import Config
from edge.detector import MTCNN_KEYS, MtcnnDetector
from edge.embedder import Embedder, EmbedderSpec
from edge.events import Departure, Event
from edge.gallery import Gallery, GalleryError
from edge.manifest import Manifest
from edge.matcher import Calibration, Matcher
from edge.pipeline import FrameResult, Recognizer
from edge.sources import FrameSource
from edge.tracker import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    detector: MtcnnDetector
    embedder: Embedder
    manifest: Manifest
    placement: Placement


def load_models(config: Config, *, threads: Optional[int] = None) -> Models:
    """The detector and the configured embedder, sha256-checked, where :func:`edge.accelerator.place_models` puts
    them for the configured device (its EdgeTPU variants, else the CPU models, said in one log line)."""
    manifest = Manifest.load(config.models_dir)
    placement = place_models(manifest, config.detector.device, (*MTCNN_KEYS, config.embedder.model))
    detector = MtcnnDetector.from_manifest(manifest, num_threads=threads or config.detector.num_threads,
                                           placement=placement, params=config.detector.cascade_params())
    embedder = Embedder.placed(manifest.entry(config.embedder.model), placement,
                               num_threads=threads or config.embedder.num_threads)
    return Models(detector, embedder, manifest, placement)


def open_gallery(config: Config, spec: EmbedderSpec, *, create: bool = True, path=None) -> Gallery:
    """The configured gallery (or ``path``), checked to hold embeddings of this embedder."""
    return Gallery.open(path or config.gallery.resolved_path(), embedder_key=spec.key, embedder_sha256=spec.sha256,
                        dim=spec.dim, metric=spec.metric, create=create)


def build_recognizer(config: Config, models: Models, gallery: Gallery, *, keep_crops: bool = False) -> Recognizer:
    entry = models.manifest.entry(models.embedder.key)
    matcher = Matcher.from_gallery(gallery, entry, threshold_kind=config.embedder.threshold,
                                   margin=config.match.margin)
    if not gallery.persons():
        log.warning("the gallery %s has nobody enrolled: every face will be 'unknown' "
                    "(enroll with `doorface enroll NAME PHOTO...`)", gallery.path)
    calibration = Calibration.from_entry(entry)  # fails at start, not at the first face, when uncalibrated
    visitor_distance = min(calibration.distance_at(config.tracker.same_visitor_probability), matcher.threshold)
    tracker = Tracker(config.tracker, reid_distance=matcher.threshold, visitor_distance=visitor_distance,
                      metric=models.embedder.spec.metric)
    return Recognizer(models.detector, models.embedder, matcher, tracker, config, keep_crops=keep_crops)


class GalleryWatcher:
    """Picks up enrollments made while ``doorface run`` is running (``doorface enroll`` in another shell).

    Called after each frame; every ``gallery.watch_interval`` seconds (config) it reads the gallery's revision
    counter (one small query: SQLite in WAL mode lets the enrolling process write meanwhile) and, when it changed,
    rebuilds the matcher and tells ``on_persons`` (the publisher, to announce or delete presence entities).
    """

    def __init__(self, gallery: Gallery, recognizer: Recognizer, entry, config: Config, *,
                 on_persons: Optional[Callable[[list[str]], None]] = None, clock: Callable[[], float] = time.monotonic):
        self.gallery = gallery
        self.recognizer = recognizer
        self.entry = entry
        self.config = config
        self.on_persons = on_persons
        self.interval = config.gallery.watch_interval
        self._clock = clock
        self._revision = gallery.revision()
        self._next = clock() + self.interval

    def poke(self) -> None:
        """Look at the gallery at the next frame, not at the next interval: it just changed (household sync)."""
        self._next = float("-inf")

    def __call__(self, _result: Optional[FrameResult] = None) -> bool:
        """True when the gallery changed and the matcher was rebuilt."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval
        revision = self.gallery.revision()
        if revision == self._revision:
            return False
        self._revision = revision
        self.recognizer.matcher = Matcher.from_gallery(self.gallery, self.entry,
                                                       threshold_kind=self.config.embedder.threshold,
                                                       margin=self.config.match.margin)
        names = [p.name for p in self.gallery.persons()]
        log.warning("gallery %s changed: now %d person(s): %s", self.gallery.path, len(names), ", ".join(names))
        if self.on_persons is not None:
            self.on_persons(names)
        return True


@dataclass(frozen=True)
class RunSummary:
    frames: int
    events: int
    seconds: float
    stopped: bool  # True when stopped from outside (signal, max_frames), False when the source ended

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run(
    source: FrameSource,
    recognizer: Recognizer,
    sinks: Iterable[Callable[[Event], None]],
    *,
    departure_sinks: Iterable[Callable[[Departure], None]] = (),
    stop: Optional[threading.Event] = None,
    max_frames: Optional[int] = None,
    on_frame: Optional[Callable[[FrameResult], None]] = None,
    record: Optional[Callable[[Event], Event]] = None,
) -> RunSummary:
    """Process frames until the source ends, ``stop`` is set or ``max_frames`` were read; every event to every sink.

    When the source ends (a file), the open tracks are decided too, so a visit at the very end still gives its
    event. Each ended visit of a recognized person goes to every ``departure_sinks`` callable (presence off). A sink
    that raises stops the run: losing events silently is worse than stopping. ``record`` (the visit log's) sees
    each event first and returns it as the sinks get it (with its unknown-visitor group); a visit log that cannot
    be written (a full disk) must not keep the door from announcing visitors, so that error is logged and the event
    goes out without a group.
    """
    sinks, departure_sinks = list(sinks), list(departure_sinks)

    def recorded(event: Event) -> Event:
        if record is None:
            return event
        try:
            return record(event)
        except GalleryError as exc:
            log.error("visit %s not recorded in the visit log: %s", event.event_id, exc)
            return event

    stop = stop or threading.Event()
    frames = events = 0
    start = time.perf_counter()
    for frame in source.frames(stop):
        result = recognizer.process(frame)
        frames += 1
        for event in map(recorded, result.events):
            for sink in sinks:
                sink(event)
            events += 1
        for departure in result.departures:
            for sink in departure_sinks:
                sink(departure)
        if on_frame is not None:
            on_frame(result)
        if max_frames is not None and frames >= max_frames:
            stop.set()
            break
    stopped = stop.is_set()
    if not stopped:
        for event in map(recorded, recognizer.finish()):
            for sink in sinks:
                sink(event)
            events += 1
    for departure in recognizer.end_visits():
        for sink in departure_sinks:
            sink(departure)
    return RunSummary(frames, events, time.perf_counter() - start, stopped)


# A thumbnail is the embedder's aligned chip, the face filling it: MTCNN finds a face more surely with some room
# around it, so it is bordered by this share of its side before detection.
THUMBNAIL_BORDER = 0.5


def thumbnail_embedder(config: Config) -> Callable[[bytes], Optional[np.ndarray]]:
    """JPEG face thumbnail (another model's enrollment, shared by the household) → this camera's embedding of it,
    or None when no face is found in it. Runs in the household's thread, so it loads its own interpreters (TFLite
    interpreters are not shared between threads), once, at the first thumbnail."""
    loaded: list[Models] = []

    def embed(jpeg: bytes) -> Optional[np.ndarray]:
        bgr = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            return None
        if not loaded:
            loaded.append(load_models(config, threads=1))
        models = loaded[0]
        pad = int(round(max(bgr.shape[:2]) * THUMBNAIL_BORDER))
        rgb = cv2.cvtColor(cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_REPLICATE), cv2.COLOR_BGR2RGB)
        detections = models.detector(rgb)
        if len(detections) == 0:
            return None
        boxes = detections.boxes
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return models.embedder(rgb, detections.landmarks[int(np.argmax(sides))][None])[0]

    return embed
