"""Seeded door-camera clips composed from LFW photos, the visits each one shows, and the score of a run's events.

A door clip is what a front-door camera sees on a busy afternoon: visitors come to the door one after another, all
at roughly the same spot, with a short empty door between two of them. Each visitor walks up (the face grows from
about 90 to about 160 px and drifts a little) while the clip switches among several photos of the same person, so
pose, lighting and expression change within a visit as they do on a real doorstep. Some visitors are enrolled (from
other photos of theirs than the clip shows), the others are strangers, and an enrolled person may come back within
``tracker.visit_gap`` (that visit is due no event).

The faces are cut out of LFW photos around their 5 published landmarks (``landmarks_5pt.txt``) with a soft oval
mask, so a bystander at the photo's edge does not come along. LFW is the test set: these clips are for evaluation
only, never for training or calibration.

    plan = plan_clip(lfw_root, seed=3)
    render_clip(plan, lfw_root, "door.mp4")
    ... run the pipeline on door.mp4, keep each event's time from the first frame ...
    score = score_events(plan, [(seconds, kind, name), ...])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import cv2
import numpy as np

RECOGNIZED = "recognized"  # the same strings as edge.events (bench stays importable without the runtime)
UNKNOWN = "unknown"
FRAME_SIZE = (640, 480)
FPS = 10.0
FACE_PX = (90.0, 160.0)  # MTCNN box side at the start and the end of a visit
# MTCNN's box on LFW faces (our int8 cascade, 60 seeded LFW photos): side ≈ 2.23 × the eye distance, centred
# (-0.03, -0.09) box sides from the mean of the 5 landmarks.
BOX_PER_EYE_DISTANCE = 2.23
BOX_CENTRE_OFFSET = (-0.03, -0.09)
CUT_SIDE = 2.0  # the face is cut out as a square of this many box sides, then masked to an oval
DOOR_SPOT = (320.0, 215.0)  # where visitors stand: the centre of the face at the end of the walk-up
EVENT_SLACK = 1.0  # seconds past a visit's last frame in which its track may still end and decide


@dataclass(frozen=True)
class Visit:
    """One person at the door from ``start`` to ``end`` (seconds from the clip's first frame)."""

    person: str  # LFW folder name, e.g. "Tony_Blair"
    enrolled: bool
    photos: tuple[Path, ...]
    start: float
    end: float
    repeat: bool = False  # an enrolled person back within the visit gap: no event is due

    @property
    def name(self) -> str:
        """The name the person is enrolled under: LFW's folder name with spaces."""
        return self.person.replace("_", " ")

    @property
    def expected(self) -> Optional[tuple[str, Optional[str]]]:
        """The one event this visit is due: (kind, name), or None for a repeat visit."""
        if self.repeat:
            return None
        return (RECOGNIZED, self.name) if self.enrolled else (UNKNOWN, None)


@dataclass(frozen=True)
class ClipPlan:
    """What a clip shows: its visits in order and the enrollment photos of its enrolled persons."""

    seed: int
    fps: float
    frame_size: tuple[int, int]
    duration: float
    visits: tuple[Visit, ...]
    enrollment: tuple[tuple[str, tuple[Path, ...]], ...]  # (enrolled name, photos), none of them in the clip

    @property
    def expected_events(self) -> list[tuple[str, Optional[str]]]:
        return [v.expected for v in self.visits if v.expected is not None]


def _photos_by_person(lfw_root: Path) -> dict[str, list[Path]]:
    images = Path(lfw_root) / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: not an LFW images folder (see ../shared/README.md)")
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(images.iterdir()) if d.is_dir()}


