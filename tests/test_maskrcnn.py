"""Mask R-CNN: the numpy runtime pieces on hand-made cases, the TF training pieces against
them, and ONNX graphs through the model manifest (training runs: test_maskrcnn_cli.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_nuclei

from edgeseg.maskrcnn import (
    MaskRCNNConfig,
    assemble_labels,
    box_iou,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    multilevel_roi_align,
    nms,
    paste_mask,
    roi_align,
)


def test_anchors_have_the_right_count_centres_sizes_and_order() -> None:
    anchors = generate_anchors(8, 16, strides=(4, 8), sizes=(4.0, 8.0), ratios=(1.0, 4.0))
    assert anchors.shape == (2 * 4 * 2 + 1 * 2 * 2, 4)
    np.testing.assert_allclose(anchors[0], [0, 0, 4, 4])  # row 0, col 0, ratio 1
    np.testing.assert_allclose(anchors[1], [-2, 1, 6, 3])  # ratio 4: 8 high, 2 wide
    np.testing.assert_allclose(anchors[2], [0, 4, 4, 8])  # next column
    np.testing.assert_allclose(anchors[8], [4, 0, 8, 4])  # next row
    np.testing.assert_allclose(anchors[16], [0, 0, 8, 8])  # second level, stride 8
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(centres[16:], [[4, 4], [4, 4], [4, 12], [4, 12]])
    areas = np.prod(anchors[:, 2:] - anchors[:, :2], axis=1)
    np.testing.assert_allclose(areas, [16.0] * 16 + [64.0] * 4)


def test_box_coding_matches_a_hand_computed_delta_and_round_trips() -> None:
    anchor = np.array([[0, 0, 10, 20]], np.float32)  # centre (5, 10), 10 x 20
    box = np.array([[2, 4, 12, 44]], np.float32)  # centre (7, 24), 10 x 40
    deltas = encode_boxes(box, anchor, (10.0, 10.0, 5.0, 5.0))
    np.testing.assert_allclose(deltas, [[2.0, 7.0, 0.0, 5 * math.log(2)]], rtol=1e-6)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 50, (30, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(1, 40, (30, 2))], axis=1)
    references = np.concatenate([corners + 3, corners + rng.uniform(5, 30, (30, 2))], axis=1)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        coded = encode_boxes(boxes, references, weights)
        np.testing.assert_allclose(decode_boxes(coded, references, weights), boxes, atol=1e-4)


def _bilinear(feature: np.ndarray, y: float, x: float) -> np.ndarray:
    """Detectron2's ROIAlign bilinear_interpolate, written out literally."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * feature[y0, x0]
        + (1 - ly) * lx * feature[y0, x1]
        + ly * (1 - lx) * feature[y1, x0]
        + ly * lx * feature[y1, x1]
    )


def _direct_roi_align(feature, box, stride, size, ratio) -> np.ndarray:
    y1, x1, y2, x2 = (v / stride - 0.5 for v in box)
    bin_h, bin_w = (y2 - y1) / size, (x2 - x1) / size
    out = np.zeros((size, size, feature.shape[2]))
    for i in range(size):
        for j in range(size):
            for a in range(ratio):
                for b in range(ratio):
                    y = y1 + (i + (a + 0.5) / ratio) * bin_h
                    x = x1 + (j + (b + 0.5) / ratio) * bin_w
                    out[i, j] += _bilinear(feature, y, x) / ratio**2
    return out


ROI_BOXES = np.array(
    [[2.0, 3.0, 17.0, 13.0], [-3.0, -2.0, 6.0, 25.0], [1.0, 1.0, 3.0, 2.0], [10.0, 14, 30, 30]],
    np.float32,
)


def test_numpy_roi_align_matches_direct_bilinear_sampling() -> None:
    feature = np.random.default_rng(1).normal(size=(5, 6, 3)).astype(np.float32)
    result = roi_align(feature, ROI_BOXES, stride=4, output_size=3, sampling_ratio=2)
    expected = np.stack([_direct_roi_align(feature, box, 4, 3, 2) for box in ROI_BOXES])
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_multilevel_roi_align_pools_each_box_on_its_level() -> None:
    config = MaskRCNNConfig(strides=(4, 8), roi_level_base=8.0)  # < 16 px -> level 0
    rng = np.random.default_rng(2)
    features = [rng.normal(size=(8, 8, 2)), rng.normal(size=(4, 4, 2))]
    boxes = np.array([[0, 0, 10, 10], [4, 4, 30, 30]], np.float32)
    crops = multilevel_roi_align(features, boxes, config, 2)
    np.testing.assert_allclose(crops[0], roi_align(features[0], boxes[:1], 4, 2, 2)[0])
    np.testing.assert_allclose(crops[1], roi_align(features[1], boxes[1:], 8, 2, 2)[0])


