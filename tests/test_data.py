"""Dataset reading, the decode cache, `edgeseg data check`, and the fixed split."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei

from edgeseg.cli import main
from edgeseg.data.cache import load_dataset
from edgeseg.data.dataset import DatasetError, find_samples, load_sample
from edgeseg.imageio import write_labels


def write_kaggle_sample(root: Path, sample_id: str, image: np.ndarray, labels: np.ndarray) -> None:
    (root / sample_id / "images").mkdir(parents=True)
    (root / sample_id / "masks").mkdir()
    rgba = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
    cv2.imwrite(str(root / sample_id / "images" / f"{sample_id}.png"), rgba)
    for index in np.unique(labels)[1:]:
        mask = (labels == index).astype(np.uint8) * 255
        cv2.imwrite(str(root / sample_id / "masks" / f"m{index}.png"), mask)


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    root = tmp_path / "stage1_train"
    for seed in range(3):
        image, labels = synthetic_nuclei((64, 80), count=5, seed=seed, touching=False)
        write_kaggle_sample(root, f"id{seed}", image, labels)
    return root


def test_kaggle_layout_merges_masks_into_labels(kaggle_root: Path) -> None:
    refs = find_samples(kaggle_root)
    assert [r.id for r in refs] == ["id0", "id1", "id2"]
    sample = load_sample(refs[0])
    _, expected = synthetic_nuclei((64, 80), count=5, seed=0, touching=False)
    assert sample.labels.dtype == np.uint16
    assert sample.image.shape == (64, 80, 4)
    # Same partition of pixels, whatever numbering the mask files give.
    assert len(np.unique(sample.labels)) == len(np.unique(expected))
    pairs = set(zip(sample.labels.ravel().tolist(), expected.ravel().tolist(), strict=True))
    assert len(pairs) == len(np.unique(expected))


def test_label_images_are_taken_as_instance_ids_or_refused() -> None:
    from edgeseg.data.dataset import instance_labels

    big = np.array([[0, 70000], [70000, 5]], np.int32)  # ids above uint16: renumbered, kept apart
    assert instance_labels(Path("a.tif"), big, (2, 2)).tolist() == [[0, 2], [2, 1]]
    assert instance_labels(Path("a.tif"), big.astype(np.float32), (2, 2)).max() == 2
    for bad, message in (
        (np.array([[0, 1.5]]), "whole numbers"),
        (np.array([[0, -1]]), ">= 0"),
        (np.zeros((3, 3), np.uint16), "does not match image"),
    ):
        with pytest.raises(DatasetError, match=f"a.tif: .*{message}"):
            instance_labels(Path("a.tif"), bad, (1, 2))


def test_a_foreground_mask_is_not_taken_as_one_nucleus() -> None:
    from edgeseg.data.dataset import instance_labels

    mask = np.zeros((20, 40), np.int32)
    for left in (2, 14, 26):
        mask[5:15, left : left + 10] = 70000  # three nuclei, one value
    with pytest.raises(DatasetError, match=r"a.tif: one label value \(70000\) covers 3 separate"):
        instance_labels(Path("a.tif"), mask, mask.shape)
    one = np.zeros((20, 40), np.uint8)
    one[2:18, 2:30] = 255
    one[0, 39] = one[19, 39] = 255  # stray annotation pixels
    assert instance_labels(Path("a.tif"), one, one.shape).max() == 255
    cut_by_edges = mask[:, :25] > 0  # a big piece and a small one may be one nucleus
    cut_by_edges[:, 20:] = False
    cut_by_edges[0, :] = True
    assert instance_labels(Path("a.tif"), cut_by_edges, cut_by_edges.shape).max() == 1


def test_a_class_mask_is_not_taken_as_two_nuclei() -> None:
    from edgeseg.data.dataset import instance_labels

    lefts = range(2, 74, 12)  # six nuclei
    classes = np.zeros((20, 80), np.uint8)
    for left in lefts:
        classes[5:15, left : left + 10] = 2  # boundary
        classes[6:14, left + 1 : left + 9] = 1  # interior
    with pytest.raises(DatasetError, match=r"a.tif: 2 label values \(1, 2\) cover 6 separate"):
        instance_labels(Path("a.tif"), classes, classes.shape)
    pairs = classes.copy()  # three numbers over six regions: labels, if oddly cut
    for number, left in enumerate(lefts, start=1):
        pairs[5:15, left : left + 10] = (number + 1) // 2
    assert instance_labels(Path("a.tif"), pairs, pairs.shape).max() == 3


def test_what_other_tools_leave_in_a_dataset_is_passed_over(kaggle_root: Path) -> None:
    """A dataset unzipped on a Mac or opened in Jupyter still reads as before."""
    expected = find_samples(kaggle_root)
    (kaggle_root / ".ipynb_checkpoints").mkdir()
    (kaggle_root / "__MACOSX" / "id0").mkdir(parents=True)
    (kaggle_root / "id0" / "masks" / "._m1.png").write_bytes(b"\x00\x05\x16\x07 Mac metadata")
    (kaggle_root / "id1" / "images" / "._id1.png").write_bytes(b"\x00\x05\x16\x07")
    assert find_samples(kaggle_root) == expected


def test_a_mask_drawn_in_colour_is_read_whatever_the_channel(kaggle_root: Path) -> None:
    expected = load_sample(find_samples(kaggle_root)[0]).labels
    for mask_path in (kaggle_root / "id0" / "masks").glob("*.png"):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        blue = np.zeros((*mask.shape, 4), np.uint8)
        blue[..., 0], blue[..., 3] = mask, 255  # BGRA: blue only, opaque everywhere
        cv2.imwrite(str(mask_path), blue)
    np.testing.assert_array_equal(load_sample(find_samples(kaggle_root)[0]).labels, expected)


def test_plain_layout(tmp_path: Path) -> None:
    image, labels = synthetic_nuclei((50, 60), count=4, seed=3)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    write_labels(tmp_path / "labels" / "a.tif", labels)
    sample = load_sample(find_samples(tmp_path)[0])
    np.testing.assert_array_equal(sample.labels, labels)
    np.testing.assert_array_equal(sample.image, image)
    cv2.imwrite(str(tmp_path / "images" / "a.tif"), image)  # two images, one label image
    with pytest.raises(DatasetError, match=r"a.tif: same name as a.png"):
        find_samples(tmp_path)


def test_the_dataset_root_instead_of_a_split_is_named_as_such(kaggle_root: Path) -> None:
    result = CliRunner().invoke(main, ["data", "check", str(kaggle_root.parent)])
    assert result.exit_code == 1
    assert "holds whole splits: give one, e.g." in result.output


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_images_folder", "missing images/ folder"),
        ("no_masks_folder", "no masks/ folder"),
        ("empty_mask", "empty mask"),
        ("wrong_size_mask", "differs from image"),
        ("corrupt_png", "unreadable or corrupt"),
    ],
)
def test_check_names_the_bad_file(kaggle_root: Path, breakage: str, message: str) -> None:
    sample_dir = kaggle_root / "id1"
    mask = sorted((sample_dir / "masks").glob("*.png"))[0]
    if breakage == "no_images_folder":
        for path in (sample_dir / "images").iterdir():
            path.unlink()
        (sample_dir / "images").rmdir()
        culprit = sample_dir
    elif breakage == "no_masks_folder":  # the ground truth was never copied
        shutil.rmtree(sample_dir / "masks")
        culprit = sample_dir
    elif breakage == "empty_mask":
        cv2.imwrite(str(mask), np.zeros((64, 80), np.uint8))
        culprit = mask
    elif breakage == "wrong_size_mask":
        cv2.imwrite(str(mask), np.full((10, 10), 255, np.uint8))
        culprit = mask
    else:
        culprit = sample_dir / "images" / "id1.png"
        culprit.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    result = CliRunner().invoke(main, ["data", "check", str(kaggle_root)])
    assert result.exit_code == 1
    assert message in result.output
    assert str(culprit) in result.output


def test_check_reports_counts(kaggle_root: Path) -> None:
    result = CliRunner().invoke(main, ["data", "check", str(kaggle_root)])
    assert result.exit_code == 0, result.output
    assert "images:   3" in result.output
    assert "nuclei:   15" in result.output
    assert "64x80 x3" in result.output


def test_cache_is_keyed_by_content(kaggle_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_dataset(kaggle_root, cache)
    assert len(list(cache.glob("*.npz"))) == 1
    mask = sorted((kaggle_root / "id2" / "masks").glob("*.png"))[0]
    cv2.imwrite(str(mask), np.full((64, 80), 255, np.uint8))  # change one mask
    second = load_dataset(kaggle_root, cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not np.array_equal(first[2].labels, second[2].labels)
    np.testing.assert_array_equal(first[0].labels, second[0].labels)
    assert [s.id for s in load_dataset(kaggle_root, cache, ids=["id1"])] == ["id1"]


def test_a_cache_that_cannot_be_written_only_warns(kaggle_root: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would be")
    with pytest.warns(UserWarning, match="npz: cannot write the decode cache"):
        samples = load_dataset(kaggle_root, cache_dir=blocked)
    assert len(samples) == 3


def test_cache_made_by_another_decoder_version_is_not_served(
    kaggle_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeseg.data.cache

    cache = tmp_path / "cache"
    load_dataset(kaggle_root, cache)
    monkeypatch.setattr(edgeseg.data.cache, "DECODE_VERSION", edgeseg.data.cache.DECODE_VERSION + 1)
    load_dataset(kaggle_root, cache)  # the same files, read by changed code
    assert len(list(cache.glob("*.npz"))) == 2


@pytest.mark.parametrize("damage", [b"", b"not a zip", b"PK\x03\x04 cut short"])
def test_a_damaged_cache_file_is_rebuilt(kaggle_root: Path, tmp_path: Path, damage: bytes) -> None:
    cache = tmp_path / "cache"
    expected = load_dataset(kaggle_root, cache)
    (cached,) = cache.glob("*.npz")
    cached.write_bytes(damage)  # a full disk or a killed process while it was written
    with pytest.warns(UserWarning, match=f"{cached.name}.*rebuilding"):
        again = load_dataset(kaggle_root, cache)
    assert [s.id for s in again] == [s.id for s in expected]
    np.testing.assert_array_equal(again[1].labels, expected[1].labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt whole: read again without a complaint
        assert load_dataset(kaggle_root, cache)[1].image.shape == expected[1].image.shape


def test_fixed_split_is_disjoint_and_complete() -> None:
    split = json.loads(
        (Path(__file__).parents[1] / "training/splits/dsb2018_stage1.json").read_text()
    )
    train, validation = set(split["train"]), set(split["validation"])
    assert not train & validation
    assert len(train | validation) == 670
    assert len(validation) == 67


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "unreadable split file"),
        ("[]", "non-empty 'train' list"),
        ('{"train": ["a"]}', "non-empty 'validation' list"),
        ('{"train": ["a"], "validation": []}', "non-empty 'validation' list"),
        ('{"train": ["a"], "validation": "b"}', "non-empty 'validation' list"),
        ('{"train": ["a", "b"], "validation": ["b"]}', "in both train and validation: .'b'"),
    ],
)
def test_a_split_file_that_cannot_work_is_refused(
    tmp_path: Path, content: str, message: str
) -> None:
    from training.split import load_split

    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=f"{path}: .*{message}"):
        load_split(path)
    path.write_text('{"train": ["a"], "validation": ["b"]}')
    assert load_split(path)["validation"] == ["b"]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        find_samples(tmp_path / "nope")


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("split", "images", "nuclei"),
    [("stage1_train", 670, 29461), ("stage1_train_fixed", 664, 28986), ("stage1_test", 65, 4152)],
)
def test_real_dataset_counts(dsb_root: Path, split: str, images: int, nuclei: int) -> None:
    result = CliRunner().invoke(main, ["data", "check", str(dsb_root / split)])
    assert result.exit_code == 0, result.output
    assert f"images:   {images}\n" in result.output
    assert f"nuclei:   {nuclei}\n" in result.output


@pytest.mark.realdata
def test_split_ids_exist_in_both_training_copies(dsb_root: Path) -> None:
    split = json.loads(
        (Path(__file__).parents[1] / "training/splits/dsb2018_stage1.json").read_text()
    )
    original = {r.id for r in find_samples(dsb_root / "stage1_train")}
    fixed = {r.id for r in find_samples(dsb_root / "stage1_train_fixed")}
    assert set(split["train"]) | set(split["validation"]) == original
    assert set(split["validation"]) <= fixed
    assert not original & {r.id for r in find_samples(dsb_root / "stage1_test")}