def plan_clip(
    lfw_root: Union[str, Path],
    seed: int,
    *,
    enrolled: int = 5,
    strangers: int = 5,
    repeat: bool = True,
    photos_per_visit: int = 4,
    enroll_photos: int = 3,
    visit_seconds: float = 2.0,
    gap_seconds: float = 1.0,
    fps: float = FPS,
) -> ClipPlan:
    """A seeded clip: ``enrolled`` + ``strangers`` distinct people in a shuffled order, back to back with
    ``gap_seconds`` of empty door between two visits, and (``repeat``) one enrolled person back for a second visit
    two or three visits after the first one. Enrolled people need ``enroll_photos`` more photos than they show."""
    if enrolled < (1 if repeat else 0) or strangers < 0 or enrolled + strangers == 0:
        raise ValueError("a clip needs at least one visitor, and an enrolled one for a repeat visit")
    rng = np.random.default_rng(seed)
    people = _photos_by_person(Path(lfw_root))
    need_enrolled = enroll_photos + photos_per_visit
    rich = [p for p, photos in people.items() if len(photos) >= need_enrolled]
    if len(rich) < enrolled:
        raise ValueError(f"LFW has only {len(rich)} people with {need_enrolled}+ photos, {enrolled} needed")
    chosen = [rich[i] for i in rng.choice(len(rich), size=enrolled, replace=False)]
    others = [p for p, photos in people.items() if len(photos) >= photos_per_visit and p not in chosen]
    chosen_strangers = [others[i] for i in rng.choice(len(others), size=strangers, replace=False)]

    enrollment: list[tuple[str, tuple[Path, ...]]] = []
    shown: dict[str, list[Path]] = {}
    for person in chosen:
        photos = [people[person][i] for i in rng.permutation(len(people[person]))]
        enrollment.append((person.replace("_", " "), tuple(photos[:enroll_photos])))
        shown[person] = photos[enroll_photos:]
    for person in chosen_strangers:
        shown[person] = [people[person][i] for i in rng.permutation(len(people[person]))]

    order = [(p, True) for p in chosen] + [(p, False) for p in chosen_strangers]
    order = [order[i] for i in rng.permutation(len(order))]
    sequence = [(person, known, False) for person, known in order]
    if repeat:
        first = next(i for i, (_, known, _) in enumerate(sequence) if known)
        at = min(first + 1 + int(rng.integers(2, 4)), len(sequence))
        sequence.insert(at, (sequence[first][0], True, True))

    visits: list[Visit] = []
    t = gap_seconds
    for person, known, is_repeat in sequence:
        pool = shown[person]
        # A repeat visit shows the person's other photos where there are enough, else the same ones reordered.
        if is_repeat and len(pool) >= 2 * photos_per_visit:
            photos = pool[photos_per_visit:2 * photos_per_visit]
        elif is_repeat:
            photos = [pool[i] for i in rng.permutation(photos_per_visit)]
        else:
            photos = pool[:photos_per_visit]
        frames = round(visit_seconds * fps)
        visits.append(Visit(person, known, tuple(photos), t, t + (frames - 1) / fps, is_repeat))
        t += (frames + round(gap_seconds * fps)) / fps
    return ClipPlan(seed, fps, FRAME_SIZE, t, tuple(visits), tuple(enrollment))


def read_landmarks(lfw_root: Union[str, Path]) -> dict[str, np.ndarray]:
    """LFW's published 5 points per image, keyed by ``Name/Name_NNNN.jpg``, as (5, 2) arrays."""
    table: dict[str, np.ndarray] = {}
    for line in (Path(lfw_root) / "landmarks_5pt.txt").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 11:
            table[parts[0]] = np.array(parts[1:], dtype=np.float64).reshape(5, 2)
    return table


def _backdrop(rng: np.random.Generator) -> np.ndarray:
    """A door in a wall, the same for the whole clip (the camera is fixed)."""
    w, h = FRAME_SIZE
    wall = rng.uniform(150, 210, size=3)
    door = wall * rng.uniform(0.35, 0.6)
    image = np.empty((h, w, 3), dtype=np.float64)
    image[:] = wall
    image[:, 180:460] = door
    image[:, 170:180] = image[:, 460:470] = wall * 0.8  # the frame
    image *= np.linspace(1.08, 0.9, h)[:, None, None]  # light from above
    return image