@pytest.mark.tensorflow
def test_training_roi_align_matches_direct_bilinear_sampling() -> None:
    tf = pytest.importorskip("tensorflow")
    from training.maskrcnn.roi_align import roi_align as tf_roi_align

    rng = np.random.default_rng(3)
    level0 = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)  # stride 4, two images
    level1 = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)  # stride 8
    images = np.array([0, 1, 1, 0], np.int32)
    levels = np.array([0, 1, 0, 1], np.int32)
    result = tf_roi_align(
        [tf.constant(level0), tf.constant(level1)],
        tf.constant(ROI_BOXES),
        tf.constant(images),
        tf.constant(levels),
        (4, 8),
        3,
        2,
    ).numpy()
    maps = (level0, level1)
    expected = [
        _direct_roi_align(maps[level][image], box, (4, 8)[level], 3, 2)
        for box, image, level in zip(ROI_BOXES, images, levels, strict=True)
    ]
    np.testing.assert_allclose(result, np.stack(expected), atol=1e-5)


def test_nms_keeps_the_best_box_of_each_overlapping_group() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 20, 10, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 1 overlaps boxes 0/3 with IoU 81/119 = 0.68
    assert nms(boxes, scores, 0.5, 100).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7, 100).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.5, 1).tolist() == [3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5, 10).tolist() == []


def test_anchor_assignment_thresholds_and_best_anchor_rule() -> None:
    from training.maskrcnn.targets import assign_anchors, subsample

    anchors = np.array(
        [
            [0, 0, 10, 10],  # IoU 1 with gt 0: positive
            [0, 5, 10, 15],  # IoU 1/3 with gt 0: ignored
            [20, 20, 30, 30],  # IoU 2/3 with gt 1, below 0.7 but its best: positive
            [0, 0, 4, 4],  # IoU 0.16: negative
            [50, 50, 60, 60],  # no overlap: negative
            [40, 0, 50, 10],  # IoU 1/3 with gt 2, tied best: positive
            [40, 10, 50, 20],  # IoU 1/3 with gt 2, tied best: positive
        ],
        np.float32,
    )
    gt = np.array([[0, 0, 10, 10], [20, 22, 30, 32], [40, 5, 50, 15]], np.float32)
    labels, matched = assign_anchors(anchors, gt, 0.7, 0.3)
    assert labels.tolist() == [1, -1, 1, 0, 0, 1, 1]
    assert matched[[0, 2, 5, 6]].tolist() == [0, 1, 2, 2]
    empty_labels, _ = assign_anchors(anchors, np.zeros((0, 4), np.float32), 0.7, 0.3)
    assert empty_labels.tolist() == [0] * 7
    sampled = subsample(labels, 3, 0.5, np.random.default_rng(0))
    assert (sampled == 1).sum() == 1 and (sampled == 0).sum() == 2


def test_roi_sampling_puts_positives_first_with_their_targets() -> None:
    from training.maskrcnn.config import MaskRCNNTrainConfig
    from training.maskrcnn.targets import sample_rois

    config = MaskRCNNTrainConfig(rois_per_image=6, roi_positive_fraction=0.5)
    gt = np.array([[0, 0, 10, 10]], np.float32)
    proposals = np.array([[1, 0, 11, 10], [30, 30, 40, 40]], np.float32)  # IoU 9/11, 0
    targets = sample_rois(proposals, gt, config, np.random.default_rng(0))
    assert targets.positives == 2  # the proposal and the GT box itself
    assert targets.classes.tolist() == [1, 1, 0, 0, 0, 0]
    assert targets.weights.tolist() == [1, 1, 1, 0, 0, 0]
    expected = encode_boxes(gt[[0, 0]], targets.rois[:2], config.runtime.head_box_weights)
    np.testing.assert_allclose(targets.deltas[:2], expected)
    np.testing.assert_allclose(targets.rois[2], proposals[1])


