"""Parameters and FLOPs per tile: from the manifest, else counted on an ONNX graph, else n/a.

Counting covers Conv, ConvTranspose, MatMul and Gemm (2 FLOPs per multiply-add), which is
where a CNN spends its arithmetic; element-wise work is left out and the source of every
number is recorded. A graph whose shapes cannot be inferred gives None, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Quantized-operator graphs keep weights in layouts this counter does not read.
_UNSUPPORTED_PREFIXES = ("QLinear", "ConvInteger", "MatMulInteger")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


def from_manifest(manifest: Mapping[str, Any], tile: tuple[int, int]) -> dict[str, Any]:
    """``params`` and ``flops_per_tile`` recorded by training/export, when they are there.

    FLOPs are taken only when recorded for this very tile size (``tile``: [h, w] or int).
    """
    found: dict[str, Any] = {}
    params = manifest.get("params", manifest.get("parameters"))
    if isinstance(params, int):
        found.update(params=params, params_source="manifest")
    flops = manifest.get("flops_per_tile")
    recorded_tile = manifest.get("flops_tile", manifest.get("tile", {}).get("size"))
    if isinstance(recorded_tile, int):
        recorded_tile = [recorded_tile, recorded_tile]
    if isinstance(flops, int) and list(recorded_tile or []) == list(tile):
        found.update(flops_per_tile=flops, flops_source="manifest")
    return found


def _fixed_input_model(path: Path, tile: tuple[int, int]) -> Any:
    """The ONNX model with its NHWC input pinned to (1, h, w, C), shapes inferred."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    for tensor in model.graph.input:
        if tensor.name in weights:
            continue
        for dim, value in zip(tensor.type.tensor_type.shape.dim, (1, *tile), strict=False):
            if not dim.HasField("dim_value"):
                dim.dim_value = value
    return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)


def _shapes(model: Any) -> dict[str, list[int | None]]:
    graph = model.graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for info in (*graph.value_info, *graph.input, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _macs(node: Any, shapes: Mapping[str, list[int | None]]) -> int | None:
    """Multiply-adds of one node; 0 for node types not counted; None if a shape is unknown.

    Only the dimensions each formula needs are required: exporters often leave channel
    counts of concatenated inputs unknown, while outputs and weights stay fully known.
    """
    if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        return 0
    first, weight = (shapes.get(name) or [None] for name in node.input[:2])
    output = shapes.get(node.output[0]) or [None]
    if node.op_type == "Conv":  # weight (Cout, Cin/groups, kh, kw)
        needed = [*output, *weight]
        macs = math.prod(output) * math.prod(weight[1:]) if None not in needed else None
    elif node.op_type == "ConvTranspose":  # input (N, Cin, H, W), weight (Cin, Cout/groups, ...)
        needed = [first[0], *first[2:], *weight]
        macs = math.prod(needed) if None not in needed and len(first) > 2 else None
    else:  # MatMul, Gemm: output elements times the shared dimension K
        transposed = any(a.name == "transA" and a.i for a in node.attribute)
        shared = first[0] if node.op_type == "Gemm" and transposed else first[-1]
        needed = [*output, shared]
        macs = math.prod(needed) if None not in needed else None
    return macs


def _parameters(model: Any) -> int | None:
    """Weights stored in the graph: float initializers plus the integer ones a
    DequantizeLinear turns into weights; quantization scales and zero points left out."""
    from onnx import TensorProto

    graph = model.graph
    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    quant_params = {name for n in graph.node if n.op_type in _QDQ for name in n.input[1:]}
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return sum(
        math.prod(init.dims)
        for init in graph.initializer
        if init.name not in quant_params
        and (init.data_type in float_types or init.name in dequantized)
    )


def from_onnx(path: Path, tile: tuple[int, int]) -> dict[str, int | None]:
    """Parameters and FLOPs for one (h, w) tile at batch 1, counted on the ONNX graph."""
    model = _fixed_input_model(path, tile)
    if any(node.op_type.startswith(_UNSUPPORTED_PREFIXES) for node in model.graph.node):
        return {"params": None, "flops_per_tile": None}
    shapes = _shapes(model)
    macs = [_macs(node, shapes) for node in model.graph.node]
    flops = None if None in macs else 2 * sum(macs)
    return {"params": _parameters(model), "flops_per_tile": flops}


def complexity(
    manifest: Mapping[str, Any], artifact: Path, tile: tuple[int, int], graphs: Sequence[Path]
) -> dict[str, Any]:
    """params / flops_per_tile with their sources: the manifest, else the first of ``graphs``
    (this artifact if it is ONNX, then the same model's fp32 ONNX export) that gives them,
    else None ("n/a")."""
    found = {"params": None, "params_source": "n/a", "flops_per_tile": None, "flops_source": "n/a"}
    found.update(from_manifest(manifest, tile))
    for graph in graphs:
        if found["params"] is not None and found["flops_per_tile"] is not None:
            break
        try:
            counted = from_onnx(graph, tile)
        except ImportError:  # the onnx package is not part of the runtime install
            break
        source = "onnx graph" if graph == artifact else f"onnx graph of {graph.name}"
        for key, source_key in (("params", "params_source"), ("flops_per_tile", "flops_source")):
            if found[key] is None and counted[key] is not None:
                found.update({key: counted[key], source_key: source})
    return found
