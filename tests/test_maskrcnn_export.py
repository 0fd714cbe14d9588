"""`edgeseg export` of a Mask R-CNN (three graphs + maskrcnn.json) on the tiny 2-step model of
maskrcnn_tiny: every export loads through load_segmenter and segments like its Keras source,
INT8 calibration and its fallback are recorded, a tampered graph is refused by name, the gate
rejects a broken export, and without TensorRT the trt targets say how to finish."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import synthetic_nuclei

from edgeseg.data.dataset import Sample
from edgeseg.manifest import ManifestError, file_sha256
from edgeseg.maskrcnn import MaskRCNNConfig
from edgeseg.metrics import foreground_iou
from edgeseg.segmenter import load_segmenter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
pytestmark = [
    pytest.mark.tensorflow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

# needs TensorFlow: skipped above without it
from maskrcnn_tiny import (  # noqa: E402
    SPLIT,
    TINY,
    cli,
    dsb_folder,  # noqa: F401  (fixture `dsb`)
    dsb_sample,
    train_tiny,
)

from training.maskrcnn.manifest import model_manifest  # noqa: E402

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CROP = 64  # calibration crops: a multiple of 32, smaller than the images
TRAIN = [dsb_sample(sample_id) for sample_id in SPLIT["train"]]
VALIDATION = [
    Sample(f"v{index}", *synthetic_nuclei(shape, seed=200 + index, touching=False))
    for index, shape in enumerate([(80, 96), (70, 90), (64, 64)])
]
TARGET_NAMES = ("onnx-fp32", "onnx-int8", "tflite-int8")


@pytest.fixture(scope="module")
def source(dsb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's model manifest, <run>/model/maskrcnn.json."""
    return model_manifest(train_tiny(dsb, tmp_path_factory.mktemp("maskrcnn")))


@pytest.fixture(scope="module")
def exporter(source: Path, tmp_path_factory: pytest.TempPathFactory):
    from export.maskrcnn_pipeline import MaskRCNNExporter
    from export.pipeline import ExportSettings

    return MaskRCNNExporter(
        source,
        tmp_path_factory.mktemp("export"),
        # an untrained 2-step model's detections are fragile: a loose gate here
        # a model trained for seconds: its INT8 graphs may label differently, gated loosely
        ExportSettings(tile=CROP, calib_images=4, max_drop=20.0, min_agreement=0.0),
        calibration_samples=TRAIN,
        calibration_label="tiny training split",
        validation_samples=VALIDATION,
        validation_label="synthetic validation",
    )


@pytest.fixture(scope="module")
def outcomes(exporter) -> dict:
    from export.targets import TARGETS

    return {name: exporter.export(TARGETS[name]) for name in TARGET_NAMES}


@pytest.fixture(scope="module")
def keras_labels(source: Path) -> dict[str, np.ndarray]:
    segmenter = load_segmenter(source)
    return {sample.id: segmenter.segment(sample.image) for sample in VALIDATION}


