"""FaceNet's small Inception embedders, NNS1 ("mini Inception") and NNS2 ("tiny Inception"), in Keras.

Schroff et al. 2015 (FaceNet, table 3 and section 5) list NNS1 at 165×165, 26M params, ~220M FLOPs and NNS2 at
140×116, 4.3M params, ~20M FLOPs, without their layer tables. These are our own Inception-style nets sized to those
budgets:

- stem: 3×3/2 convolution and 3×3/2 max pool (the full-resolution layers are where a tiny budget goes);
- Inception modules: a 1×1 branch; 1×1 reduction → 3×3; 1×1 reduction → 3×3 → 3×3 (the "5×5 as two 3×3" of
  Inception v2); 3×3 max pool → 1×1 projection; concatenated. Reduction modules (FaceNet's 3c/4e) use stride 2 in
  the two 3×3 branches and a 3×3/2 max pool passed through, with no 1×1 branch;
- head: a global depthwise convolution (MobileFaceNet's GDConv: a learned weighting of positions, which on an
  aligned face are facial regions) → flatten → dense 128, linear. The host L2-normalises (an in-model
  normalisation would leave a float island in the int8 graph, see :mod:`edge.embedder`). ``nns2fc``, an NNS2-class
  variant, has FaceNet's fully connected head instead: dense 128 over the flattened last map (see ``HEADS``).

NNS1 uses full 3×3 convolutions. NNS2's budget (≤ 12.5M multiply-adds, see below) leaves a full 3×3 convolution
room for only a few channels, so its 3×3 branches are depthwise-separable (depthwise 3×3 → 1×1), which buys about
8× the width for the same MACs, as in MobileNet; both ops are int8 and EdgeTPU native.

Every convolution is conv (no bias) → batch norm → ReLU6. The converter folds batch norm into the convolution's
weights and bias and fuses ReLU6, so the int8 graph holds only CONV_2D, DEPTHWISE_CONV_2D, MAX_POOL_2D,
CONCATENATION, RESHAPE and FULLY_CONNECTED. ReLU6 rather than ReLU: its bounded range gives int8 activation scales
that no outlier can stretch.

FLOPs. FaceNet counts one multiply-add as one FLOP (its NN2, GoogLeNet-style at 224×224, is listed at 1.6B FLOPs,
GoogLeNet's multiply-add count). :func:`count_flops` returns FLOPs = 2 × MACs, the stricter modern convention, and
the builders keep *that* within the issue's budgets (NNS2 ≤ 25M, NNS1 ≤ 250M), so they also meet the paper's.

Input layout (h × w): NNS1 165 × 165, NNS2 140 × 116 (faces are taller than wide; the paper writes 140×116). Pixels:
RGB, ``(pixel - 127.5) / 128``, like MobileFaceNet. Alignment: the ArcFace 112×112 five-point template scaled by
``w / 112`` and centred vertically, so a taller chip gains forehead and chin above and below the same face box the
teacher (MobileFaceNet) sees.

    python -m research.nns        # prints params, MACs and FLOPs of both nets at full width
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np

from converters.build.mobilefacenet import ARCFACE_112_TEMPLATE

ARCFACE_SIZE = 112
EMBEDDING_DIM = 128
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
CHANNELS = "RGB"

NNS1_INPUT = (165, 165, 3)  # (h, w, c)
NNS2_INPUT = (140, 116, 3)
NNS1_MAX_FLOPS = 250_000_000
NNS2_MAX_FLOPS = 25_000_000

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
POOL_SIZE = 3
DOWN_STRIDE = 2
RELU_CAP = 6.0
MIN_CHANNELS = 4  # a width multiplier never shrinks a layer below this
# How the last feature map becomes the embedding: "gdconv" = global depthwise conv → dense (few weights, see
# _global_depthwise); "flatten" = one dense layer over the whole flattened map, FaceNet/DeepFace's fully connected
# head: a weight per position, channel and output, so it buys parameters (capacity) at one MAC each.
HEADS = ("gdconv", "flatten")

# Layer types an NNS model may hold: all map to int8 TFLite ops the EdgeTPU runs (BN folds into the convs).
ALLOWED_LAYERS = frozenset({
    "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Concatenate",
    "Flatten", "Dense", "Dropout",
})


@dataclass(frozen=True)
class Inception:
    """One Inception module's branch widths (0 = branch absent). ``stride`` 2 makes it a reduction module."""

    b1: int  # 1×1 branch
    r3: int  # 1×1 reduction before the 3×3
    c3: int  # 3×3 branch output
    r5: int  # 1×1 reduction before the two 3×3 ("5×5")
    c5: int  # "5×5" branch output
    pool: int  # 1×1 projection after the 3×3 max pool; 0 in a reduction module (pool passes through)
    stride: int = 1


