"""``doorface-convert evaluate mtcnn``: how the shipped int8 MTCNN compares with its float twin and with references.

Three measurements, all through the same :class:`edge.detector.MtcnnDetector` code, so that only the weights differ:

1. **int8 vs float agreement** (the quantization bound): float detections are the reference; recall and precision
   of the int8 boxes at IoU >= 0.5, and the landmark error of matched faces as a fraction of the float box size.
   The bound is recall >= 98 % and mean landmark error <= 3 %.
2. **dlib-faces ground truth** (43 hand-drawn boxes): recall and precision at IoU >= 0.5 (headline) and 0.3. dlib's
   boxes are tighter and squarer than MTCNN's, so part of the gap at 0.5 is box convention, not missed faces.
3. **LFW**: an image counts as detected when a face box contains the image centre (LFW is centred on the labelled
   person); that face's landmarks are compared with the published MTCNN landmarks (NME over the inter-ocular
   distance).

Results go to ``<out>/mtcnn_eval.json`` (every number and count, model sha256s), ``<out>/mtcnn_eval.md`` (three
self-contained tables for the README) and ``<out>/mtcnn_detections.png`` (int8 detections on a few photos).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from tqdm import tqdm

from converters.datasets import (
    data_dir,
    detection_eval_images,
    lfw_images,
    lfw_subset,
    load_dlib_boxes,
    load_lfw_landmarks,
    shared_root,
)
from converters.evaluate.metrics import (
    DetectionCounts,
    centre_face_index,
    count_detections,
    landmark_error_box,
    landmark_nme_interocular,
    match_boxes,
)
from edge.detector import MtcnnDetector
from edge.draw import draw_detections
from edge.faces import Detections
from edge.image_io import load_image, save_image
from edge.manifest import Manifest, default_models_dir

log = logging.getLogger(__name__)

NUM_THREADS = 2
FLOAT, INT8 = "float", "int8"
MODEL_KEYS: dict[str, tuple[str, str, str]] = {
    FLOAT: ("pnet_float", "rnet_float", "onet_float"),
    INT8: ("pnet", "rnet", "onet"),
}

# The bound on int8 vs float.
AGREEMENT_IOU = 0.5
MIN_AGREEMENT_RECALL = 0.98
MAX_LANDMARK_ERROR = 0.03
# Disagreeing images listed in the JSON, worst first, to see where quantization bites.
MAX_LISTED_DISAGREEMENTS = 25

HEADLINE_IOU = 0.5
LOOSE_IOU = 0.3
DLIB_XML_FILES = ("training.xml", "testing.xml")

NME_GOOD = 0.1
DEFAULT_LFW_SUBSET = 1000
LFW_SEED = 0

GALLERY_IMAGES = (
    "group-photos/sample1.jpg",
    "group-photos/sample2.jpg",
    "group-photos/sample3.jpg",
    "deepface-unit/couple.jpg",
    "deepface-unit/img11.jpg",
    "deepface-unit/img13.jpg",
)
GALLERY_ROWS, GALLERY_COLS = 2, 3
GALLERY_CELL = (640, 440)  # width, height of one tile
GALLERY_LABEL_HEIGHT = 24
GALLERY_BACKGROUND = (32, 32, 32)
GALLERY_TEXT = (255, 255, 255)

JSON_NAME = "mtcnn_eval.json"
MARKDOWN_NAME = "mtcnn_eval.md"
PNG_NAME = "mtcnn_detections.png"
DEFAULT_OUT = "reports"


# ------------------------------------------------------------------------------------------------------ helpers


def load_detectors(
    models_dir: Optional[Path | str] = None, num_threads: int = NUM_THREADS
) -> tuple[MtcnnDetector, MtcnnDetector]:
    """``(float_detector, int8_detector)`` from the manifest in ``models_dir`` (default: the shipped models)."""
    manifest = Manifest.load(Path(models_dir) if models_dir is not None else None)
    return tuple(
        MtcnnDetector.from_manifest(manifest, num_threads=num_threads, keys=MODEL_KEYS[kind]) for kind in (FLOAT, INT8)
    )


def _display(path: Path) -> str:
    """``path`` relative to the shared data folder when it lies there (stable across machines), else as given."""
    try:
        return Path(path).resolve().relative_to(shared_root() / "data").as_posix()
    except ValueError:
        return str(path)


def _ratio(num: int, den: int) -> Optional[float]:
    return num / den if den else None


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def _box_side(box: np.ndarray) -> float:
    x1, y1, x2, y2 = (float(v) for v in box)
    return math.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def _counts_dict(counts: DetectionCounts) -> dict[str, Any]:
    return {
        "tp": counts.tp,
        "fp": counts.fp,
        "fn": counts.fn,
        "recall": _ratio(counts.tp, counts.tp + counts.fn),
        "precision": _ratio(counts.tp, counts.tp + counts.fp),
    }


@dataclass
class _Timer:
    """Detector wall time, to report milliseconds per image."""

    seconds: dict[str, float] = field(default_factory=lambda: {FLOAT: 0.0, INT8: 0.0})
    calls: dict[str, int] = field(default_factory=lambda: {FLOAT: 0, INT8: 0})

    def run(self, kind: str, detector, image: np.ndarray) -> Detections:
        start = time.perf_counter()
        result = detector(image)
        self.seconds[kind] += time.perf_counter() - start
        self.calls[kind] += 1
        return result

    def ms_per_image(self) -> dict[str, Optional[float]]:
        return {k: (1000 * self.seconds[k] / self.calls[k] if self.calls[k] else None) for k in self.seconds}


# ---------------------------------------------------------------------------------------- 1. int8 vs float


def _compare_image(reference: Detections, candidate: Detections) -> tuple[int, int, int, list[float], dict]:
    """Match ``candidate`` (int8) against ``reference`` (float): tp, fp, fn, landmark errors and miss details."""
    result = match_boxes(candidate.boxes, candidate.scores, reference.boxes, AGREEMENT_IOU)
    errors = [
        landmark_error_box(candidate.landmarks[p], reference.landmarks[g], reference.boxes[g])
        for p, g in result.matches
        if _box_side(reference.boxes[g]) > 0
    ]
    details = {
        "missed_float_faces": [
            {"score": round(float(reference.scores[g]), 4), "side_px": round(_box_side(reference.boxes[g]), 1)}
            for g in result.unmatched_gt
        ],
        "extra_int8_faces": [
            {"score": round(float(candidate.scores[p]), 4), "side_px": round(_box_side(candidate.boxes[p]), 1)}
            for p in result.unmatched_pred
        ],
        "max_landmark_error": round(max(errors), 4) if errors else None,
    }
    return len(result.matches), len(result.unmatched_pred), len(result.unmatched_gt), errors, details


def _agreement_summary(counts: DetectionCounts, errors: list[float], images: int) -> dict[str, Any]:
    recall = _ratio(counts.tp, counts.tp + counts.fn)
    error = _mean(errors)
    return {
        "images": images,
        "iou_threshold": AGREEMENT_IOU,
        "float_faces": counts.tp + counts.fn,
        "int8_faces": counts.tp + counts.fp,
        "matched": counts.tp,
        "missed": counts.fn,
        "extra": counts.fp,
        "recall": recall,
        "precision": _ratio(counts.tp, counts.tp + counts.fp),
        "landmark_error_mean": error,
        "landmark_error_median": float(np.median(errors)) if errors else None,
        "landmark_error_p95": float(np.percentile(errors, 95)) if errors else None,
        "landmark_error_max": float(np.max(errors)) if errors else None,
        "min_recall": MIN_AGREEMENT_RECALL,
        "max_landmark_error": MAX_LANDMARK_ERROR,
        "recall_ok": recall is not None and recall >= MIN_AGREEMENT_RECALL,
        "landmark_ok": error is not None and error <= MAX_LANDMARK_ERROR,
    }


def agreement(images: list[Path], float_detector, int8_detector, *, timer: Optional[_Timer] = None) -> dict:
    """int8 vs float on ``images``, float as reference: pooled recall/precision at IoU >= 0.5 and landmark error.

    The landmark error of a matched pair is the mean point distance over the float box's ``sqrt(w * h)``; the
    reported ``landmark_error_mean`` averages it over all matched faces. ``passed`` is the issue's bound (recall
    >= 98 % and mean landmark error <= 3 %). ``disagreements`` lists the worst images with their missed / extra
    faces (scores and sizes), to tell threshold flips from real quantization damage.
    """
    timer = timer or _Timer()
    counts = DetectionCounts()
    errors: list[float] = []
    disagreements = []
    for path in tqdm(images, desc="int8 vs float", unit="img"):
        image = load_image(path)
        reference = timer.run(FLOAT, float_detector, image)
        candidate = timer.run(INT8, int8_detector, image)
        tp, fp, fn, image_errors, details = _compare_image(reference, candidate)
        counts += DetectionCounts(tp, fp, fn)
        errors.extend(image_errors)
        if fp or fn:
            disagreements.append({"image": _display(path), "float_faces": len(reference), **details})
    summary = _agreement_summary(counts, errors, len(images))
    summary["passed"] = summary["recall_ok"] and summary["landmark_ok"]
    disagreements.sort(key=lambda d: -(len(d["missed_float_faces"]) + len(d["extra_int8_faces"])))
    summary["images_with_disagreement"] = len(disagreements)
    summary["disagreements"] = disagreements[:MAX_LISTED_DISAGREEMENTS]
    return summary


def _verdict(summary: dict) -> str:
    word = "PASS" if summary["passed"] else "FAIL"
    return (
        f"{word}: int8 vs float recall {_pct(summary['recall'])} (bound >= {_pct(MIN_AGREEMENT_RECALL, 0)}), "
        f"landmark error {_pct(summary['landmark_error_mean'], 2)} of box size (bound <= {_pct(MAX_LANDMARK_ERROR, 0)})"
    )


# --------------------------------------------------------------------------------------- 2. dlib-faces GT


def dlib_ground_truth(detectors: dict[str, Any], *, timer: Optional[_Timer] = None) -> dict:
    """Recall/precision of each detector against the dlib-faces boxes at IoU 0.5 and 0.3, pooled over images."""
    timer = timer or _Timer()
    folder = data_dir("dlib-faces")
    labelled = load_dlib_boxes([folder / name for name in DLIB_XML_FILES])
    thresholds = (HEADLINE_IOU, LOOSE_IOU)
    totals = {kind: {iou: DetectionCounts() for iou in thresholds} for kind in detectors}
    for item in tqdm(labelled, desc="dlib-faces", unit="img"):
        image = load_image(item.path)
        for kind, detector in detectors.items():
            found = timer.run(kind, detector, image)
            for iou in thresholds:
                totals[kind][iou] += count_detections(found.boxes, found.scores, item.boxes, item.ignore, iou)
    return {
        "images": len(labelled),
        "boxes": int(sum(len(item.boxes) for item in labelled)),
        "ignored_boxes": int(sum(int(item.ignore.sum()) for item in labelled)),
        "headline_iou": HEADLINE_IOU,
        **{kind: {f"iou_{iou}": _counts_dict(c) for iou, c in per_iou.items()} for kind, per_iou in totals.items()},
    }


# ----------------------------------------------------------------------------------------------------- 3. LFW


def _lfw_key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@dataclass
class _LfwTally:
    detected: int = 0
    no_faces: int = 0
    nme: list[float] = field(default_factory=list)

    def add(self, found: Detections, image_shape: tuple[int, ...], reference: Optional[np.ndarray]) -> None:
        if len(found) == 0:
            self.no_faces += 1
            return
        index = centre_face_index(found.boxes, image_shape)
        if index is None:
            return
        self.detected += 1
        if reference is not None:
            self.nme.append(landmark_nme_interocular(found.landmarks[index], reference))

    def summary(self, images: int) -> dict[str, Any]:
        good = sum(v < NME_GOOD for v in self.nme)
        return {
            "detected": self.detected,
            "detection_rate": _ratio(self.detected, images),
            "images_without_faces": self.no_faces,
            "landmark_faces": len(self.nme),
            "nme_mean": _mean(self.nme),
            "nme_median": float(np.median(self.nme)) if self.nme else None,
            "nme_below_threshold": _ratio(good, len(self.nme)),
        }


def lfw_evaluation(images: list[Path], detectors: dict[str, Any], *, timer: Optional[_Timer] = None) -> dict:
    """Centre-face detection rate, images without faces and landmark NME vs the published MTCNN landmarks."""
    timer = timer or _Timer()
    references = load_lfw_landmarks()
    tallies = {kind: _LfwTally() for kind in detectors}
    for path in tqdm(images, desc="LFW", unit="img"):
        image = load_image(path)
        reference = references.get(_lfw_key(path))
        for kind, detector in detectors.items():
            tallies[kind].add(timer.run(kind, detector, image), image.shape, reference)
    return {
        "images": len(images),
        "images_with_reference_landmarks": sum(_lfw_key(p) in references for p in images),
        "nme_threshold": NME_GOOD,
        **{kind: tally.summary(len(images)) for kind, tally in tallies.items()},
    }


# ------------------------------------------------------------------------------------------------- 4. gallery


def _tile(image: np.ndarray, label: str) -> np.ndarray:
    """``image`` scaled to fit one gallery cell (letterboxed) with ``label`` above it."""
    width, height = GALLERY_CELL
    body = height - GALLERY_LABEL_HEIGHT
    scale = min(width / image.shape[1], body / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    tile = np.full((height, width, 3), GALLERY_BACKGROUND, dtype=np.uint8)
    top = GALLERY_LABEL_HEIGHT + (body - size[1]) // 2
    left = (width - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = resized
    cv2.putText(tile, label, (6, GALLERY_LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, GALLERY_TEXT, 1, cv2.LINE_AA)
    return tile


def gallery(paths: Sequence[Path], detector) -> np.ndarray:
    """A GALLERY_ROWS x GALLERY_COLS grid of ``paths`` with ``detector``'s boxes, scores and landmarks drawn."""
    tiles = []
    for path in tqdm(paths, desc="gallery", unit="img"):
        image = load_image(path)
        found = detector(image)
        plural = "" if len(found) == 1 else "s"
        tiles.append(_tile(draw_detections(image, found), f"{_display(path)}: {len(found)} face{plural} (int8)"))
    blank = np.full((GALLERY_CELL[1], GALLERY_CELL[0], 3), GALLERY_BACKGROUND, dtype=np.uint8)
    tiles += [blank] * (GALLERY_ROWS * GALLERY_COLS - len(tiles))
    rows = [np.hstack(tiles[r * GALLERY_COLS : (r + 1) * GALLERY_COLS]) for r in range(GALLERY_ROWS)]
    return np.vstack(rows)


