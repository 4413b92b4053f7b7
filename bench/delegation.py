"""How many nodes of a model the XNNPACK delegate leaves to the builtin kernels, found from the graph itself.

The edge runtime's interpreter applies XNNPACK when it is built: each partition XNNPACK claims becomes one
``DELEGATE`` node appended after the model's own nodes, whose inputs and outputs are the partition's boundary
tensors. A node of the model is delegated exactly when a delegate node's outputs need it: walking back from those
outputs, producer by producer, and stopping at the delegate node's inputs, reaches the nodes it replaced. Every
other node of the model still runs on its own kernel, outside the delegate: an int8 PRELU does, for example, and
costs the graph a round trip out of XNNPACK's packed layout and its threads.

(ai_edge_litert 2.3 prints "Replacing N out of M node(s) with delegate" only at verbose logging, which its Python
API does not expose, and a static list of XNNPACK's supported ops misses the parameter checks it makes per node; the
graph is the reliable witness.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from bench.macs import graph_interpreter
from edge import interpreter as tfl

DELEGATE_OP = "DELEGATE"


class DelegationError(RuntimeError):
    """The delegated graph does not line up with the model's own: the count would be meaningless."""


@dataclass(frozen=True)
class Delegation:
    """The model's nodes and which of them stayed outside the XNNPACK delegate (op names, in graph order)."""

    nodes: int
    partitions: int
    outside: tuple[str, ...]

    @property
    def undelegated(self) -> int:
        return len(self.outside)

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "partitions": self.partitions, "undelegated": self.undelegated,
                "undelegated_ops": list(self.outside)}


def _tensors(values) -> list[int]:
    return [int(v) for v in values if int(v) >= 0]  # -1 marks an optional input that is absent


def delegation(content: bytes, input_shape: Optional[tuple[int, ...]] = None, num_threads: int = 1) -> Delegation:
    """Which nodes of the model stay outside XNNPACK in the interpreter the edge runtime builds for it.

    ``input_shape`` resizes the input first (P-Net has free height and width); XNNPACK decides per node, so the
    count does not depend on the shape as long as the graph's op parameters do not.
    """
    plain = graph_interpreter(content, input_shape)
    own = plain._get_ops_details()
    interp = tfl.make_interpreter(content, num_threads=num_threads)
    if input_shape is not None:
        interp.resize_tensor_input(interp.get_input_details()[0]["index"], [int(v) for v in input_shape],
                                   strict=False)
    interp.allocate_tensors()
    ops = interp._get_ops_details()
    if [op["op_name"] for op in ops[:len(own)]] != [op["op_name"] for op in own]:
        raise DelegationError("the delegated interpreter renumbered the model's nodes; cannot tell which were "
                              "replaced (a newer interpreter? count them with --verbose logging instead)")
    extra = ops[len(own):]
    if any(op["op_name"] != DELEGATE_OP for op in extra):
        raise DelegationError(f"unexpected nodes after the model's own: {[op['op_name'] for op in extra]}")
    producer = {t: index for index, op in enumerate(own) for t in _tensors(op["outputs"])}
    replaced: set[int] = set()
    for node in extra:
        boundary = set(_tensors(node["inputs"]))
        pending = [t for t in _tensors(node["outputs"]) if t in producer]
        while pending:
            index = producer[pending.pop()]
            if index in replaced:
                continue
            replaced.add(index)
            pending += [t for t in _tensors(own[index]["inputs"]) if t not in boundary and t in producer]
    outside = tuple(op["op_name"] for index, op in enumerate(own) if index not in replaced)
    return Delegation(nodes=len(own), partitions=len(extra), outside=outside)
