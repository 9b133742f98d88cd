"""The graph side of int8 quantization: which nodes a candidate may keep in fp32, their cost, the CPU's kernels.

Split from :mod:`geopsp.model.quantize`, which uses these to build and rank its candidates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["conv_macs", "name_nodes", "node_roles", "u8s8_may_saturate_here"]


def node_roles(proto: Any) -> dict[str, set[str]]:
    """Name the nodes of a graph that a :class:`Candidate` may keep in fp32, with their roles.

    ``"stem"``: a convolution with no convolution upstream (fed the bands) and the nodes between
    the graph input and it (the reflection padding); ``"tail"``: a convolution with no
    convolution downstream (the classifier) and every node after it (upsampling of the logits,
    crop, softmax); ``"before_classifier"``: the nearest convolutions upstream of a classifier;
    ``"pooled"``: a convolution fed by a pooling node (a pyramid pooling branch) and that node.

    Parameters
    ----------
    proto : onnx.ModelProto

    Returns
    -------
    dict of str to set of str
        Node name to its roles (a node may have two in a tiny graph).
    """
    nodes = list(proto.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    convs = [n for n in nodes if n.op_type == "Conv"]

    def upstream(node: Any) -> tuple[set[str], set[str]]:
        """Nearest convolutions upstream of ``node``'s data input, and the other nodes on the way."""
        found: set[str] = set()
        between: set[str] = set()
        seen: set[str] = set()
        stack = list(node.input[:1])
        while stack:
            tensor = stack.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            src = producer.get(tensor)
            if src is None:
                continue
            if src.op_type == "Conv":
                found.add(src.name)
            else:
                between.add(src.name)
                stack.extend(src.input)
        return found, between

    def downstream(node: Any) -> set[str]:
        found: set[str] = set()
        stack = list(node.output)
        while stack:
            for n in consumers.get(stack.pop(), []):
                if n.name not in found:
                    found.add(n.name)
                    stack.extend(n.output)
        return found

    nearest = {c.name: upstream(c) for c in convs}
    feeding = set().union(*(up for up, _ in nearest.values())) if nearest else set()
    roles: dict[str, set[str]] = {}

    def add(names: set[str], role: str) -> None:
        for name in names:
            roles.setdefault(name, set()).add(role)

    for c in convs:
        up, between = nearest[c.name]
        pooled = _pooling_chain(c, producer)
        if pooled:
            add({c.name, *pooled}, "pooled")
        if not up:
            add({c.name, *between}, "stem")
        if c.name not in feeding:
            add({c.name, *downstream(c)}, "tail")
            add(up, "before_classifier")
    return roles


_POOLS = frozenset({"ReduceMean", "GlobalAveragePool", "AveragePool", "GlobalMaxPool", "MaxPool"})
_PASS_THROUGH = frozenset({"Relu", "Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _pooling_chain(conv: Any, producer: dict[str, Any]) -> set[str]:
    """Return the pooling node (and single-input nodes after it) feeding ``conv``; empty if none.

    A pyramid pooling branch: its convolution sees a map pooled to a few bins, so it costs
    nothing to keep in fp32, and its input (a scene-wide mean) is the activation most likely to
    leave the calibrated range on another scene.
    """
    chain: set[str] = set()
    tensor = conv.input[0]
    while (src := producer.get(tensor)) is not None:
        if src.op_type in _POOLS:
            if src.op_type == "MaxPool":  # the stem's max pool is not a pyramid bin
                return set()
            chain.add(src.name)
            return chain
        if src.op_type not in _PASS_THROUGH:
            return set()
        chain.add(src.name)
        tensor = src.input[0]
    return set()


def conv_macs(proto: Any) -> dict[str, int]:
    """Multiply-adds of each convolution for one tile, by node name (shapes from shape inference).

    A convolution whose output shape is unknown counts its weights once (as if on one pixel).
    """
    import onnx

    graph = proto.graph
    if not any(v.name for v in graph.value_info):
        graph = onnx.shape_inference.infer_shapes(proto).graph
    shapes: dict[str, list[int]] = {}
    for v in (*graph.value_info, *graph.output):
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
    weights = {i.name: list(i.dims) for i in proto.graph.initializer}
    out: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2:
            continue
        w = weights.get(n.input[1], [])
        spatial = shapes.get(n.output[0], [])[2:]
        pixels = math.prod(spatial) if spatial and all(spatial) else 1
        out[n.name] = math.prod(w) * pixels if w else 0
    return out


def u8s8_may_saturate_here() -> bool:
    """Whether this is an x86 CPU without VNNI, whose u8s8 kernels can saturate with 8-bit weights.

    Read from ``/proc/cpuinfo``; anywhere it cannot be read, False (8-bit weights are then
    not tried: a check on this CPU could not see the saturation of another).
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(flags) and "avx2" in flags and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def name_nodes(proto: Any) -> None:
    """Give every unnamed node a unique name (``nodes_to_exclude`` goes by name)."""
    names = {n.name for n in proto.graph.node if n.name}
    for i, n in enumerate(proto.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in names:
                name += "_"
            n.name = name
            names.add(name)
