"""Model registry: every trainable edgeseg model, built by name.

All models take NHWC float32 (N, H, W, 1) from edgeseg.preprocess.normalize and return
(N, H, W, channels) sigmoid probabilities [foreground, boundary(, distance)]; they are fully
convolutional and use only ops that TFLite builtins, ONNX and TensorRT support (no Lambda,
no custom ops).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from training.models.mobilenet_unet import DOWNSAMPLING as MOBILENET_DOWNSAMPLING
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


def size_multiple(name: str, model_kwargs: dict) -> int:
    """What input H and W must be multiples of: the model's total downsampling."""
    if name == "unet":
        return 2 ** model_kwargs.get("depth", 4)
    if name == "resnet":
        return 2 ** (len(model_kwargs.get("widths", (16, 32, 64, 128, 256))) - 1)
    if name == "mobilenet_unet":
        return MOBILENET_DOWNSAMPLING
    return 1


def pretrained_weights(name: str, model_kwargs: dict) -> str | None:
    """Where a model's starting weights came from, if not random: cards and manifests say so."""
    if name == "mobilenet_unet" and model_kwargs.get("pretrained", True):
        return "encoder: torchvision's ImageNet MobileNetV2 (training/pretrained/PROVENANCE.md)"
    return None


def build_model(name: str, **kwargs) -> keras.Model:
    if name not in BUILDERS:
        raise KeyError(f"unknown model {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[name](**kwargs)
