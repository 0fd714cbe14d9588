"""Training targets in NumPy: anchor labels for the RPN, sampled RoIs, box and mask targets.

They run inside the TF training step through tf.numpy_function, so they share box coding,
IoU, NMS, proposal decoding and RoIAlign with the runtime (edgeseg.maskrcnn) instead of
re-implementing them in TensorFlow. Sampling is seeded per step for reproducible runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeseg.maskrcnn import (
    anchors_for,
    box_iou,
    encode_boxes,
    propose,
    roi_align,
    roi_levels,
)
from training.maskrcnn.config import MaskRCNNTrainConfig
from training.maskrcnn.data import instance_boxes


def assign_anchors(
    anchors: np.ndarray, gt_boxes: np.ndarray, positive_iou: float, negative_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor: label 1 / 0 / -1 (positive, negative, ignored) and matched GT index.

    IoU >= ``positive_iou`` is positive, < ``negative_iou`` negative; each GT's best anchors
    (all ties) are positive and matched to that GT, so every nucleus, however small or
    oddly shaped, has at least one anchor to learn from.
    """
    labels = np.full(len(anchors), -1, np.int32)
    matched = np.zeros(len(anchors), np.int64)
    if not len(gt_boxes):
        labels[:] = 0
        return labels, matched
    iou = box_iou(anchors, gt_boxes)
    matched = iou.argmax(axis=1)
    best = iou.max(axis=1)
    labels[best < negative_iou] = 0
    labels[best >= positive_iou] = 1
    gt_best = iou.max(axis=0)
    rows, cols = np.nonzero((iou == gt_best[None, :]) & (gt_best[None, :] > 0))
    labels[rows] = 1
    matched[rows] = cols
    return labels, matched


