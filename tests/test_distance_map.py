"""The optional third output map: each nucleus's normalised distance to its edge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei, tiny_training
from tiny_models import threshold_model

from edgeseg.backends import load_backend
from edgeseg.manifest import ManifestError, manifest_path
from edgeseg.postprocess import PostprocessSettings, labels_from_maps
from training.targets import edge_distance, make_targets

DISTANCE_CHANNELS = ("foreground", "boundary", "distance")


def _touching_pair() -> np.ndarray:
    """Two 13 px squares sharing a whole side."""
    labels = np.zeros((32, 40), np.uint16)
    labels[8:21, 6:19], labels[8:21, 19:32] = 1, 2
    return labels


def test_edge_distance_peaks_at_every_centre_and_is_low_where_nuclei_touch() -> None:
    _, labels = synthetic_nuclei((96, 96), count=10, seed=4, touching=True)
    distance = edge_distance(labels)
    assert distance.dtype == np.float32
    assert np.all(distance[labels == 0] == 0)
    assert np.all((distance[labels > 0] > 0) & (distance[labels > 0] <= 1))
    for label in np.unique(labels)[1:]:  # normalised per nucleus, whatever its size
        assert distance[labels == label].max() == pytest.approx(1.0)
    pair = edge_distance(_touching_pair())
    assert pair[14, 12] == pytest.approx(1.0) and pair[14, 25] == pytest.approx(1.0)
    assert pair[14, 18] < 0.3 and pair[14, 19] < 0.3  # either side of the shared edge


def test_targets_follow_the_requested_channels() -> None:
    labels = _touching_pair()
    targets = make_targets(labels, DISTANCE_CHANNELS)
    assert targets.shape == (*labels.shape, 3) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[..., :2], make_targets(labels))
    np.testing.assert_array_equal(targets[..., 2], edge_distance(labels))


def test_crops_keep_the_whole_image_distance_of_the_nuclei_they_cut() -> None:
    from training.augment import AugmentConfig, random_crop

    labels = np.zeros((96, 96), np.uint16)
    labels[4:92, 4:92] = 1  # one nucleus far bigger than a crop
    image = (labels > 0).astype(np.float32)
    whole = edge_distance(labels)
    config = AugmentConfig(crop=32, scale_range=(1.0, 1.0))  # no resampling: exact values
    peaks = []
    for seed in range(8):
        _, targets = random_crop(
            image, labels, config, np.random.default_rng(seed), DISTANCE_CHANNELS, whole
        )
        assert np.isin(targets[..., 2], whole).all()  # moved, never re-measured on the crop
        peaks.append(targets[..., 2].max())
    assert min(peaks) < 0.8  # a crop beside the centre does not see a centre of its own
    with pytest.raises(ValueError, match="whole image's edge_distance"):
        random_crop(image, labels, config, np.random.default_rng(0), DISTANCE_CHANNELS)


def test_distance_seeds_split_touching_nuclei_the_boundary_map_missed() -> None:
    labels = _touching_pair()
    maps = np.zeros((*labels.shape, 3), np.float32)
    maps[..., 0] = labels > 0  # no boundary predicted between the two: one seed without
    maps[..., 2] = edge_distance(labels)
    assert labels_from_maps(maps[..., :2]).max() == 1
    assert labels_from_maps(maps).max() == 1  # threshold 0 ignores the distance map
    silent = maps.copy()
    silent[..., 2] = 0.0  # as an int8 output may round it: still ignored at threshold 0
    np.testing.assert_array_equal(labels_from_maps(silent), labels_from_maps(maps[..., :2]))
    split = labels_from_maps(maps, PostprocessSettings(distance_threshold=0.5))
    assert split.max() == 2
    for label in (1, 2):
        overlap = np.bincount(split[labels == label]).argmax()
        assert np.mean(split[labels == label] == overlap) > 0.9


def test_a_distance_threshold_needs_a_distance_map() -> None:
    maps = np.zeros((8, 8, 2), np.float32)
    with pytest.raises(ValueError, match="distance_threshold 0.5 needs a model with a distance"):
        labels_from_maps(maps, PostprocessSettings(distance_threshold=0.5))
    with pytest.raises(ValueError, match=r"expected \(H, W, 2\) or \(H, W, 3\)"):
        labels_from_maps(np.zeros((8, 8, 4), np.float32))


def _declare_channels(model: Path, channels: list[str]) -> Path:
    path = manifest_path(model)
    path.write_text(json.dumps({**json.loads(path.read_text()), "output_channels": channels}))
    return path


def test_the_runtime_expects_as_many_maps_as_the_manifest_names(tmp_path: Path) -> None:
    model = threshold_model(tmp_path / "two_maps.onnx")
    path = _declare_channels(model, list(DISTANCE_CHANNELS))  # its graph still returns two
    with pytest.raises(ManifestError, match="names 3 maps, but two_maps.onnx returns 2") as error:
        load_backend(model)  # refused at load, not image by image
    assert str(path) in str(error.value)
    backend = load_backend(threshold_model(tmp_path / "undeclared.onnx"))
    backend.model_channels, backend.channels = None, 3  # a graph that does not say
    with pytest.raises(ValueError, match=r"expected \(1, 16, 16, 3\)"):
        backend.predict(np.zeros((1, 16, 16, 1), np.float32))
    path = _declare_channels(model, ["foreground", "distance"])
    with pytest.raises(ManifestError, match="output_channels") as error:
        load_backend(model)
    assert str(path) in str(error.value)


def test_a_manifest_asking_for_a_missing_distance_map_is_refused_at_load(
    tmp_path: Path,
) -> None:
    from edgeseg.segmenter import load_segmenter

    model = threshold_model(tmp_path / "two_maps.onnx")
    path = manifest_path(model)
    manifest = json.loads(path.read_text())
    manifest["postprocess"]["distance_threshold"] = 0.5
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="distance_threshold 0.5 needs a distance map") as error:
        load_segmenter(model)
    assert str(model) in str(error.value)
    manifest["postprocess"]["distance_threshold"] = 1.0
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"distance_threshold must lie in \[0, 1\)"):
        load_segmenter(model)


def test_a_distance_model_trains_exports_and_segments(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    import csv

    from edgeseg.cli import main
    from edgeseg.data.dataset import Sample
    from edgeseg.segmenter import load_segmenter
    from training.config import TrainConfig
    from training.train import train_on_samples

    samples = [Sample(f"s{i}", *synthetic_nuclei((64, 64), seed=i)) for i in range(4)]
    config = tiny_training(output_channels=DISTANCE_CHANNELS)
    run = tmp_path / "run"
    train_on_samples(config, samples[:3], samples[3:], run, verbose=0)
    assert TrainConfig.from_file(run / "config.json").output_channels == DISTANCE_CHANNELS
    manifest = json.loads((run / "model.keras.json").read_text())
    assert manifest["output_channels"] == list(DISTANCE_CHANNELS)
    assert manifest["output"]["shape"][-1] == 3
    row = next(csv.DictReader((run / "log.csv").open()))
    assert float(row["val_distance_threshold"]) in (0.0, 0.3, 0.5, 0.7)  # tried per epoch
    from training.card import render_card

    assert "output [foreground, boundary, distance] (distance: each" in render_card(run)
    segmenter = load_segmenter(run / "model.keras")
    image = samples[3].image
    assert segmenter.predict_probabilities(image).shape == (*image.shape, 3)
    assert segmenter.segment(image).dtype == np.uint16

    out = tmp_path / "exported"
    result = CliRunner().invoke(
        main, ["export", "--model", str(run), "--target", "onnx-fp32", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    exported = out / "run-onnx-fp32.onnx"
    assert json.loads(manifest_path(exported).read_text())["output_channels"] == list(
        DISTANCE_CHANNELS
    )
    tile, _ = synthetic_nuclei((256, 256), seed=5)  # one export tile: padded alike by both
    np.testing.assert_allclose(
        load_segmenter(exported).predict_probabilities(tile),
        segmenter.predict_probabilities(tile),
        atol=1e-4,
    )


def test_unknown_output_channels_are_refused_before_training() -> None:
    pytest.importorskip("tensorflow")
    from training.config import TrainConfig

    with pytest.raises(ValueError, match=r"output_channels \['foreground', 'distance'\]"):
        TrainConfig(model="unet", output_channels=("foreground", "distance"))


def test_the_loss_counts_the_distance_map_with_its_weight() -> None:
    pytest.importorskip("tensorflow")
    from training.losses import SegmentationLoss

    targets = make_targets(_touching_pair(), DISTANCE_CHANNELS)[None]
    predicted = np.clip(targets, 0.05, 0.95)
    wrong_distance = predicted.copy()
    wrong_distance[..., 2] = 0.5
    losses = {
        weight: [float(SegmentationLoss(distance_weight=weight)(targets, p)) for p in
                 (predicted, wrong_distance)]
        for weight in (0.0, 1.0)
    }  # fmt: skip
    assert losses[0.0][0] == pytest.approx(losses[0.0][1])
    assert losses[1.0][1] > losses[1.0][0] + 0.05
