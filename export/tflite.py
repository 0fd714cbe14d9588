"""Keras -> TFLite (LiteRT): float32, float16 weights, or full-integer int8.

The model is first exported as a SavedModel with a fixed (1, tile, tile, 1) input (Keras 3's
own export path; converting a traced function directly breaks int8 calibration). INT8 is full
integer: every op is an int8 kernel (TFLITE_BUILTINS_INT8) and so are the input and output,
whose scale and zero-point the LiteRT backend reads from the model. Dynamic-range "int8"
(float activations) is never produced: it ran several times slower than float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.imageio import atomic_path
from export.calibration import Calibration
from export.targets import Precision

INT8_QUANTIZATION = {
    "method": "full-integer post-training quantization (TFLiteConverter)",
    "weights": "int8, per-channel, symmetric",
    "activations": "int8, per-tensor",
    "io": "int8 (scale and zero-point in the model and the manifest)",
}
FP16_QUANTIZATION = {"method": "float16 weights, float32 compute and io"}


def save_model(model: Any, folder: Path, tile: int) -> None:
    """Save the Keras model as a SavedModel taking one (1, tile, tile, 1) tile, which every
    TFLite precision is converted from."""
    import keras

    spec = keras.InputSpec(shape=(1, tile, tile, 1), dtype="float32", name="image")
    model.export(str(folder), format="tf_saved_model", input_signature=[spec], verbose=False)


def write_tflite(
    saved_model: Path, path: Path, precision: Precision, calibration: Calibration | None
) -> dict[str, Any]:
    """Write the .tflite for ``precision``; return what the manifest says about quantization."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    quantization: dict[str, Any] = {}
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        quantization = FP16_QUANTIZATION
    elif precision == "int8":
        if calibration is None:
            raise ValueError("int8 TFLite export needs calibration data")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([batch] for batch in calibration.batches())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        quantization = INT8_QUANTIZATION
    content = converter.convert()
    with atomic_path(path) as temporary:
        temporary.write_bytes(content)
    return dict(quantization)


def describe_tflite(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input and output tensor records for the manifest, read back from the written model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=path.read_bytes())
    (tensor_in,) = interpreter.get_input_details()
    (tensor_out,) = interpreter.get_output_details()
    return _tensor_record(tensor_in), _tensor_record(tensor_out)


def _tensor_record(detail: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": detail["name"],
        "shape": [int(d) if d > 0 else None for d in detail["shape_signature"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero_point = detail["quantization"]
        record["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return record
