"""Enrollment: photos (or video / camera frames) of one person → embeddings in the gallery.

Only unambiguous faces are enrolled: a photo with several faces is skipped rather than guessed at, because
enrolling the wrong face (a friend in the background, a poster) makes the door greet a stranger by a family member's
name. A face must also pass the runtime's own quality gate (size, pose, sharpness: :mod:`edge.quality`): the door
camera never embeds a face that fails it, so such a sample would only be compared with faces unlike it.
Everything a run collects is written with one :meth:`Gallery.add`, one transaction: a run that is interrupted, or
finds no usable face, leaves the gallery as it was.

Each photo gets a :class:`PhotoOutcome` saying what happened and, when skipped, what to do about it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import cv2
import numpy as np

from edge import quality
from edge.config import EnrollConfig, QualityConfig
from edge.detector import MtcnnDetector
from edge.embedder import Embedder
from edge.gallery import Gallery, Person, validate_name
from edge.image_io import IMAGE_EXTENSIONS, ImageError, load_image, to_rgb
from edge.matcher import person_template

logger = logging.getLogger(__name__)

ENROLLED = "enrolled"
NO_FACE = "no_face"
SEVERAL_FACES = "several_faces"
UNREADABLE = "unreadable"
TOO_SMALL, TURNED, TILTED, BLURRED = quality.TOO_SMALL, quality.TURNED, quality.TILTED, quality.BLURRED
STATUSES = (ENROLLED, NO_FACE, SEVERAL_FACES, UNREADABLE, TOO_SMALL, TURNED, TILTED, BLURRED)
DEFAULT_GATE, DEFAULT_ENROLL = QualityConfig(), EnrollConfig()  # the config's defaults, for library callers
THUMBNAIL_QUALITY = 85
THUMBNAIL_MAX_BYTES = 10_000

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, int, "PhotoOutcome"], None]
"""Called after each photo with (photos done, photos in all, its outcome)."""


@dataclass(frozen=True)
class PhotoOutcome:
    source: str
    status: str  # one of STATUSES
    faces: int
    message: str
    unlike_others: bool = False
    """Enrolled, but unlike the person's other photos: often someone else's photo, mixed in by mistake."""

    @property
    def enrolled(self) -> bool:
        return self.status == ENROLLED


@dataclass(frozen=True)
class EnrollReport:
    name: str
    outcomes: tuple[PhotoOutcome, ...]
    enrolled: int
    person: Optional[Person]
    """The person after the enrollment; None when nothing was enrolled (the gallery is then unchanged)."""

    @property
    def skipped(self) -> tuple[PhotoOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.enrolled)

    @property
    def unlike_others(self) -> tuple[PhotoOutcome, ...]:
        return tuple(o for o in self.outcomes if o.unlike_others)


@dataclass(frozen=True)
class _Sample:
    vector: np.ndarray
    thumbnail: Optional[bytes]


def _expand(paths: Iterable[PathLike]) -> list[Union[str, PhotoOutcome]]:
    """In input order: files named directly, and the images of named folders (sorted, not recursive, hidden files
    skipped); an "unreadable" outcome in place of a path that is missing or a folder without images. A file reached
    twice is taken once: enrolling the same photo twice would only weigh it double."""
    items: list[Union[str, PhotoOutcome]] = []
    seen: set[str] = set()

    def take(path: Path) -> None:
        key = os.path.normcase(str(path.resolve()))
        if key not in seen:
            seen.add(key)
            items.append(str(path))

    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
            if not images:
                items.append(PhotoOutcome(str(path), UNREADABLE, 0, f"folder {path} holds no images "
                                          f"({', '.join(sorted(IMAGE_EXTENSIONS))})"))
            for image in images:
                take(image)
        elif path.exists():
            take(path)  # named explicitly: tried whatever its extension, load_image says if it is no image
        else:
            items.append(PhotoOutcome(str(path), UNREADABLE, 0, f"{path}: no such file or folder"))
    return items


def thumbnail_jpeg(chip_rgb: np.ndarray, max_bytes: int = THUMBNAIL_MAX_BYTES) -> bytes:
    """An aligned RGB face chip as JPEG of at most ``max_bytes``: quality 85, lowered (then halved) if needed."""
    bgr = cv2.cvtColor(np.ascontiguousarray(chip_rgb), cv2.COLOR_RGB2BGR)
    while True:
        for jpeg_quality in (THUMBNAIL_QUALITY, 70, 55, 40):
            ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if ok and encoded.nbytes <= max_bytes:
                return encoded.tobytes()
        if min(bgr.shape[:2]) <= 16:
            raise ValueError(f"cannot encode a face thumbnail in {max_bytes} bytes")
        bgr = cv2.resize(bgr, (bgr.shape[1] // 2, bgr.shape[0] // 2), interpolation=cv2.INTER_AREA)


def dominant_face(boxes: np.ndarray, ratio: float) -> Optional[int]:
    """The index of the one face to enroll among ``boxes``: the only one, or the largest when its side is at least
    ``ratio`` times every other's; None when no face dominates (a group photo: which one is meant is a guess)."""
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    if len(sides) == 0:
        return None
    order = np.argsort(-sides, kind="stable")
    if len(sides) > 1 and sides[order[0]] < ratio * sides[order[1]]:
        return None
    return int(order[0])