def _face_cut(photo: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The face of ``photo`` as a square ``CUT_SIDE`` box sides wide around its box centre, and the box side."""
    box_side = BOX_PER_EYE_DISTANCE * float(np.linalg.norm(landmarks[1] - landmarks[0]))
    centre = landmarks.mean(axis=0) + np.array(BOX_CENTRE_OFFSET) * box_side
    half = CUT_SIDE * box_side / 2
    x0, y0 = (centre - half).round().astype(int)
    side = int(round(2 * half))
    padded = cv2.copyMakeBorder(photo, side, side, side, side, cv2.BORDER_REPLICATE)
    return padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side], box_side


def _oval_mask(side: int) -> np.ndarray:
    mask = np.zeros((side, side), dtype=np.float32)
    cv2.ellipse(mask, (side // 2, side // 2), (int(side * 0.36), int(side * 0.47)), 0, 0, 360, 1.0, -1)
    blur = max(3, (side // 12) | 1)
    return cv2.GaussianBlur(mask, (blur, blur), 0)[..., None]


def _paste(frame: np.ndarray, cut: np.ndarray, centre: tuple[float, float]) -> None:
    side = cut.shape[0]
    mask = _oval_mask(side)
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    h, w = frame.shape[:2]
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    region = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
    m = mask[region]
    frame[fy0:fy1, fx0:fx1] = frame[fy0:fy1, fx0:fx1] * (1 - m) + cut[region] * m


def clip_frames(plan: ClipPlan, lfw_root: Union[str, Path]) -> Iterator[np.ndarray]:
    """The clip's frames (BGR uint8), in order, at ``plan.fps``."""
    lfw_root = Path(lfw_root)
    rng = np.random.default_rng([plan.seed, 1])
    marks = read_landmarks(lfw_root)
    backdrop = _backdrop(rng)
    cuts: dict[Path, tuple[np.ndarray, float]] = {}
    total = round(plan.duration * plan.fps)
    visit_at = {}
    for visit in plan.visits:
        first = round(visit.start * plan.fps)
        last = round(visit.end * plan.fps)
        spot = np.array(DOOR_SPOT) + rng.uniform(-25, 25, size=2)  # roughly the same spot for everyone
        walk = rng.uniform(-15, 15, size=2)  # drifting a little while walking up
        light = rng.uniform(0.85, 1.15)
        for k in range(first, last + 1):
            visit_at[k] = (visit, (k - first) / max(last - first, 1), spot, walk, light)
    for index in range(total):
        frame = backdrop.copy()
        if index in visit_at:
            visit, progress, spot, walk, light = visit_at[index]
            photo = visit.photos[min(int(progress * len(visit.photos)), len(visit.photos) - 1)]
            if photo not in cuts:
                image = cv2.imread(str(photo))
                key = f"{photo.parent.name}/{photo.name}"
                if image is None or key not in marks:
                    raise FileNotFoundError(f"{photo}: unreadable, or without landmarks in landmarks_5pt.txt")
                cuts[photo] = _face_cut(image.astype(np.float64), marks[key])
            cut, box_side = cuts[photo]
            face_px = FACE_PX[0] + (FACE_PX[1] - FACE_PX[0]) * progress
            side = max(8, int(round(cut.shape[0] * face_px / box_side)))
            scaled = cv2.resize(cut, (side, side), interpolation=cv2.INTER_AREA if side < cut.shape[0]
                                else cv2.INTER_LINEAR) * light
            centre = spot + walk * (progress - 1) + rng.normal(0, 1.5, size=2)
            _paste(frame, scaled, (float(centre[0]), float(centre[1])))
        frame += rng.normal(0, 3.0, size=frame.shape)  # sensor noise
        yield np.clip(frame, 0, 255).astype(np.uint8)


def render_clip(plan: ClipPlan, lfw_root: Union[str, Path], path: Union[str, Path]) -> Path:
    """Write the clip as an mp4 (mp4v, as a camera's recording would be compressed) and return its path."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), plan.fps, plan.frame_size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for frame in clip_frames(plan, lfw_root):
            writer.write(frame)
    finally:
        writer.release()
    return path


@dataclass(frozen=True)
class VisitOutcome:
    visit: Visit
    events: tuple[tuple[float, str, Optional[str]], ...]  # (seconds, kind, name) attributed to this visit
    correct: bool  # exactly the event due (or none for a repeat visit)


@dataclass(frozen=True)
class ClipScore:
    """A run's events against the clip's visits.

    Each event goes to the visit whose frames it falls in (else to the visit that ended up to ``EVENT_SLACK`` s
    before it: a track decided when it ended); then an event is
    ``correct`` (the first event of the kind and name due), a ``false_accept`` (recognized as someone the visitor is
    not: a stranger taken for an enrolled person, or one person for another), a ``false_unknown`` (an enrolled
    visitor announced as unknown), a ``duplicate`` (a second event for a visit, or any event for a repeat visit) or
    ``stray`` (in no visit). A visit is ``missed`` when the event due never came.
    """

    visits: int
    expected: int
    correct: int
    missed: int
    false_accepts: int
    false_unknowns: int
    duplicates: int
    stray: int
    outcomes: tuple[VisitOutcome, ...]

    @property
    def correct_visits(self) -> int:
        return sum(o.correct for o in self.outcomes)

    def as_dict(self) -> dict:
        return {"visits": self.visits, "expected_events": self.expected, "correct_visits": self.correct_visits,
                "correct": self.correct, "missed": self.missed, "false_accepts": self.false_accepts,
                "false_unknowns": self.false_unknowns, "duplicates": self.duplicates, "stray": self.stray}


def score_events(plan: ClipPlan, events: Sequence[tuple[float, str, Optional[str]]]) -> ClipScore:
    """Score ``events`` = (seconds from the clip's first frame, kind, name) against ``plan``; see :class:`ClipScore`."""
    per_visit: list[list[tuple[float, str, Optional[str]]]] = [[] for _ in plan.visits]
    stray = 0
    for event in sorted(events):
        t, frame = event[0], 1 / plan.fps
        inside = [i for i, v in enumerate(plan.visits) if v.start - frame / 2 <= t <= v.end + frame / 2]
        before = [i for i, v in enumerate(plan.visits) if v.end < t <= v.end + EVENT_SLACK]
        if inside or before:
            per_visit[(inside or before)[-1]].append(event)
        else:
            stray += 1
    correct = missed = false_accepts = false_unknowns = duplicates = 0
    outcomes = []
    for visit, got in zip(plan.visits, per_visit):
        matched = False
        for _, kind, name in got:
            if kind == RECOGNIZED and name != visit.name:
                false_accepts += 1
            elif kind == UNKNOWN and visit.enrolled:
                false_unknowns += 1
            elif visit.expected is not None and not matched:
                matched = True
                correct += 1
            else:
                duplicates += 1
        if visit.expected is not None and not matched:
            missed += 1
        due = [] if visit.expected is None else [visit.expected]
        outcomes.append(VisitOutcome(visit, tuple(got), [(k, n) for _, k, n in got] == due))
    return ClipScore(len(plan.visits), len(plan.expected_events), correct, missed, false_accepts, false_unknowns,
                     duplicates, stray, tuple(outcomes))
