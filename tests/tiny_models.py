"""Tiny real ONNX models for runtime tests: no training, no TensorFlow.

`threshold_model` maps a normalised image to the two edgeseg output maps with fixed
weights: foreground = sigmoid(k * (x - 0.5)); boundary = sigmoid(k * (morphological
gradient - 0.5)), the gradient computed with MaxPool (dilation minus erosion). On the
synthetic disks of conftest.synthetic_nuclei it segments well enough to test the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeseg.manifest import write_manifest


def threshold_model(
    path: Path,
    steepness: float = 20.0,
    tile: int | None = None,
    nucleus_diameter: float | None = None,
) -> Path:
    """Write ``path`` (.onnx, NHWC float32 in, NHWC 2-channel probabilities out) + manifest;
    ``nucleus_diameter`` is recorded as the training nuclei's size, for --diameter."""
    size = tile if tile else None
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("MaxPool", ["nchw"], ["dilated"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Neg", ["nchw"], ["negated"]),
        helper.make_node(
            "MaxPool", ["negated"], ["neg_eroded"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Add", ["dilated", "neg_eroded"], ["gradient"]),
        helper.make_node("Sub", ["nchw", "half"], ["centred"]),
        helper.make_node("Sub", ["gradient", "half"], ["gradient_centred"]),
        helper.make_node("Concat", ["centred", "gradient_centred"], ["logits_raw"], axis=1),
        helper.make_node("Mul", ["logits_raw", "steepness"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities_nchw"]),
        helper.make_node("Transpose", ["probabilities_nchw"], ["probabilities"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "edgeseg_threshold_test_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", size, size, 1])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", size, size, 2]
            )
        ],
        initializer=[
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("steepness", TensorProto.FLOAT, [], [steepness]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    write_manifest(
        path,
        name="threshold-test",
        backend="onnx",
        target="onnx-fp32",
        input={"name": "image", "shape": [None, size, size, 1], "dtype": "float32"},
        output={"name": "probabilities", "shape": [None, size, size, 2], "dtype": "float32"},
        tile={"size": tile or 256, "overlap": 32, "multiple": 1},
        preprocess={"name": "percentile-gray", "version": 1},
        postprocess={"foreground_threshold": 0.5, "boundary_threshold": 0.5, "min_area": 8},
        **(
            {}
            if nucleus_diameter is None
            else {"nucleus_diameter": {"median_px": nucleus_diameter, "source": "test"}}
        ),
    )
    return path


def run_reference(image: np.ndarray, steepness: float = 20.0) -> np.ndarray:
    """The same maps computed with OpenCV, to check backends against."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    gradient = cv2.dilate(image, kernel) - cv2.erode(image, kernel)
    logits = steepness * (np.stack([image, gradient], axis=-1) - 0.5)
    return 1.0 / (1.0 + np.exp(-logits))