@dataclass(frozen=True)
class Architecture:
    name: str
    key: str  # the manifest key it ships under: its FaceNet class ("nns1", "nns2"); variants of a class share it
    input_shape: tuple[int, int, int]  # (h, w, c)
    stem: tuple[int, ...]  # channels of the 3×3/2 stem conv, then of 3×3 convs after the stem pool (if any)
    modules: tuple[Inception, ...]
    separable: bool  # depthwise-separable 3×3 branches
    max_flops: int  # the FLOP budget of the architecture's class (2 × MACs, see the module docstring)
    head: str = "gdconv"  # see HEADS
    embedding_dim: int = EMBEDDING_DIM

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"{self.name}: head must be one of {HEADS}, got {self.head!r}")


# The widths were tuned (see `python -m research.nns`) to sit just under the FLOP budgets at full width.
NNS1 = Architecture(
    name="nns1",
    key="nns1",
    input_shape=NNS1_INPUT,
    stem=(24,),
    modules=(
        Inception(b1=0, r3=24, c3=48, r5=8, c5=16, pool=0, stride=2),  # 42×42 → 21×21
        Inception(b1=32, r3=32, c3=64, r5=16, c5=32, pool=32),
        Inception(b1=0, r3=48, c3=96, r5=16, c5=32, pool=0, stride=2),  # → 11×11
        Inception(b1=96, r3=64, c3=128, r5=24, c5=48, pool=48),
        Inception(b1=0, r3=96, c3=128, r5=32, c5=64, pool=0, stride=2),  # → 6×6
        Inception(b1=192, r3=128, c3=256, r5=32, c5=64, pool=64),
        Inception(b1=192, r3=128, c3=256, r5=32, c5=64, pool=64),
    ),
    separable=False,
    max_flops=NNS1_MAX_FLOPS,
)
NNS2 = Architecture(
    name="nns2",
    key="nns2",
    input_shape=NNS2_INPUT,
    stem=(12,),
    modules=(
        Inception(b1=0, r3=16, c3=32, r5=8, c5=16, pool=0, stride=2),  # 35×29 → 18×15
        Inception(b1=16, r3=24, c3=48, r5=8, c5=16, pool=16),
        Inception(b1=0, r3=32, c3=64, r5=16, c5=32, pool=0, stride=2),  # → 9×8
        Inception(b1=48, r3=48, c3=96, r5=16, c5=32, pool=32),
        Inception(b1=0, r3=64, c3=128, r5=16, c5=32, pool=0, stride=2),  # → 5×4
        Inception(b1=128, r3=96, c3=192, r5=32, c5=64, pool=64),
    ),
    separable=True,
    max_flops=NNS2_MAX_FLOPS,
)
# NNS2-class with a fully connected head: nns2's training loss stalls with 0.29M params (the paper's NNS2 has 4.3M),
# so this one trades the last module's 1×1 and pool branches (-0.7M MACs) for a dense layer over the 5×4 map
# (+0.9M MACs, +0.9M params) and stays within the same 25M-FLOP budget; trained into the shipped folder, it would
# replace `nns2` (its key). The runs table in the README compares the two.
NNS2_FC = dataclasses.replace(
    NNS2, name="nns2fc", head="flatten",
    modules=NNS2.modules[:-1] + (dataclasses.replace(NNS2.modules[-1], b1=64, pool=32),))
