"""Segmentation scores: the one implementation that training, export checks and benchmarks share.

Pixel scores compare foreground (label > 0) masks. Instance scores follow the Kaggle Data
Science Bowl 2018 rules so numbers are comparable with published results and other tools:

* a true and a predicted nucleus match when their IoU is *strictly* greater than a threshold
  t. For t >= 0.5 matching is unique: IoU > 0.5 means the prediction covers more than half of
  the true nucleus, and disjoint predictions cannot both do that, so no assignment problem
  needs solving;
* per threshold, TP/(TP+FP+FN); the DSB score is its mean over t = 0.50, 0.55, ..., 0.95.

Ratios that would be 0/0 follow one rule: 1 when the image has neither true nor predicted
nuclei (the perfect answer), 0 otherwise. So precision is 0 for an empty prediction of an image
with nuclei, and recall is 0 for predictions on an image without nuclei: a per-image score is 1
only for a perfect answer, and an empty prediction never lifts an average.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# k/20 is the correctly rounded double of 0.50 ... 0.95, which np.arange(0.5, 1.0, 0.05) is
# not; an IoU exactly equal to a threshold (e.g. 6/10 vs 0.6) then compares equal, never above.
DSB_THRESHOLDS = np.arange(10, 20) / 20

# Above this many bins the joint histogram would be too large; fall back to sorting.
_MAX_BINCOUNT_BINS = 1 << 24


def _check_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"shape mismatch: true {true.shape} vs pred {pred.shape}")
    for name, labels in (("true", true), ("pred", pred)):
        if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} labels must be integers, got {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} labels must be >= 0 (0 is background)")
    return _as_integers(true), _as_integers(pred)


def _as_integers(labels: np.ndarray) -> np.ndarray:
    """A boolean mask (one instance) as uint8 labels, so it indexes like any label image."""
    return labels.view(np.uint8) if labels.dtype == bool else labels


def _ratio(numerator: float, denominator: float, perfect: bool) -> float:
    """numerator/denominator, with 0/0 scoring 1 for a perfect (empty vs empty) image, else 0."""
    if denominator == 0:
        return 1.0 if perfect else 0.0
    return float(numerator / denominator)


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to 1..n in increasing order (0 stays background); also return the n areas."""
    flat = labels.ravel()
    top = int(flat.max(initial=0))
    if top < _MAX_BINCOUNT_BINS:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
        present = counts > 0
        present[0] = False
        lookup = np.cumsum(present)
        lookup[0] = 0
        return lookup[flat], counts[present]
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if ids[0] == 0:
        return inverse.ravel(), counts[1:]
    return inverse.ravel() + 1, counts


