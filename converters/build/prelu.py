"""PReLU as elementwise ops that int8 XNNPACK and the EdgeTPU both run, with no layer computed twice.

int8 PRELU runs on TFLite's reference kernel, outside XNNPACK and the EdgeTPU. The shipped int8 MTCNN and
MobileFaceNet rewrite it as two ReLU branches of the layer before it, which computes that layer twice
(:mod:`mtcnn_keras`, :mod:`mobilefacenet_keras`). This module holds the forms that do not. For MTCNN's
``--prelu elementwise`` (:func:`mtcnn_keras.build_elementwise`), from the PReLU's input ``y`` (stored once) and its
per-channel slopes ``a``:

    pos = relu(y),  neg = relu(-|a|·y),  prelu(y) = pos + s·neg,  s = -1 where a ≥ 0, +1 where a < 0

exact for any ``a``: :func:`branches` makes ``pos`` and ``neg`` with 1×1 depthwise convs (per-channel int8 weights,
ReLUs fused), :func:`signed_sum` adds them with a third (weights ±1) and an ADD. pos and neg are never both
non-zero, so no rounding error is amplified by cancellation. Each depthwise conv costs C multiply-adds per pixel,
against the k·k·C_in of the convolution before. Stored in one int8 tensor for both signs, ``y`` is coarser than
the two-branch rewrite's branches; :mod:`converters.build.distill` fine-tunes the net for that.

:func:`apply` is an earlier form, ``a·x + relu(max(1 - a, 0)·x) - relu(max(a - 1, 0)·x)``, kept for
``python -m converters.build.mobilefacenet --compare`` (MobileFaceNet's int8-vs-float mean cosine 0.947 in that
form, against 0.994 for its shipped ReLU-branch rewrite).

Measured for MTCNN (issue 19; face-probability / box mean |int8 − float| on the held-out calibration samples,
P-Net / R-Net / O-Net; the shipped two-branch rewrite: 0.0079 / 0.0173 / 0.0097 and 0.0099 / 0.0094 / 0.0050;
recall of float's faces end to end, ``doorface-convert evaluate mtcnn``: 1,283-1,286 of 1,295 over four
calibrations):

- :func:`apply`'s form, equalised: 0.0109 / 0.0186 / 0.0125; 98.8% recall.
- ``x + relu(-(1-a)·x) [- relu(-(a-1)·x)]``, equalised: 0.0187 / 0.0153 / 0.0115. Where a < 0 (6 of P-Net's
  first 10 slopes, 121 of R-Net's last 128) this form and the one above add two large terms of opposite sign to
  make a small one, and their rounding errors add up.
- :func:`branches` + :func:`signed_sum`, post-training only: 0.0081 / 0.0171 / 0.0094 and 0.0115 / 0.0098 /
  0.0041; 1,278 faces. Fine-tuned: 0.0074-0.0076 / 0.0157-0.0161 / 0.0092-0.0102 and 0.0096 / 0.0093-0.0097 /
  0.0038-0.0039 over two trainings, 1,284 and 1,279 faces, landmarks better than shipped (mean 1.31-1.33% of the
  box against 1.37%). MACs 1.06 / 1.04 / 1.02× float (``bench.macs``), against 3.36 / 2.84 / 2.70×.
- The same, on a second machine (2026-12-07; the shipped models evaluated there: 1,284 faces): batch-order
  seeds 0 / 1 / 2 gave 0.0076 / 0.0075 / 0.0074, 0.0139 / 0.0155 / 0.0138, 0.0103 / 0.0097 / 0.0087 held-out
  face-probability error and 1,280 / 1,275 / 1,283 faces; one net at a time in the shipped cascade (seed 0):
  P-Net 1,283, R-Net 1,286, O-Net 1,281 (P- and R-Net together 1,281). Keeping, per net, the best of eight seeds
  on the held-out samples: 1,277. Face-probability loss weighted 10×: 1,278 (three epochs), 1,277 (six, though its
  held-out errors fell to 0.0075 / 0.0125 / 0.0089). So the held-out errors, equal to or below the shipped form's,
  do not predict the end-to-end count: it moves by threshold flips of faces that float scores near 0.7 (25-36
  images disagree with float, against 19 for the shipped form), and over eight trainings it stays at 1,275-1,284
  against 1,283-1,286. Hand-boxed recall 41-42 of 43 in every run (shipped: 41).

Measured and left: MAXIMUM / MINIMUM forms (``max(x, a·x)``, ``x + (a-1)·min(x, 0)``) and a separate RELU are not
delegated in int8 (one XNNPACK partition per PReLU), and MAXIMUM's shared input/output scale clipped the
convolution before it (O-Net face-probability error vs float 0.076).
"""

