"""The training losses: cosine and relational distillation, and FaceNet's triplet loss with semi-hard mining.

The teacher (MobileFaceNet) is 192-D, so the student's 128-D embedding goes through a trainable linear head
(128 → 192, no bias) for the cosine loss; the head is dropped at export. A linear head alone would let the student's
own 128-D geometry drift from the teacher's (only the head's output is matched), and verification uses the
student's cosine, so a second term matches the batch's cosine-similarity matrix of student and teacher directly
(relational distillation, no head involved).

The training step (:func:`research.train_nns.make_train_step`) weighs them:
``distill · (1 - cos(head(s), t)) + relation · mean((S Sᵀ - T Tᵀ)²) + triplet · FaceNet triplet``, where the
triplet loss (margin 0.2 on squared distances of unit vectors) mines semi-hard negatives online in batches of
P identities × K faces: for each anchor-positive pair the closest negative that is farther than the positive
(FaceNet section 3.2), or the farthest negative when none is.
"""

from __future__ import annotations

NORM_EPSILON = 1e-12
SEMI_HARD_SENTINEL = 1e9  # "no candidate" distance inside the vectorised mining


def l2_normalise(x):
    import tensorflow as tf

    return x * tf.math.rsqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=-1, keepdims=True), NORM_EPSILON))


def semi_hard_triplet_loss(embeddings, labels, margin: float):
    """FaceNet's triplet loss with online semi-hard mining over every anchor-positive pair of the batch.

    ``embeddings`` are unit vectors; distances are squared euclidean. Returns (mean loss over anchor-positive
    pairs, fraction of those pairs with a non-zero loss).
    """
    import tensorflow as tf

    distances = tf.maximum(2.0 - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True), 0.0)
    same = tf.equal(labels[:, None], labels[None, :])
    positive_pairs = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
    d_ap = distances[:, :, None]  # (anchor, positive, 1)
    d_an = distances[:, None, :]  # (anchor, 1, negative)
    negative = tf.logical_not(same)[:, None, :]
    farther = tf.logical_and(negative, d_an > d_ap)
    closest_farther = tf.reduce_min(tf.where(farther, d_an, SEMI_HARD_SENTINEL), axis=2)
    farthest = tf.reduce_max(tf.where(negative, d_an, -SEMI_HARD_SENTINEL), axis=2)
    d_neg = tf.where(tf.reduce_any(farther, axis=2), closest_farther, farthest)
    losses = tf.maximum(distances - d_neg + margin, 0.0)
    mask = tf.cast(positive_pairs, tf.float32)
    pairs = tf.maximum(tf.reduce_sum(mask), 1.0)
    loss = tf.reduce_sum(losses * mask) / pairs
    active = tf.reduce_sum(tf.cast(losses > 0.0, tf.float32) * mask) / pairs
    return loss, active


def distillation_losses(student_unit, projected_unit, teacher_unit):
    """(cosine loss through the head, relational loss on the student's own similarity matrix)."""
    import tensorflow as tf

    cosine = tf.reduce_mean(1.0 - tf.reduce_sum(projected_unit * teacher_unit, axis=-1))
    student_sim = tf.matmul(student_unit, student_unit, transpose_b=True)
    teacher_sim = tf.matmul(teacher_unit, teacher_unit, transpose_b=True)
    relation = tf.reduce_mean(tf.square(student_sim - teacher_sim))
    return cosine, relation