def subsample(
    labels: np.ndarray, total: int, positive_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Keep at most ``total`` labelled entries, positives up to their fraction; rest -> -1."""
    labels = labels.copy()
    positives = np.flatnonzero(labels == 1)
    keep_positive = min(len(positives), int(total * positive_fraction))
    labels[rng.permutation(positives)[keep_positive:]] = -1
    negatives = np.flatnonzero(labels == 0)
    labels[rng.permutation(negatives)[total - keep_positive :]] = -1
    return labels


@dataclass
class RoiTargets:
    """Fixed-size per-image RoI targets; positives come first, padding has weight 0."""

    rois: np.ndarray  # (R, 4)
    classes: np.ndarray  # (R,) 0 background, 1.. classes
    deltas: np.ndarray  # (R, 4) head-coded offsets to the matched GT (positives only)
    weights: np.ndarray  # (R,) 1 for sampled RoIs, 0 for padding
    matched: np.ndarray  # (R,) matched GT index
    positives: int


def sample_rois(
    proposals: np.ndarray,
    gt_boxes: np.ndarray,
    config: MaskRCNNTrainConfig,
    rng: np.random.Generator,
) -> RoiTargets:
    """Sample RoIs from proposals plus the GT boxes: IoU >= roi_positive_iou is positive."""
    count = config.rois_per_image
    candidates = np.concatenate([proposals, gt_boxes]).astype(np.float32)
    if len(gt_boxes):
        iou = box_iou(candidates, gt_boxes)
        matched, best = iou.argmax(axis=1), iou.max(axis=1)
    else:
        matched, best = np.zeros(len(candidates), np.int64), np.zeros(len(candidates))
    positive = rng.permutation(np.flatnonzero(best >= config.roi_positive_iou))
    positive = positive[: int(count * config.roi_positive_fraction)]
    negative = rng.permutation(np.flatnonzero(best < config.roi_positive_iou))
    chosen = np.concatenate([positive, negative[: count - len(positive)]]).astype(np.int64)
    targets = RoiTargets(
        rois=np.zeros((count, 4), np.float32),
        classes=np.zeros(count, np.int32),
        deltas=np.zeros((count, 4), np.float32),
        weights=np.zeros(count, np.float32),
        matched=np.zeros(count, np.int64),
        positives=len(positive),
    )
    targets.rois[: len(chosen)] = candidates[chosen]
    targets.weights[: len(chosen)] = 1.0
    targets.matched[: len(chosen)] = matched[chosen]
    targets.classes[: len(positive)] = 1  # one foreground class: nucleus
    if len(positive):
        targets.deltas[: len(positive)] = encode_boxes(
            gt_boxes[matched[positive]], candidates[positive], config.runtime.head_box_weights
        )
    return targets


def mask_targets(labels: np.ndarray, ids: np.ndarray, rois: np.ndarray, size: int) -> np.ndarray:
    """(M, size, size) binary masks of instance ``ids[m]`` inside ``rois[m]`` (RoIAligned)."""
    targets = np.zeros((len(rois), size, size), np.float32)
    for row, (instance, roi) in enumerate(zip(ids, rois, strict=True)):
        mask = (labels == instance).astype(np.float32)[..., None]
        targets[row] = roi_align(mask, roi[None], 1, size, 2)[0, ..., 0] >= 0.5
    return targets


def batch_targets(
    rpn_logits: np.ndarray,
    rpn_deltas: np.ndarray,
    labels: np.ndarray,
    seed: np.ndarray,
    config: MaskRCNNTrainConfig,
) -> tuple[np.ndarray, ...]:
    """All targets of one batch, stacked; the outputs of the tf.numpy_function in train_step.

    Returns rpn_labels (N, K), rpn_deltas (N, K, 4), rois (N, R, 4), roi_levels (N, R),
    roi_classes (N, R), roi_deltas (N, R, 4), roi_weights (N, R), mask_rois (N, M, 4),
    mask_levels (N, M), mask_classes (N, M), mask_targets (N, M, S, S), mask_weights (N, M).
    """
    runtime = config.runtime
    rng = np.random.default_rng(seed.tolist())
    anchors = anchors_for(labels.shape[1], labels.shape[2], runtime)
    size = (labels.shape[1], labels.shape[2])
    count = config.mask_rois_per_image
    outputs: list[list[np.ndarray]] = [[] for _ in range(12)]
    for image in range(len(labels)):
        ids, gt_boxes = instance_boxes(labels[image], config.min_instance_area)
        anchor_labels, matched = assign_anchors(
            anchors, gt_boxes, config.rpn_positive_iou, config.rpn_negative_iou
        )
        anchor_labels = subsample(
            anchor_labels, config.rpn_batch_per_image, config.rpn_positive_fraction, rng
        )
        anchor_deltas = np.zeros((len(anchors), 4), np.float32)
        positive = np.flatnonzero(anchor_labels == 1)
        anchor_deltas[positive] = encode_boxes(
            gt_boxes[matched[positive]], anchors[positive], runtime.rpn_box_weights
        )
        proposals, _ = propose(
            rpn_logits[image],
            rpn_deltas[image],
            anchors,
            size,
            runtime,
            config.train_pre_nms_topk,
            config.train_post_nms_topk,
        )
        rois = sample_rois(proposals, gt_boxes, config, rng)
        masked = min(rois.positives, count)
        mask_rois = np.zeros((count, 4), np.float32)
        mask_rois[:masked] = rois.rois[:masked]
        mask_ids = ids[rois.matched[:masked]] if len(ids) else ids[:0]
        masks = np.zeros((count, runtime.mask_size, runtime.mask_size), np.float32)
        masks[:masked] = mask_targets(
            labels[image], mask_ids, mask_rois[:masked], runtime.mask_size
        )
        mask_classes = np.zeros(count, np.int32)
        mask_classes[:masked] = rois.classes[:masked]
        values = (
            anchor_labels,
            anchor_deltas,
            rois.rois,
            roi_levels(rois.rois, runtime),
            rois.classes,
            rois.deltas,
            rois.weights,
            mask_rois,
            roi_levels(mask_rois, runtime),
            mask_classes,
            masks,
            (np.arange(count) < masked).astype(np.float32),
        )
        for output, value in zip(outputs, values, strict=True):
            output.append(value)
    return tuple(np.stack(output) for output in outputs)
