"""Training code on tiny models and synthetic data (never a real training run)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei, tiny_training

from edgeseg.data.dataset import Sample

if TYPE_CHECKING:
    from training.augment import AugmentConfig

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow


def test_targets_reconstruct_touching_instances() -> None:
    from edgeseg.postprocess import instances_from_probabilities
    from training.targets import make_targets

    _, labels = synthetic_nuclei((96, 96), count=10, seed=4, touching=True)
    targets = make_targets(labels).astype(np.float32)
    result = instances_from_probabilities(targets[..., 0], targets[..., 1])
    from edgeseg.metrics import score_image

    assert score_image(labels, result)["ap50"] >= 0.75


def test_crops_have_the_configured_shape_and_are_deterministic() -> None:
    from training.augment import AugmentConfig, random_crop

    image, labels = synthetic_nuclei((60, 90))
    config = AugmentConfig(crop=64)
    first = random_crop(image / 255.0, labels, config, np.random.default_rng([1, 2]))
    second = random_crop(image / 255.0, labels, config, np.random.default_rng([1, 2]))
    assert first[0].shape == (64, 64, 1) and first[1].shape == (64, 64, 2)
    np.testing.assert_array_equal(first[0], second[0])
    assert set(np.unique(first[1])) <= {0, 1}


def _geometry_only(**changes: Any) -> AugmentConfig:
    """Augmentation without rescaling, gamma, contrast, noise or blur (plus ``changes``)."""
    from training.augment import AugmentConfig

    return AugmentConfig(
        **{
            "scale_range": (1.0, 1.0),
            "gamma_range": (1.0, 1.0),
            "contrast_range": (1.0, 1.0),
            "noise_std_max": 0.0,
            "blur_probability": 0.0,
            **changes,
        }
    )


@pytest.mark.parametrize("strength", [0.0, 0.6])
def test_uneven_illumination_dims_regions_smoothly_and_only_when_asked(strength: float) -> None:
    from training.augment import augmented_crop

    flat = np.full((80, 80), 0.5, np.float32)
    config = _geometry_only(crop=64, uneven_illumination=strength)
    crop, _ = augmented_crop(flat, np.zeros((80, 80), np.int32), config, np.random.default_rng(7))
    spread = float(crop.max() - crop.min())
    if strength == 0.0:
        assert spread == 0.0
    else:
        assert 0.05 < spread <= 0.5 * strength + 1e-6
        assert np.abs(np.diff(crop[..., 0], axis=0)).max() < 0.02  # a smooth field, not noise


def test_mirror_padding_mirrors_nuclei_into_the_labels_as_new_instances() -> None:
    from training.augment import _mirror_padded

    _, labels = synthetic_nuclei((41, 50), count=6, seed=3, touching=False)
    pads = ((5, 7), (3, 9))
    image, padded = _mirror_padded(labels > 0, labels, pads)
    np.testing.assert_array_equal(padded[5:46, 3:53], labels)  # the original area untouched
    np.testing.assert_array_equal(padded > 0, image)  # a mirrored nucleus is labelled
    outside = padded.copy()
    outside[5:46, 3:53] = 0
    assert not set(np.unique(outside)[1:]) & set(np.unique(labels))


def test_crops_of_much_smaller_images_give_every_mirrored_nucleus_its_own_label() -> None:
    from skimage.measure import label as connected

    from training.augment import augmented_crop

    labels = np.zeros((14, 17), np.uint16)
    labels[1:6, 2:7], labels[8:14, 9:15] = 1, 2  # one touches the bottom edge
    config = _geometry_only(crop=96)
    crop, crop_labels = augmented_crop(labels > 0, labels, config, np.random.default_rng(0))
    np.testing.assert_array_equal(crop[..., 0] > 0.5, crop_labels > 0)
    ids = np.unique(crop_labels)[1:]
    assert len(ids) > 8 * (len(np.unique(labels)) - 1)  # several mirror passes
    assert all(connected(crop_labels == i).max() == 1 for i in ids)  # one piece per label
    assert ids.max() < 2 * len(ids)  # numbered densely, not multiplied by each pass


def test_magnified_validation_keeps_every_nucleus_and_its_shape() -> None:
    from training.evaluate_run import magnified

    image, labels = synthetic_nuclei((40, 50), count=6, seed=3, touching=False)
    big_image, big_labels = magnified(image, labels.astype(np.int32), 3.0)
    assert big_image.shape == (120, 150) and big_labels.shape == (120, 150)
    assert big_labels.dtype == np.int32
    assert set(np.unique(big_labels)) == set(np.unique(labels))
    for label in np.unique(labels)[1:]:
        assert (big_labels == label).sum() == 9 * (labels == label).sum()


@pytest.mark.parametrize("name", ["simple_cnn", "unet", "resnet", "mobilenet_unet"])
def test_models_are_fully_convolutional(name: str) -> None:
    from training.models import build_model, size_multiple

    small = {
        "simple_cnn": {"filters": 4, "dense_units": 4},
        "unet": {"base_filters": 4},
        "resnet": {"widths": (4, 8, 8, 8, 8), "decoder_filters": 4},
        "mobilenet_unet": {"pretrained": False, "decoder_filters": (4, 4, 4, 4, 4)},
    }[name]
    model = build_model(name, **small)
    multiple = size_multiple(model)
    assert multiple == {"simple_cnn": 1, "unet": 16, "resnet": 16, "mobilenet_unet": 32}[name]
    for size in (32, 48):
        side = size * max(1, multiple // 16)
        output = model(np.zeros((1, side, side + multiple, 1), np.float32))
        assert tuple(output.shape) == (1, side, side + multiple, 2)
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)


def test_size_multiple_refuses_a_model_whose_output_is_another_size() -> None:
    import keras

    from training.models import size_multiple

    inputs = keras.Input((None, None, 1))
    strided = keras.Model(inputs, keras.layers.Conv2D(2, 3, strides=2, padding="same")(inputs))
    with pytest.raises(ValueError, match="maps 3x3 px to"):
        size_multiple(strided)


def test_training_runs_checkpoints_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeseg.segmenter
    import training.train
    from edgeseg.preprocess import normalize
    from training.config import TrainConfig
    from training.train import train_on_samples

    channels = {"training crops": set(), "validation": set()}
    for module, use in ((training.train, "training crops"), (edgeseg.segmenter, "validation")):

        def recording(image, stained_channel="luma", use=use):
            channels[use].add(stained_channel)
            return normalize(image, stained_channel)

        monkeypatch.setattr(module, "normalize", recording)

    samples = [Sample(f"s{i}", *synthetic_nuclei((64, 64), seed=i)) for i in range(4)]
    config = tiny_training(stained_channel="hematoxylin")
    run = tmp_path / "run"
    state = train_on_samples(config, samples[:3], samples[3:], run, verbose=0)
    assert state["epoch"] == 1
    for name in (
        "config.json",
        "log.csv",
        "checkpoint.keras",
        "model.keras",
        "model.keras.json",
        "state.json",
    ):
        assert (run / name).is_file(), name
    from edgeseg.segmenter import load_segmenter
    from training.manifest import write_model_manifest
    from training.nucleus_size import median_nucleus_diameter

    manifest = json.loads((run / "model.keras.json").read_text())
    assert manifest["preprocess"]["stained_channel"] == "hematoxylin"  # the runtime feeds that
    assert channels == {"training crops": {"hematoxylin"}, "validation": {"hematoxylin"}}
    measured = median_nucleus_diameter(s.labels for s in samples[:3])  # the training samples
    assert manifest["nucleus_diameter"]["median_px"] == round(measured[0], 2)
    assert manifest["nucleus_diameter"]["images"] == 3
    write_model_manifest(run)  # re-written without the data at hand: the measurement stays
    recorded = json.loads((run / "model.keras.json").read_text())["nucleus_diameter"]
    assert recorded == manifest["nucleus_diameter"]
    labels = load_segmenter(run / "model.keras").segment(samples[3].image)
    assert labels.shape == samples[3].image.shape and labels.dtype == np.uint16
    with pytest.raises(FileExistsError):
        train_on_samples(config, samples[:3], samples[3:], run, verbose=0)

    config.epochs = 2  # resume continues from the stored config and epoch
    stored = json.loads((run / "config.json").read_text())
    stored["epochs"] = 2
    (run / "config.json").write_text(json.dumps(stored))
    state = train_on_samples(
        TrainConfig.from_file(run / "config.json"),
        samples[:3],
        samples[3:],
        run,
        resume=True,
        verbose=0,
    )
    assert state["epoch"] == 2
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert 0.0 <= float(rows[-1]["val_pixel_iou"]) <= 1.0
    chosen = json.loads((run / "state.json").read_text())["best_settings"]
    assert float(rows[-1]["val_foreground_threshold"]) in (0.5, 0.6, 0.7)
    assert json.loads((run / "model.keras.json").read_text())["postprocess"] == chosen


def test_epochs_are_scored_at_their_best_thresholds() -> None:
    """A map whose halo sits at 0.55 scores perfectly only above that threshold."""
    from training.selection import EPOCH_GRID, best_result, grid_settings, score_settings

    truth = np.zeros((64, 64), np.uint16)
    truth[10:30, 10:30], truth[36:56, 36:56] = 1, 2
    probabilities = np.zeros((64, 64, 2), np.float32)
    probabilities[6:34, 6:34, 0] = probabilities[32:60, 32:60, 0] = 0.55  # the halo
    probabilities[..., 0][truth > 0] = 0.95
    results = score_settings([(truth, probabilities)], grid_settings(EPOCH_GRID))
    assert len(results) == 9
    best = best_result(results)
    assert best["settings"]["foreground_threshold"] >= 0.6
    assert best["validation"]["pixel_iou"] == 1.0
    at_default = next(r for r in results if r["settings"]["foreground_threshold"] == 0.5)
    assert at_default["validation"]["pixel_iou"] < 0.9


def test_an_unknown_stained_channel_is_refused_before_training() -> None:
    from training.config import TrainConfig

    with pytest.raises(ValueError, match="'hematoxilin'"):
        TrainConfig(model="unet", stained_channel="hematoxilin")


def test_train_refuses_bad_configs_data_and_taken_folders_in_one_line(tmp_path: Path) -> None:
    """Each mistake is named before any data is read, without a traceback."""
    from edgeseg.cli import main

    data = tmp_path / "dsb"
    (data / "stage1_train").mkdir(parents=True)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "state.json").write_text("{}")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "unknown.json").write_text('{"epochz": 3}')
    base = ["train", "--model", "unet", "--data", str(data), "--out"]
    for arguments, message in (
        ([str(tmp_path / "run"), "--config", str(tmp_path / "broken.json")], "broken.json: not"),
        ([str(tmp_path / "run"), "--config", str(tmp_path / "unknown.json")], "epochz"),
        ([str(taken)], "already holds a run; use --resume"),
        ([str(tmp_path / "run")], "stage1_train_fixed.*--data is the DSB2018 folder"),
    ):
        result = CliRunner().invoke(main, base + arguments)
        assert result.exit_code == 1 and result.exception.__class__ is SystemExit, result.output
        assert re.search(message, result.output.replace("\n", " ")), result.output


def test_learning_rate_schedule_is_a_function_of_the_epoch() -> None:
    from training.config import TrainConfig
    from training.train import learning_rate

    config = TrainConfig(model="unet", epochs=10, warmup_epochs=1)
    rates = [learning_rate(config, epoch) for epoch in range(10)]
    assert rates[0] < rates[1] == pytest.approx(config.learning_rate)
    assert all(a >= b for a, b in zip(rates[1:], rates[2:], strict=False))


def test_model_card_reports_schedule_changes_and_wall_time_notes() -> None:
    from training.card import schedule_change_lines, wall_time_line

    state = {
        "wall_seconds": 7200.0,
        "machine": "x86_64, 2 cores",
        "wall_time_note": "includes 12 min paused for benchmarks",
        "schedule_changes": [{"after_epoch": 3, "epochs": [12, 10], "why": "to finish in time"}],
    }
    assert schedule_change_lines(state) == [
        "- Schedule changed after epoch 3: 12 -> 10 epochs, to finish in time."
    ]
    assert "2.00 h on x86_64, 2 cores (CPU only, includes 12 min paused" in wall_time_line(state)
    assert schedule_change_lines({}) == []


def _finished_run(run: Path, seed: int, **changes: Any) -> Path:
    """A run folder as training leaves it, with an untrained tiny U-Net as its best model."""
    import keras

    from training.config import TrainConfig
    from training.manifest import write_model_manifest
    from training.models import build_model

    config = TrainConfig(
        model="unet", model_kwargs={"base_filters": 4, "depth": 2}, epochs=2, seed=seed
    )
    for key, value in changes.items():
        setattr(config, key, value)
    run.mkdir()
    (run / "config.json").write_text(config.to_json())
    state = {"epoch": 2, "best_epoch": 2, "wall_seconds": 60.0, "machine": "test"}
    (run / "state.json").write_text(json.dumps(state))
    keras.utils.set_random_seed(seed)
    build_model(config.model, **config.model_kwargs).save(run / "model.keras")
    write_model_manifest(run)
    return run


def test_an_ensemble_averages_its_members_in_one_model_the_runtime_runs(tmp_path: Path) -> None:
    from edgeseg.segmenter import load_segmenter
    from training.card import render_card
    from training.ensemble import EnsembleError, write_ensemble

    runs = [_finished_run(tmp_path / f"seed{seed}", seed) for seed in (1, 2)]
    out = tmp_path / "ensemble"
    manifest = json.loads(write_ensemble(out, runs).read_text())
    image, _ = synthetic_nuclei((48, 64), seed=3)
    members = [load_segmenter(run / "model.keras").predict_probabilities(image) for run in runs]
    assert not np.allclose(members[0], members[1])
    averaged = load_segmenter(out / "model.keras").predict_probabilities(image)
    np.testing.assert_allclose(averaged, (members[0] + members[1]) / 2, atol=1e-6)
    single = json.loads((runs[0] / "model.keras.json").read_text())
    assert manifest["params"] == 2 * single["params"]
    assert manifest["flops_per_tile"] == 2 * single["flops_per_tile"]
    assert manifest["tile"]["multiple"] == single["tile"]["multiple"]
    assert [member["seed"] for member in manifest["training"]["members"]] == [1, 2]
    card = render_card(out)
    assert "seeds 1, 2" in card and "`seed2`" in card and "Final training loss" not in card
    assert "default post-processing thresholds (not tuned yet)" in card
    from edgeseg.cli import main  # exported as any model: the averaging is an ONNX graph too

    result = CliRunner().invoke(
        main, ["export", "--model", str(out / "model.keras"), "--target", "onnx-fp32", "--out",
               str(tmp_path / "exported")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tile, _ = synthetic_nuclei((256, 256), seed=4)  # one export tile: padded alike by both
    exported = load_segmenter(tmp_path / "exported" / "ensemble-onnx-fp32.onnx")
    np.testing.assert_allclose(
        exported.predict_probabilities(tile),
        load_segmenter(out / "model.keras").predict_probabilities(tile),
        atol=1e-4,
    )
    with pytest.raises(EnsembleError, match="exists; choose a new folder"):
        write_ensemble(out, runs)

    with pytest.raises(EnsembleError, match="differs from .* in model_kwargs"):
        write_ensemble(
            tmp_path / "mixed",
            [runs[0], _finished_run(tmp_path / "wide", 3, model_kwargs={"base_filters": 8})],
        )
    unfinished = _finished_run(tmp_path / "unfinished", 4)
    (unfinished / "state.json").write_text(json.dumps({"epoch": 1, "best_epoch": 1}))
    with pytest.raises(EnsembleError, match="not finished .1 of 2 epochs"):
        write_ensemble(tmp_path / "early", [runs[0], unfinished])


def test_a_deeper_unet_records_and_gets_the_tile_multiple_it_needs(tmp_path: Path) -> None:
    from edgeseg.segmenter import load_segmenter
    from training.train import train_on_samples

    samples = [Sample(f"s{i}", *synthetic_nuclei((64, 64), seed=i)) for i in range(3)]
    config = tiny_training(model_kwargs={"base_filters": 4, "depth": 5})
    train_on_samples(config, samples[:2], samples[2:], tmp_path / "run", verbose=0)
    manifest = json.loads((tmp_path / "run" / "model.keras.json").read_text())
    assert manifest["tile"]["multiple"] == 32  # five poolings
    image, _ = synthetic_nuclei((40, 72), seed=5)  # padded to a multiple of 32, cut back
    assert load_segmenter(tmp_path / "run" / "model.keras").segment(image).shape == (40, 72)
    bare = tmp_path / "bare.keras"  # without its manifest the export measures the multiple
    bare.write_bytes((tmp_path / "run" / "model.keras").read_bytes())
    from export.pipeline import Exporter, ExportError, ExportSettings

    with pytest.raises(ExportError, match="tile 48 is not a multiple of 32"):
        Exporter(bare, tmp_path / "export", ExportSettings(tile=48, overlap=8))


def test_an_edited_threshold_file_is_named(tmp_path: Path) -> None:
    from training.manifest import postprocess_settings

    (tmp_path / "postprocess.json").write_text(json.dumps({"chosen": {"min_area": -1}}))
    with pytest.raises(ValueError, match=r"postprocess.json: min_area must be 0 or more"):
        postprocess_settings(tmp_path)
