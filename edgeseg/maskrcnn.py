"""Mask R-CNN inference without TensorFlow: anchors, box coding, NMS, RoIAlign, label assembly.

The network is exported as three graphs with static, edge-friendly ops only:

* stage 1, image -> FPN maps ``p2``..``p5`` + ``rpn_logits`` (N, K) + ``rpn_deltas`` (N, K, 4),
  fully convolutional;
* the box head, (R, 7, 7, C) RoI crops -> ``class_logits`` (R, 1 + classes) and
  ``box_deltas`` (R, 4 * classes);
* the mask head, (R, 14, 14, C) RoI crops -> ``mask_logits`` (R, 28, 28, classes).

Everything with a data-dependent count (proposal decoding, NMS, RoIAlign, mask pasting) runs
here in NumPy/OpenCV, because TFLite, ONNX-on-edge and TensorRT either lack NMS and dynamic
RoIAlign or run them slowly and differently per backend. The heads see a fixed number of RoIs
per call (``roi_batch``; the last call is zero-padded), so they export with static shapes.
The mask head runs only on the final detections, not on every proposal (proposals outnumber
nuclei several times), which is where most of the head compute would otherwise go.

Training imports the anchor, box-coding, IoU, NMS and RoIAlign code from this module, so the
runtime and the training graph share one implementation. Boxes are float (y1, x1, y2, x2) in
input-pixel units, pixel i covering [i, i + 1); all graphs output logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from edgeseg.postprocess import relabel_sequential

# dh/dw are clamped so exp() cannot overflow on an untrained or wild prediction.
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)

Stage = Callable[[np.ndarray], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class MaskRCNNConfig:
    """What training and the runtime must agree on: geometry, box coding, inference thresholds.

    Anchors of 8-64 px on strides 4-32 cover nuclei of 5-80 px; RoIs go to the FPN level
    ``floor(log2(sqrt(area) / roi_level_base))`` (the FPN paper's rule, 224 px -> P4), which
    puts nearly every nucleus on P2 where the features are finest.
    """

    strides: tuple[int, ...] = (4, 8, 16, 32)
    anchor_sizes: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    num_classes: int = 1
    pool_size: int = 7
    mask_pool_size: int = 14
    sampling_ratio: int = 2
    roi_level_base: float = 56.0
    rpn_box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    head_box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    proposal_area: float = 200.0  # keep one proposal per this many pixels (nuclei are dense)
    min_proposals: int = 300
    rpn_nms_iou: float = 0.7
    min_box_size: float = 1.0
    score_threshold: float = 0.5
    detection_nms_iou: float = 0.5
    max_detections: int = 1000
    mask_threshold: float = 0.5
    mask_overlap: float = 0.5  # drop an instance when more than this share is already taken
    min_area: int = 8
    roi_batch: int = 128  # fixed RoI count of the exported heads

    @property
    def mask_size(self) -> int:
        return 2 * self.mask_pool_size

    def proposal_count(self, height: int, width: int) -> int:
        """Proposals kept after RPN NMS at inference; 4x as many are decoded before it."""
        return max(self.min_proposals, math.ceil(height * width / self.proposal_area))

    @property
    def size_multiple(self) -> int:
        return max(self.strides)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f"p{int(math.log2(stride))}" for stride in self.strides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MaskRCNNConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def generate_anchors(
    height: int,
    width: int,
    strides: tuple[int, ...],
    sizes: tuple[float, ...],
    ratios: tuple[float, ...],
) -> np.ndarray:
    """(K, 4) anchors ordered level, row, column, ratio: the order stage 1 flattens its maps in.

    ``height`` and ``width`` are the network input size (a multiple of every stride); one
    anchor size per level, centred on each feature pixel's centre.
    """
    levels = []
    for stride, size in zip(strides, sizes, strict=True):
        rows, cols = height // stride, width // stride
        ratios_array = np.asarray(ratios, dtype=np.float64)
        half_h = size * np.sqrt(ratios_array) / 2
        half_w = size / np.sqrt(ratios_array) / 2
        cy = (np.arange(rows) + 0.5) * stride
        cx = (np.arange(cols) + 0.5) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")
        cy, cx = cy[..., None], cx[..., None]
        level = np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
        levels.append(level.reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


@lru_cache(maxsize=16)
def anchors_for(height: int, width: int, config: MaskRCNNConfig) -> np.ndarray:
    anchors = generate_anchors(
        height, width, config.strides, config.anchor_sizes, config.anchor_ratios
    )
    anchors.setflags(write=False)
    return anchors


def encode_boxes(
    boxes: np.ndarray, references: np.ndarray, weights: tuple[float, ...]
) -> np.ndarray:
    """Deltas (dy, dx, dh, dw) that move ``references`` onto ``boxes`` (Faster R-CNN coding)."""
    ref_h, ref_w = references[:, 2] - references[:, 0], references[:, 3] - references[:, 1]
    ref_cy, ref_cx = references[:, 0] + 0.5 * ref_h, references[:, 1] + 0.5 * ref_w
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cy, cx = boxes[:, 0] + 0.5 * h, boxes[:, 1] + 0.5 * w
    wy, wx, wh, ww = weights
    deltas = [
        wy * (cy - ref_cy) / ref_h,
        wx * (cx - ref_cx) / ref_w,
        wh * np.log(h / ref_h),
        ww * np.log(w / ref_w),
    ]
    return np.stack(deltas, axis=-1).astype(np.float32)


def decode_boxes(
    deltas: np.ndarray, references: np.ndarray, weights: tuple[float, ...]
) -> np.ndarray:
    """Inverse of `encode_boxes`; scale deltas are clamped so exp() stays finite."""
    wy, wx, wh, ww = weights
    ref_h, ref_w = references[:, 2] - references[:, 0], references[:, 3] - references[:, 1]
    ref_cy, ref_cx = references[:, 0] + 0.5 * ref_h, references[:, 1] + 0.5 * ref_w
    cy = deltas[:, 0] / wy * ref_h + ref_cy
    cx = deltas[:, 1] / wx * ref_w + ref_cx
    h = np.exp(np.minimum(deltas[:, 2] / wh, _MAX_LOG_SCALE)) * ref_h
    w = np.exp(np.minimum(deltas[:, 3] / ww, _MAX_LOG_SCALE)) * ref_w
    boxes = [cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w]
    return np.stack(boxes, axis=-1).astype(np.float32)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    limits = np.array([height, width, height, width], dtype=np.float32)
    return np.clip(boxes, 0.0, limits).astype(np.float32)


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of two box sets."""
    top = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.prod(np.clip(bottom - top, 0.0, None), axis=-1)
    area_first = np.prod(first[:, 2:] - first[:, :2], axis=-1)
    area_second = np.prod(second[:, 2:] - second[:, :2], axis=-1)
    union = area_first[:, None] + area_second[None, :] - intersection
    return intersection / np.maximum(union, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy NMS: indices of kept boxes, best first; ties keep the earlier box.

    The classic loop over precomputed coordinates (no per-step allocation of IoU matrices):
    about 10 ms for 1000 proposals, where NMS dominates the proposal step.
    """
    y1, x1, y2, x2 = (boxes[:, i].astype(np.float32) for i in range(4))
    areas = (y2 - y1) * (x2 - x1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < limit:
        best, order = order[0], order[1:]
        keep.append(best)
        height = np.minimum(y2[best], y2[order]) - np.maximum(y1[best], y1[order])
        width = np.minimum(x2[best], x2[order]) - np.maximum(x1[best], x1[order])
        overlap = np.maximum(height, 0.0) * np.maximum(width, 0.0)
        union = np.maximum(areas[best] + areas[order] - overlap, 1e-9)
        order = order[overlap <= iou_threshold * union]
    return np.asarray(keep, dtype=np.int64)


def propose(
    logits: np.ndarray,
    deltas: np.ndarray,
    anchors: np.ndarray,
    image_size: tuple[int, int],
    config: MaskRCNNConfig,
    pre_nms_topk: int,
    post_nms_topk: int,
) -> tuple[np.ndarray, np.ndarray]:
    """RPN outputs of one image -> (P, 4) proposals and their logits, best first."""
    top = np.argsort(-logits, kind="stable")[:pre_nms_topk]
    boxes = clip_boxes(decode_boxes(deltas[top], anchors[top], config.rpn_box_weights), *image_size)
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    valid = sizes >= config.min_box_size
    boxes, scores = boxes[valid], logits[top][valid]
    keep = nms(boxes, scores, config.rpn_nms_iou, post_nms_topk)
    return boxes[keep], scores[keep]


def roi_levels(boxes: np.ndarray, config: MaskRCNNConfig) -> np.ndarray:
    """Index of the FPN level each RoI is pooled from (see `MaskRCNNConfig`)."""
    size = np.sqrt(np.maximum(np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1), 1e-6))
    level = np.floor(np.log2(size / config.roi_level_base))
    return np.clip(level, 0, len(config.strides) - 1).astype(np.int32)


def _axis_weights(coords: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """Bilinear corner indices and weights along one axis; zero weight outside [0, length-1]."""
    low = np.clip(np.floor(coords), 0, length - 2).astype(np.int64)
    fraction = coords - low
    inside = (coords >= 0) & (coords <= length - 1)
    return low, low + 1, (1.0 - fraction) * inside, fraction * inside


def roi_align(
    features: np.ndarray, boxes: np.ndarray, stride: int, output_size: int, sampling_ratio: int
) -> np.ndarray:
    """(h, w, C) map, (R, 4) image-space boxes -> (R, S, S, C) RoIAlign crops.

    Detectron2's aligned RoIAlign: box edges map to ``edge / stride - 0.5`` in feature-pixel
    coordinates, each of the S x S bins averages ``sampling_ratio``^2 bilinear samples, and
    samples up to one pixel outside the map take the edge value (zero further out).
    """
    padded = np.pad(features.astype(np.float32), ((1, 1), (1, 1), (0, 0)), mode="edge")
    count = output_size * sampling_ratio
    grid = (np.arange(count) + 0.5) / count
    scaled = boxes.astype(np.float64) / stride - 0.5 + 1.0  # +1: the edge padding
    ys = scaled[:, 0:1] + grid * (scaled[:, 2:3] - scaled[:, 0:1])
    xs = scaled[:, 1:2] + grid * (scaled[:, 3:4] - scaled[:, 1:2])
    y0, y1, wy0, wy1 = _axis_weights(ys, padded.shape[0])
    x0, x1, wx0, wx1 = _axis_weights(xs, padded.shape[1])
    samples = np.zeros((len(boxes), count, count, features.shape[-1]), np.float32)
    for yi, wy in ((y0, wy0), (y1, wy1)):
        for xi, wx in ((x0, wx0), (x1, wx1)):
            weight = (wy[:, :, None] * wx[:, None, :]).astype(np.float32)[..., None]
            samples += weight * padded[yi[:, :, None], xi[:, None, :]]
    shape = (len(boxes), output_size, sampling_ratio, output_size, sampling_ratio, -1)
    return samples.reshape(shape).mean(axis=(2, 4))


def multilevel_roi_align(
    features: list[np.ndarray], boxes: np.ndarray, config: MaskRCNNConfig, output_size: int
) -> np.ndarray:
    """RoIAlign each box on its FPN level (`roi_levels`); features are (h, w, C) per level."""
    levels = roi_levels(boxes, config)
    crops = np.zeros((len(boxes), output_size, output_size, features[0].shape[-1]), np.float32)
    for level, (feature, stride) in enumerate(zip(features, config.strides, strict=True)):
        chosen = np.flatnonzero(levels == level)
        if chosen.size:
            crops[chosen] = roi_align(
                feature, boxes[chosen], stride, output_size, config.sampling_ratio
            )
    return crops


def run_in_batches(stage: Stage, crops: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """Run a fixed-RoI-count head over any number of crops, zero-padding the last call."""
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(crops), batch):
        chunk = crops[start : start + batch]
        filler = np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)
        result = stage(np.concatenate([chunk, filler]))
        for name, value in result.items():
            outputs.setdefault(name, []).append(np.asarray(value)[: len(chunk)])
    return {name: np.concatenate(values) for name, values in outputs.items()}


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def paste_mask(
    mask: np.ndarray, box: np.ndarray, shape: tuple[int, int], threshold: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Resample an (S, S) probability mask into its box: (window, boolean mask in window)."""
    y_start, x_start = (max(0, int(math.floor(v))) for v in box[:2])
    y_stop, x_stop = min(shape[0], int(math.ceil(box[2]))), min(shape[1], int(math.ceil(box[3])))
    size = mask.shape[0]
    height, width = max(box[2] - box[0], 1e-6), max(box[3] - box[1], 1e-6)
    rows = ((np.arange(y_start, y_stop) + 0.5 - box[0]) / height * size - 0.5).astype(np.float32)
    cols = ((np.arange(x_start, x_stop) + 0.5 - box[1]) / width * size - 0.5).astype(np.float32)
    window = (slice(y_start, y_stop), slice(x_start, x_stop))
    if rows.size == 0 or cols.size == 0:
        return window, np.zeros((rows.size, cols.size), bool)
    map_y, map_x = np.meshgrid(rows, cols, indexing="ij")
    resampled = cv2.remap(
        mask.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return window, resampled >= threshold


def assemble_labels(
    shape: tuple[int, int],
    boxes: np.ndarray,
    masks: np.ndarray,
    scores: np.ndarray,
    config: MaskRCNNConfig,
) -> np.ndarray:
    """uint16 label image from per-detection masks; where masks overlap, higher score wins.

    Instances are painted best first onto free pixels only; one that finds more than
    ``mask_overlap`` of its pixels already taken is a duplicate and is dropped.
    """
    labels = np.zeros(shape, np.int32)
    next_id = 1
    for index in np.argsort(-scores, kind="stable"):
        window, inside = paste_mask(masks[index], boxes[index], shape, config.mask_threshold)
        total = int(inside.sum())
        free = inside & (labels[window] == 0)
        if total == 0 or free.sum() < (1.0 - config.mask_overlap) * total:
            continue
        labels[window][free] = next_id
        next_id += 1
    return relabel_sequential(labels, config.min_area)


@dataclass
class Candidates:
    """The box head's verdict on every proposal of one image, before any threshold.

    Kept apart from the detections so that threshold tuning (training/maskrcnn/tune.py) runs
    the graphs once per image and only `select_detections` and the mask pasting per setting.
    """

    features: list[np.ndarray]  # FPN maps, (h, w, C) per level
    boxes: np.ndarray  # (P, classes, 4) refined boxes, clipped to the image
    probabilities: np.ndarray  # (P, classes) class probabilities, background left out


def select_detections(
    candidates: Candidates, config: MaskRCNNConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(proposal, 0-based class) indices of the detections, best first: per-class score
    threshold and NMS, then at most ``max_detections`` over all classes."""
    proposals, classes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for index in range(candidates.probabilities.shape[1]):
        scores = candidates.probabilities[:, index]
        confident = np.flatnonzero(scores >= config.score_threshold)
        kept = nms(
            candidates.boxes[confident, index],
            scores[confident],
            config.detection_nms_iou,
            config.max_detections,
        )
        proposals.append(confident[kept])
        classes.append(np.full(kept.size, index, np.int64))
    chosen, chosen_classes = np.concatenate(proposals), np.concatenate(classes)
    scores = candidates.probabilities[chosen, chosen_classes]
    best = np.argsort(-scores, kind="stable")[: config.max_detections]
    return chosen[best], chosen_classes[best]


@dataclass
class Detections:
    boxes: np.ndarray  # (D, 4) refined boxes
    scores: np.ndarray  # (D,)
    classes: np.ndarray  # (D,) 1-based class ids
    masks: np.ndarray  # (D, S, S) mask probabilities in each box's frame


class MaskRCNN:
    """The three exported graphs (any backend, as callables returning name -> array dicts)."""

    def __init__(
        self, config: MaskRCNNConfig, stage1: Stage, box_head: Stage, mask_head: Stage
    ) -> None:
        self.config = config
        self.stage1, self.box_head, self.mask_head = stage1, box_head, mask_head

    def candidates(self, image: np.ndarray) -> Candidates:
        """Normalised float32 (H, W) image -> stage 1, proposals, and the box head on them."""
        config = self.config
        multiple = config.size_multiple
        height, width = image.shape
        padded = np.pad(image, ((0, -height % multiple), (0, -width % multiple)))
        outputs = self.stage1(padded[None, ..., None].astype(np.float32))
        features = [np.asarray(outputs[name])[0] for name in config.feature_names]
        count = config.proposal_count(height, width)
        proposals, _ = propose(
            np.asarray(outputs["rpn_logits"])[0],
            np.asarray(outputs["rpn_deltas"])[0],
            anchors_for(*padded.shape, config),
            (height, width),
            config,
            4 * count,
            count,
        )
        classes = config.num_classes
        if not len(proposals):
            empty = np.zeros((0, classes), np.float32)
            return Candidates(features, np.zeros((0, classes, 4), np.float32), empty)
        crops = multilevel_roi_align(features, proposals, config, config.pool_size)
        heads = run_in_batches(self.box_head, crops, config.roi_batch)
        deltas = heads["box_deltas"].reshape(len(proposals), classes, 4)
        boxes = [
            clip_boxes(
                decode_boxes(deltas[:, index], proposals, config.head_box_weights), height, width
            )
            for index in range(classes)
        ]
        probabilities = _softmax(heads["class_logits"])[:, 1:].astype(np.float32)
        return Candidates(features, np.stack(boxes, axis=1), probabilities)

    def predict_masks(
        self, features: list[np.ndarray], boxes: np.ndarray, classes: np.ndarray
    ) -> np.ndarray:
        """(D, S, S) mask probabilities of boxes (``classes`` 0-based) from the mask head."""
        config = self.config
        if not len(boxes):
            return np.zeros((0, config.mask_size, config.mask_size), np.float32)
        crops = multilevel_roi_align(features, boxes, config, config.mask_pool_size)
        logits = run_in_batches(self.mask_head, crops, config.roi_batch)["mask_logits"]
        return _sigmoid(logits[np.arange(len(boxes)), :, :, classes])

    def detect(self, image: np.ndarray) -> Detections:
        """Normalised float32 (H, W) image -> detections in image coordinates."""
        found = self.candidates(image)
        proposals, classes = select_detections(found, self.config)
        boxes = found.boxes[proposals, classes]
        masks = self.predict_masks(found.features, boxes, classes)
        return Detections(boxes, found.probabilities[proposals, classes], classes + 1, masks)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Normalised float32 (H, W) image -> uint16 (H, W) instance labels."""
        found = self.detect(image)
        return assemble_labels(image.shape, found.boxes, found.masks, found.scores, self.config)
