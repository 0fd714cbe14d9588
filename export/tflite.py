"""Keras -> TFLite (LiteRT): float32, float16 weights, or full-integer int8.

The model is first exported as a SavedModel with a fixed (1, tile, tile, 1) input (Keras 3's
own export path; converting a traced function directly breaks int8 calibration; a Mask R-CNN
graph gets its own input shape and named outputs, `save_named_graph`). INT8 is full
integer: every op is an int8 kernel (TFLITE_BUILTINS_INT8) and so are the input and output,
whose scale and zero-point the LiteRT backend reads from the model. Dynamic-range "int8"
(float activations) is never produced: it ran several times slower than float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import atomic_path
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


def save_named_graph(
    model: Any, folder: Path, shape: tuple[int | None, ...], input_name: str
) -> None:
    """Save a multi-output Keras model as a SavedModel whose serving signature returns every
    output under its Keras name; LiteRT keeps signature names, while its tensor names are
    the converter's own (edgeseg.maskrcnn_model runs the graph through that signature)."""
    import tensorflow as tf
    from keras.export import ExportArchive

    names = model.output_names

    def named(batch: Any) -> dict[str, Any]:
        return dict(zip(names, tf.nest.flatten(model(batch, training=False)), strict=True))

    archive = ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", named, [tf.TensorSpec(shape, tf.float32, name=input_name)])
    archive.write_out(str(folder), verbose=False)


def write_tflite(
    saved_model: Path, path: Path, precision: Precision, calibration: Sequence[np.ndarray] | None
) -> dict[str, Any]:
    """Write the .tflite for ``precision`` (int8: calibrated on the ``calibration`` batches,
    each one the input of one call); return what the manifest says about quantization."""
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
        converter.representative_dataset = lambda: ([batch] for batch in calibration)
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


def describe_tflite_graph(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Records of every input and output of the written model's signature, by signature name
    (the names its runtime uses)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=path.read_bytes()).get_signature_runner()
    return {
        role: [_tensor_record(detail, name) for name, detail in details.items()]
        for role, details in (
            ("inputs", runner.get_input_details()),
            ("outputs", runner.get_output_details()),
        )
    }


def _tensor_record(detail: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": name or detail["name"],
        "shape": [int(d) if d > 0 else None for d in detail["shape_signature"]],
        "dtype": np.dtype(detail["dtype"]).name,
    }
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero_point = detail["quantization"]
        record["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return record
