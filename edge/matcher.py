"""Who is this face? Per-person templates, the acceptance rules, and a calibrated probability.

Each enrolled person becomes a :class:`Template`: an outlier-rejecting mean of their embeddings plus the inlier
embeddings themselves. A face's distance to a person is the smaller of its distance to the template and to the
closest inlier embedding: the template is the stable centre of the person, the raw embeddings keep what a mean
blurs (glasses on and off, a beard grown since), and the outlier rejection keeps a mistakenly enrolled photo of
someone else from pulling either towards a stranger.

A face is accepted as the closest person only if both rules hold:

* **Threshold** (distance ≤ the manifest's ``far_1e-3`` threshold by default): at a front door, a stranger taken
  for a family member (a door that unlocks, an "Anna is home" that is false) is far worse than a family member
  left unrecognised, who simply shows up again a frame later. So the threshold is the one at which LFW's different
  persons were taken for the same in 1 pair of 1000, not the most accurate one. That rate is per comparison: with
  P persons of k embeddings each a stranger gets about P·(k+1) chances, which is one more reason for the next rule
  and for the tracker's votes over several frames.
* **Margin** (the second closest person is at least ``margin`` farther): two relatives who look alike (siblings,
  a parent and a grown child) can both be under the threshold; naming either would be a coin toss, so the face stays
  unrecognised until a clearer frame separates them. With one person enrolled the rule does not apply.
* **Exclusions** (faces marked "not this person" after a wrong match, :meth:`Gallery.exclude`): a face is not named
  as a person when it is closer to one of that person's exclusions than to the person; and the person's enrolled
  faces that lie closer to an exclusion than to their own template are set aside, as outliers are. So correcting a
  wrong match moves the decision boundary between that person and that look-alike, not the global threshold.

:class:`Calibration` maps a distance to the probability that the two faces are the same person (a logistic fitted
on LFW pairs by ``doorface-convert evaluate lfw``), for consumers that want a confidence rather than a yes/no.
Everything here is NumPy on unit vectors: one matrix product per :meth:`Matcher.match` call.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from edge.embedder import distance, l2_normalise
from edge.gallery import Gallery
from edge.manifest import ManifestError, ModelEntry

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
DEFAULT_THRESHOLD_KIND = "far_1e-3"
DEFAULT_MARGIN = 0.02
# 1.4826 · MAD estimates the standard deviation of normally distributed values, so 3 is "3 sigma".
MAD_SCALE = 1.4826
OUTLIER_SIGMAS = 3.0
OUTLIER_FLOOR = 0.5  # × threshold; see person_template


def _calibrate_hint(key: str) -> str:
    return f"run `doorface-convert evaluate lfw` to calibrate model {key}"


@dataclass(frozen=True, eq=False)
class Template:
    """One person's template: ``vector`` (d,) unit vector, ``inliers`` (k,) bool over the enrolled embeddings,
    ``embeddings`` (m, d) the inlier embeddings (unit vectors), m = ``inliers.sum()``. Arrays are read-only."""

    vector: np.ndarray
    inliers: np.ndarray
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        for name in ("vector", "inliers", "embeddings"):
            array = np.array(getattr(self, name), copy=True)
            array.setflags(write=False)
            object.__setattr__(self, name, array)


def robust_template(
    vectors: np.ndarray,
    *,
    metric: str = "cosine",
    min_cutoff: float = 0.0,
    max_cutoff: float = math.inf,
) -> Template:
    """An outlier-rejecting mean of one person's embeddings (k, d).

    Each embedding is compared with the L2-normalised mean of the *other* inliers (leave-one-out: in a small set an
    odd photo otherwise drags the mean towards itself and hides). While the farthest one is beyond the cutoff it is
    dropped, one at a time, so that an odd photo does not take good ones with it. The cutoff is median + 3·(1.4826·MAD)
    of these distances, raised to at least ``min_cutoff`` (a tight set's tiny MAD would reject ordinary variation)
    and lowered to at most ``max_cutoff`` (with 3 to 5 photos the MAD is too noisy to catch anything alone). At least
    half are always kept, and sets of one or two are kept whole: then there is no telling which photo is the odd one.
    The template is the normalised mean of the inliers.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"expected embeddings of shape (k >= 1, d), got {vectors.shape}")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("embeddings must be finite")
    units = l2_normalise(vectors)
    inliers = np.ones(len(units), dtype=bool)
    min_kept = (len(units) + 1) // 2
    while len(units) >= 3 and inliers.sum() > min_kept:
        kept = np.flatnonzero(inliers)
        others = l2_normalise(units[kept].sum(axis=0)[None] - units[kept])
        dist = _to_distance(np.einsum("ij,ij->i", units[kept], others), metric)
        median = float(np.median(dist))
        mad = float(np.median(np.abs(dist - median)))
        cutoff = min(max(median + OUTLIER_SIGMAS * MAD_SCALE * mad, min_cutoff), max_cutoff)
        worst = int(np.argmax(dist))
        if dist[worst] <= cutoff:
            break
        inliers[kept[worst]] = False
    centre = l2_normalise(units[inliers].mean(axis=0))
    return Template(centre, inliers, units[inliers])


