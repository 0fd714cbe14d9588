"""The three Mask R-CNN graphs as plain Keras functional models (see edgeseg/maskrcnn.py).

Only Conv2D, BatchNorm, ReLU, Add, UpSampling2D, Reshape, Concatenate, Dense and
Conv2DTranspose: ops every edge converter supports. No NMS, no RoIAlign, no Lambda inside a
graph; all outputs are logits.
"""

from __future__ import annotations

import keras
from keras import layers

from training.maskrcnn.config import MaskRCNNTrainConfig
from training.models.layers import conv_bn_relu
from training.models.resnet import residual_block


def _small_init(stddev: float) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=stddev)


def build_stage1(config: MaskRCNNTrainConfig) -> keras.Model:
    """Image -> FPN maps (one per stride) + RPN logits (N, K) and deltas (N, K, 4).

    ResNet-18 layout (2 blocks per stage, strides 4-32) at half width with a two-conv 3x3
    stem, since no pretrained weights exist for one normalised channel. The RPN head is
    shared over levels; its outputs are flattened level by level in (row, column, anchor)
    order, matching edgeseg.maskrcnn.generate_anchors.
    """
    runtime = config.runtime
    inputs = keras.Input(shape=(None, None, 1), name="image")
    x = conv_bn_relu(inputs, config.stem_width, strides=2, name="stem1")
    x = conv_bn_relu(x, config.widths[0], strides=2, name="stem2")
    stages = []
    for stage, filters in enumerate(config.widths):
        for block in range(config.blocks):
            strides = 2 if (block == 0 and stage > 0) else 1
            x = residual_block(x, filters, strides, name=f"c{stage + 2}_block{block}")
        stages.append(x)
    names = runtime.feature_names
    top = layers.Conv2D(config.fpn_channels, 1, name=f"lateral_{names[-1]}")(stages[-1])
    merged = [top]
    for index in reversed(range(len(stages) - 1)):
        lateral = layers.Conv2D(config.fpn_channels, 1, name=f"lateral_{names[index]}")(
            stages[index]
        )
        upsampled = layers.UpSampling2D(2, name=f"upsample_{names[index]}")(merged[0])
        merged.insert(0, layers.Add(name=f"merge_{names[index]}")([upsampled, lateral]))
    features = [
        layers.Conv2D(config.fpn_channels, 3, padding="same", name=name)(level)
        for name, level in zip(names, merged, strict=True)
    ]
    anchors = len(runtime.anchor_ratios)
    rpn_conv = layers.Conv2D(
        config.fpn_channels,
        3,
        padding="same",
        activation="relu",
        kernel_initializer=_small_init(0.01),
        name="rpn_conv",
    )
    rpn_logits = layers.Conv2D(anchors, 1, kernel_initializer=_small_init(0.01), name="rpn_cls")
    rpn_deltas = layers.Conv2D(4 * anchors, 1, kernel_initializer=_small_init(0.01), name="rpn_box")
    logits, deltas = [], []
    for name, feature in zip(names, features, strict=True):
        hidden = rpn_conv(feature)
        logits.append(layers.Reshape((-1,), name=f"rpn_logits_{name}")(rpn_logits(hidden)))
        deltas.append(layers.Reshape((-1, 4), name=f"rpn_deltas_{name}")(rpn_deltas(hidden)))
    outputs = [
        *features,
        layers.Concatenate(axis=1, name="rpn_logits")(logits),
        layers.Concatenate(axis=1, name="rpn_deltas")(deltas),
    ]
    return keras.Model(inputs, outputs, name="maskrcnn_stage1")


def build_box_head(config: MaskRCNNTrainConfig) -> keras.Model:
    """(R, 7, 7, C) RoI crops -> class logits (R, 1 + classes) and box deltas (R, 4 * classes)."""
    runtime = config.runtime
    size = runtime.pool_size
    inputs = keras.Input(shape=(size, size, config.fpn_channels), name="box_crops")
    x = layers.Flatten(name="box_flatten")(inputs)
    for index in range(2):
        x = layers.Dense(config.box_head_units, activation="relu", name=f"box_fc{index}")(x)
    logits = layers.Dense(
        runtime.num_classes + 1, kernel_initializer=_small_init(0.01), name="class_logits"
    )(x)
    deltas = layers.Dense(
        4 * runtime.num_classes, kernel_initializer=_small_init(0.001), name="box_deltas"
    )(x)
    return keras.Model(inputs, [logits, deltas], name="maskrcnn_box_head")


def build_mask_head(config: MaskRCNNTrainConfig) -> keras.Model:
    """(R, 14, 14, C) RoI crops -> mask logits (R, 28, 28, classes)."""
    runtime = config.runtime
    size = runtime.mask_pool_size
    inputs = keras.Input(shape=(size, size, config.fpn_channels), name="mask_crops")
    x = inputs
    for index in range(config.mask_head_convs):
        x = layers.Conv2D(
            config.mask_head_channels,
            3,
            padding="same",
            activation="relu",
            name=f"mask_conv{index}",
        )(x)
    x = layers.Conv2DTranspose(
        config.mask_head_channels, 2, strides=2, activation="relu", name="mask_upsample"
    )(x)
    logits = layers.Conv2D(runtime.num_classes, 1, name="mask_logits")(x)
    return keras.Model(inputs, logits, name="maskrcnn_mask_head")
