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

:func:`build_elementwise` is the other int8 form (``doorface-convert mtcnn --prelu elementwise``): every PReLU as
``relu(y) + s·relu(-|a|·y)`` in 1×1 depthwise convs and an ADD (:mod:`converters.build.prelu`), the heads reading
the last PReLU's two branches as two linear layers summed, no layer computed twice (MACs 1.02-1.06× float against
2.7-3.4×). It stores each PReLU's input in one int8 tensor for both signs, so it is converted from
:func:`equalised` and fine-tuned weights (:mod:`converters.build.distill`) and still agrees a little less with
float (docs/models.md).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

from converters.build import distill, prelu

NETS = ("pnet", "rnet", "onet")
# TFLite's int8 LOGISTIC output has a fixed scale of 1/256 from 0, whatever calibration sees.
SIGMOID_OUTPUT_RANGE = (0.0, 255.0 / 256.0)


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
    queue = list(weights)
    inputs = _input(name, batch_size, input_hw)
    x = inputs
    pending_mix = None  # a 2C→C mix waiting to be folded into the next linear layer
    flat_positions = 0
    body = list(spec.body)

    def emit_mix(tensor):
        channels = pending_mix.shape[1]
        return _with_weights(L.Conv2D(channels, 1, use_bias=False), tensor, pending_mix[None, None])

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
                x = _with_weights(L.Conv2D(units, layer.kernel, activation=activation), x, weight, bias)
            else:
                x = _with_weights(L.Dense(units, activation=activation), x, weight, bias)
        elif layer.kind == "prelu":
            if variant == "faithful":
                alpha = queue.pop(0)
                shared = [1, 2] if len(x.shape) == 4 else None
                x = _with_weights(L.PReLU(shared_axes=shared), x,
                                  alpha.reshape(tuple(x.shape[1:]) if shared is None else (1, 1, -1)))
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
        outputs[head.name] = _with_weights(layer, x, weight, bias)
    if queue:
        raise ValueError(f"{name}: {len(queue)} source weight arrays left unused; the layer table is wrong")
    return keras.Model(inputs, [outputs[n] for n in spec.output_order], name=f"{name}_{variant}")


def _with_weights(layer, tensor, *params):
    """``layer`` called on ``tensor`` (which builds it), then given ``params`` as its weights."""
    out = layer(tensor)
    layer.set_weights(list(params))
    return out


def _input(name: str, batch_size: Optional[int], input_hw: Optional[tuple[int, int]]):
    """The image input of ``name``: its own crop size, or P-Net's any size unless ``input_hw`` fixes it."""
    import keras

    spec = SPECS[name]
    input_shape = spec.input_shape
    if input_hw is not None:
        if spec.input_shape[0] is not None and tuple(input_hw) != spec.input_shape[:2]:
            raise ValueError(f"{name} takes {spec.input_shape[:2]} inputs only, got input_hw={tuple(input_hw)}")
        input_shape = (*input_hw, 3)
    return keras.Input(input_shape, batch_size=batch_size, name="image")


def build_elementwise(name: str, weights: list[np.ndarray], batch_size: Optional[int] = 1,
                      input_hw: Optional[tuple[int, int]] = None, layers: Optional[distill.Layers] = None):
    """The elementwise-PReLU int8 form of ``name`` (module docstring), with ``weights`` in the source's layout.

    ``batch_size`` and ``input_hw`` as for :func:`build`. ``layers`` makes the linear layers and marks the tensors
    TFLite stores in int8 (:class:`distill.QuantLayers` simulates int8 for fine-tuning); plain Keras layers when
    None. The model's weights (``get_weights``) do not depend on the batch or input size.
    """
    import keras
    from keras import layers as L
    from keras import ops

    layers = layers or distill.PLAIN
    spec = SPECS[name]
    queue = list(weights)
    inputs = _input(name, batch_size, input_hw)
    x = inputs
    last_prelu = max(i for i, layer in enumerate(spec.body) if layer.kind == "prelu")
    head_branches = None  # (pos, neg, s) of the last PReLU, for the heads to read

    for i, layer in enumerate(spec.body):
        if layer.kind == "conv":
            x = layers.stored(_with_weights(layers.conv2d(layer.units, layer.kernel), x, queue.pop(0), queue.pop(0)))
        elif layer.kind == "dense":
            x = layers.stored(_with_weights(layers.dense(layer.units), x, queue.pop(0), queue.pop(0)))
        elif layer.kind == "prelu":
            alpha = queue.pop(0).reshape(-1)
            if i == last_prelu:
                head_branches = (*prelu.branches(x, alpha, layers), prelu.signs(alpha))
            else:
                x = prelu.signed_sum(*prelu.branches(x, alpha, layers), alpha, layers)
        elif layer.kind == "pool":
            x = L.MaxPooling2D(layer.kernel, layer.stride, padding=layer.padding)(x)
        elif layer.kind == "permute_flatten":
            # The source weights come from Caffe, whose flatten runs over (w, h, c): transpose before flattening.
            features = int(x.shape[1]) * int(x.shape[2]) * int(x.shape[3])
            x = ops.reshape(L.Permute((2, 1, 3))(x), (-1, features))
        else:
            raise ValueError(f"unknown layer kind {layer.kind}")

    outputs = {}
    for head in spec.heads:
        weight, bias = queue.pop(0), queue.pop(0)
        activation = head.activation
        if activation == "softmax":
            weight, bias, activation = softmax_as_sigmoid(weight, bias)
        conv = weight.ndim == 4

        def linear(units=head.units, conv=conv, **kwargs):
            return layers.conv2d(units, 1, **kwargs) if conv else layers.dense(units, **kwargs)

        pos, neg, sign = head_branches
        # W·prelu(y) = W·pos + (W·diag(s))·neg: the input rows of the neg layer carry the signs.
        signed = weight * (sign.reshape(1, 1, -1, 1) if conv else sign.reshape(-1, 1))
        from_pos = layers.stored(_with_weights(linear(), pos, weight, bias))
        from_neg = layers.stored(_with_weights(linear(use_bias=False), neg, signed.astype(np.float32)))
        logits = layers.stored(ops.add(from_pos, from_neg))
        outputs[head.name] = logits if activation is None else \
            layers.stored(L.Activation(activation, name=head.name)(logits), SIGMOID_OUTPUT_RANGE)
    if queue:
        raise ValueError(f"{name}: {len(queue)} source weight arrays left unused; the layer table is wrong")
    return keras.Model(inputs, [outputs[n] for n in spec.output_order], name=f"{name}_elementwise")


