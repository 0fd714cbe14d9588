"""Choose the post-processing thresholds of a trained run on the VALIDATION split.

    python -m training.tune_postprocess training/runs/unet --data /data/dsb2018

Probabilities are predicted once per validation image (runtime pipeline, Keras backend),
then every setting of a small grid is scored; the best by the training selection score
(mean of pixel IoU and DSB score) is written to ``postprocess.json`` and into the model's
manifest, with the training nuclei's measured size (training/nucleus_size.py), from which
every export inherits both. stage1_test is never looked at.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from edgeseg.atomic import write_text
from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.manifest import output_channels
from edgeseg.segmenter import load_segmenter
from training.data_loading import load_validation
from training.manifest import write_model_manifest
from training.nucleus_size import measure_run
from training.selection import best_result, grid_settings, score_settings, with_distance

GRID = {
    "foreground_threshold": (0.4, 0.5, 0.6, 0.7, 0.8),
    "boundary_threshold": (0.1, 0.15, 0.3, 0.5),
    "min_seed_area": (0, 10, 20),
    "min_area": (16, 32, 48),
}


def tune(run_dir: Path, data_root: Path, cache_dir: Path) -> dict:
    segmenter = load_segmenter(run_dir / "model.keras")
    samples = load_validation(data_root, cache_dir)
    maps = [(s.labels, segmenter.predict_probabilities(s.image)) for s in tqdm(samples)]
    settings = grid_settings(with_distance(GRID, output_channels(segmenter.manifest)))
    results = score_settings(maps, tqdm(settings, unit="setting"))
    best = best_result(results)
    return {"chosen": best["settings"], "validation": best["validation"], "grid": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args()
    result = tune(args.run_dir, args.data, args.cache_dir)
    write_text(args.run_dir / "postprocess.json", json.dumps(result, indent=1) + "\n")
    write_model_manifest(args.run_dir, measure_run(args.run_dir, args.data, args.cache_dir))
    print(
        f"chosen {result['chosen']}: validation "
        + ", ".join(
            f"{k} {result['validation'][k]:.4f}" for k in ("pixel_iou", "dsb_score", "ap50")
        )
    )


if __name__ == "__main__":
    main()
