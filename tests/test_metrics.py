"""edgeseg.metrics against hand-worked cases, properties, and a slow independent implementation."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import cv2
import numpy as np
import pytest
from conftest import synthetic_nuclei
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from edgeseg.metrics import (
    DSB_THRESHOLDS,
    aggregate,
    foreground_iou,
    iou_matrix,
    mean_iou_2class,
    pixel_accuracy,
    score_image,
)

FLOAT_KEYS = (
    "pixel_iou",
    "pixel_precision",
    "pixel_recall",
    "mean_iou_2class",
    "pixel_accuracy",
    "dsb_score",
    "ap50",
    "f1_50",
    "precision_50",
    "recall_50",
    "count_abs_error",
)
INT_KEYS = ("n_true", "n_pred", "tp_50", "fp_50", "fn_50")
#: Scores that are 0 when an image has nuclei only in the truth or only in the prediction.
ZERO_WHEN_NOTHING_MATCHES = (
    "pixel_iou",
    "pixel_precision",
    "pixel_recall",
    "dsb_score",
    "ap50",
    "f1_50",
    "precision_50",
    "recall_50",
)


# --- independent reference: loops over instance pairs, exact fractions, Kaggle-style counting ---


def _instances(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every id present, from scipy (no joint histogram involved)."""
    boxes = ndimage.find_objects(labels.astype(np.int64))
    return {index + 1: box for index, box in enumerate(boxes) if box is not None}


def reference_ious(true: np.ndarray, pred: np.ndarray) -> dict[tuple[int, int], Fraction]:
    """Exact IoU of every overlapping (true id, pred id) pair; all other pairs have IoU 0."""
    pred_areas = {b: int(np.count_nonzero(pred[box] == b)) for b, box in _instances(pred).items()}
    ious = {}
    for a, box in _instances(true).items():
        mask = true[box] == a
        window = pred[box]
        for b in set(np.unique(window[mask]).tolist()) - {0}:
            inter = int(np.count_nonzero(mask & (window == b)))
            ious[a, b] = Fraction(inter, int(mask.sum()) + pred_areas[b] - inter)
    return ious