def _agreement(segmenter, keras_labels: dict[str, np.ndarray]) -> float:
    """Mean foreground IoU of ``segmenter``'s labels with the Keras source's."""
    return float(
        np.mean(
            [foreground_iou(keras_labels[s.id], segmenter.segment(s.image)) for s in VALIDATION]
        )
    )


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_export_is_a_maskrcnn_folder_that_segments_like_keras(
    name: str, outcomes: dict, source: Path, keras_labels: dict
) -> None:
    (artifact,) = outcomes[name].artifacts
    folder = artifact.path.parent
    assert artifact.path.name == "maskrcnn.json" and folder.name == f"maskrcnn-{name}"
    manifest = json.loads(artifact.path.read_text())
    suffix = ".tflite" if name.startswith("tflite") else ".onnx"
    assert manifest["kind"] == "maskrcnn" and manifest["target"] == name
    assert MaskRCNNConfig.from_dict(manifest["runtime"]) == TINY.runtime
    assert manifest["source"]["sha256"] == file_sha256(source)
    assert {"tensorflow", "keras"} <= set(manifest["tools"])
    for graph, entry in manifest["graphs"].items():
        assert entry["file"] == f"{graph}{suffix}"
        assert entry["sha256"] == file_sha256(folder / entry["file"])
        assert entry["backend"] == ("litert" if suffix == ".tflite" else "onnx")
    stage1 = manifest["graphs"]["stage1"]
    outputs = {"p2", "p3", "p4", "p5", "rpn_logits", "rpn_deltas"}  # the Keras names
    assert {tensor["name"] for tensor in stage1["outputs"]} == outputs
    assert manifest["graphs"]["box_head"]["inputs"][0]["shape"][0] == TINY.runtime.roi_batch

    segmenter = load_segmenter(artifact.path)
    assert segmenter.backend.name == manifest["graphs"]["stage1"]["backend"]
    verification = manifest["verification"]
    assert verification["status"] == "passed" and verification["images"] == len(VALIDATION)
    agreement = _agreement(segmenter, keras_labels)
    assert agreement == pytest.approx(verification["mask_agreement"], abs=1e-9)
    if name == "onnx-fp32":  # the same network: the same nuclei
        assert agreement > 0.999
        for sample in VALIDATION:
            np.testing.assert_array_equal(segmenter.segment(sample.image), keras_labels[sample.id])
    else:
        assert agreement > 0.5


@pytest.mark.parametrize("name", ["onnx-int8", "tflite-int8"])
def test_int8_calibrates_stage1_on_training_crops_and_heads_on_their_rois(
    name: str, outcomes: dict, exporter
) -> None:
    manifest = outcomes[name].artifacts[0].manifest
    calibration = manifest["calibration"]
    assert calibration["count"] == 4 and calibration["tile"] == CROP
    assert set(calibration["ids"]) == set(SPLIT["train"])
    assert calibration["sha256"] == exporter.calibration.sha256
    assert manifest["int8_graphs"] == ["stage1", "box_head", "mask_head"]
    graphs = manifest["graphs"]
    assert graphs["stage1"]["calibration"] == calibration
    for head in ("box_head", "mask_head"):
        record = graphs[head]["calibration"]
        assert record["count"] % TINY.runtime.roi_batch == 0 and record["captured"] > 0
        assert record["sha256"] == exporter._calibrations[head].record["sha256"]
    for graph in graphs.values():
        assert graph["precision"] == "int8"
        assert graph["quantization"]["weights"].startswith("int8, per-channel")
    if name == "tflite-int8":  # int8 io, with the model's own scales
        image = graphs["stage1"]["inputs"][0]
        assert image["dtype"] == "int8" and image["quantization"]["scale"] > 0


