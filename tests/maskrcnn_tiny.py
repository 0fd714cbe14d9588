"""A tiny Mask R-CNN trained 2 steps on synthetic DSB-layout data, shared by the Mask R-CNN
training and export tests (each test module trains its own copy in a module fixture).

Importing this module needs TensorFlow: importers skip without it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import synthetic_nuclei
from test_data import write_kaggle_sample

from edgeseg.cli import main
from edgeseg.data.dataset import Sample
from edgeseg.maskrcnn import MaskRCNNConfig
from training import data_loading
from training.augment import AugmentConfig
from training.maskrcnn.config import MaskRCNNTrainConfig

SPLIT = {"train": ["s0", "s1"], "validation": ["s2"]}
#: The synthetic images of the DSB folder, by id: (shape, seed).
IMAGES = {f"s{index}": ((80, 96), index) for index in range(3)}
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


def cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def dsb_sample(sample_id: str) -> Sample:
    """One of the IMAGES, as a sample."""
    shape, seed = IMAGES[sample_id]
    return Sample(sample_id, *synthetic_nuclei(shape, seed=seed, touching=False))


def write_dsb(root: Path) -> Path:
    """``root/stage1_train`` with the IMAGES, as DSB2018 lays them out."""
    for sample_id in IMAGES:
        sample = dsb_sample(sample_id)
        write_kaggle_sample(root / "stage1_train", sample_id, sample.image, sample.labels)
    return root


@contextmanager
def fixed_split() -> Iterator[None]:
    """Training reads the real split, which names the real DSB ids: use SPLIT instead."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_loading, "load_split", lambda: SPLIT)
        yield


def train_tiny(dsb: Path, folder: Path) -> Path:
    """A 2-step `edgeseg train` run in ``folder/run``: checkpoints at steps 1 and 2,
    validation and the best model at step 2. Call inside `fixed_split`."""
    (folder / "tiny.json").write_text(TINY.to_json())
    run_dir = folder / "run"
    result = cli(
        "train", "--model", "maskrcnn", "--data", dsb, "--out", run_dir,
        "--config", folder / "tiny.json", "--steps", 2, "--cache-dir", folder / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "best validation score" in result.output and "at step 2" in result.output
    return run_dir


@pytest.fixture(scope="module", name="dsb")
def dsb_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The synthetic DSB folder, with the real split patched to its ids (module-scoped)."""
    root = write_dsb(tmp_path_factory.mktemp("dsb"))
    with fixed_split():  # the real split names the real DSB ids
        yield root