def _refusal(reason: str, box: np.ndarray, landmarks: np.ndarray, chip: Optional[np.ndarray],
             gate: QualityConfig) -> str:
    """Why the quality gate refused a face, with the measured value, the config key and what to do."""
    never = "the door camera would not use this face either"
    if reason == TOO_SMALL:
        side = min(float(box[2] - box[0]), float(box[3] - box[1]))
        return (f"the face is {side:.0f} px, smaller than quality.min_face_size = {gate.min_face_size:.0f} px; use a "
                "closer or larger photo")
    if reason in (TURNED, TILTED):
        pose = quality.face_pose(landmarks)
        if reason == TURNED:
            return (f"the face is turned sideways (yaw {pose.yaw:+.2f}, quality.max_yaw = {gate.max_yaw}): {never}; "
                    "use a photo looking at the camera")
        return (f"the head is tilted up or down (pitch {pose.pitch:+.2f}, quality.max_pitch = {gate.max_pitch}): "
                f"{never}; use a photo looking straight at the camera")
    sharpness = quality.sharpness(chip) if chip is not None else float("nan")
    return (f"the face is blurred (sharpness {sharpness:.0f}, below quality.min_sharpness = {gate.min_sharpness:.0f}):"
            f" {never}; use a sharp, well-lit photo")


def _examine(
    image: np.ndarray,
    source: str,
    detector: MtcnnDetector,
    embedder: Embedder,
    gate: QualityConfig,
    settings: EnrollConfig,
    thumbnails: bool,
) -> tuple[PhotoOutcome, Optional[_Sample]]:
    detections = detector(image)
    count = len(detections)
    if count == 0:
        return PhotoOutcome(source, NO_FACE, 0, "no face found; use a sharp photo with the face frontal and well "
                                                "lit"), None
    chosen = dominant_face(detections.boxes, settings.dominant_face_ratio)
    if chosen is None:
        return PhotoOutcome(source, SEVERAL_FACES, count, f"{count} faces of similar size found; crop the photo to "
                                                          "the one person to enroll"), None
    which = f" (the largest of {count} faces)" if count > 1 else ""
    box, landmarks = detections.boxes[chosen], detections.landmarks[chosen]
    verdict, chip = quality.geometry_verdict(box, landmarks, gate), None
    if verdict == quality.OK:
        chip = embedder.align(image, landmarks)
        verdict = quality.chip_verdict(chip, gate)
    if verdict != quality.OK:
        return PhotoOutcome(source, verdict, count, _refusal(verdict, box, landmarks, chip, gate) + which), None
    side = min(float(box[2] - box[0]), float(box[3] - box[1]))
    vector = embedder.embed_chips(chip[None])[0]
    thumb = thumbnail_jpeg(chip) if thumbnails else None
    return PhotoOutcome(source, ENROLLED, count, f"face of {side:.0f} px enrolled{which}"), _Sample(vector, thumb)


def _flag_outliers(gallery: Gallery, name: str, enrolled: list[tuple[int, _Sample]], outcomes: list[PhotoOutcome],
                   threshold: float) -> None:
    """Warn about new embeddings the matcher will set aside as outliers: often a photo of someone else, mixed in by
    mistake. They are still stored: whether a photo is wrong stays the user's call."""
    existing = gallery.embeddings().get(name)
    new = np.stack([s.vector for _, s in enrolled])
    vectors = new if existing is None else np.vstack([existing, new])
    template = person_template(vectors, metric=gallery.metric, threshold=threshold)
    for (index, _), inlier in zip(enrolled, template.inliers[len(vectors) - len(new):]):
        if not inlier:
            outcome = outcomes[index]
            logger.info("%s: enrolled, but unlike the other photos of %r", outcome.source, name)
            outcomes[index] = PhotoOutcome(outcome.source, outcome.status, outcome.faces,
                                           f"{outcome.message}, but it looks unlike the other photos of {name}: "
                                           "check that it shows them (the matcher sets it aside meanwhile)",
                                           unlike_others=True)


def _commit(gallery: Gallery, name: str, enrolled: list[tuple[int, _Sample]], outcomes: list[PhotoOutcome],
            sources: Sequence[str], threshold: Optional[float]) -> EnrollReport:
    if not enrolled:
        logger.info("nothing enrolled for %r: no usable face in %d input(s)", name, len(outcomes))
        return EnrollReport(name, tuple(outcomes), 0, None)
    if threshold is not None:
        _flag_outliers(gallery, name, enrolled, outcomes, threshold)
    person = gallery.add(
        name,
        np.stack([s.vector for _, s in enrolled]),
        list(sources),
        [s.thumbnail for _, s in enrolled],
    )
    return EnrollReport(name, tuple(outcomes), len(enrolled), person)


