"""Multiply-accumulates and parameters of a TFLite graph, counted from the graph the converter wrote.

The counts come from the op and tensor details of an interpreter built over the plain builtin kernels (no XNNPACK
node replacing the graph), allocated at the input shape that is asked for: what the graph computes at that shape,
a fixed batch's padding included. CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED carry the multiply-adds; the
elementwise ops (ADD, MUL, MAXIMUM, PRELU, ...) are a rounding error next to them and are left out.

Never imports TensorFlow: it reads models through ``edge.interpreter``'s backend (ai_edge_litert or tflite_runtime).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from edge import interpreter as tfl

CONV_2D = "CONV_2D"
DEPTHWISE_CONV_2D = "DEPTHWISE_CONV_2D"
FULLY_CONNECTED = "FULLY_CONNECTED"
WEIGHTED_OPS = (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED)


def graph_interpreter(content: bytes, input_shape: Optional[tuple[int, ...]] = None) -> Any:
    """An interpreter over the plain builtin kernels (no XNNPACK node replacing the graph), allocated."""
    be = tfl.backend()
    module = sys.modules[be.interpreter_class.__module__]
    resolver = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = be.interpreter_class(model_content=content, experimental_op_resolver_type=resolver)
    if input_shape is not None:
        index = interp.get_input_details()[0]["index"]
        interp.resize_tensor_input(index, [int(v) for v in input_shape], strict=False)
    interp.allocate_tensors()
    return interp


def count_macs(interp: Any) -> dict[str, int]:
    """Multiply-accumulates per op type of an allocated interpreter's graph, from its op and tensor details."""
    shapes = {int(d["index"]): tuple(int(v) for v in d["shape"]) for d in interp.get_tensor_details()}
    macs: dict[str, int] = {}
    for op in interp._get_ops_details():
        name = op["op_name"]
        if name not in WEIGHTED_OPS:
            continue
        weights = shapes[int(op["inputs"][1])]
        out = shapes[int(op["outputs"][0])]
        if name == CONV_2D:  # weights (out_c, kh, kw, in_c), output (n, oh, ow, out_c)
            _, kh, kw, in_c = weights
            n = int(np.prod(out)) * kh * kw * in_c
        elif name == DEPTHWISE_CONV_2D:  # weights (1, kh, kw, out_c)
            _, kh, kw, _ = weights
            n = int(np.prod(out)) * kh * kw
        else:  # weights (out_features, in_features); output rows = batch
            out_features, in_features = weights
            n = (int(np.prod(out)) // out_features) * in_features * out_features
        macs[name] = macs.get(name, 0) + n
    return macs


def macs_at(content: bytes, input_shape: Optional[tuple[int, ...]] = None) -> int:
    """All multiply-accumulates of one invoke of the model at ``input_shape`` (default: the model's own)."""
    return sum(count_macs(graph_interpreter(content, input_shape)).values())


def parameter_count(content: bytes) -> int:
    """Weights and biases of the conv / dense ops (what the FaceNet paper's 'params' counts)."""
    interp = graph_interpreter(content)
    shapes = {int(d["index"]): d["shape"] for d in interp.get_tensor_details()}
    total = 0
    for op in interp._get_ops_details():
        if op["op_name"] in WEIGHTED_OPS:
            total += sum(int(np.prod(shapes[int(i)])) for i in list(op["inputs"])[1:] if int(i) >= 0)
    return total
