"""U-Net (Ronneberger et al. 2015) sized for edge CPUs.

As in the survey: 19 convolutions and 4 transposed convolutions, sigmoid output, Adam. The
widths start at 16 instead of 64 (about 16x fewer FLOPs), and BatchNorm is added so it trains
from scratch in a few CPU hours.
"""

from __future__ import annotations

import keras
from keras import layers

from training.models.layers import conv_bn_relu, probability_head


def build_unet(base_filters: int = 16, depth: int = 4, channels: int = 2) -> keras.Model:
    inputs = keras.Input(shape=(None, None, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        filters = base_filters * 2**level
        x = conv_bn_relu(x, filters, name=f"down{level}a")
        x = conv_bn_relu(x, filters, name=f"down{level}b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = conv_bn_relu(x, base_filters * 2**depth, name="bottom_a")
    x = conv_bn_relu(x, base_filters * 2**depth, name="bottom_b")
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_bn_relu(x, filters, name=f"dec{level}a")
        x = conv_bn_relu(x, filters, name=f"dec{level}b")
    return keras.Model(inputs, probability_head(x, channels), name="unet")