ARCHITECTURES = {a.name: a for a in (NNS1, NNS2, NNS2_FC)}
MAX_FLOPS = {a.name: a.max_flops for a in ARCHITECTURES.values()}


def alignment_template(size: tuple[int, int]) -> np.ndarray:
    """The (5, 2) template for a ``size`` = (w, h) chip: ArcFace's 112×112 one scaled by w / 112, centred in h."""
    width, height = size
    scale = width / ARCFACE_SIZE
    offset_y = (height - ARCFACE_SIZE * scale) / 2.0
    template = np.asarray(ARCFACE_112_TEMPLATE, dtype=np.float64) * scale
    template[:, 1] += offset_y
    return np.round(template, 4)


def chip_size(arch: Architecture) -> tuple[int, int]:
    """The aligned chip's (w, h), the manifest's ``align.size`` order."""
    return int(arch.input_shape[1]), int(arch.input_shape[0])


def _scaled(channels: int, width: float) -> int:
    return 0 if channels == 0 else max(MIN_CHANNELS, int(round(channels * width)))


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str):
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=RELU_CAP, name=f"{name}_relu")(x)


def _depthwise_bn(x, stride: int, name: str):
    import keras

    x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_dwbn")(x)
    return keras.layers.ReLU(max_value=RELU_CAP, name=f"{name}_dwrelu")(x)


def _conv3x3(x, filters: int, stride: int, separable: bool, name: str):
    """A 3×3 convolution, or depthwise 3×3 → 1×1 when ``separable``."""
    if separable:
        return _conv_bn(_depthwise_bn(x, stride, name), filters, 1, 1, name)
    return _conv_bn(x, filters, 3, stride, name)


def _inception(x, spec: Inception, width: float, separable: bool, name: str):
    import keras

    branches = []
    if spec.b1:
        branches.append(_conv_bn(x, _scaled(spec.b1, width), 1, 1, f"{name}_1x1"))
    if spec.c3:
        y = _conv_bn(x, _scaled(spec.r3, width), 1, 1, f"{name}_3x3r")
        branches.append(_conv3x3(y, _scaled(spec.c3, width), spec.stride, separable, f"{name}_3x3"))
    if spec.c5:
        y = _conv_bn(x, _scaled(spec.r5, width), 1, 1, f"{name}_5x5r")
        y = _conv3x3(y, _scaled(spec.c5, width), 1, separable, f"{name}_5x5a")
        branches.append(_conv3x3(y, _scaled(spec.c5, width), spec.stride, separable, f"{name}_5x5b"))
    pooled = keras.layers.MaxPooling2D(POOL_SIZE, strides=spec.stride, padding="same", name=f"{name}_pool")(x)
    branches.append(_conv_bn(pooled, _scaled(spec.pool, width), 1, 1, f"{name}_poolproj") if spec.pool else pooled)
    return keras.layers.Concatenate(name=f"{name}_concat")(branches)


