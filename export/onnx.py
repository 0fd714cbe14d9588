"""Keras -> ONNX with tf2onnx, and static INT8 Q/DQ quantization with onnxruntime.

The graph keeps NHWC float32 input and output with a dynamic batch and the fixed tile size
(a Mask R-CNN graph: the input shape it is given, and every output under its Keras name).
INT8 is static QDQ with per-channel weights, calibrated on real crops, in one of two flavours:

* CPU (onnx-int8): uint8 asymmetric activations, int8 symmetric weights (U8S8), ONNX
  Runtime's fastest x86 kernels. Weights use a 7-bit range (reduce_range): the AVX2 kernels
  (no VNNI) add u8*s8 pairs in int16 and saturate with full-range weights, which wrecked a
  real U-Net's masks (foreground agreement 19% instead of 98%);
* TensorRT (trt-int8): int8 symmetric activations and weights and float biases, the explicit
  quantization TensorRT accepts. The output Sigmoid stays float (symmetric int8 would leave
  the [0, 1] probabilities only 128 levels). ONNX Runtime's fused x86 kernels saturate on
  this graph too, so its manifest asks the runtime for unfused Q/DQ (GRAPH_OPTIMIZATION),
  i.e. TensorRT's arithmetic.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import atomic_path

OPSET = 17
INPUT_NAME = "image"
CALIBRATION_BATCH = 8
#: Manifest setting for TensorRT-ready int8 graphs (see edgeseg.backends.onnx).
GRAPH_OPTIMIZATION = "basic"


def write_onnx(model: Any, path: Path, tile: int) -> None:
    """Write the float32 graph of a Keras model for (N, tile, tile, 1) input."""
    import tensorflow as tf

    function = tf.function(lambda image: model(image, training=False))
    _convert(function, tf.TensorSpec((None, tile, tile, 1), tf.float32, name=INPUT_NAME), path)


def write_named_onnx(
    model: Any, path: Path, shape: tuple[int | None, ...], input_name: str
) -> None:
    """Write the float32 graph of a multi-output Keras model whose ONNX outputs keep the Keras
    output names (a runtime that looks outputs up by name needs them)."""
    import tensorflow as tf

    names = model.output_names

    def named(batch: Any) -> dict[str, Any]:
        return dict(zip(names, tf.nest.flatten(model(batch, training=False)), strict=True))

    _convert(tf.function(named), tf.TensorSpec(shape, tf.float32, name=input_name), path)


def _convert(function: Any, spec: Any, path: Path) -> None:
    import tf2onnx

    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=OPSET)
    with atomic_path(path) as temporary:
        temporary.write_bytes(proto.SerializeToString())


def quantize_onnx(
    float_path: Path,
    path: Path,
    batches: Sequence[np.ndarray],
    for_tensorrt: bool,
    input_name: str = INPUT_NAME,
) -> dict[str, Any]:
    """Write the static QDQ INT8 graph of ``float_path`` calibrated on ``batches`` (each one
    run as the ``input_name`` input); return the manifest's description."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    activations = QuantType.QInt8 if for_tensorrt else QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="edgeseg-quantize-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        # Constant folding and ONNX shape inference; shapes are static apart from the batch.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        nodes = onnx.load(str(prepared)).graph.node
        float_nodes = [n.name for n in nodes if n.op_type == "Sigmoid"] if for_tensorrt else []
        with atomic_path(path) as temporary:
            quantize_static(
                str(prepared),
                str(temporary),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=not for_tensorrt,
                activation_type=activations,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=float_nodes,
                extra_options={
                    "ActivationSymmetric": for_tensorrt,
                    "WeightSymmetric": True,
                    "QuantizeBias": not for_tensorrt,
                },
            )
    return {
        "method": "static QDQ (onnxruntime quantize_static, MinMax calibration)",
        "weights": "int8, per-channel, symmetric" + ("" if for_tensorrt else ", 7-bit range"),
        "activations": "int8, symmetric" if for_tensorrt else "uint8, asymmetric",
        "bias": "float" if for_tensorrt else "int32",
        "float_ops": ["Sigmoid"] if for_tensorrt else [],
        "io": "float32",
    }


def describe_onnx(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input and output tensor records for the manifest, read back from the written graph."""
    tensors = describe_onnx_graph(path)
    return tensors["inputs"][0], tensors["outputs"][0]


def describe_onnx_graph(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Records of every input and output tensor of the written graph."""
    import onnx

    graph = onnx.load(str(path)).graph
    return {
        "inputs": [_tensor_record(value) for value in graph.input],
        "outputs": [_tensor_record(value) for value in graph.output],
    }


def _tensor_record(value: Any) -> dict[str, Any]:
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor_type = value.type.tensor_type
    return {
        "name": value.name,
        "shape": [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim],
        "dtype": np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type)).name,
    }
