"""Face verification on held-out identities: the pairs, their accuracy, and a Keras student's embeddings.

Training measures the student after every epoch on pairs of the identities its split held out (and the teacher on
the same pairs, once); ``python -m research fit-gap`` measures shipped students the same way on trained and
held-out identities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.embedder import l2_normalise as unit_rows
from research import nns

VAL_SAME_PAIRS_PER_IDENTITY = 20  # caps the 30-image identities' share of the validation pairs
EVAL_BATCH = 128


@dataclass(frozen=True)
class Pairs:
    a: np.ndarray
    b: np.ndarray
    same: np.ndarray


def verification_pairs(labels: np.ndarray, seed: int, per_identity: int = VAL_SAME_PAIRS_PER_IDENTITY) -> Pairs:
    """Same pairs (at most ``per_identity`` per identity) and as many random different pairs."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    same_a, same_b = [], []
    for identity in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == identity)
        combos = [(i, j) for n, i in enumerate(members) for j in members[n + 1:]]
        for k in rng.permutation(len(combos))[:per_identity]:
            same_a.append(combos[k][0])
            same_b.append(combos[k][1])
    diff_a, diff_b = [], []
    while len(diff_a) < len(same_a):
        i, j = rng.integers(0, len(labels), 2)
        if labels[i] != labels[j]:
            diff_a.append(i)
            diff_b.append(j)
    same = np.r_[np.ones(len(same_a), bool), np.zeros(len(diff_a), bool)]
    return Pairs(np.asarray(same_a + diff_a, int), np.asarray(same_b + diff_b, int), same)


def verification_metrics(embeddings: np.ndarray, pairs: Pairs) -> dict:
    """Best-threshold accuracy and ROC AUC of cosine distance on ``pairs`` (unit embeddings)."""
    from converters.evaluate.lfw import best_threshold, roc_auc

    distances = 1.0 - np.sum(embeddings[pairs.a] * embeddings[pairs.b], axis=1)
    threshold, accuracy = best_threshold(distances, pairs.same)
    return {"accuracy": accuracy, "auc": roc_auc(distances, pairs.same), "threshold": threshold,
            "pairs": int(len(pairs.same))}


def embed(model, inputs: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Unit embeddings of normalised inputs by a Keras model (inference mode)."""
    outs = [np.asarray(model(inputs[i:i + batch], training=False)) for i in range(0, len(inputs), batch)]
    raw = np.concatenate(outs) if outs else np.zeros((0, nns.EMBEDDING_DIM), np.float32)
    return unit_rows(raw)
