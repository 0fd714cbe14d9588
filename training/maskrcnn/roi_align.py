"""RoIAlign inside the training graph, built on tf.image.crop_and_resize.

crop_and_resize samples a regular grid between two corner points with zero outside the map,
so placing its corners on the first and last RoIAlign sample of each box, on a map padded by
one edge-replicated pixel, gives exactly the samples of edgeseg.maskrcnn.roi_align; an
average pool over each sampling_ratio x sampling_ratio group then makes the bins. Its gradient
flows into the FPN maps.
"""

from __future__ import annotations

import tensorflow as tf


def roi_align(
    features: list[tf.Tensor],
    boxes: tf.Tensor,
    batch_indices: tf.Tensor,
    levels: tf.Tensor,
    strides: tuple[int, ...],
    output_size: int,
    sampling_ratio: int,
) -> tf.Tensor:
    """(M, 4) image-space boxes of images ``batch_indices`` on FPN ``levels`` -> (M, S, S, C)."""
    count = output_size * sampling_ratio
    positions, parts = [], []
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        chosen = tf.cast(tf.where(tf.equal(levels, level))[:, 0], tf.int32)
        padded = tf.pad(feature, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        scaled = tf.gather(boxes, chosen) / float(stride) + 0.5  # -0.5 alignment, +1 padding
        start, extent = scaled[:, :2], scaled[:, 2:] - scaled[:, :2]
        first = start + (0.5 / count) * extent
        last = start + ((count - 0.5) / count) * extent
        limits = tf.cast(tf.shape(padded)[1:3] - 1, tf.float32)
        corners = tf.concat([first / limits, last / limits], axis=1)
        crops = tf.image.crop_and_resize(
            padded, corners, tf.gather(batch_indices, chosen), [count, count]
        )
        positions.append(chosen)
        parts.append(crops)
    samples = tf.dynamic_stitch(positions, parts)
    return tf.nn.avg_pool2d(samples, sampling_ratio, sampling_ratio, "VALID")
