"""The survey's baseline "Simple CNN": BatchNorm, per-pixel dense layers, 3x3 convolutions.

Everything runs at full resolution with no pooling, so its receptive field stays small: it
is the baseline that shows what context (U-Net, ResNet) buys, not a U-Net in disguise.
"""

from __future__ import annotations

import keras
from keras import layers

from training.models.layers import probability_head


def build_simple_cnn(
    filters: int = 16,
    conv_layers: int = 3,
    dense_layers: int = 6,
    dense_units: int = 32,
    channels: int = 2,
) -> keras.Model:
    inputs = keras.Input(shape=(None, None, 1), name="image")
    x = layers.BatchNormalization(name="input_bn")(inputs)
    for index in range(conv_layers):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
    for index in range(dense_layers):  # a Dense layer applied per pixel is a 1x1 convolution
        x = layers.Conv2D(dense_units, 1, activation="relu", name=f"dense{index}")(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv_out")(x)
    return keras.Model(inputs, probability_head(x, channels), name="simple_cnn")
