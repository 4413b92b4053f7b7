"""Do a face set's own 5 landmarks agree with doorface's MTCNN?

Training aligns ``train-faces`` with the landmarks of its ``manifest.csv`` (found by the ``mtcnn`` package at the
crops' source resolution), while the runtime aligns with its own int8 MTCNN. If the two disagreed, a student would
learn on chips framed differently from the ones it sees at the door. So before training, a seeded sample of crops
goes through our detector and each manifest face is compared with the nearest detected face:

    NME = mean over the 5 points of |ours - theirs| / inter-ocular distance (theirs)

the usual normalised mean error of landmark benchmarks. A face our detector misses counts as missed, not as an
error. The set agrees when the median NME is at most :data:`MAX_MEDIAN_NME` and at most :data:`MAX_MISSED` of the
sample is missed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from edge.faces import Detections
from edge.image_io import load_image

SAMPLE = 200
# A 0.05 NME is about 3 pixels on a 112-pixel chip (inter-ocular ~ 37 px): within what two good detectors
# disagree by, and under the template jitter training adds anyway (±5% shift).
MAX_MEDIAN_NME = 0.05
MAX_MISSED = 0.05
WORST_LISTED = 5
LEFT_EYE, RIGHT_EYE = 0, 1


@dataclass(frozen=True)
class LandmarkAgreement:
    faces: int  # sampled
    missed: int  # no detection at all
    median_nme: float  # over the detected faces
    p95_nme: float
    worst: tuple[tuple[str, float], ...]  # (file, NME), worst first

    @property
    def agrees(self) -> bool:
        return self.missed <= MAX_MISSED * self.faces and self.median_nme <= MAX_MEDIAN_NME

    def to_json(self) -> dict:
        return {**asdict(self), "worst": [list(w) for w in self.worst], "agrees": self.agrees,
                "max_median_nme": MAX_MEDIAN_NME, "max_missed_fraction": MAX_MISSED}

    def line(self) -> str:
        return (f"{self.faces} faces: median NME {self.median_nme:.4f} (95th percentile {self.p95_nme:.4f}), "
                f"{self.missed} missed; {'agree' if self.agrees else 'DISAGREE'} (limit median "
                f"{MAX_MEDIAN_NME}, missed {MAX_MISSED:.0%})")


def nme(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Normalised mean error of (5, 2) landmarks against ``theirs``, by ``theirs``' inter-ocular distance."""
    theirs = np.asarray(theirs, np.float64)
    inter_ocular = float(np.linalg.norm(theirs[LEFT_EYE] - theirs[RIGHT_EYE]))
    if inter_ocular <= 0:
        raise ValueError("reference landmarks have both eyes at one point")
    return float(np.linalg.norm(np.asarray(ours, np.float64) - theirs, axis=1).mean() / inter_ocular)


def nearest_nme(detections: Detections, theirs: np.ndarray) -> Optional[float]:
    """NME of the detected face closest to ``theirs`` (several faces may be in a loose crop); None if none."""
    if len(detections.landmarks) == 0:
        return None
    return min(nme(ours, theirs) for ours in detections.landmarks)


def measure(faces: Sequence, detector: Callable[[np.ndarray], Detections], *, sample: int = SAMPLE,
            seed: int = 0) -> LandmarkAgreement:
    """Compare ``faces`` (objects with ``path`` and ``landmarks``, e.g. :class:`converters.datasets.TrainFace`)
    with ``detector`` on a seeded sample of ``sample`` of them."""
    if not faces:
        raise ValueError("no faces to check")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=min(sample, len(faces)), replace=False)
    errors, missed = [], 0
    for i in tqdm(sorted(chosen), desc="landmarks vs our MTCNN", unit="face", leave=False):
        face = faces[int(i)]
        error = nearest_nme(detector(load_image(face.path)), face.landmarks)
        if error is None:
            missed += 1
        else:
            errors.append((f"{Path(face.path).parent.name}/{Path(face.path).name}", error))
    values = np.array([e for _, e in errors]) if errors else np.array([np.inf])
    worst = tuple(sorted(errors, key=lambda item: -item[1])[:WORST_LISTED])
    return LandmarkAgreement(faces=len(chosen), missed=missed, median_nme=round(float(np.median(values)), 5),
                             p95_nme=round(float(np.percentile(values, 95)), 5),
                             worst=tuple((name, round(err, 4)) for name, err in worst))
