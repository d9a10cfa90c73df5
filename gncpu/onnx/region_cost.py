"""How much work an onnxruntime region does: enough to be worth its thread pool?

    work = region_work(model, {"x": (1, 512, 64, 64)})   # multiply-adds, inf if unknown

A region session with intra_op_num_threads > 1 owns a pool of worker threads.
On a small region the pool costs more than it gives: waking a worker for a
run takes tens of microseconds (milliseconds on a loaded machine), and a
session per region means a pool per region, whose idle workers compete for
the cores with the next region and with gncpu's GroupNorm kernel. Regions
below SMALL_REGION_WORK therefore run on the calling thread alone.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import onnx

# ~4 ms of one core's convolution throughput: below it a second thread saves less
# than waking it can cost. Pooled regions stop their workers when they return
# (engine_ort), so each pays a wake-up per run, and on a VM whose other vCPU has
# gone idle that took 0.1-2 ms (2-vCPU AMD EPYC VM). Measured there with
# bench_onnx.py's interleaving: torch_legacy_dynamic_vae_decoder_block_opset17,
# whose regions do 1e7-2e8 multiply-adds, ran at 3.3-4.6x plain onnxruntime with
# 1e7 here, 2.5x with 5e7 and 1.1-1.5x with 2e8; the other multi-region models
# did not change beyond noise.
SMALL_REGION_WORK = 2e8
# ~25 ms of two cores: from here a region's workers stop spinning when it returns
# (waking them on the next run is lost in its run time; spinning on would take the
# core from the GroupNorm that follows).
HUGE_REGION_WORK = 1e9

# Ops whose cost is output elements x the reduction length, by how that length is found.
_REDUCING = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def region_work(model: onnx.ModelProto, input_shapes: Dict[str, Sequence[int]]) -> float:
    """Multiply-adds (elementwise ops count one per output element) of `model`
    run on inputs of `input_shapes`; math.inf when a shape cannot be inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for size in input_shapes[value.name]:
                dims.add().dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False)
    except Exception:  # inference is best effort: an op it does not know ends it
        return math.inf
    shapes = {v.name: _dims(v) for v in list(inferred.graph.value_info) + list(inferred.graph.input)
              + list(inferred.graph.output)}
    shapes.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    total = 0.0
    for node in inferred.graph.node:
        outputs = [shapes.get(name) for name in node.output if name]
        if not outputs or any(shape is None for shape in outputs):
            return math.inf
        total += _node_work(node, [shapes.get(name) for name in node.input], outputs)
    return total


def _dims(value: onnx.ValueInfoProto):
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
    return None if None in dims else dims


def _node_work(node: onnx.NodeProto, inputs, outputs) -> float:
    """Multiply-adds of a matrix-product op; output elements for the rest."""
    elements = float(sum(math.prod(shape) for shape in outputs))
    if node.op_type not in _REDUCING or node.domain not in ("", "ai.onnx"):
        return elements
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        return math.inf
    data, weight = inputs[0], inputs[1]
    if node.op_type == "Conv":              # weight (C_out, C_in / group, k...)
        return elements * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":     # weight (C_in, C_out / group, k...): per input element
        return float(math.prod(data)) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return elements * (data[0] if trans_a else data[-1])
    return elements * data[-1]              # MatMul: the shared dimension
