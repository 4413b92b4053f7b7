"""PReLU as elementwise ops that int8 XNNPACK and the EdgeTPU both run, with no second convolution.

int8 PRELU runs on TFLite's reference kernel, outside XNNPACK and the EdgeTPU. With per-channel slopes ``a``:

    prelu(x) = x + (a - 1)·min(x, 0)          (MINIMUM, MUL, ADD: delegated by XNNPACK, on the EdgeTPU's list)

exact for any ``a``. Its cost is two or three passes over the activation instead of the earlier rewrite's
duplicated layer (a convolution with twice the outputs).

The shorter ``max(x, a·x)`` (for a ≤ 1) measured worse in int8: MAXIMUM keeps one scale for its inputs and its
output, and the converter took the output's narrower range for the convolution before it, clipping its negative
side (O-Net face-probability error vs float 0.076, against 0.012 with this form). Here MINIMUM sees ``x`` whole, and
the ADD has an output scale of its own.
"""

from __future__ import annotations

import numpy as np


def reference(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """PReLU by its definition (channels last), to check the identity against."""
    return np.where(x >= 0, x, alpha * x)


def identity(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The elementwise identity :func:`apply` emits, in numpy (channels last)."""
    return x + (alpha - 1.0) * np.minimum(x, 0.0)


def apply(x, alpha: np.ndarray):
    """PReLU of the Keras tensor ``x`` (channels last) with per-channel slopes ``alpha``, as elementwise ops."""
    from keras import ops

    alpha = np.asarray(alpha, dtype=np.float32).reshape(-1)
    channels = int(x.shape[-1])
    if alpha.size != channels:
        raise ValueError(f"{alpha.size} PReLU slopes for a tensor of {channels} channels")
    return ops.add(x, ops.multiply(ops.minimum(x, np.float32(0.0)), alpha - np.float32(1.0)))


def equalising_gains(ranges: np.ndarray, strength: float, grid_steps: int = 4, dead: float = 1e-3,
                     max_gain: float = 2.0**6) -> np.ndarray:
    """Per-channel gains ≥ 1 that stretch each channel's range towards the largest (``strength`` 1: fully, 0.5:
    half-way in log space), on a 2^(1/grid_steps) grid so that float noise in the ranges cannot change the weights.
    Dead channels (range < ``dead`` × the largest) keep gain 1."""
    ranges = np.asarray(ranges, dtype=np.float64)
    target = ranges.max()
    raw = np.where(ranges > dead * target, (target / np.maximum(ranges, 1e-30)) ** strength, 1.0)
    return np.exp2(np.round(np.log2(np.clip(raw, 1.0, max_gain)) * grid_steps) / grid_steps)
