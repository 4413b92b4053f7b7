"""TensorFlow.js graph models read into numpy: nodes, their attributes, and the weights of ``weightsManifest``.

A TFJS graph-model is a ``model.json`` (``modelTopology.node``: TF GraphDef nodes, attribute values base64 where
they are strings) plus binary weight shards that ``weightsManifest`` slices into named tensors, each optionally
stored quantized (uint8/uint16 affine or float16).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np


class GraphError(ValueError):
    """The TFJS graph has a node or pattern this converter does not understand."""


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
    """A parsed ``model.json`` and its shards (path → bytes) → nodes, weights and outputs (the signature's, else
    every non-constant node nothing consumes)."""
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


def attr_str(node: TfjsNode, key: str, default: str = "") -> str:
    value = node.attr.get(key, {}).get("s")
    return base64.b64decode(value).decode() if value else default


def attr_ints(node: TfjsNode, key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in node.attr.get(key, {}).get("list", {}).get("i", []))


def attr_strs(node: TfjsNode, key: str) -> tuple[str, ...]:
    return tuple(base64.b64decode(v).decode() for v in node.attr.get(key, {}).get("list", {}).get("s", []))
