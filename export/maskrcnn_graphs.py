"""The three Mask R-CNN graphs as the converters take them: input shapes, and float forms
converted once per export and shared by its targets.

Stage 1 keeps a dynamic image size, because the runtime feeds it whole images zero-padded to a
multiple of 32 (LiteRT gets batch 1, what the runtime sends). The heads take exactly
``roi_batch`` RoIs, the count the runtime always feeds them, so they convert with static
shapes. Every output keeps its Keras name in every format: the runtime looks outputs up by
name (edgeseg.maskrcnn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeseg.maskrcnn import MaskRCNNConfig
from edgeseg.maskrcnn_model import GRAPHS
from export.tensorrt import Profile

#: Input tensor name of each graph, as its Keras model names it.
INPUT_NAMES = {"stage1": "image", "box_head": "box_crops", "mask_head": "mask_crops"}
#: Smallest and largest image side of a stage-1 TensorRT engine; DSB2018's largest image,
#: 1040 x 1388, pads to 1056 x 1408.
MIN_IMAGE, MAX_IMAGE = 32, 2048


def input_shape(
    name: str, model: Any, runtime: MaskRCNNConfig, batch: int | None
) -> tuple[int | None, ...]:
    """Graph ``name``'s input: stage 1 any image (``batch`` images), a head ``roi_batch``
    RoI crops of the size and channels its Keras model takes."""
    if name == "stage1":
        return (batch, None, None, 1)
    return (runtime.roi_batch, *model.input_shape[1:])


def engine_profile(shape: Sequence[int | None], image: int) -> Profile:
    """TensorRT shapes for an ONNX input ``shape``: a fixed shape as it is; a dynamic batch
    as 1 (the runtime's); dynamic image sides from MIN_IMAGE through ``image`` (the
    export's tile, the optimum) to MAX_IMAGE."""

    def at(side: int) -> tuple[int, ...]:
        return tuple(
            (1 if axis == 0 else side) if length is None else int(length)
            for axis, length in enumerate(shape)
        )

    return at(MIN_IMAGE), at(image), at(MAX_IMAGE)


class FloatGraphs:
    """The float32 ONNX graph and SavedModel of each Keras graph, each made once when first
    asked for, in ``scratch``."""

    def __init__(self, models: Mapping[str, Any], runtime: MaskRCNNConfig, scratch: Path):
        missing = [name for name in GRAPHS if name not in models]
        if missing:
            raise ValueError(f"no {', '.join(missing)} graph to convert")
        self._models = models
        self._runtime = runtime
        self._scratch = scratch
        self._onnx: dict[str, Path] = {}
        self._saved: dict[str, Path] = {}

    def onnx(self, name: str) -> Path:
        """The float32 ONNX graph (every ONNX and TensorRT target starts from it)."""
        if name not in self._onnx:
            from export.onnx import write_named_onnx

            path = self._scratch / f"{name}.onnx"
            shape = input_shape(name, self._models[name], self._runtime, None)
            write_named_onnx(self._models[name], path, shape, INPUT_NAMES[name])
            self._onnx[name] = path
        return self._onnx[name]

    def saved_model(self, name: str) -> Path:
        """The SavedModel every TFLite precision is converted from."""
        if name not in self._saved:
            from export.tflite import save_named_graph

            folder = self._scratch / f"{name}.saved_model"
            shape = input_shape(name, self._models[name], self._runtime, 1)
            save_named_graph(self._models[name], folder, shape, INPUT_NAMES[name])
            self._saved[name] = folder
        return self._saved[name]
