"""Choose the runtime thresholds of a trained Mask R-CNN run on the VALIDATION split.

    python -m training.maskrcnn.tune --run training/runs/maskrcnn --data /data/dsb2018

The Mask R-CNN counterpart of training/tune_postprocess.py. The graphs run once per
validation image: stage 1 and the box head on every proposal (`MaskRCNN.candidates`), the
mask head once on every box that some setting detects. Each setting of the grid then only
redoes the NumPy stages: score threshold and NMS (`select_detections`), mask pasting and the
small-instance filter. The best setting by the training selection score (mean of pixel IoU
and DSB score) is written to ``<run>/postprocess.json`` and into the runtime config of
``<run>/model/maskrcnn.json``, which exports copy. stage1_test is never looked at.

Run it after training has finished: the trainer rewrites the manifest, with its own
thresholds, whenever it saves a new best model.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.manifest import file_sha256
from edgeseg.maskrcnn import MaskRCNN, MaskRCNNConfig, assemble_labels, select_detections
from edgeseg.maskrcnn_model import (
    GRAPHS,
    load_maskrcnn,
    read_maskrcnn_manifest,
    write_maskrcnn_manifest,
)
from edgeseg.metrics import aggregate, score_image
from edgeseg.postprocess import relabel_sequential
from edgeseg.preprocess import normalize
from training.data_loading import load_validation
from training.maskrcnn.manifest import model_manifest
from training.selection import best_result, scored_setting

SCORE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DETECTION_NMS_IOUS = (0.3, 0.4, 0.5, 0.6)
MASK_THRESHOLDS = (0.4, 0.5, 0.6)
MIN_AREAS = (8, 16, 32)
# Manifest fields write_maskrcnn_manifest sets itself, and the digest its reader adds.
_NOT_CARRIED = ("format_version", "kind", "runtime", "graphs", "sha256")


class StaleModelError(RuntimeError):
    """The model changed on disk while it was being tuned (training still running?)."""


def grid() -> list[dict[str, float]]:
    """Every setting tried, in the order `image_scores` scores them."""
    names = ("score_threshold", "detection_nms_iou", "mask_threshold", "min_area")
    values = itertools.product(SCORE_THRESHOLDS, DETECTION_NMS_IOUS, MASK_THRESHOLDS, MIN_AREAS)
    return [dict(zip(names, setting, strict=True)) for setting in values]


def image_scores(model: MaskRCNN, image: np.ndarray, truth: np.ndarray) -> list[dict[str, float]]:
    """`score_image` of every `grid` setting on one normalised image, the graphs run once.

    Labels equal what `MaskRCNN.segment` gives with that setting: masks depend only on their
    box, and removing small instances after pasting equals removing them while pasting.
    """
    found = model.candidates(image)
    base = model.config
    picks = [
        select_detections(found, replace(base, score_threshold=score, detection_nms_iou=iou))
        for score, iou in itertools.product(SCORE_THRESHOLDS, DETECTION_NMS_IOUS)
    ]
    pairs = np.unique(np.concatenate([np.stack(pick, axis=1) for pick in picks]), axis=0)
    masks = model.predict_masks(found.features, found.boxes[pairs[:, 0], pairs[:, 1]], pairs[:, 1])
    rows = {pair: row for row, pair in enumerate(map(tuple, pairs.tolist()))}
    scores = []
    for (proposals, classes), threshold in itertools.product(picks, MASK_THRESHOLDS):
        chosen = [rows[pair] for pair in zip(proposals.tolist(), classes.tolist(), strict=True)]
        labels = assemble_labels(
            image.shape,
            found.boxes[proposals, classes],
            masks[chosen],
            found.probabilities[proposals, classes],
            replace(base, mask_threshold=threshold, min_area=0),
        )
        scores += [score_image(truth, relabel_sequential(labels, area)) for area in MIN_AREAS]
    return scores


def tune(
    run_dir: Path, data_root: Path, cache_dir: Path | None, threads: int | None = None
) -> dict[str, Any]:
    """Score the grid on the validation split; what postprocess.json holds."""
    segmenter = load_maskrcnn(model_manifest(run_dir), threads=threads)
    settings = grid()
    per_image: list[dict[str, dict[str, float]]] = [{} for _ in settings]
    for sample in tqdm(load_validation(data_root, cache_dir), unit="image"):
        scores = image_scores(segmenter.model, normalize(sample.image), sample.labels)
        for collected, score in zip(per_image, scores, strict=True):
            collected[sample.id] = score
    results = [
        scored_setting(setting, aggregate(collected))
        for setting, collected in zip(settings, per_image, strict=True)
    ]
    best = best_result(results)
    return {
        "chosen": best["settings"],
        "validation": best["validation"],
        "manifest_sha256": segmenter.manifest["sha256"],  # the manifest as it was tuned
        "grid": results,
    }


def write_tuned_manifest(path: Path, result: dict[str, Any]) -> Path:
    """Rewrite the model manifest ``path`` with the chosen thresholds in its runtime config.

    Refused when the manifest or a graph is no longer what was tuned: rewriting would
    re-hash, and so bless, graphs the thresholds were never chosen for.
    """
    manifest = read_maskrcnn_manifest(path)
    entries = manifest["graphs"]
    graphs = {name: path.parent / entries[name]["file"] for name in GRAPHS}
    if manifest["sha256"] != result["manifest_sha256"] or any(
        file_sha256(graphs[name]) != entries[name]["sha256"] for name in GRAPHS
    ):
        raise StaleModelError(f"{path}: the model changed while it was tuned; tune it again")
    (backend,) = {entries[name]["backend"] for name in GRAPHS}
    runtime = replace(MaskRCNNConfig.from_dict(manifest["runtime"]), **result["chosen"])
    fields = {key: value for key, value in manifest.items() if key not in _NOT_CARRIED}
    fields["tuning"] = {"source": "postprocess.json", "validation": result["validation"]}
    return write_maskrcnn_manifest(path, runtime, graphs, backend, **fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the Mask R-CNN run folder")
    parser.add_argument("--data", type=Path, required=True, help="the DSB2018 folder")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--threads", type=int, help="CPU threads for the graphs")
    args = parser.parse_args()
    result = tune(args.run, args.data, args.cache_dir, args.threads)
    (args.run / "postprocess.json").write_text(json.dumps(result, indent=1) + "\n")
    manifest = write_tuned_manifest(model_manifest(args.run), result)
    print(
        f"chosen {result['chosen']}: validation "
        + ", ".join(
            f"{k} {result['validation'][k]:.4f}" for k in ("pixel_iou", "dsb_score", "ap50")
        )
        + f"; wrote {args.run / 'postprocess.json'} and {manifest}"
    )


if __name__ == "__main__":
    main()