from __future__ import annotations

import numpy as np


def reference(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """PReLU by its definition (channels last), to check the identity against."""
    return np.where(x >= 0, x, alpha * x)


def signs(alpha: np.ndarray) -> np.ndarray:
    """s of ``prelu(y) = relu(y) + s·relu(-|a|·y)``: -1 where a ≥ 0, +1 where a < 0."""
    return np.where(np.asarray(alpha) >= 0, -1.0, 1.0)


def signed_identity(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """What :func:`branches` and :func:`signed_sum` compute, in numpy (channels last)."""
    return np.maximum(x, 0.0) + signs(alpha) * np.maximum(-np.abs(alpha) * x, 0.0)


def _depthwise(image, weights: np.ndarray, layers, activation=None):
    """A frozen 1×1 depthwise conv with per-channel ``weights`` over a 4-D Keras tensor; its output is stored."""
    layer = layers.depthwise(1, use_bias=False, activation=activation)
    out = layer(image)
    layer.set_weights([np.asarray(weights, np.float32).reshape(1, 1, -1, 1)])
    layer.trainable = False
    return layers.stored(out)


def _as_image(x):
    """(x as a 4-D tensor, a function that gives a 4-D result x's own rank back): dense outputs are (n, C)."""
    from keras import ops

    channels = int(x.shape[-1])
    if len(x.shape) == 2:
        return ops.reshape(x, (-1, 1, 1, channels)), lambda t: ops.reshape(t, (-1, channels))
    return x, lambda t: t


def branches(x, alpha: np.ndarray, layers=None):
    """``(relu(x), relu(-|a|·x))`` of the Keras tensor ``x`` (channels last, 2-D or 4-D), each in x's rank.

    ``layers`` is a :class:`converters.build.distill.Layers` factory (plain Keras layers when None).
    """
    from converters.build import distill

    layers = layers or distill.PLAIN
    alpha = _slopes(x, alpha)
    image, back = _as_image(x)
    pos = _depthwise(image, np.ones_like(alpha), layers, "relu")
    neg = _depthwise(image, -np.abs(alpha), layers, "relu")
    return back(pos), back(neg)


def signed_sum(pos, neg, alpha: np.ndarray, layers=None):
    """``pos + s·neg``: the PReLU output from :func:`branches`."""
    from keras import ops

    from converters.build import distill

    layers = layers or distill.PLAIN
    alpha = _slopes(pos, alpha)
    image, back = _as_image(neg)
    signed = back(_depthwise(image, signs(alpha), layers))
    return layers.stored(ops.add(pos, signed))


def _slopes(x, alpha: np.ndarray) -> np.ndarray:
    alpha = np.asarray(alpha, dtype=np.float32).reshape(-1)
    if alpha.size != int(x.shape[-1]):
        raise ValueError(f"{alpha.size} PReLU slopes for a tensor of {int(x.shape[-1])} channels")
    return alpha


def identity(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The identity :func:`apply` emits, in numpy (channels last)."""
    below, above = np.maximum(1.0 - alpha, 0.0), np.maximum(alpha - 1.0, 0.0)
    return alpha * x + np.maximum(below * x, 0.0) - np.maximum(above * x, 0.0)


def apply(x, alpha: np.ndarray):
    """PReLU of the Keras tensor ``x`` (channels last, 2-D or 4-D) in the earlier form (see the module docstring)."""
    from keras import ops

    from converters.build import distill

    alpha = _slopes(x, alpha)
    image, back = _as_image(x)
    out = ops.add(_depthwise(image, alpha, distill.PLAIN),
                  _depthwise(image, np.maximum(1.0 - alpha, 0.0), distill.PLAIN, "relu"))
    if np.any(alpha > 1.0):
        out = ops.subtract(out, _depthwise(image, np.maximum(alpha - 1.0, 0.0), distill.PLAIN, "relu"))
    return back(out)


def equalising_gains(ranges: np.ndarray, strength: float, grid_steps: int = 4, dead: float = 1e-3,
                     max_gain: float = 2.0**6) -> np.ndarray:
    """Per-channel gains ≥ 1 that stretch each channel's range towards the largest (``strength`` 1: fully, 0.5:
    half-way in log space), on a 2^(1/grid_steps) grid so that float noise in the ranges cannot change the weights.
    Dead channels (range < ``dead`` × the largest) keep gain 1."""
    ranges = np.asarray(ranges, dtype=np.float64)
    target = ranges.max()
    raw = np.where(ranges > dead * target, (target / np.maximum(ranges, 1e-30)) ** strength, 1.0)
    return np.exp2(np.round(np.log2(np.clip(raw, 1.0, max_gain)) * grid_steps) / grid_steps)
