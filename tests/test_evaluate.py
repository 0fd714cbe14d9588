"""`edgeseg eval` and evaluate_folder on synthetic folders, and on real DSB2018 ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei
from test_metrics import reference_scores

from edgeseg.cli import main
from edgeseg.data.cache import load_dataset
from edgeseg.evaluate import EvaluationError, evaluate_folder
from edgeseg.imageio import write_labels
from edgeseg.metrics import aggregate, score_image


def _plain_dataset(root: Path, count: int = 3) -> dict[str, np.ndarray]:
    """images/ + labels/ layout; returns the labels by id."""
    truth = {}
    for index in range(count):
        image, labels = synthetic_nuclei((48, 64), count=6, seed=index)
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"s{index}.png"), image)
        write_labels(root / "labels" / f"s{index}.tif", labels)
        truth[f"s{index}"] = labels
    return truth


def _kaggle_split(folder: Path, ids: list[str], seed: int) -> dict[str, np.ndarray]:
    """<id>/images/<id>.png + <id>/masks/<n>.png; returns the merged labels by id."""
    truth = {}
    for offset, sample_id in enumerate(ids):
        image, labels = synthetic_nuclei((40, 40), count=4, seed=seed + offset, touching=False)
        (folder / sample_id / "images").mkdir(parents=True)
        (folder / sample_id / "masks").mkdir()
        cv2.imwrite(str(folder / sample_id / "images" / f"{sample_id}.png"), image)
        merged = np.zeros_like(labels)
        for number, label in enumerate(np.unique(labels)[1:], start=1):
            mask = np.where(labels == label, 255, 0).astype(np.uint8)
            cv2.imwrite(str(folder / sample_id / "masks" / f"m{number}.png"), mask)
            merged[labels == label] = number
        truth[sample_id] = merged
    return truth


def _write_predictions(pred_dir: Path, truth: dict[str, np.ndarray], suffix: str = ".tif"):
    """Predictions that are right except for one shifted nucleus; returns them by id."""
    predictions = {}
    for sample_id, labels in truth.items():
        pred = labels.astype(np.uint16) * 3
        first = pred == pred.max()
        pred[first] = 0
        pred[np.roll(first, 2, axis=1)] = 60000
        write_labels(pred_dir / f"{sample_id}_labels{suffix}", pred)
        predictions[sample_id] = pred
    return predictions


def _run(*args: str):
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


def _run_on(tmp_path: Path):
    """`edgeseg eval` of tmp_path/pred against tmp_path/data, caching in tmp_path."""
    return _run(
        str(tmp_path / "pred"), "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path)
    )


def test_eval_writes_json_equal_to_direct_scores(tmp_path):
    truth = _plain_dataset(tmp_path / "data")
    predictions = _write_predictions(tmp_path / "pred", truth)
    out = tmp_path / "out" / "scores.json"
    pred, data, cache = (str(tmp_path / name) for name in ("pred", "data", "cache"))
    result = _run(pred, "--data", data, "--json", str(out), "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    per_image = {i: score_image(truth[i], predictions[i]) for i in sorted(truth)}
    written = json.loads(out.read_text())
    assert written["per_image"] == per_image
    assert written["aggregate"] == pytest.approx(aggregate(per_image))
    assert written["missing"] == []
    assert "images:   3" in result.output
    assert f"{100 * written['aggregate']['dsb_score']:.2f}%" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["scores.json"]


def test_a_json_path_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    truth = _plain_dataset(tmp_path / "data")
    _write_predictions(tmp_path / "pred", truth)
    (tmp_path / "file").write_text("not a folder")
    pred, data, cache = (str(tmp_path / name) for name in ("pred", "data", "cache"))
    blocked = tmp_path / "file" / "scores.json"  # refused before the scoring
    result = _run(pred, "--data", data, "--json", str(blocked), "--cache-dir", cache)
    assert result.exit_code == 2
    assert f"cannot write {blocked}: {tmp_path / 'file'} is a file, not a folder" in result.output
    result = _run(pred, "--data", data, "--json", "/proc/scores.json", "--cache-dir", cache)
    assert result.exit_code == 1  # the path the user gave, not the temporary file beside it
    assert result.output.splitlines()[-1] == "Error: /proc/scores.json: No such file or directory"


def test_a_json_path_naming_a_folder_is_refused_before_scoring(tmp_path):
    result = _run(str(tmp_path), "--data", str(tmp_path), "--json", f"{tmp_path}/results/")
    assert result.exit_code == 2
    assert "results/ names a folder; give a file" in result.output
    empty = _run(str(tmp_path), "--data", str(tmp_path), "--json", "")
    assert empty.exit_code == 2 and "an empty name" in empty.output
    assert not (tmp_path / "results").exists()


def test_label_file_suffixes_are_found_in_any_letter_case(tmp_path):
    truth = _plain_dataset(tmp_path / "data", count=2)
    _write_predictions(tmp_path / "pred", truth, suffix=".TIF")
    scores = evaluate_folder(tmp_path / "pred", tmp_path / "data", cache_dir=None)
    assert sorted(scores["per_image"]) == ["s0", "s1"]
    (tmp_path / "pred" / "s0_LABELS.png").write_bytes(b"")
    with pytest.raises(EvaluationError, match="two label files for image s0"):
        evaluate_folder(tmp_path / "pred", tmp_path / "data", cache_dir=None)


def test_split_picks_the_stage1_folder(tmp_path):
    root = tmp_path / "dsb"
    test_truth = _kaggle_split(root / "stage1_test", ["t1", "t2"], seed=0)
    train_truth = _kaggle_split(root / "stage1_train", ["a1", "a2", "a3"], seed=10)
    _write_predictions(tmp_path / "pred", test_truth | train_truth, suffix=".png")
    test = evaluate_folder(tmp_path / "pred", root, cache_dir=None)
    train = evaluate_folder(tmp_path / "pred", root, split="train", cache_dir=None)
    assert sorted(test["per_image"]) == ["t1", "t2"]
    assert sorted(train["per_image"]) == ["a1", "a2", "a3"]
    assert train["dataset"] == str(root / "stage1_train")
    direct = evaluate_folder(tmp_path / "pred", root / "stage1_train", split="test", cache_dir=None)
    assert direct["per_image"] == train["per_image"]
    (root / "stage1_train" / "stage1_notes.txt").write_text("a file, not a split")
    noted = evaluate_folder(tmp_path / "pred", root / "stage1_train", cache_dir=None)
    assert noted["per_image"] == train["per_image"]
    subset = evaluate_folder(tmp_path / "pred", root, ids=["t2"], cache_dir=None)
    assert list(subset["per_image"]) == ["t2"] and subset["aggregate"]["images"] == 1
    with pytest.raises(EvaluationError, match="stage1_train_fixed"):
        evaluate_folder(tmp_path / "pred", root, split="train_fixed", cache_dir=None)
    with pytest.raises(EvaluationError, match="nope"):
        evaluate_folder(tmp_path / "pred", root, ids=["nope"], cache_dir=None)


def test_missing_prediction_is_named(tmp_path):
    truth = _plain_dataset(tmp_path / "data")
    _write_predictions(tmp_path / "pred", truth)
    (tmp_path / "pred" / "s1_labels.tif").unlink()
    args = [str(tmp_path / "pred"), "--data", str(tmp_path / "data"), "--cache-dir", str(tmp_path)]
    result = _run(*args)
    assert result.exit_code == 1
    assert str(tmp_path / "pred" / "s1_labels.tif") in result.output
    assert "missing prediction" in result.output
    allowed = _run(*args, "--allow-missing")
    assert allowed.exit_code == 0, allowed.output
    assert "images:   2" in allowed.output and "skipped:  1" in allowed.output


def test_wrong_prediction_shape_is_named(tmp_path):
    truth = _plain_dataset(tmp_path / "data", count=1)
    write_labels(tmp_path / "pred" / "s0_labels.tif", np.zeros((10, 10), np.uint16))
    result = _run_on(tmp_path)
    assert result.exit_code == 1
    assert "s0_labels.tif" in result.output
    assert f"{truth['s0'].shape}" in result.output and "(10, 10)" in result.output


def test_a_palette_png_is_named_as_colour_not_labels(tmp_path):
    from PIL import Image

    truth = _plain_dataset(tmp_path / "data", count=1)
    path = tmp_path / "pred" / "s0_labels.png"
    path.parent.mkdir()
    indexed = Image.fromarray(truth["s0"].astype(np.uint8), mode="P")
    indexed.putpalette([value for index in range(256) for value in (index, 255 - index, 0)])
    indexed.save(path)
    result = _run_on(tmp_path)
    assert result.exit_code == 1
    assert f"{path}: a colour image (3 channels)" in result.output
    assert "palette PNG" in result.output


def test_a_stack_of_label_images_is_named_by_its_shape(tmp_path):
    import tifffile

    truth = _plain_dataset(tmp_path / "data", count=1)
    path = tmp_path / "pred" / "s0_labels.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, np.stack([truth["s0"]] * 3).astype(np.uint16))
    result = _run_on(tmp_path)
    assert result.exit_code == 1
    assert f"{path}: expected a 2-D label image, got shape (3, " in result.output
    assert "colour" not in result.output


def test_a_damaged_prediction_is_named_as_unreadable(tmp_path):
    _plain_dataset(tmp_path / "data", count=1)
    path = tmp_path / "pred" / "s0_labels.tif"
    path.parent.mkdir()
    path.write_bytes(b"II*\x00garbage")  # a TIFF header and nothing tifffile can use
    result = _run_on(tmp_path)
    assert result.exit_code == 1
    assert f"{path}: " in result.output and "shape" not in result.output


@pytest.mark.parametrize("which", ["prediction", "ground truth"])
def test_a_foreground_mask_given_as_labels_is_refused(tmp_path, which):
    """A 0/255 mask read as labels would score all nuclei as one, silently."""
    truth = _plain_dataset(tmp_path / "data", count=1)
    _write_predictions(tmp_path / "pred", truth)
    separate = np.zeros(truth["s0"].shape, np.uint8)
    for left in (4, 24, 44):
        separate[10:30, left : left + 12] = 1
    path = {
        "prediction": tmp_path / "pred" / "s0_labels.tif",
        "ground truth": tmp_path / "data" / "labels" / "s0.tif",
    }[which]
    cv2.imwrite(str(path), separate * 255)
    result = _run_on(tmp_path)
    assert result.exit_code == 1
    assert f"{path}: one label value (255) covers" in result.output
    assert "foreground mask" in result.output


def test_two_label_files_for_one_image_are_refused(tmp_path):
    truth = _plain_dataset(tmp_path / "data", count=1)
    _write_predictions(tmp_path / "pred", truth)
    _write_predictions(tmp_path / "pred", truth, suffix=".png")
    result = _run_on(tmp_path)
    assert result.exit_code == 1
    assert "s0_labels.tif and" in result.output and "s0_labels.png" in result.output


def test_help_explains_inputs_and_is_registered():
    result = _run("--help")
    assert result.exit_code == 0
    assert "<id>_labels.tif" in result.output and "Example: edgeseg eval" in result.output
    assert "eval" in CliRunner().invoke(main, ["--help"]).output


# --- real DSB2018 stage1_test ground truth with deterministic perturbations ---


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    height, width = mask.shape
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def _perturb(labels: np.ndarray, image_index: int) -> np.ndarray:
    """Keep, erode, drop, merge into the previous nucleus, shift or dilate, by nucleus number."""
    pred = np.zeros(labels.shape, np.uint16)
    if image_index == 0:
        return pred  # one image with no prediction at all
    kernel = np.ones((3, 3), np.uint8)
    previous_id = 1
    for number, label in enumerate(np.unique(labels)[1:]):
        mask = (labels == label).astype(np.uint8)
        action = (number + image_index) % 6
        new_id = 3 * number + 11  # non-contiguous prediction ids
        if action == 1:
            mask = cv2.erode(mask, kernel)
        elif action == 2:
            continue
        elif action == 3:
            new_id = previous_id
        elif action == 4:
            mask = _shifted(mask, 2 + image_index % 3, -1)
        elif action == 5:
            mask = cv2.dilate(mask, kernel)
        pred[mask > 0] = new_id
        previous_id = new_id
    pred[:3, :3] = 65000  # a false positive in the corner
    return pred


@pytest.mark.realdata
def test_eval_on_real_test_split_matches_reference(dsb_root, tmp_path):
    cache = tmp_path / "cache"
    samples = load_dataset(dsb_root / "stage1_test", cache_dir=cache)
    assert len(samples) == 65
    expected = {}
    for index, sample in enumerate(samples):
        pred = _perturb(sample.labels, index)
        write_labels(tmp_path / "pred" / f"{sample.id}_labels.tif", pred)
        expected[sample.id] = reference_scores(sample.labels, pred)
    out = tmp_path / "scores.json"
    pred = str(tmp_path / "pred")
    args = [
        "--data",
        str(dsb_root),
        "--split",
        "test",
        "--json",
        str(out),
        "--cache-dir",
        str(cache),
    ]
    result = _run(pred, *args)
    assert result.exit_code == 0, result.output
    assert "images:   65" in result.output
    written = json.loads(out.read_text())
    assert written["dataset"] == str(dsb_root / "stage1_test")
    reference = {
        key: sum(scores[key] for scores in expected.values()) / len(expected)
        for key in next(iter(expected.values()))
    }
    assert written["aggregate"]["images"] == 65
    for key, value in reference.items():
        assert written["aggregate"][key] == pytest.approx(value, abs=1e-6), key
    assert 0.2 < written["aggregate"]["dsb_score"] < 0.9  # the perturbations did bite


def test_scores_are_also_grouped_by_imaging_modality():
    from edgeseg.evaluate import by_kind

    per_image = {
        "a": {"pixel_iou": 0.9, "dsb_score": 0.6},
        "b": {"pixel_iou": 0.5, "dsb_score": 0.2},
        "c": {"pixel_iou": 0.7, "dsb_score": 0.4},
    }
    kinds = {"a": "fluorescence", "b": "stained", "c": "fluorescence"}
    groups = by_kind(per_image, kinds)
    assert sorted(groups) == ["fluorescence", "stained"]
    assert groups["fluorescence"]["pixel_iou"] == pytest.approx(0.8)
    assert groups["fluorescence"]["images"] == 2
    assert groups["stained"]["dsb_score"] == pytest.approx(0.2)