def _divide(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def reference_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The documented definitions, written out plainly."""
    true_ids = set(np.unique(true).tolist()) - {0}
    pred_ids = set(np.unique(pred).tolist()) - {0}
    both_empty = not true_ids and not pred_ids
    ious = reference_ious(true, pred)
    ratios, counts = [], []
    for k in range(10, 20):
        matched = [pair for pair, iou in ious.items() if iou > Fraction(k, 20)]
        per_true = Counter(a for a, _ in matched)
        per_pred = Counter(b for _, b in matched)
        tp = sum(1 for a in true_ids if per_true[a] == 1)
        fp = sum(1 for b in pred_ids if per_pred[b] == 0)
        fn = sum(1 for a in true_ids if per_true[a] == 0)
        ratios.append(_divide(tp, tp + fp + fn, both_empty))
        counts.append((tp, fp, fn))
    tp, fp, fn = counts[0]
    x = (true > 0).astype(np.int64)
    y = (pred > 0).astype(np.int64)
    fg_iou = _divide(int((x * y).sum()), int((x + y - x * y).sum()), True)
    bg_iou = _divide(int(((1 - x) * (1 - y)).sum()), int((1 - x * y).sum()), True)
    fg_empty = not x.any() and not y.any()
    return {
        "pixel_iou": fg_iou,
        "pixel_precision": _divide(int((x * y).sum()), int(y.sum()), fg_empty),
        "pixel_recall": _divide(int((x * y).sum()), int(x.sum()), fg_empty),
        "mean_iou_2class": (fg_iou + bg_iou) / 2,
        "pixel_accuracy": int((x == y).sum()) / x.size,
        "dsb_score": sum(ratios) / len(ratios),
        "ap50": ratios[0],
        "f1_50": _divide(2 * tp, 2 * tp + fp + fn, both_empty),
        "precision_50": _divide(tp, tp + fp, both_empty),
        "recall_50": _divide(tp, tp + fn, both_empty),
        "count_abs_error": float(abs(len(pred_ids) - len(true_ids))),
        "n_true": len(true_ids),
        "n_pred": len(pred_ids),
        "tp_50": tp,
        "fp_50": fp,
        "fn_50": fn,
    }


def assert_scores_equal(actual: dict, expected: dict, tolerance: float = 1e-9) -> None:
    assert set(actual) == set(expected)
    for key in FLOAT_KEYS:
        assert actual[key] == pytest.approx(expected[key], abs=tolerance), key
    for key in INT_KEYS:
        assert actual[key] == expected[key], key


# --- hand-worked cases ---


def test_thresholds_are_exact_twentieths():
    assert len(DSB_THRESHOLDS) == 10
    assert DSB_THRESHOLDS.tolist() == [k / 20 for k in range(10, 20)]
    assert DSB_THRESHOLDS[2] == 0.6 and DSB_THRESHOLDS[-1] == 0.95


def test_two_nuclei_one_matched_at_iou_0_6():
    true = np.zeros((3, 10), np.uint16)
    true[0, :] = 1  # nucleus A: 10 pixels
    true[2, :4] = 2  # nucleus B: 4 pixels, missed
    pred = np.zeros_like(true)
    pred[0, :6] = 7  # 6 of A's pixels: IoU 6/10 = 0.6
    scores = score_image(true, pred)
    # IoU 0.6 > t only for t = 0.50, 0.55 (strictly greater: not at 0.60). There TP=1, FP=0,
    # FN=1 -> 1/2; at the other 8 thresholds TP=0, FP=1, FN=2 -> 0.
    assert scores["dsb_score"] == pytest.approx((0.5 + 0.5) / 10)
    assert scores["ap50"] == pytest.approx(1 / 2)
    assert scores["f1_50"] == pytest.approx(2 / 3)
    assert scores["precision_50"] == 1.0
    assert scores["recall_50"] == 0.5
    assert scores["count_abs_error"] == 1.0
    assert (scores["n_true"], scores["n_pred"]) == (2, 1)
    # 6 predicted pixels, all true; 14 true pixels, 6 found
    assert scores["pixel_precision"] == 1.0
    assert scores["pixel_recall"] == pytest.approx(6 / 14)
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (1, 0, 1)
    # foreground: 14 true pixels, 6 predicted, all 6 inside -> 6/14; background: 16 true,
    # 24 predicted, 16 shared -> 16/24; 8 of 30 pixels disagree.
    assert scores["pixel_iou"] == pytest.approx(6 / 14)
    assert scores["mean_iou_2class"] == pytest.approx((6 / 14 + 16 / 24) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(22 / 30)
    assert iou_matrix(true, pred).tolist() == [[0.6], [0.0]]


def test_iou_exactly_at_a_threshold_does_not_match():
    true = np.zeros((1, 4), np.int64)
    true[0, :] = 1
    pred = np.zeros_like(true)
    pred[0, :3] = 1  # IoU 3/4 = 0.75: matches for t = 0.50 ... 0.70 (5 thresholds), not 0.75
    assert score_image(true, pred)["dsb_score"] == pytest.approx(5 / 10)


def test_empty_prediction_scores_zero():
    true = np.zeros((8, 8), np.uint16)
    true[1:3, 1:3] = 1
    true[5:7, 5:7] = 2
    scores = score_image(true, np.zeros_like(true))
    for key in ZERO_WHEN_NOTHING_MATCHES:
        assert scores[key] == 0.0, key
    assert scores["count_abs_error"] == 2.0
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (0, 0, 2)
    assert scores["pixel_accuracy"] == pytest.approx(56 / 64)
    assert scores["mean_iou_2class"] == pytest.approx((0 + 56 / 64) / 2)


def test_empty_truth_scores_zero():
    pred = np.zeros((8, 8), np.int32)
    pred[2:4, 2:4] = 5
    scores = score_image(np.zeros_like(pred), pred)
    for key in ZERO_WHEN_NOTHING_MATCHES:
        assert scores[key] == 0.0, key
    assert (scores["n_true"], scores["n_pred"], scores["fp_50"]) == (0, 1, 1)


def test_both_empty_scores_one():
    empty = np.zeros((5, 7), np.uint16)
    scores = score_image(empty, empty)
    assert all(scores[key] == 1.0 for key in FLOAT_KEYS if key != "count_abs_error")
    assert scores["count_abs_error"] == 0.0
    assert all(scores[key] == 0 for key in INT_KEYS)
    assert foreground_iou(empty, empty) == 1.0 and mean_iou_2class(empty, empty) == 1.0
    assert iou_matrix(empty, empty).shape == (0, 0)


def test_merging_touching_nuclei_keeps_pixels_but_loses_instances():
    true = np.zeros((4, 8), np.uint16)
    true[:, :4] = 1
    true[:, 4:] = 2  # two equal nuclei touching along a column
    merged = (true > 0).astype(np.uint16)
    scores = score_image(true, merged)
    # The merged blob has IoU exactly 1/2 with each nucleus: not > 0.5, so nothing matches.
    assert scores["pixel_iou"] == 1.0 and scores["pixel_accuracy"] == 1.0
    assert scores["dsb_score"] == 0.0
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (0, 1, 2)
    assert iou_matrix(true, merged).tolist() == [[0.5], [0.5]]
    assert score_image(true, true)["dsb_score"] == 1.0


def test_non_contiguous_ids_are_ordered_by_id():
    true = np.zeros((2, 9), np.uint16)
    true[0, :3], true[0, 3:6], true[0, 6:] = 65535, 3, 700
    pred = np.zeros((2, 9), np.int64)
    pred[0, :2] = 40000  # inside 65535: IoU 2/3
    pred[0, 3:6] = 9  # exactly 3: IoU 1
    pred[1, :] = 2  # false positive
    matrix = iou_matrix(true, pred)
    # rows: true ids 3, 700, 65535; columns: pred ids 2, 9, 40000
    assert matrix.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 2 / 3]]
    scores = score_image(true, pred)
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (2, 1, 1)
    # 2/3 > t for t = 0.50 ... 0.65 (4 thresholds): 2/(2+1+1); above that 1/(1+2+2).
    assert scores["dsb_score"] == pytest.approx((4 * 2 / 4 + 6 * 1 / 5) / 10)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_integer_dtypes_give_the_same_scores(dtype):
    _, true = synthetic_nuclei((64, 64), count=8, seed=3)
    _, pred = synthetic_nuclei((64, 64), count=8, seed=4)
    expected = score_image(true, pred)
    assert score_image(true.astype(dtype), pred.astype(np.int64)) == expected
    assert score_image(true.astype(np.int32), pred.astype(dtype)) == expected


def test_mismatched_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        score_image(np.zeros((4, 5), np.uint16), np.zeros((5, 4), np.uint16))
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        iou_matrix(np.zeros((3, 3), np.uint16), np.zeros((3, 4), np.uint16))


def test_non_integer_or_negative_labels_are_rejected():
    with pytest.raises(ValueError, match="integers"):
        score_image(np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        pixel_accuracy(np.full((2, 2), -1, np.int32), np.zeros((2, 2), np.int32))


def test_300_nuclei_grid_shifted_by_one_pixel():
    true = np.zeros((20 * 10, 15 * 10), np.uint16)
    pred = np.zeros_like(true)
    for index in range(300):
        row, col = divmod(index, 15)
        y, x = row * 10 + 1, col * 10 + 1
        true[y : y + 8, x : x + 8] = index + 1
        pred[y : y + 8, x + 1 : x + 9] = 300 - index  # shifted one column, ids reversed
    scores = score_image(true, pred)
    # Each 8x8 square overlaps its shifted copy in 56 pixels of 72: IoU 7/9 = 0.78, above the
    # thresholds 0.50 ... 0.75 (6 of 10), where every nucleus matches.
    assert scores["dsb_score"] == pytest.approx(6 / 10)
    assert (scores["n_true"], scores["tp_50"], scores["count_abs_error"]) == (300, 300, 0.0)
    matrix = iou_matrix(true, pred)
    assert matrix.shape == (300, 300)
    assert np.allclose(np.sort(matrix, axis=1)[:, -1], 56 / 72)
    assert np.count_nonzero(matrix) == 300


def test_aggregate_averages_images_instead_of_pooling():
    perfect = np.zeros((4, 4), np.uint16)
    perfect[:2, :2] = 1
    crowded = np.zeros((4, 8), np.uint16)
    crowded[0, :2], crowded[0, 3:5], crowded[0, 6:] = 1, 2, 3
    per_image = {
        "a": score_image(perfect, perfect),
        "b": score_image(crowded, np.zeros_like(crowded)),
    }
    result = aggregate(per_image)
    assert result["images"] == 2
    assert result["ap50"] == pytest.approx(0.5)  # pooled TP/(TP+FP+FN) would be 1/4
    assert result["n_true"] == pytest.approx(2.0)
    assert set(result) == set(FLOAT_KEYS) | set(INT_KEYS) | {"images"}


def test_aggregate_rejects_empty_and_inconsistent_input():
    with pytest.raises(ValueError, match="no images"):
        aggregate({})
    with pytest.raises(ValueError, match="b:"):
        aggregate({"a": {"x": 1.0}, "b": {"y": 1.0}})


# --- against the independent reference ---


def _perturbed(labels: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction: shifted, eroded or dropped nuclei, merges and new ids."""
    rng = np.random.default_rng(seed)
    pred = np.zeros_like(labels, dtype=np.int32)
    for label in np.unique(labels)[1:]:
        mask = (labels == label).astype(np.uint8)
        action = rng.integers(5)
        if action == 1:
            mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
        elif action == 2:
            mask = np.roll(mask, rng.integers(-3, 4, size=2), axis=(0, 1))
        elif action == 3:
            continue
        new_id = int(rng.integers(1, 6)) if action == 4 else int(rng.integers(1, 60000))
        pred[mask > 0] = new_id
    return pred


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_on_synthetic_images(seed):
    _, true = synthetic_nuclei((96, 112), count=20, seed=seed, touching=seed % 2 == 0)
    pred = _perturbed(true, seed) if seed % 3 else synthetic_nuclei((96, 112), 15, seed + 50)[1]
    assert_scores_equal(score_image(true, pred), reference_scores(true, pred))
    expected = reference_ious(true, pred)
    true_ids, pred_ids = np.unique(true)[1:].tolist(), np.unique(pred)[1:].tolist()
    matrix = iou_matrix(true, pred)
    for (a, b), iou in expected.items():
        assert matrix[true_ids.index(a), pred_ids.index(b)] == pytest.approx(float(iou), abs=1e-12)
    assert np.count_nonzero(matrix) == len(expected)


# --- properties ---

LABEL_VALUES = st.sampled_from([0, 0, 0, 1, 2, 3, 17, 300, 65535])


def label_images(shape: tuple[int, int]) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.uint16, shape, elements=LABEL_VALUES)


