"""P-Net, R-Net and O-Net rebuilt in Keras from the weights of PyPI ``mtcnn==1.0.0``.

Two builds of each net from one layer table:

- ``faithful``: Conv/Dense + PReLU exactly as the source (the float reference).
- ``int8``: every PReLU rewritten with ReLU and convolutions only. int8 PReLU runs on TFLite's reference
  kernels and outside XNNPACK (int8 P-Net measured 2× slower than float), so it is replaced by the identity

      prelu(y) = relu(y) + s · relu(-|a| · y),   s = -1 where a >= 0, +1 where a < 0

  The layer before it gets 2C outputs ``[W, -|a|W]`` with a fused ReLU, and a linear 2C → C "mix" with weights
  ``[I; diag(s)]`` recombines them. The mix is folded exactly into the next Conv/Dense (through Permute and
  Flatten too); only before a max-pool, which does not commute with a non-monotonic PReLU, does it stay as a
  1×1 convolution. Every two-way softmax becomes a sigmoid (:func:`softmax_as_sigmoid`). Outputs equal the
  faithful net's in float up to rounding, and every op is int8/XNNPACK- and EdgeTPU-friendly (CONV_2D,
  FULLY_CONNECTED, MAX_POOL_2D, RESHAPE/TRANSPOSE, LOGISTIC): 0 nodes outside the XNNPACK delegate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

NETS = ("pnet", "rnet", "onet")


@dataclass(frozen=True)
class Layer:
    kind: str  # conv | dense | prelu | pool | permute_flatten
    units: int = 0
    kernel: int = 0
    stride: int = 1
    padding: str = "valid"


@dataclass(frozen=True)
class Head:
    name: str
    units: int
    activation: Optional[str]


@dataclass(frozen=True)
class NetSpec:
    name: str
    input_shape: tuple  # (h, w, 3); None for any
    body: tuple
    heads: tuple  # in the order of the source weight list
    output_order: tuple  # head names in the order the model returns them


def _conv(units, kernel):
    return Layer("conv", units, kernel)


PRELU = Layer("prelu")

SPECS = {
    "pnet": NetSpec(
        "pnet",
        (None, None, 3),
        (_conv(10, 3), PRELU, Layer("pool", kernel=2, stride=2, padding="same"),
         _conv(16, 3), PRELU, _conv(32, 3), PRELU),
        (Head("box_offsets", 4, None), Head("face_prob", 2, "softmax")),
        ("face_prob", "box_offsets"),
    ),
    "rnet": NetSpec(
        "rnet",
        (24, 24, 3),
        (_conv(28, 3), PRELU, Layer("pool", kernel=3, stride=2, padding="same"),
         _conv(48, 3), PRELU, Layer("pool", kernel=3, stride=2, padding="valid"),
         _conv(64, 2), PRELU, Layer("permute_flatten"), Layer("dense", 128), PRELU),
        (Head("box_offsets", 4, None), Head("face_prob", 2, "softmax")),
        ("face_prob", "box_offsets"),
    ),
    "onet": NetSpec(
        "onet",
        (48, 48, 3),
        (_conv(32, 3), PRELU, Layer("pool", kernel=3, stride=2, padding="same"),
         _conv(64, 3), PRELU, Layer("pool", kernel=3, stride=2, padding="valid"),
         _conv(64, 3), PRELU, Layer("pool", kernel=2, stride=2, padding="same"),
         _conv(128, 2), PRELU, Layer("permute_flatten"), Layer("dense", 256), PRELU),
        (Head("box_offsets", 4, None), Head("landmarks", 10, None), Head("face_prob", 2, "softmax")),
        ("face_prob", "box_offsets", "landmarks"),
    ),
}


def load_source_weights(path) -> list[np.ndarray]:
    """The joblib+lz4 weight list of one net, as float32 arrays."""
    import joblib

    with open(path, "rb") as fh:
        weights = joblib.load(io.BytesIO(fh.read()))
    return [np.asarray(w, dtype=np.float32) for w in weights]


def split_prelu(weight: np.ndarray, bias: np.ndarray, alpha: np.ndarray):
    """(W, b) of a layer followed by PReLU(alpha) → (W2, b2) with 2C outputs for a fused ReLU, and the 2C×C mix."""
    alpha = alpha.reshape(-1)
    magnitude = np.abs(alpha)
    sign = np.where(alpha >= 0, -1.0, 1.0)
    w2 = np.concatenate([weight, -magnitude * weight], axis=-1)
    b2 = np.concatenate([bias, -magnitude * bias])
    mix = np.concatenate([np.eye(len(alpha)), np.diag(sign)], axis=0)
    return w2.astype(np.float32), b2.astype(np.float32), mix.astype(np.float32)


def fold_mix(mix: np.ndarray, weight: np.ndarray, flattened_positions: int = 0) -> np.ndarray:
    """Compose a pending 2C→C mix into the next layer's weight (conv HWIO, dense IO, or dense after flatten)."""
    if weight.ndim == 4:
        return np.einsum("kc,hwcn->hwkn", mix, weight).astype(np.float32)
    if flattened_positions:
        per_position = weight.reshape(flattened_positions, mix.shape[1], -1)
        return np.einsum("kc,pcn->pkn", mix, per_position).reshape(-1, weight.shape[-1]).astype(np.float32)
    return (mix @ weight).astype(np.float32)


