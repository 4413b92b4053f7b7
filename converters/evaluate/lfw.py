"""``doorface-convert evaluate lfw``: LFW View-2 face verification, the FaceNet paper's way.

Protocol: the 6,000 pairs of ``pairs.txt`` in 10 folds of 300 same + 300 different; for each fold the threshold
that maximises accuracy on the other 9 folds is applied to it; we report mean ± std accuracy, ROC AUC,
TAR at FAR = 1e-3 (the paper's VAL@FAR) and the thresholds.

Per image: our int8 MTCNN → the centre face's 5 landmarks → the embedder's own alignment → embedding. Images where
no face contains the image centre fall back to the median landmarks of all detected LFW faces (a fixed centre
crop); they are counted. Detections and embeddings are cached on disk keyed by the models' sha256, so re-runs only
recompute what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from converters import datasets
from converters.evaluate.metrics import centre_face_index
from converters.fetch import sources
from edge.detector import MTCNN_KEYS, MtcnnDetector
from edge.embedder import Embedder
from edge.image_io import load_image
from edge.manifest import Manifest

log = logging.getLogger(__name__)

FOLDS = 10
FULL_PROTOCOL_PAIRS = 6000
TARGET_FAR = 1e-3
NUM_THREADS = 2
# Published LFW accuracies of the sources, for the table (not measured here).
# The FaceNet paper (Schroff et al. 2015, table 3) gives its small models' VAL at FAR = 1e-3 on its own hold-out
# photo set, not LFW accuracy: compare with the TAR @ FAR=1e-3 column.
PUBLISHED = {"mobilefacenet": "99.55% (Chen et al. 2018)", "dlib_resnet": "99.38% (dlib)",
             "nns1": "VAL 82.4% @ FAR=1e-3, own photo set (FaceNet NNS1)",
             "nns2": "VAL 51.9% @ FAR=1e-3, own photo set (FaceNet NNS2)"}


@dataclass(frozen=True)
class Pair:
    fold: int
    a: str  # "Name/Name_0001.jpg"
    b: str
    same: bool


def _image_name(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def load_pairs(path: Path) -> list[Pair]:
    """The View-2 pairs; raises ValueError naming the line on a malformed file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        folds, per_fold = (int(v) for v in lines[0].split())
    except ValueError:
        raise ValueError(f"{path}: first line must be '<folds> <pairs per class>', got {lines[0]!r}") from None
    pairs = []
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != folds * per_fold * 2:
        raise ValueError(f"{path}: expected {folds * per_fold * 2} pairs, found {len(body)}")
    for i, line in enumerate(body):
        parts = line.split()
        fold = i // (2 * per_fold)
        if len(parts) == 3:
            pairs.append(Pair(fold, _image_name(parts[0], parts[1]), _image_name(parts[0], parts[2]), True))
        elif len(parts) == 4:
            pairs.append(Pair(fold, _image_name(parts[0], parts[1]), _image_name(parts[2], parts[3]), False))
        else:
            raise ValueError(f"{path}: line {i + 2} is neither a same nor a different pair: {line!r}")
    return pairs


def _cache_file(kind: str, *digests: str) -> Path:
    folder = sources.cache_dir() / "lfw"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}-{'-'.join(d[:16] for d in digests)}.npz"


def _load_cache(path: Path) -> dict:
    """name → row of a per-image cache file (empty when absent)."""
    if not path.is_file():
        return {}
    data = np.load(path, allow_pickle=False)
    if "values" not in data.files:  # an older cache layout: recompute rather than misread it
        return {}
    return dict(zip(data["names"].tolist(), data["values"]))


def _save_cache(path: Path, table: dict) -> None:
    names = sorted(table)
    np.savez(path, names=np.asarray(names), values=np.stack([table[n] for n in names]))