def test_mask_targets_cut_the_instance_out_of_its_roi() -> None:
    from training.maskrcnn.targets import mask_targets

    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 4:10] = 3
    labels[2:8, 10:16] = 5  # a touching neighbour inside the same RoI
    masks = mask_targets(labels, np.array([3]), np.array([[2, 4, 8, 16]], np.float32), 4)
    assert masks[0].tolist() == [[1, 1, 0, 0]] * 4


def test_pasted_masks_fill_their_boxes() -> None:
    mask = np.zeros((28, 28), np.float32)
    mask[:, :14] = 1.0
    window, inside = paste_mask(mask, np.array([2, 4, 12, 24]), (16, 20), 0.5)
    assert window == (slice(2, 12), slice(4, 20))
    assert inside[:, :10].all() and not inside[:, 10:].any()


def test_overlapping_masks_are_resolved_by_score() -> None:
    config = MaskRCNNConfig(min_area=1)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [5, 5, 15, 15]], np.float32)
    masks = np.ones((3, 28, 28), np.float32)
    scores = np.array([0.6, 0.9, 0.5])  # the third is a duplicate of the second
    labels = assemble_labels((20, 20), boxes, masks, scores, config)
    assert labels.dtype == np.uint16 and labels.max() == 2
    assert (labels[5:15, 5:15] == 1).all()  # the best instance keeps the overlap
    assert (labels[0:5, 0:10] == 2).all() and (labels[5:10, 0:5] == 2).all()
    assert (labels > 0).sum() == 100 + 75


@pytest.mark.tensorflow
def test_exported_onnx_graphs_match_keras_through_the_numpy_runtime(tmp_path: Path) -> None:
    """ONNX graphs plug into the same manifest and runtime as the Keras ones."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")

    from edgeseg.maskrcnn import MaskRCNN
    from edgeseg.maskrcnn_model import GRAPHS, keras_stage, write_maskrcnn_manifest
    from edgeseg.preprocess import normalize
    from edgeseg.segmenter import load_segmenter
    from training.maskrcnn.config import MaskRCNNTrainConfig
    from training.maskrcnn.model import build_box_head, build_mask_head, build_stage1

    runtime = replace(MaskRCNNConfig(), score_threshold=0.0, roi_batch=8)
    config = MaskRCNNTrainConfig(
        runtime=runtime, stem_width=4, widths=(8, 8, 8, 8), fpn_channels=8, box_head_units=8
    )
    models = [build_stage1(config), build_box_head(config), build_mask_head(config)]
    shapes = [(None, None, None, 1), (8, 7, 7, 8), (8, 14, 14, 8)]
    graphs = {}
    for name, model, shape in zip(GRAPHS, models, shapes, strict=True):
        names = model.output_names

        def named(x, model=model, names=names):
            return dict(zip(names, tf.nest.flatten(model(x, training=False)), strict=True))

        spec = tf.TensorSpec(shape, tf.float32, name="input")
        proto, _ = tf2onnx.convert.from_function(tf.function(named), [spec], opset=17)
        outputs = [output.name for output in proto.graph.output]
        assert sorted(outputs) == sorted(names)  # output names survive export
        graphs[name] = tmp_path / f"{name}.onnx"
        graphs[name].write_bytes(proto.SerializeToString())
    manifest = write_maskrcnn_manifest(tmp_path / "maskrcnn.json", runtime, graphs, "onnx")
    segmenter = load_segmenter(manifest)
    assert segmenter.backend.name == "onnx"
    image = synthetic_nuclei((70, 90), seed=6)[0]
    onnx_found = segmenter.model.detect(normalize(image))
    keras_found = MaskRCNN(runtime, *(keras_stage(m) for m in models)).detect(normalize(image))
    assert len(onnx_found.boxes) == len(keras_found.boxes) > 0
    np.testing.assert_allclose(onnx_found.boxes, keras_found.boxes, atol=1e-3)
    np.testing.assert_allclose(onnx_found.masks, keras_found.masks, atol=1e-4)
    assert segmenter.segment(image).dtype == np.uint16


def test_box_iou_of_hand_made_boxes() -> None:
    first = np.array([[0, 0, 10, 10]], np.float32)
    second = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(first, second), [[1.0, 25 / 175, 0.0]])