def _global_depthwise(x):
    """MobileFaceNet's GDConv: a linear depthwise conv as large as the last feature map (+ batch norm), flattened.

    On aligned faces a position means a facial region, so a learned per-channel weighting of positions beats a
    flat global average (Chen et al. 2018), at the cost of a few thousand MACs.
    """
    import keras

    _, height, width, _ = x.shape
    x = keras.layers.DepthwiseConv2D((height, width), padding="valid", use_bias=False, name="gdconv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="gdconv_bn")(x)
    return keras.layers.Flatten(name="flatten")(x)


def build(arch: Architecture, input_shape: Optional[tuple[int, int, int]] = None, *, width: float = 1.0,
          batch_size: Optional[int] = None, dropout: float = 0.0):
    """The Keras model of ``arch`` (optionally at another input size or width multiplier, e.g. for tests).

    ``batch_size=1`` gives the static shapes an int8/EdgeTPU export wants; ``None`` is for training.
    ``dropout`` (a training setting, see :class:`research.train_config.TrainConfig`) goes before the embedding
    layer; it holds no weights, so a model built without it takes the trained weights as they are.
    """
    import keras

    shape = tuple(input_shape or arch.input_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"input_shape must be (h, w, 3), got {shape}")
    inputs = keras.Input(shape=shape, batch_size=batch_size, name="image")
    x = _conv_bn(inputs, _scaled(arch.stem[0], width), 3, DOWN_STRIDE, "stem1")
    x = keras.layers.MaxPooling2D(POOL_SIZE, strides=DOWN_STRIDE, padding="same", name="stem_pool")(x)
    for i, channels in enumerate(arch.stem[1:], start=2):
        x = _conv3x3(x, _scaled(channels, width), 1, arch.separable, f"stem{i}")
    for i, spec in enumerate(arch.modules, start=1):
        x = _inception(x, spec, width, arch.separable, f"inc{i}")
    x = _global_depthwise(x) if arch.head == "gdconv" else keras.layers.Flatten(name="flatten")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(arch.embedding_dim, name="embedding")(x)
    return keras.Model(inputs, outputs, name=arch.name)


def build_nns1(input_shape: tuple[int, int, int] = NNS1_INPUT, *, width: float = 1.0,
               batch_size: Optional[int] = None):
    return build(NNS1, input_shape, width=width, batch_size=batch_size)


def build_nns2(input_shape: tuple[int, int, int] = NNS2_INPUT, *, width: float = 1.0,
               batch_size: Optional[int] = None):
    return build(NNS2, input_shape, width=width, batch_size=batch_size)


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass (batch 1): Conv2D, DepthwiseConv2D and Dense. Batch norm folds
    away; pooling, ReLU and concatenation do no multiplies worth counting (the FaceNet convention)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # before Conv2D: in Keras 3 it is no subclass, be safe
            _, oh, ow, oc = layer.output.shape
            kh, kw = layer.kernel_size
            total += oh * ow * oc * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, oh, ow, oc = layer.output.shape
            kh, kw = layer.kernel_size
            total += oh * ow * oc * kh * kw * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.input.shape[-1]) * layer.units
    return int(total)


def count_flops(model) -> int:
    """FLOPs = 2 × MACs (one multiply + one add each); FaceNet's tables count MACs, half this figure."""
    return 2 * count_macs(model)


def count_params(model, *, inference: bool = True) -> int:
    """Weights the deployed model holds: trainable ones, with batch norm counted as folded (no extra params)."""
    import keras

    skip = (keras.layers.BatchNormalization,) if inference else ()
    return int(sum(int(np.prod(w.shape)) for layer in model.layers if not isinstance(layer, skip)
                   for w in layer.trainable_weights))


def layer_types(model) -> set[str]:
    return {type(layer).__name__ for layer in model.layers}


@dataclass(frozen=True)
class Summary:
    name: str
    input_shape: tuple[int, int, int]
    params: int
    macs: int
    flops: int
    max_flops: int

    @property
    def within_budget(self) -> bool:
        return self.flops <= self.max_flops

    def line(self) -> str:
        h, w, _ = self.input_shape
        return (f"{self.name}: input {h}×{w} (h×w), {self.params / 1e6:.2f}M params, {self.macs / 1e6:.1f}M MACs, "
                f"{self.flops / 1e6:.1f}M FLOPs (2×MACs; budget {self.max_flops / 1e6:.0f}M: "
                f"{'ok' if self.within_budget else 'OVER'})")


def summarize(name: str, width: float = 1.0) -> Summary:
    arch = ARCHITECTURES[name]
    model = build(arch, width=width)
    return Summary(name, arch.input_shape, count_params(model), count_macs(model), count_flops(model),
                   MAX_FLOPS[name])


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.nns", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="*", choices=sorted(ARCHITECTURES), default=sorted(ARCHITECTURES))
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default: %(default)s)")
    args = parser.parse_args(argv)
    summaries = [summarize(name, args.width) for name in args.arch]
    for summary in summaries:
        print(summary.line())
    return 0 if all(s.within_budget for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
