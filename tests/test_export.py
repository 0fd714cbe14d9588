"""Export stages on a tiny U-Net trained a few steps on synthetic nuclei: every artifact runs
in the edgeseg runtime and agrees with Keras; the gate rejects an INT8 calibrated on garbage;
tampered artifacts are refused; without TensorRT the trt targets say how to finish."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import synthetic_he, synthetic_nuclei

from edgeseg.data.dataset import Sample
from edgeseg.manifest import (
    ManifestError,
    file_sha256,
    manifest_path,
    read_manifest,
    write_manifest,
)
from edgeseg.preprocess import normalize, preprocess_spec, preprocessing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

TILE = 32
#: What training/nucleus_size.py recorded in the source's manifest; every export carries it.
NUCLEUS_DIAMETER = {"median_px": 12.5, "images": 6, "source": "synthetic", "method": "test"}
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
TARGET_NAMES = ("tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32", "onnx-int8")
#: Largest |probability| difference from Keras, per precision.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def _samples(prefix: str, shapes: list[tuple[int, int]], seed: int) -> list[Sample]:
    return [
        Sample(f"{prefix}{i}", *synthetic_nuclei(shape, count=8, seed=seed + i))
        for i, shape in enumerate(shapes)
    ]


TRAIN = _samples("t", [(64, 64)] * 6 + [(24, 40)], seed=100)  # one smaller than a tile
VALIDATION = _samples("v", [(64, 64), (48, 80), (70, 52)], seed=200)
TEST = _samples("x", [(64, 64), (56, 72)], seed=300)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-level U-Net with 4 filters fitted for a few seconds on flipped and rotated crops:
    enough to find the disks and give confident probabilities."""
    import keras

    from training.losses import SegmentationLoss
    from training.models import build_model
    from training.targets import make_targets

    keras.utils.set_random_seed(0)
    full = [s for s in TRAIN if s.image.shape == (64, 64)]
    pairs = np.concatenate(
        [
            np.stack([normalize(s.image) for s in full])[..., None],
            np.stack([make_targets(s.labels) for s in full]).astype(np.float32),
        ],
        axis=-1,
    )
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(1600):
        y, x = rng.integers(0, 64 - TILE + 1, 2)
        crop = np.rot90(
            pairs[rng.integers(len(pairs)), y : y + TILE, x : x + TILE], rng.integers(4)
        )
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    crops = np.stack(crops)
    model = build_model("unet", base_filters=4, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=SegmentationLoss())
    model.fit(crops[..., :1], crops[..., 1:], batch_size=8, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("run") / "tiny" / "model.keras"  # exports are "tiny-..."
    path.parent.mkdir()
    model.save(path)
    write_manifest(path, nucleus_diameter=NUCLEUS_DIAMETER)
    return path


@pytest.fixture(scope="module")
def keras_model(source: Path):
    import keras

    return keras.saving.load_model(source, compile=False)


@pytest.fixture(scope="module")
def exporter(source: Path, tmp_path_factory: pytest.TempPathFactory):
    from export.pipeline import Exporter, ExportSettings

    return Exporter(
        source,
        tmp_path_factory.mktemp("export"),
        # 4 filters quantize far worse than the real 16-filter U-Net: a looser gate here
        ExportSettings(tile=TILE, overlap=8, calib_images=12, max_drop=5.0),
        calibration_samples=TRAIN,
        validation_samples=VALIDATION,
        test_samples=TEST,
        test_label="synthetic test",
    )


@pytest.fixture(scope="module")
def outcomes(exporter) -> dict:
    from export.targets import TARGETS

    return {name: exporter.export(TARGETS[name]) for name in (*TARGET_NAMES, "trt-int8")}


def _tiles() -> np.ndarray:
    from export.calibration import calibration_tiles

    return calibration_tiles(VALIDATION, 4, TILE, seed=1).tiles


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_artifact_runs_in_the_runtime_like_keras(name: str, outcomes: dict, keras_model) -> None:
    from edgeseg.backends import load_backend

    (artifact,) = outcomes[name].artifacts
    manifest = read_manifest(artifact.path)  # the hash matches
    assert artifact.path.name == f"tiny-{name}{artifact.path.suffix}"
    assert manifest["name"] == f"tiny-{name}" and manifest["target"] == name
    assert manifest["tile"] == {"size": TILE, "overlap": 8, "multiple": 4}  # 2 poolings
    assert manifest["input"]["shape"][1:] == [TILE, TILE, 1]
    assert {"tensorflow", "keras"} <= set(manifest["tools"])
    assert manifest["nucleus_diameter"] == NUCLEUS_DIAMETER
    assert manifest["output_channels"] == ["foreground", "boundary"]
    made_from = (artifact.path.parent / manifest["source"]["path"]).resolve()  # from any cwd
    assert file_sha256(made_from) == manifest["source"]["sha256"]
    verification = manifest["verification"]
    assert verification["status"] == "passed" and verification["images"] == len(VALIDATION)

    tiles = _tiles()
    expected = keras_model.predict_on_batch(tiles)
    predicted = load_backend(artifact.path).predict(tiles)
    precision = manifest["precision"]
    if precision in TOLERANCE:
        np.testing.assert_allclose(predicted, expected, atol=TOLERANCE[precision])
        assert verification["mask_agreement"] > 0.99
    else:
        assert np.mean((predicted[..., 0] > 0.5) == (expected[..., 0] > 0.5)) > 0.97
        assert np.abs(predicted - expected).mean() < 0.03
        assert verification["mask_agreement"] > 0.9


def test_tensorrt_artifacts_carry_the_training_nucleus_size(outcomes: dict) -> None:
    from export.pipeline import INHERITED

    onnx_ready = outcomes["trt-int8"].artifacts[0]
    assert onnx_ready.manifest["nucleus_diameter"] == NUCLEUS_DIAMETER
    assert "nucleus_diameter" in INHERITED  # the engine built from it, on a TensorRT machine


def test_a_tensorrt_ready_onnx_with_an_impossible_tiling_is_refused(
    outcomes: dict, tmp_path: Path
) -> None:
    from export.pipeline import Exporter, ExportError

    onnx_ready = outcomes["trt-int8"].artifacts[0]
    edited = tmp_path / onnx_ready.path.name
    shutil.copy(onnx_ready.path, edited)
    manifest = {**onnx_ready.manifest, "tile": {"size": TILE, "overlap": TILE}}
    manifest_path(edited).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=f"{edited}: tile size {TILE} must be larger"):
        Exporter(edited, tmp_path)


