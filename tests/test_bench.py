"""`edgeseg bench` end to end with the tiny ONNX model and a tiny Mask R-CNN (an instance
model: only `segment`), and its parts on hand-made inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei
from onnx import TensorProto, helper
from tiny_models import threshold_model

from benchmarks.complexity import complexity, from_onnx
from benchmarks.discover import discover
from benchmarks.harness import _base_record, _run_worker
from benchmarks.plot import pareto_front, runnable_front, write_plot
from edgeseg.cli import main
from edgeseg.imageio import read_plane, write_labels
from edgeseg.manifest import write_manifest
from edgeseg.maskrcnn_model import GRAPHS, write_maskrcnn_manifest
from edgeseg.metrics import aggregate, score_image
from edgeseg.segmenter import load_segmenter

MODEL = "threshold-test"  # the name threshold_model writes into its manifest


def _dataset(root: Path, count: int = 5) -> dict[str, np.ndarray]:
    """images/ + labels/ layout of synthetic nuclei; returns the labels by id."""
    truth = {}
    (root / "images").mkdir(parents=True)
    for index in range(count):
        image, labels = synthetic_nuclei((72, 90), count=6, seed=index, touching=False)
        cv2.imwrite(str(root / "images" / f"s{index}.png"), image)
        write_labels(root / "labels" / f"s{index}.tif", labels)
        truth[f"s{index}"] = labels
    return truth


def _fake_engine(folder: Path) -> Path:
    """A TensorRT 'engine' with a valid manifest: must be listed, never run or measured."""
    engine = folder / f"{MODEL}-trt-int8.engine"
    engine.write_bytes(b"not a real engine")
    write_manifest(engine, name=MODEL, backend="tensorrt", target="trt-int8")
    return engine


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One --quick run over a dynamic-tile model, a fixed 64x64 one and a fake engine."""
    root = tmp_path_factory.mktemp("bench")
    artifacts = root / "artifacts"
    threshold_model(artifacts / "threshold.onnx")
    threshold_model(artifacts / "fixed" / "threshold-64.onnx", tile=64)
    _fake_engine(artifacts)
    truth = _dataset(root / "data")
    return root, _quick_bench(root, ["--artifacts", str(artifacts)], MODEL), truth


def _quick_bench(root: Path, source: list[str], model: str) -> Path:
    """`edgeseg bench --quick` on ``root``/data, one thread, for ``model``; the out folder."""
    out = root / "out"
    args = ["bench", "--quick", *source, "--data", str(root / "data")]
    args += ["--models", model, "--threads", "1", "--out", str(out)]
    args += ["--cache-dir", str(root / "cache")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_quick_run_writes_json_markdown_and_plot(bench_run) -> None:
    _, out, _ = bench_run
    result = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "bench.md").read_text()
    assert "| threshold-test | onnx-fp32 |" in markdown
    assert "| U-Net | survey (reported) | 98.0 | 83.0 |" in markdown
    assert "not the held-out stage1_test" in markdown  # a synthetic folder beside test rows
    assert result["dataset"]["images"] == 4 and result["dataset"]["split_images"] == 5
    assert result["environment"]["cpu"]["logical_cores"] >= 1
    assert [r["model"] for r in result["reference"]] == [
        "Simple CNN",
        "ResNet",
        "U-Net",
        "Mask R-CNN",
    ]


def _assert_accuracy_is_segment_output(record: dict, root: Path, truth: dict) -> None:
    """The record's scores are edgeseg.metrics on what `segment` gives for 4 of the 5 images."""
    segmenter = load_segmenter(record["artifact"], threads=1)
    per_image = {
        sample_id: score_image(
            truth[sample_id],
            segmenter.segment(read_plane(root / "data" / "images" / f"{sample_id}.png")),
        )
        for sample_id in ("s0", "s1", "s3", "s4")  # 4 of 5, spread evenly
    }
    assert record["accuracy"] == pytest.approx(aggregate(per_image))
    assert set(record["per_image"]) == set(per_image)
    for sample_id, scores in per_image.items():
        assert record["per_image"][sample_id] == pytest.approx(scores)


