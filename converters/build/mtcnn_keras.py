"""P-Net, R-Net and O-Net rebuilt in Keras from the weights of PyPI ``mtcnn==1.0.0``.

Two builds of each net from one layer table:

- ``faithful``: Conv/Dense + PReLU exactly as the source (the float reference).
- ``int8``: every PReLU as 1×1 depthwise convolutions with fused ReLUs and an ADD (:mod:`converters.build.prelu`),
  every two-way softmax as a sigmoid (:func:`softmax_as_sigmoid`): int8 PRELU and SOFTMAX run outside XNNPACK and
  the EdgeTPU, these run in both, and no layer is computed twice. Built from :func:`equalised` weights (channel
  ranges evened out on calibration data), its outputs equal the faithful net's in float up to rounding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

from converters.build import prelu

NETS = ("pnet", "rnet", "onet")
VARIANTS = ("faithful", "int8")


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


def build(name: str, weights: list[np.ndarray], variant: str = "faithful", batch_size: Optional[int] = 1,
          input_hw: Optional[tuple[int, int]] = None):
    """A Keras functional model for ``name`` with the source weights; ``variant`` is 'faithful' or 'int8'.

    ``batch_size=None`` leaves the batch dynamic: R-Net and O-Net then run any number of crops in one invoke
    (their flatten reshapes to ``(-1, features)``, which the interpreter can resize without re-tracing shapes).
    ``input_hw`` fixes P-Net's input (height, width) (an EdgeTPU model has one static shape); R-Net and O-Net
    take only their own crop size.
    """
    import keras
    from keras import layers as L
    from keras import ops

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    spec = SPECS[name]
    input_shape = spec.input_shape
    if input_hw is not None:
        if spec.input_shape[0] is not None and tuple(input_hw) != spec.input_shape[:2]:
            raise ValueError(f"{name} takes {spec.input_shape[:2]} inputs only, got input_hw={tuple(input_hw)}")
        input_shape = (*input_hw, 3)
    queue = list(weights)
    inputs = keras.Input(input_shape, batch_size=batch_size, name="image")
    x = inputs

    def apply(layer, tensor, *params):
        out = layer(tensor)
        layer.set_weights(list(params))
        return out

    for layer in spec.body:
        if layer.kind == "conv":
            x = apply(L.Conv2D(layer.units, layer.kernel), x, queue.pop(0), queue.pop(0))
        elif layer.kind == "dense":
            x = apply(L.Dense(layer.units), x, queue.pop(0), queue.pop(0))
        elif layer.kind == "prelu":
            alpha = queue.pop(0).reshape(-1)
            if variant == "faithful":
                shared = [1, 2] if len(x.shape) == 4 else None
                x = apply(L.PReLU(shared_axes=shared), x, alpha if shared is None else alpha.reshape(1, 1, -1))
            else:
                x = prelu.apply(x, alpha)
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

    int8 SOFTMAX is not delegated to XNNPACK (one node, and a partition, outside it per net); LOGISTIC is, and
    is on the EdgeTPU's list too. Column i of the new head computes l_i - l_j directly from the weights.
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
    of the next linear layer (or of every head) by its inverse. The int8 tensors before and after a PReLU share one
    scale (MAXIMUM keeps its input's scale), so one channel with a wide range would coarsen all the others: gains
    that even the channel ranges out give every channel its share of the 256 levels.
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


def prelu_input_ranges(name: str, weights: list[np.ndarray], samples: np.ndarray, batch: int = 64) -> list:
    """Per PReLU of the faithful net: each channel's largest |input| over ``samples`` (normalised inputs)."""
    import keras

    model = build(name, weights, "faithful", batch_size=None)
    prelus = [layer for layer in model.layers if isinstance(layer, keras.layers.PReLU)]
    probe = keras.Model(model.input, [layer.input for layer in prelus])
    ranges = [np.zeros(int(layer.input.shape[-1])) for layer in prelus]
    for start in range(0, len(samples), batch):
        outs = probe(samples[start:start + batch], training=False)
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