def test_int8_manifest_records_training_calibration(outcomes: dict, exporter) -> None:
    for name in ("tflite-int8", "onnx-int8"):
        manifest = outcomes[name].artifacts[0].manifest
        calibration = manifest["calibration"]
        assert calibration["count"] == 12 and calibration["tile"] == TILE
        assert set(calibration["ids"]) <= {s.id for s in TRAIN}
        assert calibration["sha256"] == exporter.calibration.sha256
        assert manifest["quantization"]["weights"].startswith("int8, per-channel")
    tensor_in = outcomes["tflite-int8"].artifacts[0].manifest["input"]
    assert tensor_in["dtype"] == "int8" and tensor_in["quantization"]["scale"] > 0


def test_manifest_test_scores_are_what_the_runtime_scores(outcomes: dict) -> None:
    """The manifest's held-out numbers are exactly what re-running the artifact gives."""
    from edgeseg.metrics import aggregate, score_image
    from edgeseg.segmenter import load_segmenter

    artifact = outcomes["onnx-int8"].artifacts[0]
    recorded = artifact.manifest["evaluation"]
    segmenter = load_segmenter(artifact.path)
    scores = aggregate({s.id: score_image(s.labels, segmenter.segment(s.image)) for s in TEST})
    assert recorded["data"] == "synthetic test" and recorded["images"] == len(TEST)
    for key in ("pixel_iou", "dsb_score", "ap50", "f1_50", "mean_iou_2class"):
        assert recorded[key] == pytest.approx(scores[key], abs=1e-9)
    assert scores["pixel_iou"] > 0.5  # a real model on real-looking nuclei, not all zeros


