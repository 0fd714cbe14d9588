"""What "best on validation" means, for choosing epochs and post-processing thresholds alike.

An epoch scored with the default thresholds can lose to an earlier one that merely suits
those thresholds better (seen on unet_lite: the loop kept epoch 4, tuned 0.617, over the
last epoch, tuned 0.685). So every epoch is scored at the best of a small threshold grid,
the same way the final tuning (training/tune_postprocess.py) scores its larger one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from edgeseg.metrics import aggregate, score_image
from edgeseg.postprocess import PostprocessSettings, labels_from_maps

#: The grid each epoch is scored on: the thresholds that moved validation most in tuning.
EPOCH_GRID: Mapping[str, Sequence[float]] = {
    "foreground_threshold": (0.5, 0.6, 0.7),
    "boundary_threshold": (0.1, 0.3, 0.5),
    "min_seed_area": (10,),
    "min_area": (32,),
}


#: What a model with a distance map adds to a grid: its seed threshold (0 ignores the map).
DISTANCE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7)


def with_distance(
    grid: Mapping[str, Sequence[float]], channels: Sequence[str]
) -> Mapping[str, Sequence[float]]:
    """``grid``, plus the distance seed thresholds when ``channels`` include the distance map."""
    return {**grid, "distance_threshold": DISTANCE_THRESHOLDS} if "distance" in channels else grid


def selection_score(metrics: Mapping[str, float]) -> float:
    """Mean of pixel IoU and DSB score: masks and instances both matter."""
    return 0.5 * (metrics["pixel_iou"] + metrics["dsb_score"])


def grid_settings(grid: Mapping[str, Sequence[float]]) -> list[PostprocessSettings]:
    """Every combination of ``grid``'s values, other fields at their defaults."""
    return [
        replace(PostprocessSettings(), **dict(zip(grid, values, strict=True)))
        for values in itertools.product(*grid.values())
    ]


def score_settings(
    maps: Sequence[tuple[np.ndarray, np.ndarray]], settings: Iterable[PostprocessSettings]
) -> list[dict]:
    """Score each setting on (true labels, (H, W, C) probabilities) pairs, predicted once."""
    results = []
    for setting in settings:
        per_image = {
            str(index): score_image(truth, labels_from_maps(probabilities, setting))
            for index, (truth, probabilities) in enumerate(maps)
        }
        results.append(scored_setting(setting.to_dict(), aggregate(per_image)))
    return results


def scored_setting(settings: Mapping[str, float], validation: Mapping[str, float]) -> dict:
    """One grid row as every tuner writes it to postprocess.json."""
    return {
        "settings": dict(settings),
        "validation": dict(validation),
        "selection_score": selection_score(validation),
    }


def best_result(results: Sequence[dict]) -> dict:
    """The grid row with the highest selection score."""
    return max(results, key=lambda result: result["selection_score"])