def test_a_tampered_graph_is_refused_by_name(outcomes: dict, tmp_path: Path) -> None:
    folder = shutil.copytree(outcomes["onnx-int8"].artifacts[0].path.parent, tmp_path / "copy")
    data = bytearray((folder / "box_head.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "box_head.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"box_head\.onnx: sha256 .* does not match"):
        load_segmenter(folder / "maskrcnn.json")


def test_int8_falls_back_to_fp32_heads_when_all_int8_is_rejected(
    exporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first (all-INT8) try is made to fail the gate: the export keeps stage 1 INT8 only,
    and the manifest records both tries (trt-int8: its TensorRT-ready ONNX)."""
    import export.pipeline
    from export.targets import TARGETS

    verdicts = []

    def fail_first(candidate, reference, max_drop, min_agreement):
        verdict = real_verify(candidate, reference, max_drop, min_agreement)
        if not verdicts:
            verdict = verdict | {"status": "rejected", "failed": ["pixel_iou"]}
        verdicts.append(verdict)
        return verdict

    real_verify = export.pipeline.verify
    monkeypatch.setattr(export.pipeline, "verify", fail_first)
    outcome = exporter.export(TARGETS["trt-int8"])
    (artifact,) = outcome.artifacts  # no TensorRT here, or an engine after it
    manifest = artifact.manifest
    assert len(verdicts) == 2 and manifest["verification"]["status"] == "passed"
    assert manifest["int8_graphs"] == ["stage1"]
    assert [try_["int8_graphs"] for try_ in manifest["attempts"]] == [
        ["stage1", "box_head", "mask_head"]
    ]
    assert manifest["attempts"][0]["status"] == "rejected"
    graphs = manifest["graphs"]
    assert graphs["stage1"]["precision"] == "int8" and "calibration" in graphs["stage1"]
    assert graphs["stage1"]["graph_optimization"] == "basic"  # run as TensorRT computes
    for head in ("box_head", "mask_head"):
        assert graphs[head]["precision"] == "fp32" and "quantization" not in graphs[head]
    nodes = onnx.load(str(artifact.path.parent / "box_head.onnx")).graph.node
    assert not any(node.op_type == "QuantizeLinear" for node in nodes)
    nodes = onnx.load(str(artifact.path.parent / "stage1.onnx")).graph.node
    assert any(node.op_type == "QuantizeLinear" for node in nodes)


# --- the command line: DSB layout, the split file, exit statuses ---


def _split_file(folder: Path) -> Path:
    path = folder / "split.json"
    path.write_text(json.dumps(SPLIT))
    return path


def _zero_masks(path: Path) -> None:
    """Make a mask head ONNX graph answer "no nucleus" everywhere (logits -10)."""
    model = onnx.load(str(path))
    (output,) = model.graph.output
    for node in model.graph.node:
        node.output[:] = [f"{o}_real" if o == output.name else o for o in node.output]
    model.graph.node.extend(
        [
            onnx.helper.make_node("Mul", [f"{output.name}_real", "zero"], ["zeroed"]),
            onnx.helper.make_node("Add", ["zeroed", "minus_ten"], [output.name]),
        ]
    )
    model.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            onnx.numpy_helper.from_array(np.array(-10.0, np.float32), "minus_ten"),
        ]
    )
    onnx.save(model, str(path))


def test_cli_gate_rejects_a_broken_export(
    source: Path, dsb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.onnx

    def broken(model, path, shape, input_name):
        real(model, path, shape, input_name)
        if input_name == "mask_crops":
            _zero_masks(path)

    real = export.onnx.write_named_onnx
    monkeypatch.setattr(export.onnx, "write_named_onnx", broken)
    out = tmp_path / "out"
    result = cli(
        "export", "--model", source, "--target", "onnx-fp32", "--data", dsb,
        "--split", _split_file(tmp_path), "--tile", CROP, "--cache-dir", tmp_path / "cache",
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 4, result.output
    assert "REJECTED on 1 images" in result.output and "manifest marked rejected" in result.output
    manifest_path = out / "maskrcnn-onnx-fp32" / "maskrcnn.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["verification"]["status"] == "rejected"
    assert manifest["verification"]["artifact"]["pixel_iou"] == 0.0
    with pytest.raises(ManifestError, match="failed its accuracy check"):
        load_segmenter(manifest_path)
    labels = load_segmenter(manifest_path, allow_unverified=True).segment(VALIDATION[0].image)
    assert not labels.any()  # kept for inspection: it runs, and finds nothing


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_cli_trt_without_tensorrt_writes_the_onnx_graphs_and_says_how(
    source: Path, tmp_path: Path
) -> None:
    result = cli(
        "export", "--model", source, "--target", "trt-fp16", "--tile", CROP, "--out", tmp_path
    )
    assert result.exit_code == 3, result.output
    manifest_path = tmp_path / "maskrcnn-trt-fp16" / "maskrcnn.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["target"] == "trt-fp16" and manifest["verification"]["status"] == "skipped"
    assert {entry["backend"] for entry in manifest["graphs"].values()} == {"onnx"}
    (line,) = [line for line in result.output.splitlines() if "NOT built" in line]
    assert f"edgeseg export --model {manifest_path} --target trt-fp16" in line
    assert line.count("trtexec --onnx=") == 3 and "--minShapes=image:1x32x32x1" in line
    assert f"--maxShapes=box_crops:{TINY.runtime.roi_batch}x7x7x8" in line
    assert "verification SKIPPED" in result.output
    # the TensorRT-ready graphs run on ONNX Runtime meanwhile
    assert load_segmenter(manifest_path).segment(VALIDATION[0].image).shape == (80, 96)
