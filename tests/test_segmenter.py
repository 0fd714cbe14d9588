"""The public API end to end with a real ONNX model, and how models are found by name."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_he, synthetic_nuclei
from tiny_models import threshold_model

import edgeseg.models
from edgeseg.manifest import ManifestError, manifest_path
from edgeseg.models import ModelNotFoundError, list_models, resolve_model
from edgeseg.preprocess import preprocess_spec
from edgeseg.segmenter import load_segmenter, postprocess_settings


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    return threshold_model(tmp_path / "threshold.onnx")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("edgeseg tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_segment_finds_each_synthetic_nucleus(onnx_model: Path, no_network: None) -> None:
    image, truth = synthetic_nuclei((160, 200), count=14, seed=3, touching=False)
    segmenter = load_segmenter(onnx_model, threads=1)
    labels = segmenter.segment(image)
    assert labels.dtype == np.uint16 and labels.shape == image.shape
    blobs, _ = cv2.connectedComponents((truth > 0).astype(np.uint8))
    assert labels.max() == blobs - 1  # disks that touch share intensity: one blob each
    overlap = (
        np.logical_and(labels > 0, truth > 0).sum() / np.logical_or(labels > 0, truth > 0).sum()
    )
    assert overlap > 0.9


def test_colour_and_16_bit_images_give_the_same_labels(onnx_model: Path) -> None:
    image, _ = synthetic_nuclei((96, 120), seed=4)
    segmenter = load_segmenter(str(onnx_model))
    labels = segmenter.segment(image)
    np.testing.assert_array_equal(segmenter.segment(np.dstack([image] * 3)), labels)
    np.testing.assert_array_equal(segmenter.segment(image.astype(np.uint16) * 257), labels)
    probabilities = segmenter.predict_probabilities(image)
    assert probabilities.dtype == np.float32 and probabilities.shape == (96, 120, 2)


def test_post_processing_follows_the_manifest(onnx_model: Path) -> None:
    path = manifest_path(onnx_model)
    manifest = json.loads(path.read_text())
    manifest["postprocess"]["min_area"] = 10_000  # larger than any synthetic nucleus
    path.write_text(json.dumps(manifest))
    segmenter = load_segmenter(onnx_model)
    assert segmenter.settings.min_area == 10_000
    assert segmenter.segment(synthetic_nuclei()[0]).max() == 0


def test_stained_images_reach_the_network_as_the_manifest_says(onnx_model: Path) -> None:
    image, truth = synthetic_he()  # eosin-pink cytoplasm over two thirds of the image
    luma = load_segmenter(onnx_model).segment(image)
    path = manifest_path(onnx_model)
    manifest = json.loads(path.read_text())
    manifest["preprocess"] = preprocess_spec("hematoxylin")
    path.write_text(json.dumps(manifest))
    hematoxylin = load_segmenter(onnx_model).segment(image)

    def overlap(labels: np.ndarray) -> float:
        return np.logical_and(labels > 0, truth > 0).sum() / np.logical_or(labels, truth).sum()

    assert overlap(luma) < 0.5  # inverted luma makes the cytoplasm look like nuclei
    assert overlap(hematoxylin) > 0.9


def test_tile_options_override_the_manifest(onnx_model: Path, tmp_path: Path) -> None:
    segmenter = load_segmenter(onnx_model, tile=128, overlap=16, batch_size=2)
    assert (segmenter.tiles.size, segmenter.tiles.overlap, segmenter.tiles.batch_size) == (
        128,
        16,
        2,
    )
    image, _ = synthetic_nuclei((300, 280), count=30, seed=5)
    np.testing.assert_array_equal(
        segmenter.segment(image), load_segmenter(onnx_model).segment(image)
    )
    with pytest.raises(ValueError, match="only accepts 64x64 tiles"):
        load_segmenter(threshold_model(tmp_path / "fixed.onnx", tile=64), tile=128)


@pytest.mark.parametrize(
    ("tile", "message"),
    [
        ({"size": 64, "overlap": 64}, "larger than the tile overlap 64"),
        ({"size": "x"}, "whole"),
        ({"size": float("inf")}, "whole"),
        ({"size": 256.5}, "whole"),
        ({"multiple": True}, "whole"),
    ],
)
def test_a_manifest_tiling_that_cannot_work_names_the_model(
    onnx_model: Path, tile: dict, message: str
) -> None:
    manifest = json.loads(manifest_path(onnx_model).read_text())
    manifest_path(onnx_model).write_text(json.dumps({**manifest, "tile": tile}))
    with pytest.raises(ValueError, match=f"{re.escape(str(onnx_model))}: .*{message}"):
        load_segmenter(onnx_model)


# --- built-in models, in a stand-in models folder ---


@pytest.fixture
def models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setattr(edgeseg.models, "models_dir", lambda: folder)
    return folder


def _packaged(folder: Path, file: str, name: str) -> Path:
    path = threshold_model(folder / file)
    manifest = json.loads(manifest_path(path).read_text())
    manifest_path(path).write_text(json.dumps({**manifest, "name": name}))
    return path


def test_no_built_in_model_is_a_clear_error(models_folder: Path) -> None:
    assert list_models() == []
    with pytest.raises(ModelNotFoundError, match="no built-in model installed"):
        load_segmenter()


def test_single_packaged_model_is_the_default(models_folder: Path) -> None:
    path = _packaged(models_folder, "unet.onnx", "unet-fp32")
    (model,) = list_models()
    assert (model.name, model.artifact, model.is_default) == ("unet-fp32", path, True)
    assert resolve_model(None) == path
    assert load_segmenter().segment(synthetic_nuclei()[0]).max() > 0


def test_default_txt_picks_among_several_models(models_folder: Path) -> None:
    _packaged(models_folder, "unet.onnx", "unet-fp32")
    small = _packaged(models_folder, "unet-small.onnx", "unet-small")
    with pytest.raises(ModelNotFoundError, match="no default among the built-in models"):
        resolve_model(None)
    (models_folder / "default.txt").write_text("unet-small\n")
    assert resolve_model(None) == small
    assert resolve_model("unet-small") == small
    assert [model.is_default for model in list_models()] == [False, True]


def test_unknown_names_and_missing_paths_are_explained(models_folder: Path) -> None:
    _packaged(models_folder, "unet.onnx", "unet-fp32")
    with pytest.raises(ModelNotFoundError, match="built-in models are unet-fp32"):
        resolve_model("unet-int8")
    with pytest.raises(ModelNotFoundError, match="no such model file"):
        resolve_model("exports/unet.tflite")


def test_packaged_models_folder_is_readable() -> None:
    assert all(model.artifact.parent == edgeseg.models.models_dir() for model in list_models())


@pytest.mark.parametrize(
    ("verification", "message"),
    [
        ({"status": "rejected", "failed": ["dsb_score"]}, "dsb_score outside the limits"),
        ({"status": "pending"}, "accuracy check at export never finished"),  # export killed
    ],
)
def test_an_artifact_rejected_or_unchecked_at_export_is_refused(
    tmp_path: Path, verification: dict, message: str
) -> None:
    model = threshold_model(tmp_path / "rejected.onnx")
    manifest = json.loads(manifest_path(model).read_text())
    manifest["verification"] = verification
    manifest_path(model).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"rejected.onnx: .*{message}"):
        load_segmenter(model)
    assert load_segmenter(model, allow_unverified=True).segment(np.zeros((32, 32))).max() == 0


@pytest.mark.parametrize("made_for", [{"name": "zscore"}, {"version": 2}])
def test_a_model_made_for_other_preprocessing_is_refused(onnx_model: Path, made_for: dict) -> None:
    from export.pipeline import Exporter, ExportError

    manifest = json.loads(manifest_path(onnx_model).read_text())
    manifest["preprocess"] = {**manifest["preprocess"], **made_for}
    manifest["target"] = "trt-fp16"  # a TensorRT-ready ONNX: export would build its engine
    manifest_path(onnx_model).write_text(json.dumps(manifest))
    named = f"{re.escape(str(onnx_model))}: the model was made for input preprocessed as"
    with pytest.raises(ManifestError, match=named):
        load_segmenter(onnx_model)
    with pytest.raises(ExportError, match=named):
        Exporter(onnx_model, onnx_model.parent / "out")


def test_a_manifest_without_sha256_says_so(onnx_model: Path) -> None:
    manifest = json.loads(manifest_path(onnx_model).read_text())
    del manifest["sha256"]
    manifest_path(onnx_model).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="manifest has no sha256"):
        load_segmenter(onnx_model)


@pytest.mark.parametrize("value", ["8", True, None, [8], float("nan"), float("inf"), 10**400])
def test_manifest_thresholds_must_be_numbers(value: object) -> None:
    with pytest.raises(
        ManifestError, match=re.escape(f"postprocess min_area must be a number, got {value!r}")
    ):
        postprocess_settings({"postprocess": {"min_area": value, "foreground_threshold": 0.6}})
    assert postprocess_settings({"postprocess": {"min_area": 9}}).min_area == 9


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("foreground_threshold", -1, "lie in [0, 1]"),
        ("boundary_threshold", 5, "lie in [0, 1]"),
        ("min_area", -5, "be 0 or more"),
        ("distance_threshold", 1.0, "lie in [0, 1)"),
    ],
)
def test_manifest_thresholds_out_of_range_are_refused(key: str, value: float, allowed: str) -> None:
    """A threshold of -1 made the whole image one nucleus, reported as a success."""
    with pytest.raises(ManifestError, match=re.escape(f"{key} must {allowed}, got {value!r}")):
        postprocess_settings({"postprocess": {key: value}})


def test_a_misspelt_or_missing_postprocess_section_names_the_model(onnx_model: Path) -> None:
    manifest = json.loads(manifest_path(onnx_model).read_text())
    manifest["postprocess"]["foreground_treshold"] = 0.7
    manifest_path(onnx_model).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="unknown settings foreground_treshold") as error:
        load_segmenter(onnx_model)
    assert str(onnx_model) in str(error.value)
    del manifest["postprocess"]
    manifest_path(onnx_model).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="no postprocess section"):
        load_segmenter(onnx_model)