def softmax_as_sigmoid(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """A two-way softmax head as a sigmoid head with the same outputs: softmax(l)_i = sigmoid(l_i - l_j).

    int8 SOFTMAX is not delegated to XNNPACK (one node, and a partition, outside it per net); LOGISTIC is, and is
    on the EdgeTPU's list too. Column i of the new head computes l_i - l_j directly from the weights.
    """
    if weight.shape[-1] != 2:
        raise ValueError(f"only a two-way softmax becomes a sigmoid, this head has {weight.shape[-1]} outputs")
    swap = weight[..., ::-1]
    return (weight - swap).astype(np.float32), (bias - bias[::-1]).astype(np.float32), "sigmoid"


def _weight_slots(name: str) -> list[tuple[str, int]]:
    """(kind, index into the source weight list) of every conv/dense, PReLU and head, in layer order."""
    slots, index = [], 0
    for layer in SPECS[name].body:
        if layer.kind in ("conv", "dense"):
            slots.append((layer.kind, index))
            index += 2
        elif layer.kind == "prelu":
            slots.append(("prelu", index))
            index += 1
    slots.extend(("head", index + 2 * i) for i in range(len(SPECS[name].heads)))
    return slots


def equalised(name: str, weights: list[np.ndarray], gains: list[np.ndarray]) -> list[np.ndarray]:
    """The same function with each PReLU's channels scaled by ``gains`` (one array per PReLU, all > 0).

    PReLU is positively homogeneous (prelu(g·y) = g·prelu(y)) and max-pool commutes with a positive per-channel
    scale, so channel c of the layer before PReLU k is multiplied by ``gains[k][c]`` and the matching input rows
    of the next linear layer (or of every head) by its inverse. A PReLU's input is one int8 tensor with one scale
    for all its channels, so one channel with a wide range would coarsen all the others: gains that even the
    channel ranges out give every channel its share of the 256 levels.
    """
    out = [np.array(w, dtype=np.float32, copy=True) for w in weights]
    slots = _weight_slots(name)
    prelus = [i for i, (kind, _) in enumerate(slots) if kind == "prelu"]
    if len(gains) != len(prelus):
        raise ValueError(f"{name} has {len(prelus)} PReLUs, got {len(gains)} gain arrays")
    for position, gain in zip(prelus, gains):
        gain = np.asarray(gain, dtype=np.float32).reshape(-1)
        if np.any(gain <= 0):
            raise ValueError(f"{name}: equalisation gains must be positive")
        kind, producer = slots[position - 1]
        out[producer] = out[producer] * gain  # output channels are the last axis of both HWIO and (in, out)
        out[producer + 1] = out[producer + 1] * gain
        following = slots[position + 1:]
        consumers = [following[0][1]] if following[0][0] != "head" else [i for k, i in following if k == "head"]
        for consumer in consumers:
            weight = out[consumer]
            if weight.ndim == 4:  # HWIO: input channels on axis 2
                out[consumer] = weight / gain.reshape(1, 1, -1, 1)
            else:  # (features, units); after a flatten the channel is the fastest-varying feature index
                out[consumer] = weight / np.tile(gain, weight.shape[0] // len(gain))[:, None]
    return out


def prelu_input_ranges(name: str, weights: list[np.ndarray], samples: list[np.ndarray]) -> list:
    """Per PReLU of the faithful net: each channel's largest |input| over ``samples`` (normalised batches)."""
    import keras

    model = build(name, weights, "faithful", batch_size=None)
    prelus = [layer for layer in model.layers if isinstance(layer, keras.layers.PReLU)]
    probe = keras.Model(model.input, [layer.input for layer in prelus])
    ranges = [np.zeros(int(layer.input.shape[-1])) for layer in prelus]
    for sample in samples:
        outs = probe(sample, training=False)
        for k, y in enumerate(outs if isinstance(outs, (list, tuple)) else [outs]):
            y = np.abs(np.asarray(y)).reshape(-1, len(ranges[k]))
            ranges[k] = np.maximum(ranges[k], y.max(axis=0))
    return ranges


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
