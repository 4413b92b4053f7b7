"""PReLU as ops that int8 XNNPACK and the EdgeTPU both run, with no layer computed twice.

int8 PRELU runs on TFLite's reference kernel, outside XNNPACK and the EdgeTPU. With per-channel slopes ``a``:

    prelu(x) = a·x + relu(max(1 - a, 0)·x) - relu(max(a - 1, 0)·x)

exact for any ``a`` (the last term only where some a > 1). Each product is a 1×1 depthwise
convolution (per-channel int8 weights, so every slope keeps its own precision), the ReLUs are fused into them, and
one ADD (and one SUB) sums them: DEPTHWISE_CONV_2D, ADD and SUB, all delegated to XNNPACK (0 nodes outside it,
measured with ``bench.delegation``) and on the EdgeTPU's list. They cost C multiply-adds per pixel each, against
the k·k·C_in of the convolution before; the earlier rewrite computed that convolution twice.

Not shipped, because int8 accuracy drops where each PReLU output is stored in int8 (the ReLU-branch rewrites of
:mod:`mtcnn_keras` and :mod:`mobilefacenet_keras` never store it): the int8 MTCNN built this way recalled 98.8% of
float MTCNN's faces against 99.3%, and MobileFaceNet's int8-vs-float mean cosine was 0.947 against 0.994
(``python -m converters.build.mobilefacenet --compare`` still builds it). Kept for that comparison.

Also measured (issue 19, face-probability mean |int8 − float| on the held-out samples, P-Net / R-Net / O-Net;
shipped rewrite 0.0078 / 0.0175 / 0.0090): ``x + relu(-(1-a)·x) [- relu(-(a-1)·x)]``, one branch fewer and
equalised, 0.0187 / 0.0153 / 0.0115; four epochs of quantization-aware distillation of it towards the float net
(fake-quantized weights and stored tensors, R-Net) lowered the simulated error (0.0195 → 0.0167) but not the
converted model's (0.0153 → 0.0163).

Measured and left: MAXIMUM / MINIMUM forms (``max(x, a·x)``, ``x + (a-1)·min(x, 0)``) and a separate RELU are not
delegated in int8 (one XNNPACK partition per PReLU), and MAXIMUM's shared input/output scale clipped the
convolution before it (O-Net face-probability error vs float 0.076).
"""

from __future__ import annotations

import numpy as np


def reference(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """PReLU by its definition (channels last), to check the identity against."""
    return np.where(x >= 0, x, alpha * x)


def identity(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The identity :func:`apply` emits, in numpy (channels last)."""
    below, above = np.maximum(1.0 - alpha, 0.0), np.maximum(alpha - 1.0, 0.0)
    return alpha * x + np.maximum(below * x, 0.0) - np.maximum(above * x, 0.0)


def apply(x, alpha: np.ndarray):
    """PReLU of the Keras tensor ``x`` (channels last, 2-D or 4-D) with per-channel slopes ``alpha``."""
    from keras import layers as L
    from keras import ops

    alpha = np.asarray(alpha, dtype=np.float32).reshape(-1)
    channels = int(x.shape[-1])
    if alpha.size != channels:
        raise ValueError(f"{alpha.size} PReLU slopes for a tensor of {channels} channels")
    flat = len(x.shape) == 2
    image = ops.reshape(x, (-1, 1, 1, channels)) if flat else x

    def scaled(weights: np.ndarray, activation=None):
        layer = L.DepthwiseConv2D(1, use_bias=False, activation=activation)
        out = layer(image)
        layer.set_weights([weights.reshape(1, 1, channels, 1).astype(np.float32)])
        return out

    out = ops.add(scaled(alpha), scaled(np.maximum(1.0 - alpha, 0.0), "relu"))
    if np.any(alpha > 1.0):
        out = ops.subtract(out, scaled(np.maximum(alpha - 1.0, 0.0), "relu"))
    return ops.reshape(out, (-1, channels)) if flat else out


def equalising_gains(ranges: np.ndarray, strength: float, grid_steps: int = 4, dead: float = 1e-3,
                     max_gain: float = 2.0**6) -> np.ndarray:
    """Per-channel gains ≥ 1 that stretch each channel's range towards the largest (``strength`` 1: fully, 0.5:
    half-way in log space), on a 2^(1/grid_steps) grid so that float noise in the ranges cannot change the weights.
    Dead channels (range < ``dead`` × the largest) keep gain 1."""
    ranges = np.asarray(ranges, dtype=np.float64)
    target = ranges.max()
    raw = np.where(ranges > dead * target, (target / np.maximum(ranges, 1e-30)) ** strength, 1.0)
    return np.exp2(np.round(np.log2(np.clip(raw, 1.0, max_gain)) * grid_steps) / grid_steps)