pairs = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: st.tuples(label_images(shape), label_images(shape))
)


@settings(max_examples=60, deadline=None)
@given(pairs)
def test_property_matches_reference(pair):
    true, pred = pair
    assert_scores_equal(score_image(true, pred), reference_scores(true, pred))


@settings(max_examples=40, deadline=None)
@given(pairs)
def test_property_perfect_prediction_scores_one(pair):
    labels, _ = pair
    scores = score_image(labels, labels)
    assert all(scores[key] == 1.0 for key in FLOAT_KEYS if key != "count_abs_error")
    assert scores["count_abs_error"] == 0.0 and scores["fp_50"] == scores["fn_50"] == 0


@settings(max_examples=40, deadline=None)
@given(pairs, st.data())
def test_property_relabelling_changes_nothing(pair, data):
    true, pred = pair
    ids = np.setdiff1d(np.unique(pred), [0])
    new_ids = data.draw(
        st.lists(st.integers(1, 65535), min_size=ids.size, max_size=ids.size, unique=True)
    )
    lookup = dict(zip(ids.tolist(), new_ids, strict=True)) | {0: 0}
    relabelled = np.vectorize(lookup.__getitem__, otypes=[np.int64])(pred)
    assert score_image(true, relabelled) == score_image(true, pred)


@settings(max_examples=40, deadline=None)
@given(pairs)
def test_property_swapping_truth_and_prediction(pair):
    true, pred = pair
    forward, backward = score_image(true, pred), score_image(pred, true)
    for key in ("pixel_iou", "mean_iou_2class", "pixel_accuracy", "dsb_score", "ap50", "f1_50"):
        assert forward[key] == pytest.approx(backward[key], abs=1e-12), key
    assert forward["precision_50"] == pytest.approx(backward["recall_50"], abs=1e-12)
    assert forward["pixel_precision"] == pytest.approx(backward["pixel_recall"], abs=1e-12)
    assert np.array_equal(iou_matrix(true, pred), iou_matrix(pred, true).T)


def test_a_boolean_mask_scores_as_one_instance() -> None:
    truth = np.zeros((8, 8), np.uint16)
    truth[2:6, 2:6] = 1
    score = score_image(truth, truth > 0)
    assert score["pixel_iou"] == 1.0 and score["dsb_score"] == 1.0