def _overlaps(
    true: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse joint histogram: (true index, pred index, intersection) of overlapping pairs.

    Indices are 0-based over the instances sorted by id; areas are returned alongside.
    """
    true_flat, true_areas = _relabel(true)
    pred_flat, pred_areas = _relabel(pred)
    both = (true_flat > 0) & (pred_flat > 0)
    width = pred_areas.size + 1
    keys = true_flat[both].astype(np.int64) * width + pred_flat[both]
    if (true_areas.size + 1) * width <= _MAX_BINCOUNT_BINS:
        counts = np.bincount(keys, minlength=1)
        keys = np.flatnonzero(counts)
        intersections = counts[keys]
    else:
        keys, intersections = np.unique(keys, return_counts=True)
    return keys // width - 1, keys % width - 1, intersections, true_areas, pred_areas


def _foreground_counts(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Foreground (label > 0) pixel counts: in both, in the truth, in the prediction."""
    true, pred = _check_pair(true, pred)
    x, y = true > 0, pred > 0
    return int(np.count_nonzero(x & y)), int(np.count_nonzero(x)), int(np.count_nonzero(y))


def foreground_iou(true: np.ndarray, pred: np.ndarray) -> float:
    """Pixel IoU of the foreground: I = sum XY, U = sum X + Y - XY; 1.0 when both are empty."""
    intersection, true_area, pred_area = _foreground_counts(true, pred)
    return _ratio(intersection, true_area + pred_area - intersection, perfect=True)


def pixel_precision_recall(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Foreground pixels: the share of predicted ones that are true, and of true ones found.

    Pixel IoU cannot tell masks drawn too small from masks drawn too big; these two can (a
    model, or an annotator, whose outlines run tighter than the reference's has high
    precision and low recall).
    """
    intersection, true_area, pred_area = _foreground_counts(true, pred)
    perfect = true_area == 0 and pred_area == 0
    return _ratio(intersection, pred_area, perfect), _ratio(intersection, true_area, perfect)


def mean_iou_2class(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean of foreground and background IoU: what Keras MeanIoU(num_classes=2) reports.

    Reported because many papers quote it; it is far more forgiving than foreground IoU on
    sparse images, where the large background dominates.
    """
    true, pred = _check_pair(true, pred)
    return (foreground_iou(true, pred) + foreground_iou(true == 0, pred == 0)) / 2


def pixel_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of pixels whose foreground/background class agrees."""
    true, pred = _check_pair(true, pred)
    return _ratio(np.count_nonzero((true > 0) == (pred > 0)), true.size, perfect=True)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every true (rows) and predicted (columns) instance, ids in increasing order.

    Computed from one joint histogram of (true id, pred id) pairs, so 300 nuclei take
    milliseconds instead of the seconds a loop over instance pairs needs.
    """
    true, pred = _check_pair(true, pred)
    rows, cols, intersections, true_areas, pred_areas = _overlaps(true, pred)
    matrix = np.zeros((true_areas.size, pred_areas.size))
    unions = true_areas[rows] + pred_areas[cols] - intersections
    matrix[rows, cols] = intersections / unions
    return matrix


def score_image(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All per-image scores of a predicted label image against the true one.

    Keys: pixel_iou, pixel_precision, pixel_recall, mean_iou_2class, pixel_accuracy,
    dsb_score, ap50 (TP/(TP+FP+FN) at IoU > 0.5), f1_50, precision_50, recall_50,
    count_abs_error, and the integer counts n_true, n_pred, tp_50, fp_50, fn_50. See the
    module docstring for matching and 0/0 rules.
    """
    true, pred = _check_pair(true, pred)
    rows, cols, intersections, true_areas, pred_areas = _overlaps(true, pred)
    ious = intersections / (true_areas[rows] + pred_areas[cols] - intersections)
    n_true, n_pred = int(true_areas.size), int(pred_areas.size)
    perfect = n_true == 0 and n_pred == 0
    # Matching is one-to-one above 0.5, so TP is the number of pairs above the threshold.
    tps = (ious[None, :] > DSB_THRESHOLDS[:, None]).sum(axis=1)
    ratios = [_ratio(tp, n_true + n_pred - tp, perfect) for tp in tps]
    tp = int(tps[0])
    fp, fn = n_pred - tp, n_true - tp
    pixel_precision, pixel_recall = pixel_precision_recall(true, pred)
    return {
        "pixel_iou": foreground_iou(true, pred),
        "pixel_precision": pixel_precision,
        "pixel_recall": pixel_recall,
        "mean_iou_2class": mean_iou_2class(true, pred),
        "pixel_accuracy": pixel_accuracy(true, pred),
        "dsb_score": float(np.mean(ratios)),
        "ap50": ratios[0],
        "f1_50": _ratio(2 * tp, 2 * tp + fp + fn, perfect),
        "precision_50": _ratio(tp, tp + fp, perfect),
        "recall_50": _ratio(tp, tp + fn, perfect),
        "count_abs_error": float(abs(n_pred - n_true)),
        "n_true": n_true,
        "n_pred": n_pred,
        "tp_50": tp,
        "fp_50": fp,
        "fn_50": fn,
    }


def aggregate(per_image: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over images of every per-image value (images weigh equally, counts are not pooled).

    This is how the DSB leaderboard averaged; pooling TP/FP/FN over images would instead let
    a few crowded images dominate. Adds "images": the number of images.
    """
    if not per_image:
        raise ValueError("no images to aggregate")
    keys = list(next(iter(per_image.values())))
    for image_id, scores in per_image.items():
        if set(scores) != set(keys):
            raise ValueError(f"{image_id}: scores have keys {sorted(scores)}, expected {keys}")
    result = {key: float(np.mean([scores[key] for scores in per_image.values()])) for key in keys}
    result["images"] = len(per_image)
    return result
