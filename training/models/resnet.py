"""A ResNet-18-style encoder (He et al. 2016) with a light FPN-like decoder.

No pretrained weights can be downloaded here, so it trains from scratch: the stem keeps
full resolution (nuclei can be 5 px wide) and widths are narrow for CPU inference. The
decoder adds 1x1 lateral projections of each stage to the upsampled coarser map, one 3x3
conv per level: much lighter than the U-Net decoder.
"""

from __future__ import annotations

import keras
from keras import layers

from training.models.layers import conv_bn_relu, probability_head


def residual_block(x, filters: int, strides: int, name: str):
    shortcut = x
    y = conv_bn_relu(x, filters, strides=strides, name=f"{name}_1")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
        )(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def build_resnet(
    widths: tuple[int, ...] = (16, 32, 64, 128, 256),
    blocks: int = 2,
    decoder_filters: int = 32,
    channels: int = 2,
) -> keras.Model:
    inputs = keras.Input(shape=(None, None, 1), name="image")
    x = conv_bn_relu(inputs, widths[0], name="stem")
    features = []
    for stage, filters in enumerate(widths):
        for block in range(blocks):
            strides = 2 if (block == 0 and stage > 0) else 1
            x = residual_block(x, filters, strides, name=f"stage{stage}_block{block}")
        features.append(x)
    x = layers.Conv2D(decoder_filters, 1, name=f"lateral{len(widths) - 1}")(features[-1])
    for stage in reversed(range(len(widths) - 1)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"upsample{stage}")(x)
        lateral = layers.Conv2D(decoder_filters, 1, name=f"lateral{stage}")(features[stage])
        x = layers.Add(name=f"merge{stage}")([x, lateral])
        x = conv_bn_relu(x, decoder_filters, name=f"smooth{stage}")
    return keras.Model(inputs, probability_head(x, channels), name="resnet")
