"""`edgeseg train --model maskrcnn` on tiny synthetic DSB-layout data: validation, the best
model and its manifest, exact resume, and `edgeseg segment` / load_segmenter on that model."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_nuclei

from edgeseg.manifest import ManifestError, file_sha256
from edgeseg.maskrcnn import MaskRCNNConfig
from edgeseg.segmenter import load_segmenter

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow

# needs TensorFlow: skipped above without it
from maskrcnn_tiny import TINY, dsb_folder, train_tiny  # noqa: E402, F401  (fixture `dsb`)
from maskrcnn_tiny import cli as _cli  # noqa: E402

from training.maskrcnn.manifest import model_manifest  # noqa: E402


@pytest.fixture(scope="module")
def run(dsb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-step run: checkpoints at steps 1 and 2, validation and the best model at step 2.
    Deterministic ops in this module, so a resumed step can be compared with this one
    (multi-threaded reductions otherwise round differently, and Adam turns that into up to a
    step's size for weights whose gradient is near zero); off again for the other tests."""
    import tensorflow as tf
    from tensorflow.python.framework import config  # the switch back is not public API

    tf.config.experimental.enable_op_determinism()
    try:
        yield train_tiny(dsb, tmp_path_factory.mktemp("maskrcnn"))
    finally:
        config.disable_op_determinism()


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
    with pytest.raises(ValueError, match="test-time flips do not apply"):
        load_segmenter(model_manifest(run), test_time_flips=True)


def test_a_tampered_graph_is_refused_by_name(run: Path, tmp_path: Path) -> None:
    model = shutil.copytree(run / "model", tmp_path / "model")
    with (model / "box_head.keras").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"box_head\.keras: sha256 .* does not match"):
        load_segmenter(model / "maskrcnn.json")


def test_resume_after_a_crash_repeats_the_same_step(run: Path, dsb: Path, tmp_path: Path) -> None:
    """Crash right after checkpoint 1: resuming runs step 2 again, as before up to the float
    rounding of multi-threaded reductions (up to 1.5e-5 seen, so 1e-4 is allowed; one Adam
    step moves weights by ~1e-3)."""
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
            np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-4)


def test_resume_without_checkpoints_warm_starts_from_the_best_model(
    run: Path, dsb: Path, tmp_path: Path
) -> None:
    """A fresh clone has model/ but no checkpoints: training goes on from the best step."""
    from training.maskrcnn.train import train

    cloned = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints"))
    state = json.loads((cloned / "state.json").read_text())
    (cloned / "state.json").write_text(json.dumps({**state, "step": 3}))
    log = (cloned / "log.csv").read_text()
    (cloned / "log.csv").write_text(log + log.splitlines()[-1].replace("2,", "3,", 1) + "\n")

    trainer = train(TINY, dsb, cloned, resume=True, cache_dir=tmp_path / "cache")
    assert int(trainer.step.numpy()) == 2
    assert [row["step"] for row in csv.DictReader((cloned / "log.csv").open())] == ["1", "2"]
    restart = json.loads((cloned / "state.json").read_text())["warm_starts"]
    assert restart == [{"from_step": 3, "restarted_at": 2, "optimizer": "re-initialised"}]
    for name in ("stage1", "box_head", "mask_head"):
        saved = keras_weights(run / "model" / f"{name}.keras")
        for mine, reference in zip(getattr(trainer, name).get_weights(), saved, strict=True):
            np.testing.assert_array_equal(mine, reference)


def keras_weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()