def build(name: str, weights: list[np.ndarray], variant: str = "faithful", batch_size: Optional[int] = 1,
          input_hw: Optional[tuple[int, int]] = None):
    """A Keras functional model for ``name`` with the source weights; ``variant`` is 'faithful' or 'int8'.

    ``batch_size=None`` leaves the batch dynamic: R-Net and O-Net then run any number of crops in one invoke
    (their flatten reshapes to ``(-1, features)``, which the interpreter resizes without re-tracing shapes).
    ``input_hw`` fixes P-Net's input (height, width) (an EdgeTPU model has one static shape); R-Net and O-Net
    take only their own crop size.
    """
    import keras
    from keras import layers as L
    from keras import ops

    if variant not in ("faithful", "int8"):
        raise ValueError(f"variant must be 'faithful' or 'int8', got {variant!r}")
    spec = SPECS[name]
    input_shape = spec.input_shape
    if input_hw is not None:
        if spec.input_shape[0] is not None and tuple(input_hw) != spec.input_shape[:2]:
            raise ValueError(f"{name} takes {spec.input_shape[:2]} inputs only, got input_hw={tuple(input_hw)}")
        input_shape = (*input_hw, 3)
    queue = list(weights)
    inputs = keras.Input(input_shape, batch_size=batch_size, name="image")
    x = inputs
    pending_mix = None  # a 2C→C mix waiting to be folded into the next linear layer
    flat_positions = 0
    body = list(spec.body)

    def apply(layer, tensor, *params):
        out = layer(tensor)
        layer.set_weights(list(params))
        return out

    def emit_mix(tensor):
        channels = pending_mix.shape[1]
        return apply(L.Conv2D(channels, 1, use_bias=False), tensor, pending_mix[None, None])

    for i, layer in enumerate(body):
        followed_by_prelu = i + 1 < len(body) and body[i + 1].kind == "prelu"
        if layer.kind in ("conv", "dense"):
            weight, bias = queue.pop(0), queue.pop(0)
            if pending_mix is not None:
                weight = fold_mix(pending_mix, weight, flat_positions)
                pending_mix = None
            flat_positions = 0
            if variant == "int8" and followed_by_prelu:
                alpha = queue.pop(0)
                weight, bias, pending_mix = split_prelu(weight, bias, alpha)
                units, activation = 2 * layer.units, "relu"
            else:
                units, activation = layer.units, None
            if layer.kind == "conv":
                x = apply(L.Conv2D(units, layer.kernel, activation=activation), x, weight, bias)
            else:
                x = apply(L.Dense(units, activation=activation), x, weight, bias)
        elif layer.kind == "prelu":
            if variant == "faithful":
                alpha = queue.pop(0)
                shared = [1, 2] if len(x.shape) == 4 else None
                x = apply(L.PReLU(shared_axes=shared), x, alpha.reshape(tuple(x.shape[1:]) if shared is None
                                                                          else (1, 1, -1)))
        elif layer.kind == "pool":
            if pending_mix is not None:
                x = emit_mix(x)
                pending_mix = None
            x = L.MaxPooling2D(layer.kernel, layer.stride, padding=layer.padding)(x)
        elif layer.kind == "permute_flatten":
            # The source weights come from Caffe, whose flatten runs over (w, h, c): transpose before flattening.
            flat_positions = int(x.shape[1]) * int(x.shape[2])
            x = ops.reshape(L.Permute((2, 1, 3))(x), (-1, flat_positions * int(x.shape[3])))
        else:
            raise ValueError(f"unknown layer kind {layer.kind}")

    outputs = {}
    for head in spec.heads:
        weight, bias = queue.pop(0), queue.pop(0)
        if pending_mix is not None:
            weight = fold_mix(pending_mix, weight)
        activation = head.activation
        if variant == "int8" and activation == "softmax":
            weight, bias, activation = softmax_as_sigmoid(weight, bias)
        layer = L.Conv2D(head.units, 1, activation=activation, name=head.name) if weight.ndim == 4 else \
            L.Dense(head.units, activation=activation, name=head.name)
        outputs[head.name] = apply(layer, x, weight, bias)
    if queue:
        raise ValueError(f"{name}: {len(queue)} source weight arrays left unused; the layer table is wrong")
    return keras.Model(inputs, [outputs[n] for n in spec.output_order], name=f"{name}_{variant}")


def softmax_as_sigmoid(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A two-way softmax head as a sigmoid head with the same outputs: softmax(l)_i = sigmoid(l_i - l_j).

    int8 SOFTMAX is not delegated to XNNPACK (one node, and a partition, outside it per net); LOGISTIC is, and is
    on the EdgeTPU's list too. Column i of the new head computes l_i - l_j directly from the weights.
    """
    if weight.shape[-1] != 2:
        raise ValueError(f"only a two-way softmax becomes a sigmoid, this head has {weight.shape[-1]} outputs")
    swap = weight[..., ::-1]
    return (weight - swap).astype(np.float32), (bias - bias[::-1]).astype(np.float32), "sigmoid"


def source_reference(name: str, weights: list[np.ndarray], package_dir):
    """The source package's own Keras model (imported from the verified, extracted wheel)."""
    import importlib
    import sys

    if str(package_dir) not in sys.path:
        sys.path.insert(0, str(package_dir))
    module = importlib.import_module(f"mtcnn.network.{name}")
    model = getattr(module, name[0].upper() + "Net")()
    model.build()
    model.set_weights(weights)
    return model
