"""Per-nucleus measurements: hand-checked values and agreement with scikit-image."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg.measure import COLUMNS, measure_nuclei, write_nuclei_csv


def test_square_by_hand() -> None:
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 20:30] = 3  # a 10 x 10 square, label 3
    intensity = np.zeros((40, 50), np.float32)
    intensity[5:15, 20:30] = 2.0
    intensity[5, 20] = 102.0
    (row,) = measure_nuclei(labels, intensity)
    assert row["label"] == 3
    assert row["area"] == 100
    assert row["centroid_y"] == pytest.approx(9.5)
    assert row["centroid_x"] == pytest.approx(24.5)
    bbox = [row[f"bbox_{k}"] for k in ("min_row", "min_col", "max_row", "max_col")]
    assert bbox == [5, 20, 15, 30]  # max exclusive, as scikit-image
    assert row["integrated_intensity"] == pytest.approx(300.0)
    assert row["mean_intensity"] == pytest.approx(3.0)
    assert row["perimeter"] == pytest.approx(36.0, abs=1.0)
    assert row["eccentricity"] == pytest.approx(0.0, abs=1e-6)
    assert row["solidity"] == pytest.approx(1.0)


def test_border_touching_and_sparse_labels() -> None:
    labels = np.zeros((20, 20), np.uint16)
    labels[0:4, 0:10] = 7  # touches the top-left corner
    labels[10:20, 15:20] = 2
    rows = measure_nuclei(labels, np.ones((20, 20), np.uint8))
    assert [row["label"] for row in rows] == [2, 7]
    assert [row["area"] for row in rows] == [50, 40]
    assert rows[1]["centroid_y"] == pytest.approx(1.5)
    assert rows[1]["eccentricity"] > 0.8  # elongated 4 x 10
    assert measure_nuclei(np.zeros((5, 5), np.uint16), np.zeros((5, 5))) == []


def test_l_shape_solidity_below_one() -> None:
    labels = np.zeros((30, 30), np.uint16)
    labels[5:25, 5:10] = 1
    labels[20:25, 5:25] = 1
    (row,) = measure_nuclei(labels, np.zeros((30, 30)))
    assert 0.4 < row["solidity"] < 0.7


def test_agrees_with_scikit_image() -> None:
    measure = pytest.importorskip("skimage.measure")
    labels = np.zeros((80, 90), np.uint16)
    cv2.ellipse(labels, (30, 35), (18, 9), 30, 0, 360, 1, -1)
    cv2.circle(labels, (70, 60), 12, 2, -1)
    intensity = np.random.default_rng(0).uniform(0, 1000, labels.shape)
    ours = measure_nuclei(labels, intensity)
    theirs = measure.regionprops(labels.astype(np.int32), intensity_image=intensity)
    for row, props in zip(ours, theirs, strict=True):
        assert row["area"] == props.area
        assert (row["centroid_y"], row["centroid_x"]) == pytest.approx(props.centroid)
        bbox = tuple(row[f"bbox_{k}"] for k in ("min_row", "min_col", "max_row", "max_col"))
        assert bbox == props.bbox
        assert row["mean_intensity"] == pytest.approx(props.intensity_mean)
        assert row["eccentricity"] == pytest.approx(props.eccentricity, abs=1e-6)
        assert row["perimeter"] == pytest.approx(props.perimeter, rel=0.08)
        assert row["solidity"] == pytest.approx(props.solidity, abs=0.03)


def test_csv_columns(tmp_path: Path) -> None:
    labels = np.zeros((10, 10), np.uint16)
    labels[2:5, 2:5] = 1
    write_nuclei_csv(tmp_path / "n.csv", measure_nuclei(labels, np.ones((10, 10))))
    with open(tmp_path / "n.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert rows[0]["area"] == "9" and rows[0]["centroid_x"] == "3.0"