def detect_landmarks(names: Sequence[str], image_root: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """(N, 5, 2) centre-face landmarks and an (N,) mask of images where a face was found (cached per image)."""
    cache = _cache_file("landmarks", *(manifest.entry(k).sha256 for k in MTCNN_KEYS))
    table = _load_cache(cache)  # name -> 11 values: found flag + 5 × (x, y)
    missing = [n for n in names if n not in table]
    if missing:
        detector = MtcnnDetector.from_manifest(manifest, num_threads=NUM_THREADS)
        for name in tqdm(missing, desc="LFW detect", unit="img"):
            image = load_image(image_root / name)
            result = detector(image)
            idx = centre_face_index(result.boxes, image.shape)
            row = np.zeros(11, np.float32)
            if idx is not None:
                row[0], row[1:] = 1.0, result.landmarks[idx].reshape(-1)
            table[name] = row
        _save_cache(cache, table)
    rows = np.stack([table[n] for n in names])
    found = rows[:, 0] > 0
    landmarks = rows[:, 1:].reshape(-1, 5, 2)
    if found.any():  # the centre-crop fallback: where LFW's detected faces sit on average
        landmarks[~found] = np.median(np.stack([v[1:] for v in table.values() if v[0] > 0]), axis=0).reshape(5, 2)
    return landmarks, found


def embed_all(key: str, names: Sequence[str], landmarks: np.ndarray, image_root: Path, manifest: Manifest,
              detector_digest: str) -> np.ndarray:
    """(N, dim) unit embeddings of every image with one embedder (cached per image by model + detector sha256, and
    by the alignment the manifest gives the model: the same file under another template embeds other chips)."""
    entry = manifest.entry(key)
    align = json.dumps(entry.fields.get("align", {}), sort_keys=True).encode()
    cache = _cache_file(f"emb-{key}", entry.sha256, detector_digest, hashlib.sha256(align).hexdigest())
    table = _load_cache(cache)
    missing = [(i, n) for i, n in enumerate(names) if n not in table]
    if missing:
        embedder = Embedder(entry, num_threads=NUM_THREADS)
        for i, name in tqdm(missing, desc=f"LFW embed {key}", unit="img"):
            table[name] = embedder(load_image(image_root / name), landmarks[i])[0]
        _save_cache(cache, table)
    return np.stack([table[n] for n in names]).astype(np.float32)


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The distance threshold (accept = distance <= t) with the best accuracy, and that accuracy."""
    order = np.argsort(distances, kind="stable")
    d, s = distances[order], same[order]
    # Accepting the k closest pairs is right for the same pairs among them and the different pairs after them.
    accepted_same = np.concatenate([[0], np.cumsum(s)])
    rejected_different = (~s).sum() - np.concatenate([[0], np.cumsum(~s)])
    correct = accepted_same + rejected_different
    k = int(np.argmax(correct))
    if k == 0:
        threshold = float(d[0]) - 1e-6
    elif k == len(d):
        threshold = float(d[-1]) + 1e-6
    else:
        threshold = float((d[k - 1] + d[k]) / 2)
    return threshold, float(correct[k] / len(d))


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    """Probability that a same pair is closer than a different pair (ties count half)."""
    pos, neg = np.sort(distances[same]), np.sort(distances[~same])
    below = np.searchsorted(pos, neg, side="left")  # same pairs strictly closer than each different pair
    ties = np.searchsorted(pos, neg, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))


def threshold_at_far(distances: np.ndarray, same: np.ndarray, far: float = TARGET_FAR) -> tuple[float, float]:
    """The largest threshold whose false accept rate is <= ``far``, and the true accept rate there."""
    neg = np.sort(distances[~same])
    allowed = int(np.floor(far * len(neg)))  # how many different pairs may be accepted
    threshold = float(neg[allowed] - 1e-6) if allowed < len(neg) else float(neg[-1])
    return threshold, float(np.mean(distances[same] <= threshold))


def fit_calibration(distances: np.ndarray, same: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Logistic fit P(same | distance) = 1 / (1 + exp(-(intercept + slope * distance))) by Newton's method.

    LFW has as many same as different pairs, so this is the probability under equal priors. The runtime reports it
    as an event's confidence; its meaning is documented in the README.
    """
    x = np.stack([np.ones_like(distances, dtype=np.float64), distances.astype(np.float64)], axis=1)
    y = same.astype(np.float64)
    w = np.zeros(2)
    ridge = 1e-6 * np.eye(2)  # separable data would otherwise let the slope grow without bound
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hessian, x.T @ (y - p) - ridge @ w)
        w += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(w[1]), float(w[0])