def test_accuracy_equals_metrics_on_segmenter_output(bench_run) -> None:
    root, out, truth = bench_run
    records = json.loads((out / "bench.json").read_text())["records"]
    measured = [r for r in records if r["status"] == "ok"]
    assert len(measured) == 2
    for record in measured:
        _assert_accuracy_is_segment_output(record, root, truth)


def test_latency_memory_and_size_are_measured(bench_run) -> None:
    _, out, _ = bench_run
    records = {
        Path(r["artifact"]).name: r for r in json.loads((out / "bench.json").read_text())["records"]
    }
    for name, tile in (("threshold.onnx", [256, 256]), ("threshold-64.onnx", [64, 64])):
        record = records[name]
        model = record["latency"]["model"]
        assert model["tile"] == tile and set(model["batches"]) == {"1", "2"}
        assert model["batches"]["1"]["n"] == 3 and model["batches"]["1"]["median_ms"] > 0
        assert record["latency"]["end_to_end"]["n"] == 4
        assert record["latency"]["images_per_s"] > 0
        whole_image = record["latency"]["whole_image"]
        assert whole_image["shape"] == [256, 256] and whole_image["n"] == 3
        memory = record["memory"]
        assert memory["peak_rss_mb"] >= memory["rss_before_load_mb"] > 0
        assert record["size_bytes"] == Path(record["artifact"]).stat().st_size
        assert record["params"] == 2 and record["params_source"] == "onnx graph"


def test_tensorrt_without_gpu_is_listed_not_measured(bench_run) -> None:
    _, out, _ = bench_run
    records = json.loads((out / "bench.json").read_text())["records"]
    (engine,) = [r for r in records if r["target"] == "trt-int8"]
    assert engine["status"] == "unavailable" and "TensorRT" in engine["reason"]
    assert not {"accuracy", "latency", "memory", "size_bytes", "params"} & set(engine)
    markdown = (out / "bench.md").read_text()
    row = next(line for line in markdown.splitlines() if "| trt-int8 |" in line)
    assert "not available on this machine" in row
    assert not any(char.isdigit() for char in row.split("|")[3:-2])


def test_worker_is_a_fresh_process_reporting_its_memory(tmp_path: Path) -> None:
    model = threshold_model(tmp_path / "threshold.onnx")
    image, _ = synthetic_nuclei((40, 40))
    cv2.imwrite(str(tmp_path / "a.png"), image)
    spec = {
        "artifact": str(model),
        "backend": None,
        "threads": 1,
        "images": [("a", str(tmp_path / "a.png"))],
        "predictions": str(tmp_path / "predictions"),
        "repeats": 2,
        "warmup": 0,
        "batches": [1],
    }
    parent_peak = np.ones(600 << 20, np.uint8)  # Linux's ru_maxrss carried this into workers
    result = _run_worker(spec, tmp_path)
    del parent_peak
    assert result["status"] == "ok" and result["pid"] != os.getpid()
    assert 0 < result["memory"]["rss_before_load_mb"] < 400
    assert result["memory"]["peak_rss_mb"] > 0
    assert (tmp_path / "predictions" / "a_labels.tif").is_file()


def test_worker_crash_is_a_failed_record(tmp_path: Path) -> None:
    model = threshold_model(tmp_path / "threshold.onnx")
    spec = {"artifact": str(model), "images": [("a", str(tmp_path / "missing.png"))]}
    spec |= {"predictions": str(tmp_path / "p"), "repeats": 1, "warmup": 0, "batches": [1]}
    result = _run_worker(spec, tmp_path)
    assert result["status"] == "failed" and "missing.png" in result["reason"]


def test_pareto_front_on_hand_made_points() -> None:
    points = [(10.0, 80.0), (5.0, 70.0), (20.0, 85.0), (12.0, 75.0), (5.0, 60.0), (30.0, 85.0)]
    assert pareto_front(points) == [1, 0, 2]  # fast, then better; dominated ones left out
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    assert pareto_front([]) == []


def test_an_artifact_segment_refuses_is_not_on_the_front() -> None:
    points = [(10.0, 0.70), (5.0, 0.80), (20.0, 0.75)]  # the fast, accurate one was rejected
    assert runnable_front(points, [True, False, True]) == [0, 2]
    assert runnable_front(points, [False, False, False]) == []


