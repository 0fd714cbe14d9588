"""training.maskrcnn.tune on the tiny 2-step Mask R-CNN run of test_maskrcnn_cli.py: the
cached per-setting scores equal the runtime's, and the chosen thresholds reach the manifest."""

# ruff: noqa: F811  (the imported fixtures are the tests' arguments)

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from maskrcnn_tiny import dsb_folder  # noqa: F401  (fixture `dsb`: the tiny data)
from test_maskrcnn_cli import run  # noqa: F401  (fixture: the 2-step run)

from edgeseg.data.cache import load_dataset
from edgeseg.maskrcnn import MaskRCNN
from edgeseg.maskrcnn_model import load_maskrcnn
from edgeseg.metrics import score_image
from edgeseg.preprocess import normalize
from edgeseg.segmenter import load_segmenter
from training.maskrcnn.manifest import model_manifest
from training.maskrcnn.tune import (
    StaleModelError,
    grid,
    image_scores,
    main,
    write_tuned_manifest,
)

pytestmark = pytest.mark.tensorflow


def test_grid_scores_equal_the_runtime_with_each_setting(run: Path, dsb: Path) -> None:
    segmenter = load_maskrcnn(model_manifest(run))
    (sample,) = load_dataset(dsb / "stage1_train", None, ids=["s2"])
    image = normalize(sample.image)
    scores = image_scores(segmenter.model, image, sample.labels)
    settings = grid()
    assert len(scores) == len(settings) == 6 * 4 * 3 * 3
    counts = set()
    for index in range(0, len(settings), 11):
        model = segmenter.model
        config = replace(model.config, **settings[index])
        labels = MaskRCNN(config, model.stage1, model.box_head, model.mask_head).segment(image)
        assert scores[index] == score_image(sample.labels, labels), settings[index]
        counts.add(int(labels.max()))
    assert len(counts) > 1  # the settings sampled do change the result


def test_main_writes_the_grid_and_the_tuned_manifest(
    run: Path, dsb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = shutil.copytree(run, tmp_path / "run")
    before = json.loads(model_manifest(tuned).read_text())
    args = ["tune", "--run", tuned, "--data", dsb, "--cache-dir", tmp_path / "cache"]
    monkeypatch.setattr(sys, "argv", [str(arg) for arg in args])
    main()

    result = json.loads((tuned / "postprocess.json").read_text())
    assert [entry["settings"] for entry in result["grid"]] == grid()
    best = max(result["grid"], key=lambda entry: entry["selection_score"])
    assert result["chosen"] == best["settings"] and result["validation"] == best["validation"]

    after = json.loads(model_manifest(tuned).read_text())
    assert after["runtime"] == {**before["runtime"], **result["chosen"]}
    assert after["graphs"] == before["graphs"]
    assert after["tuning"]["validation"] == result["validation"]
    after.pop("tuning"), after.pop("runtime"), before.pop("runtime")
    assert after == before  # every other field kept

    segmenter = load_segmenter(model_manifest(tuned))  # still verifies, and runs as tuned
    (sample,) = load_dataset(dsb / "stage1_train", None, ids=["s2"])
    scores = score_image(sample.labels, segmenter.segment(sample.image))
    assert result["validation"] == {**scores, "images": 1}


def test_a_model_changed_while_tuning_is_not_rewritten(run: Path, tmp_path: Path) -> None:
    model = shutil.copytree(run / "model", tmp_path / "model")
    manifest = model / "maskrcnn.json"
    tuned = {"chosen": {"score_threshold": 0.7}, "validation": {}}
    with pytest.raises(StaleModelError, match="changed while it was tuned"):
        write_tuned_manifest(manifest, {**tuned, "manifest_sha256": "an older manifest"})
    digest = load_maskrcnn(manifest).manifest["sha256"]
    with (model / "mask_head.keras").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(StaleModelError):
        write_tuned_manifest(manifest, {**tuned, "manifest_sha256": digest})