def ten_fold(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    accuracies, thresholds = [], []
    for fold in range(FOLDS):
        test = folds == fold
        threshold, _ = best_threshold(distances[~test], same[~test])
        accuracies.append(float(np.mean((distances[test] <= threshold) == same[test])))
        thresholds.append(threshold)
    best, best_acc = best_threshold(distances, same)
    far_threshold, tar = threshold_at_far(distances, same)
    slope, intercept = fit_calibration(distances, same)
    return {
        "calibration": {"slope": slope, "intercept": intercept},
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "fold_thresholds": thresholds,
        "roc_auc": roc_auc(distances, same),
        "tar_at_far_1e-3": tar,
        "threshold_best_accuracy": best,
        "threshold_far_1e-3": far_threshold,
        "same_distance_mean": float(distances[same].mean()),
        "different_distance_mean": float(distances[~same].mean()),
    }


def pair_distances(pairs: Sequence[Pair], index: dict, embeddings: np.ndarray) -> np.ndarray:
    a = embeddings[[index[p.a] for p in pairs]]
    b = embeddings[[index[p.b] for p in pairs]]
    return 1.0 - np.sum(a * b, axis=1)  # cosine distance of unit vectors


def evaluate(keys: Sequence[str], manifest: Manifest, pairs: Optional[Sequence[Pair]] = None) -> dict:
    """LFW results for each embedder key (all pairs by default; a subset for tests)."""
    lfw = datasets.data_dir("lfw")
    pairs = list(pairs) if pairs is not None else load_pairs(lfw / "pairs.txt")
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {n: i for i, n in enumerate(names)}
    landmarks, found = detect_landmarks(names, lfw / "images", manifest)
    detector_digest = "".join(manifest.entry(k).sha256[:8] for k in MTCNN_KEYS)
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    results = {"pairs": len(pairs), "images": len(names), "no_face_fallback": int((~found).sum()), "models": {},
               "same": same}
    for key in keys:
        embeddings = embed_all(key, names, landmarks, lfw / "images", manifest, detector_digest)
        distances = pair_distances(pairs, index, embeddings)
        results["models"][key] = {"sha256": manifest.entry(key).sha256, **ten_fold(distances, same, folds),
                                  "distances": distances}
    return results


def markdown(results: dict, manifest: Manifest) -> str:
    lines = [f"LFW View-2, {results['pairs']} pairs, 10-fold; our int8 MTCNN + 5-point alignment "
             f"({results['no_face_fallback']} of {results['images']} images fell back to a centre crop).", "",
             "| model | accuracy | ROC AUC | TAR @ FAR=1e-3 | threshold (best acc.) | threshold (FAR=1e-3) "
             "| published |",
             "|---|---|---|---|---|---|---|"]
    for key, r in results["models"].items():
        family = manifest.entry(key).fields.get("family", key.replace("_float", ""))
        lines.append(f"| `{key}` | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}% | "
                     f"{r['roc_auc']:.4f} | {100 * r['tar_at_far_1e-3']:.1f}% | {r['threshold_best_accuracy']:.4f} | "
                     f"{r['threshold_far_1e-3']:.4f} | {PUBLISHED.get(family, '')} |")
    return "\n".join(lines) + "\n"


def plot_roc(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same = results["same"]
    fig, ax = plt.subplots(figsize=(6, 5))
    for key, r in results["models"].items():
        d = r["distances"]
        thresholds = np.unique(d)
        tar = [(d[same] <= t).mean() for t in thresholds]
        far = [(d[~same] <= t).mean() for t in thresholds]
        ax.plot(far, tar, label=f"{key} ({100 * r['accuracy_mean']:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("LFW View-2 ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def float_reference_result(results: dict, manifest: Manifest, key: str) -> Optional[dict]:
    """The result of ``key``'s float reference (its manifest ``float_reference``) in the same run, if evaluated."""
    return results["models"].get(manifest.entry(key).fields.get("float_reference", ""))


def int8_loss_points(results: dict, manifest: Manifest, key: str) -> Optional[float]:
    """LFW accuracy points ``key`` loses against its float reference in the same run; None without one."""
    reference = float_reference_result(results, manifest, key)
    if reference is None:
        return None
    return 100 * (reference["accuracy_mean"] - results["models"][key]["accuracy_mean"])


def record_in_manifest(results: dict, manifest: Manifest) -> None:
    """Write each model's LFW thresholds and accuracy into its manifest entry (other fields untouched) + card."""
    from converters import manifest_io

    fields = {}
    for key, r in results["models"].items():
        thresholds = {
            "best_accuracy": round(r["threshold_best_accuracy"], 6),
            "far_1e-3": round(r["threshold_far_1e-3"], 6),
            # P(same person | distance) = 1 / (1 + exp(-(intercept + slope * distance))), equal priors
            "calibration": {k: round(v, 4) for k, v in r["calibration"].items()},
            "metric": "cosine distance (1 - cos) of L2-normalised embeddings; same person if <= threshold",
            "from": "LFW View-2, 6000 pairs, our int8 MTCNN + alignment",
        }
        accuracy = {
            "lfw_accuracy": round(r["accuracy_mean"], 5),
            "lfw_accuracy_std": round(r["accuracy_std"], 5),
            "lfw_roc_auc": round(r["roc_auc"], 5),
            "lfw_tar_at_far_1e-3": round(r["tar_at_far_1e-3"], 5),
        }
        reference = float_reference_result(results, manifest, key)
        if reference is not None:  # the card then states what int8 cost, measured in the same run
            accuracy["float_reference_lfw_accuracy"] = round(reference["accuracy_mean"], 5)
            accuracy["int8_loss_points"] = round(int8_loss_points(results, manifest, key), 2)
        fields[key] = {"thresholds": thresholds, "accuracy": accuracy}
    manifest_io.merge_fields(manifest.path.parent, fields)


def main(args) -> int:
    manifest = Manifest.load(Path(args.models))
    keys = args.keys or [k for k, e in sorted(manifest.models.items()) if e.task == "face_embedding"]
    if not keys:
        raise ValueError(f"{manifest.path} lists no face_embedding model to evaluate")
    results = evaluate(keys, manifest)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_roc(results, out / "lfw_roc.png")
    table = markdown(results, manifest)
    (out / "lfw_eval.md").write_text(table, encoding="utf-8")
    serialisable = {k: v for k, v in results.items() if k != "same"}
    serialisable["models"] = {k: {f: v for f, v in r.items() if f != "distances"}
                              for k, r in results["models"].items()}
    (out / "lfw_eval.json").write_text(json.dumps(serialisable, indent=2) + "\n", encoding="utf-8")
    if results["pairs"] == FULL_PROTOCOL_PAIRS:  # only the whole protocol may set the shipped thresholds
        record_in_manifest(results, manifest)
    print(table)
    return 0
