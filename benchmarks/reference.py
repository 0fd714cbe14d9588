"""The survey's published results, shown beside ours as reference rows, never as measurements.

Source: Z. Wang, Y. Song, "Using deep learning approaches to segment, detect, and extract the
cellular nuclei from fluorescence microscopy images", Table I ("Comparison of Results on
Dataset"): 670 training images, the 65 DSB2018 stage1_test images, mean IoU as the
foreground pixel IoU of its Fig. 7 (I = sum XY, U = sum X + Y - XY). No latency, memory or
size was published, so those cells stay empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SOURCE = (
    "Wang & Song, 'Using deep learning approaches to segment, detect, and extract the "
    "cellular nuclei from fluorescence microscopy images', Table I"
)
NOTE = "reported in the survey (65 stage1_test images), not measured here"


@dataclass(frozen=True)
class ReferenceRow:
    """One published row: accuracies as fractions, exactly as printed in the table."""

    model: str
    training_accuracy: float
    test_accuracy: float
    pixel_iou: float


SURVEY_ROWS = (
    ReferenceRow("Simple CNN", 0.9310, 0.9370, 0.62),
    ReferenceRow("ResNet", 0.9630, 0.9610, 0.77),
    ReferenceRow("U-Net", 0.9975, 0.9800, 0.83),
    ReferenceRow("Mask R-CNN", 0.9968, 0.9920, 0.88),
)


def reference_records() -> list[dict]:
    """The survey's rows for bench.json, each labelled with its source and as not measured."""
    return [{**asdict(row), "source": SOURCE, "note": NOTE} for row in SURVEY_ROWS]
