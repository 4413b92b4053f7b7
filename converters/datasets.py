"""Loaders for the shared evaluation and training data (``../shared/data``).

The data is read-only and never copied into the repo, so every loader resolves paths through :func:`shared_root`
(env ``DOORFACE_SHARED`` overrides the default sibling folder). Loaders return small frozen records with numpy
arrays in doorface's conventions: boxes ``[x1, y1, x2, y2]`` float32 and 5-point landmarks (5, 2) float32 in the
order left eye, right eye, nose, left mouth, right mouth ("left" = image left), as in ``edge.faces``.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_ENV = "DOORFACE_SHARED"

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
LANDMARK_COUNT = 5

# train-faces/manifest.csv landmark columns, in doorface landmark order.
TRAIN_LANDMARK_COLUMNS: tuple[str, ...] = ("lex", "ley", "rex", "rey", "nx", "ny", "lmx", "lmy", "rmx", "rmy")


def shared_root() -> Path:
    """The folder that holds ``data/``: ``$DOORFACE_SHARED`` if set, else ``<repo>/../shared``."""
    env = os.environ.get(SHARED_ENV)
    return Path(env).resolve() if env else (REPO_ROOT.parent / "shared").resolve()


def data_dir(name: str) -> Path:
    """``<shared>/data/<name>``, or a FileNotFoundError that says how to point doorface at the data."""
    path = shared_root() / "data" / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"shared data folder {path} not found; set {SHARED_ENV} to the folder that contains data/{name}"
        )
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; check the path or set {SHARED_ENV}")
    return path


# --------------------------------------------------------------------------------------------------- dlib boxes


@dataclass(frozen=True, eq=False)
class BoxedImage:
    """One image with its hand-drawn face boxes; ``ignore`` marks boxes that must neither reward nor penalise."""

    path: Path
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    ignore: np.ndarray  # (N,) bool


def _parse_imglab_box(elem: ET.Element, xml_path: Path) -> tuple[list[float], bool]:
    try:
        top, left = float(elem.attrib["top"]), float(elem.attrib["left"])
        width, height = float(elem.attrib["width"]), float(elem.attrib["height"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{xml_path}: malformed <box {elem.attrib}>: needs numeric top, left, width, height") from exc
    ignore = elem.attrib.get("ignore", "0").strip() not in ("", "0", "false", "False")
    return [left, top, left + width, top + height], ignore


def load_dlib_boxes(xml_paths: Path | str | Iterable[Path | str]) -> list[BoxedImage]:
    """Parse dlib imglab XML files into one :class:`BoxedImage` per ``<image>``, in file order.

    Image paths are resolved relative to the XML's folder, as imglab writes them.
    """
    if isinstance(xml_paths, (str, Path)):
        xml_paths = [xml_paths]
    out: list[BoxedImage] = []
    for xml_path in map(Path, xml_paths):
        _require_file(xml_path, "imglab XML")
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise ValueError(f"{xml_path}: not valid XML ({exc}); expected dlib imglab format") from exc
        for image in root.iter("image"):
            file = image.attrib.get("file")
            if not file:
                raise ValueError(f"{xml_path}: <image> without a file attribute")
            parsed = [_parse_imglab_box(box, xml_path) for box in image.findall("box")]
            boxes = np.array([b for b, _ in parsed], dtype=np.float32).reshape(-1, 4)
            ignore = np.array([i for _, i in parsed], dtype=bool).reshape(-1)
            out.append(BoxedImage(path=xml_path.parent / file, boxes=boxes, ignore=ignore))
    return out


# ----------------------------------------------------------------------------------------------------------- LFW


def lfw_images(root: Path | str | None = None) -> list[Path]:
    """All LFW images (``images/<Name>/<Name>_NNNN.jpg``) under ``root`` (default shared ``lfw/``), sorted."""
    lfw = Path(root) if root is not None else data_dir("lfw")
    images = lfw / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"LFW images folder {images} not found; expected images/<Name>/<Name>_NNNN.jpg")
    return sorted(images.glob("*/*.jpg"))


def lfw_subset(n: int, seed: int = 0) -> list[Path]:
    """A deterministic sample of ``n`` LFW images: same ``n`` and ``seed`` give the same files on every machine."""
    images = lfw_images()
    if not 0 <= n <= len(images):
        raise ValueError(f"lfw_subset: n={n} must be between 0 and the {len(images)} LFW images")
    picks = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return [images[i] for i in sorted(picks.tolist())]


def _parse_landmark_line(line: str, path: Path, lineno: int) -> tuple[str, np.ndarray]:
    fields = line.split("\t")
    if len(fields) != 1 + 2 * LANDMARK_COUNT:
        raise ValueError(f"{path}:{lineno}: expected relpath + 10 tab-separated coordinates, got {len(fields)} fields")
    try:
        coords = np.array([float(v) for v in fields[1:]], dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{path}:{lineno}: non-numeric landmark coordinate") from exc
    # The file interleaves x, y per point (x1 y1 x2 y2 ...), in doorface order.
    return fields[0], coords.reshape(LANDMARK_COUNT, 2)


def load_lfw_landmarks(path: Path | str | None = None) -> dict[str, np.ndarray]:
    """LFW 5-point landmarks (MTCNN, 250x250 pixels) keyed by ``"Name/Name_0001.jpg"`` → (5, 2) float32.

    These are a published MTCNN run, i.e. a cross-check for our detector rather than ground truth.
    """
    file = Path(path) if path is not None else data_dir("lfw") / "landmarks_5pt.txt"
    _require_file(file, "LFW landmark file")
    out: dict[str, np.ndarray] = {}
    with file.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if line:
                key, points = _parse_landmark_line(line, file, lineno)
                out[key] = points
    return out


# ------------------------------------------------------------------------------------------ detection / video


def detection_eval_images() -> list[Path]:
    """Unlabelled photos for eyeballing and smoke-testing detection: deepface-unit and group-photos, sorted."""
    files = [p for name in ("deepface-unit", "group-photos") for p in data_dir(name).iterdir()]
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def iter_video_frames(
    path: Path | str,
    size: tuple[int, int] = (640, 480),
    step: int = 1,
    limit: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames resized to ``size`` (w, h), every ``step``-th frame, at most ``limit`` frames.

    INTER_AREA is used because it is the right filter for downscaling a 1080p camera to detector resolution.
    The capture is released even when the caller stops iterating early.
    """
    path = Path(path)
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"iter_video_frames: size={size} must be positive (width, height)")
    if step < 1:
        raise ValueError(f"iter_video_frames: step={step} must be >= 1")
    if limit is not None and limit < 0:
        raise ValueError(f"iter_video_frames: limit={limit} must be >= 0 or None")
    _require_file(path, "video")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path}: not a video OpenCV can decode (check the file and codec)")
        yielded = 0
        index = 0
        while limit is None or yielded < limit:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == 0:
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                yielded += 1
            index += 1
    finally:
        cap.release()


# --------------------------------------------------------------------------------------------------- train-faces


@dataclass(frozen=True, eq=False)
class TrainFace:
    """One LFW-disjoint training crop (160x160) with its identity and 5 landmarks in crop pixels."""

    path: Path
    identity: str
    landmarks: np.ndarray  # (5, 2) float32


def load_train_faces(root: Path | str | None = None) -> list[TrainFace]:
    """Rows of ``train-faces/manifest.csv`` as :class:`TrainFace`, in manifest order."""
    folder = Path(root) if root is not None else data_dir("train-faces")
    manifest = _require_file(folder / "manifest.csv", "train-faces manifest")
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "identity", *TRAIN_LANDMARK_COLUMNS} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{manifest}: missing columns {sorted(missing)}")
        rows = list(reader)
    try:
        coords = np.array([[float(r[c]) for c in TRAIN_LANDMARK_COLUMNS] for r in rows], dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{manifest}: non-numeric landmark value ({exc})") from exc
    coords = coords.reshape(-1, LANDMARK_COUNT, 2)
    return [
        TrainFace(path=folder / r["file"], identity=r["identity"], landmarks=lm)
        for r, lm in zip(rows, coords, strict=True)
    ]