def enroll_photos(
    gallery: Gallery,
    name: str,
    paths: Iterable[PathLike],
    detector: MtcnnDetector,
    embedder: Embedder,
    *,
    gate: QualityConfig = DEFAULT_GATE,
    settings: EnrollConfig = DEFAULT_ENROLL,
    thumbnails: bool = True,
    progress: Optional[Progress] = None,
    threshold: Optional[float] = None,
) -> EnrollReport:
    """Enroll ``name`` from photo files and folders of photos; see :class:`EnrollReport`.

    ``gate``: the runtime's quality gate (``config.quality``); a face that fails it is refused, saying why.
    ``settings.dominant_face_ratio``: when a photo holds several faces, the largest is taken only if it dominates.
    ``threshold``: the matcher's distance threshold (:func:`edge.matcher.threshold_from_entry`); when given, a
    photo the matcher will set aside as unlike the person's others says so in its outcome message (it is enrolled
    all the same). Raises (before any photo is read): InvalidNameError for a bad name, GalleryMismatchError if
    ``embedder`` is not the gallery's. Bad photos never raise: they get an outcome.
    """
    name = validate_name(name)
    gallery.require_embedder(embedder.spec.key, embedder.spec.sha256)
    items = _expand(paths)
    outcomes: list[PhotoOutcome] = []
    enrolled: list[tuple[int, _Sample]] = []
    sources: list[str] = []
    for item in items:
        if isinstance(item, PhotoOutcome):
            outcome, sample = item, None
        else:
            try:
                image = load_image(item)
            except ImageError as exc:
                outcome, sample = PhotoOutcome(item, UNREADABLE, 0, str(exc)), None
            else:
                outcome, sample = _examine(image, item, detector, embedder, gate, settings, thumbnails)
            logger.debug("%s: %s (%s)", item, outcome.status, outcome.message)
        if sample is not None:
            enrolled.append((len(outcomes), sample))
            sources.append(str(Path(outcome.source).resolve()))
        outcomes.append(outcome)
        if progress is not None:
            progress(len(outcomes), len(items), outcome)
    return _commit(gallery, name, enrolled, outcomes, sources, threshold)


def enroll_frames(
    gallery: Gallery,
    name: str,
    frames: Iterable[tuple[str, np.ndarray]],
    detector: MtcnnDetector,
    embedder: Embedder,
    *,
    settings: EnrollConfig = DEFAULT_ENROLL,
    gate: QualityConfig = DEFAULT_GATE,
    thumbnails: bool = True,
    progress: Optional[Progress] = None,
    threshold: Optional[float] = None,
) -> EnrollReport:
    """Enroll ``name`` from (source label, RGB frame) pairs of a video or camera, e.g. ("video:door.mp4#120", f).

    A frame is sampled when it shows one face (or one dominant face, as for photos) that passes ``gate`` and is
    ``settings.min_gap`` or more
    frames after the previous sample (consecutive frames are near copies and would only weigh one pose more);
    frames inside the gap are not even examined. Stops reading ``frames`` after ``settings.samples`` samples, so a
    camera stream can be passed as is; bound it in time yourself (``settings.seconds`` is the CLI's bound). Every
    examined frame gets an outcome. ``progress`` is called with (samples so far, settings.samples, outcome);
    ``threshold`` as for :func:`enroll_photos`.
    """
    max_samples, min_gap = settings.samples, settings.min_gap
    if max_samples < 1 or min_gap < 1:
        raise ValueError(f"enroll.samples and enroll.min_gap must be >= 1, got {max_samples} and {min_gap}")
    name = validate_name(name)
    gallery.require_embedder(embedder.spec.key, embedder.spec.sha256)
    outcomes: list[PhotoOutcome] = []
    enrolled: list[tuple[int, _Sample]] = []
    sources: list[str] = []
    last_sample: Optional[int] = None
    for index, (label, frame) in enumerate(frames):
        if last_sample is not None and index - last_sample < min_gap:
            continue
        try:
            image = to_rgb(frame)
        except ImageError as exc:
            outcome, sample = PhotoOutcome(str(label), UNREADABLE, 0, str(exc)), None
        else:
            outcome, sample = _examine(image, str(label), detector, embedder, gate, settings, thumbnails)
        if sample is not None:
            enrolled.append((len(outcomes), sample))
            sources.append(str(label))
            last_sample = index
        outcomes.append(outcome)
        if progress is not None:
            progress(len(enrolled), max_samples, outcome)
        if len(enrolled) >= max_samples:
            break
    return _commit(gallery, name, enrolled, outcomes, sources, threshold)
