"""Building blocks shared by the models."""

from __future__ import annotations

from keras import layers


def conv_bn_relu(x, filters: int, kernel_size: int = 3, strides: int = 1, name: str = ""):
    """Conv (no bias: BN follows) + BatchNorm + ReLU; BN folds into the conv at export."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def probability_head(x, channels: int = 2, name: str = "probabilities"):
    """The output maps: [foreground, boundary], or with ``channels`` 3 also the distance map
    (edgeseg.manifest.CHANNEL_LAYOUTS)."""
    return layers.Conv2D(channels, 1, activation="sigmoid", dtype="float32", name=name)(x)
