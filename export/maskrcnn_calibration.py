"""INT8 calibration inputs for the three Mask R-CNN graphs, all from the same training crops.

Stage 1 is calibrated on export.calibration's crops, like a semantic model. The heads never
see images: their inputs are RoIAlign crops of the stage-1 features at the proposals (box
head) and at the final detections (mask head), which only the NumPy runtime computes. So the
FP32 model is run through that runtime on the same crops, the heads' real inputs are
recorded, and a seeded subset of them, in whole ``roi_batch`` batches, calibrates each head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.maskrcnn import MaskRCNN, MaskRCNNConfig, Stage
from export.calibration import Calibration, chunks

#: RoI batches kept per head: 8 x roi_batch RoIs (1024 for the default 128).
HEAD_BATCHES = 8


class CalibrationError(ValueError):
    """The calibration images give a graph nothing to calibrate on."""


@dataclass(frozen=True)
class GraphCalibration:
    """One graph's calibration inputs and what the manifest records about them."""

    rows: np.ndarray
    #: The batch the graph takes (a head's roi_batch), or None for any batch.
    fixed_batch: int | None
    record: dict[str, Any]

    def batches(self, size: int) -> list[np.ndarray]:
        """The calibration calls: whole fixed batches, else batches of at most ``size``."""
        return chunks(self.rows, self.fixed_batch or size)


class _Recorder:
    """A head stage that keeps a copy of every real RoI crop it is given."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self.rows: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        # run_in_batches zero-pads a head's last call; those filler rows are not RoIs
        real = np.any(batch != 0, axis=tuple(range(1, batch.ndim)))
        self.rows.append(np.array(batch[real], np.float32))
        return self._stage(batch)


def maskrcnn_calibration(
    stages: Mapping[str, Stage],
    runtime: MaskRCNNConfig,
    crops: Calibration,
    head_batches: int = HEAD_BATCHES,
) -> dict[str, GraphCalibration]:
    """Calibration inputs of every graph: ``crops`` for stage 1; for each head, the RoI crops
    the FP32 ``stages`` produce on those crops in the runtime, seeded like ``crops``."""
    box_head, mask_head = _Recorder(stages["box_head"]), _Recorder(stages["mask_head"])
    model = MaskRCNN(runtime, stages["stage1"], box_head, mask_head)
    for tile in crops.tiles:
        model.detect(tile[..., 0])
    rng = np.random.default_rng(crops.seed)
    result = {"stage1": GraphCalibration(crops.tiles, None, crops.record())}
    for name, recorder, fed in (
        ("box_head", box_head, "proposals"),
        ("mask_head", mask_head, "detections"),
    ):
        captured = np.concatenate(recorder.rows) if recorder.rows else np.zeros((0,))
        if not len(captured):
            raise CalibrationError(
                f"the FP32 model made no {fed} on the {len(crops.tiles)} calibration crops, so "
                f"its {name} has no inputs to calibrate on"
            )
        count = runtime.roi_batch * min(head_batches, -(-len(captured) // runtime.roi_batch))
        rows = captured[np.resize(rng.permutation(len(captured)), count)]  # cycles if short
        record = {
            "source": f"RoIAlign crops of the FP32 model's {fed} on the stage1 calibration "
            "crops, run through the edgeseg runtime",
            "captured": len(captured),
            "count": count,
            "seed": crops.seed,
            "sha256": hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest(),
        }
        result[name] = GraphCalibration(rows, runtime.roi_batch, record)
    return result