def test_plot_draws_a_rejected_artifact_without_error(tmp_path: Path) -> None:
    def record(target: str, check: str | None) -> dict:
        return {
            "status": "ok",
            "model": "unet",
            "target": target,
            "export_check": check,
            "latency": {"end_to_end": {"median_ms": 12.0}},
            "accuracy": {"pixel_iou": 0.7},
            "memory": {"peak_rss_mb": 90.0},
        }

    result = {
        "records": [record("onnx-fp32", "passed"), record("onnx-int8", "rejected")],
        "reference": [],
        "dataset": {"images": 2},
    }
    write_plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_discover_reads_run_folders_and_reports_missing_targets(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "unet"
    threshold_model(run / "export" / "unet-onnx-fp32.onnx")
    (run / "config.json").write_text("{}")  # not a manifest: no artifact suffix
    configs = discover(tmp_path / "runs", targets=("onnx-fp32,onnx-int8",), include_builtin=False)
    assert [(c.model, c.target, c.unavailable is None) for c in configs] == [
        ("unet", "onnx-fp32", True),
        ("unet", "onnx-int8", False),
    ]
    assert "no onnx-int8 artifact" in configs[1].unavailable


def test_copies_of_one_artifact_are_benchmarked_once(tmp_path: Path) -> None:
    first = threshold_model(tmp_path / "a" / "threshold.onnx")
    copy = tmp_path / "b" / "threshold.onnx"
    copy.parent.mkdir()
    for suffix in ("", ".json"):
        shutil.copyfile(f"{first}{suffix}", f"{copy}{suffix}")
    folders = [tmp_path / "a", tmp_path / "b", tmp_path / "b"]  # one folder named twice
    (config,) = discover(artifact_paths=folders, include_builtin=False)
    assert (config.artifact, config.copies) == (first, (copy,))
    assert _base_record(config)["copies"] == [str(copy)]
    manifest = json.loads(Path(f"{copy}.json").read_text())
    manifest["postprocess"]["min_area"] += 1  # same bytes, other thresholds: another model
    Path(f"{copy}.json").write_text(json.dumps(manifest))
    found = discover(artifact_paths=[tmp_path / "a", tmp_path / "b"], include_builtin=False)
    assert [c.artifact for c in found] == [first, copy]


def test_a_copy_of_the_built_in_model_is_named_in_its_row() -> None:
    from benchmarks.report import _notes
    from edgeseg.models import models_dir

    builtin = models_dir() / "default-onnx-int8.onnx"
    record = {
        "status": "ok",
        "artifact": "training/runs/unet/export/unet-onnx-int8.onnx",
        "copies": [str(builtin)],
        "backend": "onnx",
        "params_source": "manifest",
        "flops_source": "manifest",
        "latency": {"model": 1.0},
        "export_check": "passed",
    }
    notes = _notes(record)
    assert notes.startswith("the built-in default model, unet-onnx-int8.onnx on onnx")
    assert f"the same file as {builtin}" in notes
    assert "built-in" not in _notes({**record, "copies": []})


def test_an_artifacts_folder_without_models_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no exported model"):
        discover(artifact_paths=[tmp_path / "empty"])


def test_an_unwritable_out_is_refused_before_any_benchmark(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    args = ["bench", "--quick", "--data", str(tmp_path), "--out", str(tmp_path / "file" / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert f"{tmp_path / 'file' / 'out'}: cannot write the results there" in result.output
    assert "[1/" not in result.output  # nothing was benchmarked first


def test_a_model_that_fails_makes_the_run_fail_after_writing_its_row(tmp_path: Path) -> None:
    _dataset(tmp_path / "data", count=2)
    model = threshold_model(tmp_path / "artifacts" / "threshold.onnx")
    model.write_bytes(model.read_bytes()[:100] + b"tampered")
    args = ["bench", "--quick", "--artifacts", str(tmp_path / "artifacts"), "--models", MODEL]
    args += ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert f"1 of 1 failed: {MODEL} onnx-fp32" in result.output
    (record,) = json.loads((tmp_path / "out" / "bench.json").read_text())["records"]
    assert record["status"] == "failed" and "sha256" in record["reason"]


def test_an_unreadable_manifest_is_listed_whatever_the_filter(tmp_path: Path) -> None:
    model = threshold_model(tmp_path / "artifacts" / "threshold.onnx")
    (tmp_path / "artifacts" / "threshold.onnx.json").write_text("{not json")
    artifacts = [tmp_path / "artifacts"]
    found = discover(artifact_paths=artifacts, models=["unet"], targets=["onnx-fp32"])
    (config, missing) = sorted(found, key=lambda c: c.target)  # no row invented for "threshold"
    assert (missing.model, missing.target) == (
        "unet",
        "onnx-fp32",
    ) and "no onnx-fp32" in missing.unavailable
    assert config.artifact == model and "unreadable manifest" in config.unavailable
    assert _base_record(config)["status"] == "failed"  # broken, not merely unsupported here


def test_an_unknown_model_or_a_missing_runs_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model named typo_model in .*found: unet"):
        discover(runs_dir=tmp_path, models=["typo_model"])  # the built-in model: unet_...
    missing = tmp_path / "nope"
    result = CliRunner().invoke(main, ["bench", "--data", str(tmp_path), "--runs", str(missing)])
    assert result.exit_code == 2 and "nope: no such folder" in result.output


def test_unknown_target_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--data", str(tmp_path), "--targets", "onnx-fp8"])
    assert result.exit_code == 2 and "onnx-fp8" in result.output


def _conv_model(path: Path) -> Path:
    """NHWC in -> Conv 3x3 (1->4, bias) -> ConvTranspose 2x2 stride 2 (4->2, bias) -> NHWC."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        values = rng.normal(size=shape).astype(np.float32)
        return helper.make_tensor(name, TensorProto.FLOAT, shape, values.ravel())

    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c1", "w2", "b2"], ["c2"], strides=[2, 2]),
        helper.make_node("Transpose", ["c2"], ["out"], perm=[0, 2, 3, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", "h", "w", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[weight("w1", 4, 1, 3, 3), weight("b1", 4), weight("w2", 4, 2, 2, 2)]
        + [weight("b2", 2)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_flops_and_parameters_counted_on_an_onnx_graph(tmp_path: Path) -> None:
    path = _conv_model(tmp_path / "conv.onnx")
    conv_macs = 32 * 32 * 4 * (1 * 3 * 3)  # output pixels x channels x kernel
    transposed_macs = 32 * 32 * 4 * (2 * 2 * 2)  # input pixels x Cin x (Cout x kernel)
    assert from_onnx(path, (32, 32)) == {
        "params": 4 * 9 + 4 + 4 * 2 * 4 + 2,
        "flops_per_tile": 2 * (conv_macs + transposed_macs),
    }
    recorded = complexity({"params": 123, "tile": {"size": 32}}, path, (32, 32), [path])
    assert recorded["params"] == 123 and recorded["params_source"] == "manifest"
    assert recorded["flops_source"] == "onnx graph"
    unknown = complexity({}, tmp_path / "model.tflite", (32, 32), [])
    assert unknown["params"] is None and unknown["flops_source"] == "n/a"
    other = Path(shutil.copy(path, tmp_path / "other.onnx"))
    borrowed = complexity({}, tmp_path / "model.tflite", (32, 32), [other])
    assert borrowed["params_source"] == "onnx graph of other.onnx"


@pytest.fixture(scope="module")
def maskrcnn_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One --quick run over runs/maskrcnn/model/maskrcnn.json: an untrained Mask R-CNN of
    maskrcnn_tiny's TINY sizes, saved as training ships it (needs TensorFlow)."""
    pytest.importorskip("tensorflow")
    from maskrcnn_tiny import TINY

    from training.maskrcnn.manifest import save_model
    from training.maskrcnn.model import build_box_head, build_mask_head, build_stage1

    root = tmp_path_factory.mktemp("bench-maskrcnn")
    builders = (build_stage1, build_box_head, build_mask_head)  # in GRAPHS order
    graphs = {name: build(TINY) for name, build in zip(GRAPHS, builders, strict=True)}
    trainer = SimpleNamespace(config=TINY, **graphs)
    save_model(trainer, root / "runs" / "maskrcnn", {"best_step": 0, "best_metrics": {}})
    truth = _dataset(root / "data")
    return root, _quick_bench(root, ["--runs", str(root / "runs")], "maskrcnn"), truth


def test_instance_model_is_measured_through_segment_on_whole_images(maskrcnn_bench) -> None:
    root, out, truth = maskrcnn_bench
    (record,) = json.loads((out / "bench.json").read_text())["records"]
    assert (record["model"], record["target"], record["status"]) == ("maskrcnn", "keras-fp32", "ok")
    _assert_accuracy_is_segment_output(record, root, truth)
    latency = record["latency"]
    assert latency["model"] is None  # no tiles
    assert latency["whole_image"]["shape"] == [256, 256] and latency["whole_image"]["n"] == 3
    assert latency["end_to_end"]["n"] == 4
    model = root / "runs" / "maskrcnn" / "model"
    sizes = [(model / f"{name}.keras").stat().st_size for name in GRAPHS]
    assert record["size_bytes"] == sum(sizes)
    manifest = json.loads((model / "maskrcnn.json").read_text())
    assert record["params"] == manifest["params"] and record["params_source"] == "manifest"
    assert record["flops_per_tile"] is None
    markdown = (out / "bench.md").read_text()
    row = next(line for line in markdown.splitlines() if "| maskrcnn |" in line)
    assert "n/a: whole images" in row and "instance model" in row
    assert (out / "bench.png").is_file()


def _fake_graphs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    graphs = {name: folder / f"{name}.onnx" for name in GRAPHS}
    for path in graphs.values():
        path.write_bytes(b"graph")
    return graphs


def test_discover_finds_maskrcnn_manifests_in_runs_and_exports(tmp_path: Path) -> None:
    from edgeseg.maskrcnn import MaskRCNNConfig

    run = tmp_path / "runs" / "maskrcnn"
    for folder, target in (("model", "keras-fp32"), ("export/onnx-fp32", "onnx-fp32")):
        graphs = _fake_graphs(run / folder)
        manifest = write_maskrcnn_manifest(
            run / folder / "maskrcnn.json", MaskRCNNConfig(), graphs, "onnx", target=target
        )
    configs = discover(tmp_path / "runs", include_builtin=False)
    assert [(c.model, c.target, c.artifact) for c in configs] == [
        ("maskrcnn", "keras-fp32", run / "model" / "maskrcnn.json"),
        ("maskrcnn", "onnx-fp32", manifest),
    ]
    assert set(configs[1].files) == set(graphs.values()) and configs[1].unavailable is None
    (graphs["mask_head"]).unlink()
    (config,) = discover(tmp_path / "runs" / "maskrcnn" / "export", include_builtin=False)
    assert "mask_head.onnx: missing" in config.unavailable
    assert _base_record(config)["status"] == "failed"  # a broken export, not an absent runtime
    broken = json.loads(manifest.read_text())
    del broken["graphs"]["mask_head"]["file"]
    manifest.write_text(json.dumps(broken))
    (config,) = discover(tmp_path / "runs" / "maskrcnn" / "export", include_builtin=False)
    assert "malformed graphs entry" in config.unavailable
    assert discover(artifact_paths=[manifest], include_builtin=False)[0].artifact == manifest


@pytest.mark.realdata
def test_quick_bench_on_the_real_test_split(dsb_root: Path, tmp_path: Path) -> None:
    threshold_model(tmp_path / "artifacts" / "threshold.onnx")
    out = tmp_path / "out"
    args = ["bench", "--quick", "--artifacts", str(tmp_path / "artifacts"), "--models", MODEL]
    args += ["--data", str(dsb_root), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    bench = json.loads((out / "bench.json").read_text())
    assert bench["dataset"]["images"] == 4 and bench["dataset"]["split_images"] == 65
    (record,) = bench["records"]
    assert record["status"] == "ok" and record["accuracy"]["images"] == 4
    assert 0 <= record["accuracy"]["pixel_iou"] <= 1
    assert "Accuracy is on 4 images only" in (out / "bench.md").read_text()