def test_tensorrt_int8_graph_is_symmetric_qdq_with_float_bias(outcomes: dict) -> None:
    onnx_artifact = outcomes["trt-int8"].artifacts[0]
    assert onnx_artifact.path.suffix == ".onnx" and onnx_artifact.manifest["backend"] == "onnx"
    assert onnx_artifact.manifest["graph_optimization"] == "basic"  # verified as exact Q/DQ
    graph = onnx.load(str(onnx_artifact.path)).graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    quantizers = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert any(n.op_type == "QuantizeLinear" for n in quantizers)
    for node in quantizers:
        zero_point = constants[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    assert not any(c.dtype == np.int32 for c in constants.values())  # biases stay float
    per_channel = [n for n in quantizers if constants[n.input[1]].size > 1]
    assert per_channel, "weights should be quantized per channel"


def test_tampered_artifact_is_refused(outcomes: dict, tmp_path: Path) -> None:
    from edgeseg.manifest import manifest_path
    from edgeseg.segmenter import load_segmenter

    original = outcomes["tflite-fp32"].artifacts[0].path
    copy = tmp_path / original.name
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    manifest_path(copy).write_bytes(manifest_path(original).read_bytes())
    with pytest.raises(ManifestError, match="refusing to load"):
        load_segmenter(copy)


# --- the command line: DSB layout, the split file, exit statuses ---


def _write_dsb(root: Path, samples: list[Sample]) -> None:
    for sample in samples:
        folder = root / "stage1_train" / sample.id
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        cv2.imwrite(str(folder / "images" / f"{sample.id}.png"), sample.image)
        for label in np.unique(sample.labels)[1:]:
            mask = (sample.labels == label).astype(np.uint8) * 255
            cv2.imwrite(str(folder / "masks" / f"{sample.id}_{label}.png"), mask)


def _export(*args: str | Path):
    from edgeseg.cli import main

    return CliRunner().invoke(main, ["export", *map(str, args)], catch_exceptions=False)


def test_cli_rejects_int8_calibrated_on_garbage(source: Path, tmp_path: Path) -> None:
    blank = []
    for index in range(3):  # black images; one nucleus each keeps DSB's masks/ layout valid
        labels = cv2.circle(np.zeros((64, 64), np.uint16), (20, 20), 5, 1, -1)
        blank.append(Sample(f"b{index}", np.zeros((64, 64), np.uint8), labels))
    _write_dsb(tmp_path / "dsb", blank + VALIDATION)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [s.id for s in blank], "validation": ["v0", "v1"]}))
    out = tmp_path / "out"
    result = _export(
        "--model", source, "--target", "onnx-int8", "--data", tmp_path / "dsb", "--split", split,
        "--cache-dir", tmp_path / "cache", "--tile", TILE, "--overlap", 8, "--calib-images", 3,
        "--verify-images", 1, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 4, result.output
    assert "REJECTED on 1 images" in result.output and "manifest marked rejected" in result.output
    artifact = out / "tiny-onnx-int8.onnx"
    manifest = read_manifest(artifact)  # kept, and still loadable for inspection
    assert manifest["verification"]["status"] == "rejected"
    assert manifest["verification"]["failed"]
    assert set(manifest["calibration"]["ids"]) == {"b0", "b1", "b2"}


def test_cli_refuses_a_tile_no_larger_than_its_overlap(source: Path, tmp_path: Path):
    result = _export("--model", source, "--target", "onnx-fp32", "--tile", 32, "--out", tmp_path)
    assert result.exit_code == 2 and "32 is not larger than --overlap 32" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_cli_trt_without_tensorrt_writes_the_onnx_and_says_how(source: Path, tmp_path: Path):
    result = _export(
        "--model", source, "--target", "trt-fp16", "--tile", TILE, "--overlap", 8, "--out", tmp_path
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    onnx_path = tmp_path / "tiny-trt-fp16.onnx"
    manifest = read_manifest(onnx_path)
    assert manifest["target"] == "trt-fp16" and manifest["input"]["shape"] == [None, 32, 32, 1]
    assert manifest["verification"]["status"] == "skipped"
    (line,) = [line for line in result.output.splitlines() if "NOT built" in line]
    assert f"edgeseg export --model {onnx_path} --target trt-fp16" in line
    assert "trtexec --onnx=" in line and "--fp16" in line
    assert "verification SKIPPED" in result.output


def test_cli_int8_without_data_is_refused(source: Path, tmp_path: Path) -> None:
    result = _export("--model", source, "--target", "tflite-int8", "--out", tmp_path)
    assert result.exit_code == 1 and "--data" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installed here")
def test_tensorrt_engine_is_built_and_verified(exporter) -> None:
    from export.targets import TARGETS

    outcome = exporter.export(TARGETS["trt-fp16"])
    assert outcome.engine_missing is None, outcome.engine_missing
    engine = outcome.artifacts[-1]
    assert engine.path.suffix == ".engine" and engine.manifest["backend"] == "tensorrt"
    assert engine.verification["status"] == "passed"


def test_an_engine_is_gated_against_the_fp32_scores_its_onnx_recorded(
    exporter, tmp_path: Path
) -> None:
    """The engine is built from the TensorRT-ready ONNX, often on a machine without
    TensorFlow; its gate must still measure drops from the FP32 model, not from the ONNX,
    or two conversions could each lose max_drop."""
    from export.pipeline import Exporter, ExportSettings
    from export.targets import TARGETS

    onnx_path = exporter.export(TARGETS["trt-fp16"]).artifacts[0].path
    recorded = read_manifest(onnx_path)["verification"]
    assert recorded["status"] == "passed"
    settings = ExportSettings(tile=TILE, overlap=8)
    again = Exporter(onnx_path, tmp_path, settings, validation_samples=VALIDATION)
    assert again.reference.recorded == again.reference.expected == recorded["reference"]
    elsewhere = Exporter(onnx_path, tmp_path, settings, validation_samples=VALIDATION[::-1][:2])
    assert elsewhere.reference.recorded is None  # other images: the ONNX's own scores
    assert elsewhere.reference.expected == elsewhere.reference.scores


def test_a_hematoxylin_model_is_calibrated_and_exported_as_trained(
    source: Path, tmp_path: Path
) -> None:
    """The manifest's stained channel reaches the INT8 calibration crops and every artifact."""
    from export.pipeline import Exporter, ExportSettings
    from export.targets import TARGETS

    copy = tmp_path / "hema" / "model.keras"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    write_manifest(copy, preprocess=preprocess_spec("hematoxylin"))
    stained = [Sample("he", *synthetic_he((48, 48), seed=5))]
    exporter = Exporter(
        copy,
        tmp_path / "out",
        ExportSettings(tile=TILE, overlap=8, calib_images=2),
        calibration_samples=stained,
    )
    whole = normalize(stained[0].image, "hematoxylin")
    windows = np.lib.stride_tricks.sliding_window_view(whole, (TILE, TILE))
    for tile in exporter.calibration.tiles[..., 0]:
        assert np.any(np.all(windows == tile, axis=(2, 3)))
    outcome = exporter.export(TARGETS["onnx-fp32"])
    assert preprocessing(read_manifest(outcome.artifacts[0].path)) == "hematoxylin"


def test_a_mobilenet_encoder_converts_to_onnx_and_int8_tflite_builtins(tmp_path: Path) -> None:
    """Depthwise convolutions, ReLU6 and explicit padding: ops every edge runtime has."""
    import keras
    import onnxruntime
    from ai_edge_litert.interpreter import Interpreter

    from export.onnx import write_onnx
    from export.tflite import save_model, write_tflite
    from training.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("mobilenet_unet", pretrained=False, decoder_filters=(4, 4, 4, 4, 4))
    tiles = np.random.default_rng(0).random((4, 64, 64, 1), dtype=np.float32)
    expected = np.asarray(model(tiles, training=False))
    write_onnx(model, tmp_path / "m.onnx", 64)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: tiles})
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)
    save_model(model, tmp_path / "saved", 64)
    write_tflite(tmp_path / "saved", tmp_path / "m.tflite", "int8", [t[None] for t in tiles])
    interpreter = Interpreter(str(tmp_path / "m.tflite"))
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_output_details()
    assert tuple(detail["shape"]) == (1, 64, 64, 2) and detail["dtype"] == np.int8
