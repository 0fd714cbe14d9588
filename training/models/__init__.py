"""Model registry: every trainable edgeseg model, built by name.

All models take NHWC float32 (N, H, W, 1) from edgeseg.preprocess.normalize and return
(N, H, W, channels) sigmoid probabilities [foreground, boundary(, distance)]; they are fully
convolutional and use only ops that TFLite builtins, ONNX and TensorRT support (no Lambda,
no custom ops).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from training.models.mobilenet_unet import build_mobilenet_unet
from training.models.resnet import build_resnet
from training.models.simple_cnn import build_simple_cnn
from training.models.unet import build_unet

BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "simple_cnn": build_simple_cnn,
    "unet": build_unet,
    "resnet": build_resnet,
    "mobilenet_unet": build_mobilenet_unet,
}


def size_multiple(model: keras.Model, largest: int = 128) -> int:
    """What input H and W must be multiples of: the model's total downsampling, found by
    running it, so no architecture has to declare it. A side of 3p passes every layer only
    when p is a multiple of it (a deeper level would floor 1.5 to 1 and its skip connection
    would not line up)."""
    failure: Exception | None = None
    multiple = 1
    while multiple <= largest:
        side = 3 * multiple
        try:
            output = model(np.zeros((1, side, side, model.input_shape[-1]), np.float32))
        except Exception as error:  # TensorFlow and Keras raise several kinds for a bad shape
            failure, multiple = error, multiple * 2
            continue
        if tuple(output.shape[1:3]) != (side, side):
            raise ValueError(f"{model.name} maps {side}x{side} px to {output.shape[1:3]}")
        return multiple
    raise ValueError(f"{model.name} runs on no input side up to {3 * largest} px: {failure}")


def build_model(name: str, **kwargs) -> keras.Model:
    if name not in BUILDERS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)
