"""Per-nucleus measurements, the table a biologist opens next to the label image.

Computed with OpenCV and numpy only (the runtime has no scikit-image), with scikit-image's
conventions so numbers agree with what users already know: ``bbox`` is
(min_row, min_col, max_row, max_col) with the max exclusive, ``perimeter`` follows the
pixel-centre contour, ``solidity`` uses the pixel area of the convex hull. Estimators
differ in detail: on 1617 DSB2018 nuclei, perimeter is within 1 % of scikit-image's for 95 %
of them (up to a third off for a few tiny or one-pixel-thin ones) and solidity within 2 %.
"""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np

from edgeseg.atomic import atomic_path

COLUMNS = (
    "label",
    "area",
    "centroid_y",
    "centroid_x",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "mean_intensity",
    "integrated_intensity",
    "perimeter",
    "eccentricity",
    "solidity",
)


def measure_nuclei(labels: np.ndarray, intensity: np.ndarray) -> list[dict[str, float]]:
    """One row per label > 0 (sorted by label); ``intensity`` is the (H, W) gray raw image."""
    if labels.shape != intensity.shape:
        raise ValueError(f"labels {labels.shape} and intensity {intensity.shape} differ in shape")
    rows_idx, cols_idx = np.nonzero(labels)
    if rows_idx.size == 0:
        return []
    values = labels[rows_idx, cols_idx]
    order = np.argsort(values, kind="stable")
    values, rows_idx, cols_idx = values[order], rows_idx[order], cols_idx[order]
    ids, starts = np.unique(values, return_index=True)
    min_rows = np.minimum.reduceat(rows_idx, starts)
    max_rows = np.maximum.reduceat(rows_idx, starts) + 1
    min_cols = np.minimum.reduceat(cols_idx, starts)
    max_cols = np.maximum.reduceat(cols_idx, starts) + 1
    sums = np.add.reduceat(intensity[rows_idx, cols_idx].astype(np.float64), starts)
    return [
        _measure_one(labels, int(label), (r0, c0, r1, c1), float(total))
        for label, r0, c0, r1, c1, total in zip(
            ids, min_rows, min_cols, max_rows, max_cols, sums, strict=True
        )
    ]


def _measure_one(
    labels: np.ndarray, label: int, bbox: tuple[int, int, int, int], total: float
) -> dict[str, float]:
    """Shape measurements from the nucleus' own crop (padded so contours close at the border)."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    mask = np.pad((labels[r0:r1, c0:c1] == label).astype(np.uint8), 1)
    moments = cv2.moments(mask, binaryImage=True)
    area = moments["m00"]
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(contour, closed=True) for contour in contours)
    hull = cv2.convexHull(np.concatenate(contours))
    hull_mask = np.zeros_like(mask)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    return {
        "label": label,
        "area": int(area),
        "centroid_y": r0 - 1 + moments["m01"] / area,
        "centroid_x": c0 - 1 + moments["m10"] / area,
        "bbox_min_row": r0,
        "bbox_min_col": c0,
        "bbox_max_row": r1,
        "bbox_max_col": c1,
        "mean_intensity": total / area,
        "integrated_intensity": total,
        "perimeter": perimeter,
        "eccentricity": _eccentricity(moments),
        "solidity": area / max(int(hull_mask.sum()), 1),
    }


def _eccentricity(moments: dict[str, float]) -> float:
    """Eccentricity of the ellipse with the same second moments (0 circle, towards 1 line)."""
    area = moments["m00"]
    a, b, c = moments["mu20"] / area, moments["mu11"] / area, moments["mu02"] / area
    spread = np.hypot((a - c) / 2, b)
    major, minor = (a + c) / 2 + spread, (a + c) / 2 - spread
    return float(np.sqrt(max(1 - minor / major, 0.0))) if major > 0 else 0.0


def write_nuclei_csv(path: str | os.PathLike, rows: list[dict[str, float]]) -> None:
    """Write the measurements atomically; floats rounded to 4 decimals for readability."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