def _gallery_paths() -> list[Path]:
    root = shared_root() / "data"
    paths = [root / name for name in GALLERY_IMAGES]
    return [p for p in paths if p.is_file()][: GALLERY_ROWS * GALLERY_COLS]


# ------------------------------------------------------------------------------------------------- reporting


def _pct(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def _num(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _agreement_table(a: dict, lfw_count: int, other_count: int) -> list[str]:
    ok = {True: "PASS", False: "FAIL"}
    return [
        f"*int8 vs float MTCNN on {a['images']:,} images ({lfw_count:,} LFW + {other_count} deepface/group photos); "
        f"float detections are the reference, boxes matched at IoU ≥ {AGREEMENT_IOU}.*",
        "",
        "| metric | value | bound | result |",
        "|---|---|---|---|",
        f"| recall of float faces | {_pct(a['recall'])} ({a['matched']:,}/{a['float_faces']:,}) "
        f"| ≥ {_pct(MIN_AGREEMENT_RECALL, 0)} | {ok[a['recall_ok']]} |",
        f"| precision vs float | {_pct(a['precision'])} ({a['matched']:,}/{a['int8_faces']:,}) | — | — |",
        f"| landmark error, mean (of box size) | {_pct(a['landmark_error_mean'], 2)} "
        f"| ≤ {_pct(MAX_LANDMARK_ERROR, 0)} | {ok[a['landmark_ok']]} |",
        f"| landmark error, 95th percentile | {_pct(a['landmark_error_p95'], 2)} | — | — |",
    ]


def _dlib_table(d: dict) -> list[str]:
    lines = [
        f"*Detection vs the {d['boxes']} hand-drawn boxes of dlib-faces ({d['images']} images); headline IoU ≥ "
        f"{HEADLINE_IOU}, IoU ≥ {LOOSE_IOU} shows how much is dlib's tighter box convention.*",
        "",
        f"| model | recall @{HEADLINE_IOU} | precision @{HEADLINE_IOU} "
        f"| recall @{LOOSE_IOU} | precision @{LOOSE_IOU} |",
        "|---|---|---|---|---|",
    ]
    for kind in (FLOAT, INT8):
        cells = []
        for iou in (HEADLINE_IOU, LOOSE_IOU):
            c = d[kind][f"iou_{iou}"]
            cells += [
                f"{_pct(c['recall'])} ({c['tp']}/{c['tp'] + c['fn']})",
                f"{_pct(c['precision'])} ({c['tp']}/{c['tp'] + c['fp']})",
            ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def _lfw_table(lfw: dict) -> list[str]:
    lines = [
        f"*LFW, {lfw['images']:,} images: detected = a face box contains the image centre; NME = mean landmark error "
        f"over the inter-ocular distance vs the published MTCNN landmarks.*",
        "",
        f"| model | detection rate | images with no face | NME mean | NME < {NME_GOOD} |",
        "|---|---|---|---|---|",
    ]
    for kind in (FLOAT, INT8):
        s = lfw[kind]
        lines.append(
            f"| {kind} | {_pct(s['detection_rate'], 2)} ({s['detected']:,}/{lfw['images']:,}) "
            f"| {s['images_without_faces']} | {_num(s['nme_mean'])} | {_pct(s['nme_below_threshold'])} |"
        )
    return lines


def markdown(results: dict) -> str:
    """Three self-contained tables (caption line + table), separated by blank lines."""
    counts = results["image_counts"]
    blocks = [
        _agreement_table(results["agreement"], counts["agreement_lfw"], counts["agreement_other"]),
        _dlib_table(results["dlib_faces"]),
        _lfw_table(results["lfw"]),
    ]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def _model_info(models_dir: Optional[Path]) -> dict:
    manifest = Manifest.load(models_dir)
    return {
        "manifest": str(manifest.path),
        "models": {
            key: {"file": manifest.entry(key).path.name, "sha256": manifest.entry(key).sha256}
            for keys in MODEL_KEYS.values()
            for key in keys
        },
    }


def _write_outputs(out: Path, results: dict, picture: np.ndarray) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = markdown(results)
    (out / MARKDOWN_NAME).write_text(text, encoding="utf-8")
    save_image(out / PNG_NAME, picture)
    return text


# ------------------------------------------------------------------------------------------------------ main


def main(args) -> int:
    """Run all three evaluations, write JSON / markdown / PNG to ``args.out``; 1 if the int8 bound fails."""
    started = time.perf_counter()
    models_dir = Path(getattr(args, "models", None) or default_models_dir())
    out = Path(getattr(args, "out", None) or DEFAULT_OUT)
    subset_size = getattr(args, "lfw_images", DEFAULT_LFW_SUBSET)
    lfw_all = getattr(args, "lfw_all", True)

    float_detector, int8_detector = load_detectors(models_dir, NUM_THREADS)
    detectors = {FLOAT: float_detector, INT8: int8_detector}
    timers = {section: _Timer() for section in ("agreement", "dlib_faces", "lfw")}

    subset = lfw_subset(subset_size, seed=LFW_SEED)
    others = detection_eval_images()
    agree = agreement(subset + others, float_detector, int8_detector, timer=timers["agreement"])
    print(_verdict(agree))
    dlib = dlib_ground_truth(detectors, timer=timers["dlib_faces"])
    lfw_set = lfw_images() if lfw_all else subset
    lfw = lfw_evaluation(lfw_set, detectors, timer=timers["lfw"])
    picture = gallery(_gallery_paths(), int8_detector)

    results = {
        "models": _model_info(models_dir),
        "num_threads": NUM_THREADS,
        "image_counts": {
            "agreement_lfw": len(subset),
            "agreement_other": len(others),
            "dlib_faces": dlib["images"],
            "lfw": len(lfw_set),
            "lfw_all": bool(lfw_all),
        },
        "agreement": agree,
        "dlib_faces": dlib,
        "lfw": lfw,
        "detector_ms_per_image": {section: timer.ms_per_image() for section, timer in timers.items()},
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    text = _write_outputs(out, results, picture)
    print(f"wrote {out / JSON_NAME}, {out / MARKDOWN_NAME}, {out / PNG_NAME} in {results['runtime_s']:.0f} s\n")
    print(_verdict(agree))
    print(text)
    return 0 if agree["passed"] else 1
