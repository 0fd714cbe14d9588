"""LiteRT (TensorFlow Lite) backend: the small CPU runtime for .tflite exports, incl. int8."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeseg.backends.base import (
    Backend,
    BackendUnavailable,
    available_cores,
    from_output,
    select_tensor,
    to_input,
)


def interpreter_class() -> type:
    """LiteRT's Interpreter (or tflite-runtime's), imported only when a .tflite is run."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as error:
            raise BackendUnavailable(
                "LiteRT backend unavailable here: install ai-edge-litert (or tflite-runtime)"
            ) from error
    return Interpreter


def tensor_quantization(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    """Per-tensor (scale, zero_point) of a quantized tensor; None for a float tensor."""
    parameters = detail["quantization_parameters"]
    if len(parameters["scales"]) == 0:
        return None
    return float(parameters["scales"][0]), int(parameters["zero_points"][0])


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, model: bytes, manifest: Mapping[str, Any], threads: int | None = None):
        self._model = model  # the interpreter reads from this buffer: keep it alive
        # LiteRT, unlike ONNX Runtime, runs one thread unless told: a U-Net tile took 76 ms
        # on one thread, 39 ms on two, here.
        self._interpreter = interpreter_class()(
            model_content=model, num_threads=threads or available_cores()
        )
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        wanted_in = manifest.get("input", {}).get("name")
        wanted_out = manifest.get("output", {}).get("name")
        self._input = inputs[select_tensor([d["name"] for d in inputs], wanted_in, "input")]
        self._output = outputs[select_tensor([d["name"] for d in outputs], wanted_out, "output")]
        last = int(self._output["shape_signature"][-1])
        self.model_channels = last if last > 0 else None
        batch, height, width = (
            int(d) if d > 0 else None for d in self._input["shape_signature"][:3]
        )
        self.fixed_batch = batch
        self.input_size = (height, width) if height and width else None
        self._shape: tuple[int, ...] | None = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        interpreter, index = self._interpreter, self._input["index"]
        if batch.shape != self._shape:  # a new tile size or batch: re-plan the tensors
            interpreter.resize_tensor_input(index, batch.shape, strict=True)
            interpreter.allocate_tensors()
            self._shape = batch.shape
        interpreter.set_tensor(
            index, to_input(batch, self._input["dtype"], tensor_quantization(self._input))
        )
        interpreter.invoke()
        output = interpreter.get_tensor(self._output["index"])
        return from_output(output, tensor_quantization(self._output))