def _to_distance(similarity: np.ndarray, metric: str) -> np.ndarray:
    """Cosine similarity of unit vectors → the metric's distance."""
    if metric == "cosine":
        return 1.0 - similarity
    if metric == "euclidean":
        return np.sqrt(np.clip(2.0 - 2.0 * similarity, 0.0, None))
    raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")


def person_template(vectors: np.ndarray, *, metric: str, threshold: float) -> Template:
    """The template the :class:`Matcher` makes of one person, for a matching ``threshold``.

    Nothing within half the threshold of the others' mean is an outlier: such a photo is plainly the same person,
    however tight the rest of the set. Anything beyond the threshold is: the matcher itself would not call it the
    same person as the rest (on LFW, a stranger's photo among 2 to 6 of one person lies beyond it, the person's
    own photos within 0.07 of it).
    """
    return robust_template(vectors, metric=metric, min_cutoff=OUTLIER_FLOOR * threshold, max_cutoff=threshold)


@dataclass(frozen=True)
class Calibration:
    """P(same person | distance) = 1 / (1 + exp(-(intercept + slope · distance))), slope < 0."""

    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)):
            raise ValueError(f"calibration must be finite numbers, got slope={self.slope}, "
                             f"intercept={self.intercept}")
        if self.slope >= 0:
            raise ValueError(f"calibration slope must be negative (farther = less likely the same person), "
                             f"got {self.slope}")

    def probability(self, distance: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
        """The probability that two faces at ``distance`` are the same person: a float for a float, else an array."""
        z = self.intercept + self.slope * np.asarray(distance, dtype=np.float64)
        # exp(-log(1 + exp(-z))): no overflow for large |z| and no rounding of small probabilities to 0.
        p = np.exp(-np.logaddexp(0.0, -z))
        return float(p) if np.ndim(p) == 0 else p

    def distance_at(self, probability: float) -> float:
        """The distance at which :meth:`probability` is ``probability`` (closer faces are more likely the same)."""
        if not 0.0 < probability < 1.0:
            raise ValueError(f"probability must be strictly between 0 and 1, got {probability}")
        return (math.log(probability / (1.0 - probability)) - self.intercept) / self.slope

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> Calibration:
        """The model's calibration from ``thresholds.calibration = {"slope": .., "intercept": ..}``."""
        thresholds = entry.fields.get("thresholds")
        raw = thresholds.get("calibration") if isinstance(thresholds, dict) else None
        if raw is None:
            raise ManifestError(f"manifest model '{entry.key}' has no thresholds.calibration; "
                                f"{_calibrate_hint(entry.key)}")
        try:
            return cls(float(raw["slope"]), float(raw["intercept"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest model '{entry.key}' has a bad thresholds.calibration {raw!r} ({exc}); "
                                f"{_calibrate_hint(entry.key)}") from None


@dataclass(frozen=True)
class Match:
    """The verdict on one face.

    ``best`` is the closest person whether accepted or not, ``name`` is set only when accepted; ``distance`` and
    ``second_distance`` are to the closest and second closest persons (None when there is no such person);
    ``probability`` is the calibrated probability that the face is ``best`` (0 with an empty gallery).
    """

    name: Optional[str]
    distance: Optional[float]
    second_distance: Optional[float]
    probability: float
    best: Optional[str]

    @property
    def accepted(self) -> bool:
        return self.name is not None

    @property
    def gap(self) -> Optional[float]:
        """How much farther the second closest person is; None with fewer than two persons."""
        if self.distance is None or self.second_distance is None:
            return None
        return self.second_distance - self.distance


NO_MATCH = Match(name=None, distance=None, second_distance=None, probability=0.0, best=None)


class Matcher:
    """Matches embeddings against a fixed set of persons; rebuild it when the gallery changes."""

    def __init__(
        self,
        embeddings: Mapping[str, np.ndarray],
        *,
        metric: str,
        threshold: float,
        margin: float = DEFAULT_MARGIN,
        calibration: Calibration,
        exclusions: Optional[Mapping[str, np.ndarray]] = None,
    ):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a positive distance, got {threshold}")
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be a distance >= 0, got {margin}")
        self.metric = metric
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.calibration = calibration
        self.templates: dict[str, Template] = {}
        self.exclusions: dict[str, np.ndarray] = {}
        dims = set()
        for name, vectors in embeddings.items():
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim == 1:
                vectors = vectors[None]
            if len(vectors) == 0:
                continue
            dims.add(vectors.shape[1])
            negatives = np.asarray((exclusions or {}).get(name, np.zeros((0, vectors.shape[1]))), dtype=np.float32)
            if negatives.ndim == 1:
                negatives = negatives[None]
            if len(negatives):
                self.exclusions[name] = l2_normalise(negatives)
                vectors = self._without_excluded(name, vectors)
            self.templates[name] = person_template(vectors, metric=metric, threshold=self.threshold)
            dropped = int((~self.templates[name].inliers).sum())
            if dropped:
                logger.info("%r: %d of %d embeddings set aside as outliers", name, dropped, len(vectors))
        if len(dims) > 1:
            raise ValueError(f"embeddings of different dimensions {sorted(dims)}: they come from different models")
        self.dim: Optional[int] = dims.pop() if dims else None
        self.names: tuple[str, ...] = tuple(self.templates)
        # One bank of columns, person by person (template first, then inliers), so that a single matrix product
        # gives every distance and np.minimum.reduceat folds each person's columns into one.
        blocks = [np.vstack([t.vector[None], t.embeddings]) for t in self.templates.values()]
        self._starts = np.cumsum([0] + [len(b) for b in blocks[:-1]]).astype(np.intp)
        self._bank = np.vstack(blocks).astype(np.float32) if blocks else np.zeros((0, 0), np.float32)

    def _without_excluded(self, name: str, vectors: np.ndarray) -> np.ndarray:
        """``name``'s embeddings less those closer to one of their exclusions than to their own template (at least
        one is always kept: an exclusion corrects a person, it never empties them)."""
        template = person_template(vectors, metric=self.metric, threshold=self.threshold).vector
        own = distance(vectors, template[None], self.metric)[:, 0]
        nearest_excluded = distance(vectors, self.exclusions[name], self.metric).min(axis=1)
        keep = nearest_excluded >= own
        if not keep.any():
            keep[int(np.argmin(own - nearest_excluded))] = True
        if not keep.all():
            logger.info("%r: %d of %d embeddings set aside, closer to a face marked not them", name,
                        int((~keep).sum()), len(vectors))
        return vectors[keep]

    @classmethod
    def from_gallery(
        cls,
        gallery: Gallery,
        entry: ModelEntry,
        threshold_kind: str = DEFAULT_THRESHOLD_KIND,
        margin: float = DEFAULT_MARGIN,
        calibration: Optional[Calibration] = None,
    ) -> Matcher:
        """A matcher over ``gallery`` with the threshold (and, unless given, the calibration) of the model's
        manifest ``entry``. Raises GalleryMismatchError if the gallery was made with another model, ManifestError
        if the entry lacks the threshold or calibration."""
        gallery.require_embedder(entry.key, entry.sha256)
        return cls(
            gallery.embeddings(),
            metric=str((entry.fields.get("embedding") or {}).get("metric", "cosine")),
            threshold=threshold_from_entry(entry, threshold_kind),
            margin=margin,
            calibration=calibration if calibration is not None else Calibration.from_entry(entry),
            exclusions=gallery.exclusions(),
        )

    def __len__(self) -> int:
        return len(self.names)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """(N, d) embeddings → (N, P) distance to each person of :attr:`names`."""
        queries = self._queries(vectors)
        if len(queries) == 0 or not self.names:
            return np.zeros((len(queries), len(self.names)), dtype=np.float32)
        pairwise = distance(queries, self._bank, self.metric)
        return np.clip(np.minimum.reduceat(pairwise, self._starts, axis=1), 0.0, None)

    def match(self, vectors: np.ndarray) -> list[Match]:
        """One :class:`Match` per row of ``vectors`` (N, d); N = 0 gives []."""
        per_person = self.distances(vectors)
        if len(per_person) == 0:
            return []
        if not self.names:
            return [NO_MATCH] * len(per_person)
        order = np.argsort(per_person, axis=1, kind="stable")
        rows = np.arange(len(per_person))
        best = per_person[rows, order[:, 0]].astype(np.float64)
        second = per_person[rows, order[:, 1]].astype(np.float64) if len(self.names) > 1 else None
        probability = np.atleast_1d(self.calibration.probability(best))
        accepted = best <= self.threshold
        if second is not None:
            accepted &= (second - best) >= self.margin
        if self.exclusions:
            queries = self._queries(vectors)
            for i in np.flatnonzero(accepted):
                negatives = self.exclusions.get(self.names[order[i, 0]])
                if negatives is not None and distance(queries[i:i + 1], negatives, self.metric).min() <= best[i]:
                    accepted[i] = False
        matches = []
        for i in range(len(per_person)):
            person = self.names[order[i, 0]]
            matches.append(Match(
                name=person if accepted[i] else None,
                distance=float(best[i]),
                second_distance=None if second is None else float(second[i]),
                probability=float(probability[i]),
                best=person,
            ))
        return matches

    def _queries(self, vectors: np.ndarray) -> np.ndarray:
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.ndim != 2:
            raise ValueError(f"expected embeddings of shape (N, d), got {queries.shape}")
        if self.dim is not None and len(queries) and queries.shape[1] != self.dim:
            raise ValueError(f"embeddings have {queries.shape[1]} values, the gallery's have {self.dim}: "
                             "they come from different models")
        return l2_normalise(queries)


def threshold_from_entry(entry: ModelEntry, kind: str = DEFAULT_THRESHOLD_KIND) -> float:
    """The model's ``thresholds[kind]`` distance from its manifest entry, or ManifestError saying how to get it."""
    thresholds: Any = entry.fields.get("thresholds")
    value = thresholds.get(kind) if isinstance(thresholds, dict) else None
    if value is None:
        raise ManifestError(f"manifest model '{entry.key}' has no '{kind}' threshold; {_calibrate_hint(entry.key)}")
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not (math.isfinite(threshold) and threshold > 0):
        raise ManifestError(f"manifest model '{entry.key}' has a bad '{kind}' threshold {value!r}; "
                            f"{_calibrate_hint(entry.key)}")
    return threshold
