"""The standard Mask R-CNN losses, each normalised as in Detectron2.

RPN: objectness BCE and smooth-L1 (beta 1/9) deltas over the sampled anchors; head: softmax
CE over sampled RoIs and smooth-L1 (beta 1) deltas of the GT class on positives; mask: per-pixel
BCE on the GT class channel of the positive RoIs only.
"""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(difference: tf.Tensor, beta: float) -> tf.Tensor:
    absolute = tf.abs(difference)
    return tf.where(absolute < beta, 0.5 * absolute**2 / beta, absolute - 0.5 * beta)


def rpn_losses(
    logits: tf.Tensor, deltas: tf.Tensor, labels: tf.Tensor, targets: tf.Tensor, sampled: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Objectness and box losses; ``labels`` is 1/0/-1 per anchor, normalised by N x sampled."""
    normalizer = tf.cast(tf.shape(labels)[0] * sampled, tf.float32)
    positive = tf.cast(labels == 1, tf.float32)
    valid = tf.cast(labels >= 0, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
    objectness = tf.reduce_sum(bce * valid) / normalizer
    box = tf.reduce_sum(smooth_l1(deltas - targets, 1.0 / 9.0) * positive[..., None])
    return objectness, box / normalizer


def _class_channel(values: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    """values[i, ..., classes[i] - 1] for class-specific outputs (background -> channel 0)."""
    return tf.gather(values, tf.maximum(classes - 1, 0), axis=-1, batch_dims=1)


def head_losses(
    class_logits: tf.Tensor,
    box_deltas: tf.Tensor,
    classes: tf.Tensor,
    targets: tf.Tensor,
    weights: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Classification and box losses over (M,) sampled RoIs, normalised by their count."""
    normalizer = tf.maximum(tf.reduce_sum(weights), 1.0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=class_logits)
    classification = tf.reduce_sum(ce * weights) / normalizer
    per_class = tf.transpose(tf.reshape(box_deltas, [tf.shape(box_deltas)[0], -1, 4]), [0, 2, 1])
    chosen = _class_channel(per_class, classes)
    positive = tf.cast(classes > 0, tf.float32) * weights
    box = tf.reduce_sum(smooth_l1(chosen - targets, 1.0) * positive[:, None]) / normalizer
    return classification, box


def mask_loss(
    mask_logits: tf.Tensor, classes: tf.Tensor, targets: tf.Tensor, weights: tf.Tensor
) -> tf.Tensor:
    """Mean per-pixel BCE of the GT class mask over the (M,) positive RoIs with weight 1."""
    chosen = _class_channel(mask_logits, classes)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=chosen)
    per_roi = tf.reduce_mean(bce, axis=[1, 2])
    return tf.reduce_sum(per_roi * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
