"""`edgeseg train --model maskrcnn` on tiny synthetic DSB-layout data: validation, the best
model and its manifest, exact resume, and `edgeseg segment` / load_segmenter on that model."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei
from test_data import write_kaggle_sample

from edgeseg.cli import main
from edgeseg.manifest import ManifestError, file_sha256
from edgeseg.maskrcnn import MaskRCNNConfig
from edgeseg.segmenter import load_segmenter

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow

from training import data_loading  # noqa: E402  (needs TensorFlow: skipped above without it)
from training.augment import AugmentConfig  # noqa: E402
from training.maskrcnn.config import MaskRCNNTrainConfig  # noqa: E402
from training.maskrcnn.manifest import model_manifest  # noqa: E402

SPLIT = {"train": ["s0", "s1"], "validation": ["s2"]}
TINY = MaskRCNNTrainConfig(
    runtime=replace(MaskRCNNConfig(), score_threshold=0.0, roi_batch=16),
    data_copy="stage1_train",
    stem_width=4,
    widths=(8, 8, 16, 16),
    fpn_channels=8,
    box_head_units=16,
    mask_head_channels=8,
    rpn_batch_per_image=64,
    rois_per_image=16,
    mask_rois_per_image=4,
    batch_size=2,
    steps=50,  # the command line's --steps 2 wins
    warmup_steps=1,
    checkpoint_every=1,
    validate_every=2,
    augment=AugmentConfig(crop=64),
)


def _cli(*args: object):
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dsb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("dsb")
    for index in range(3):
        image, labels = synthetic_nuclei((80, 96), seed=index, touching=False)
        write_kaggle_sample(root / "stage1_train", f"s{index}", image, labels)
    with pytest.MonkeyPatch.context() as patch:  # the real split names the real DSB ids
        patch.setattr(data_loading, "load_split", lambda: SPLIT)
        yield root


@pytest.fixture(scope="module")
def run(dsb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step run: checkpoints at steps 1 and 2, validation and the best model at step 2."""
    folder = tmp_path_factory.mktemp("maskrcnn")
    (folder / "tiny.json").write_text(TINY.to_json())
    run_dir = folder / "run"
    result = _cli(
        "train", "--model", "maskrcnn", "--data", dsb, "--out", run_dir,
        "--config", folder / "tiny.json", "--steps", 2, "--cache-dir", folder / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "best validation score" in result.output and "at step 2" in result.output
    return run_dir


def test_run_validates_and_ships_the_best_model(run: Path) -> None:
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [row["step"] for row in rows] == ["1", "2"]
    assert rows[0]["val_selection_score"] == ""  # validated every 2 steps only
    for key in ("pixel_iou", "dsb_score", "ap50", "f1_50", "mean_iou_2class", "selection_score"):
        assert 0.0 <= float(rows[1][f"val_{key}"]) <= 1.0
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 2 and state["best_step"] == 2 and state["wall_seconds"] > 0
    assert state["best_score"] == pytest.approx(float(rows[1]["val_selection_score"]))
    assert json.loads((run / "config.json").read_text())["steps"] == 2

    manifest = json.loads(model_manifest(run).read_text())
    assert manifest["kind"] == "maskrcnn" and manifest["training"]["best_step"] == 2
    assert MaskRCNNConfig.from_dict(manifest["runtime"]) == TINY.runtime
    for name, entry in manifest["graphs"].items():
        assert entry == {
            "file": f"{name}.keras",
            "backend": "keras",
            "sha256": file_sha256(run / "model" / entry["file"]),
        }
    assert manifest["params"] == sum(manifest["graph_params"].values()) > 0


def test_segment_runs_the_maskrcnn_model(run: Path, tmp_path: Path) -> None:
    image, _ = synthetic_nuclei((70, 90), seed=5)
    segmenter = load_segmenter(model_manifest(run))
    labels = segmenter.segment(image)
    assert labels.dtype == np.uint16 and labels.shape == (70, 90)
    assert segmenter.backend.name == "keras" and segmenter.manifest["name"]

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "x.png"), image)
    result = _cli(
        "segment", tmp_path / "in", "-o", tmp_path / "out", "--model", model_manifest(run)
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "x_labels.tif").is_file()
    with pytest.raises(ValueError, match="whole images"):
        load_segmenter(model_manifest(run), tile=64)


def test_a_tampered_graph_is_refused_by_name(run: Path, tmp_path: Path) -> None:
    model = shutil.copytree(run / "model", tmp_path / "model")
    with (model / "box_head.keras").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"box_head\.keras: sha256 .* does not match"):
        load_segmenter(model / "maskrcnn.json")


def test_resume_after_a_crash_repeats_the_same_step(run: Path, dsb: Path, tmp_path: Path) -> None:
    """Crash right after checkpoint 1: resuming runs step 2 again, bit for bit as before."""
    import keras

    from training.maskrcnn.train import train

    crashed = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("model"))
    (crashed / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n'
    )
    lines = (crashed / "log.csv").read_text().splitlines(keepends=True)
    (crashed / "log.csv").write_text("".join(lines[:2]))
    state = {"step": 1, "best_score": -1.0, "best_step": None, "wall_seconds": 1.0}
    (crashed / "state.json").write_text(json.dumps(state))

    trainer = train(TINY, dsb, crashed, resume=True, cache_dir=tmp_path / "cache")
    assert int(trainer.step.numpy()) == 2
    rows = list(csv.DictReader((crashed / "log.csv").open()))
    assert [row["step"] for row in rows] == ["1", "2"]
    assert json.loads((crashed / "state.json").read_text())["best_step"] == 2
    for name in ("stage1", "box_head", "mask_head"):
        ours = keras.saving.load_model(crashed / "model" / f"{name}.keras").get_weights()
        theirs = keras.saving.load_model(run / "model" / f"{name}.keras").get_weights()
        for mine, reference in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(mine, reference)
