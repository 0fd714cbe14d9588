"""Score a trained run on the training or validation ids of the fixed split, in-process.

    python -m training.evaluate_run training/runs/unet --data /data/dsb2018 --split train

writes ``eval_<split>.json`` in the run folder in the format of `edgeseg eval --json`, using
the same runtime pipeline as `edgeseg segment` (Segmenter with the Keras backend). The test
split is scored with `edgeseg segment` + `edgeseg eval` instead (training/README.md), so that
published test numbers come from the user-facing commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.metrics import aggregate, score_image
from edgeseg.segmenter import load_segmenter
from training.config import TrainConfig
from training.data_loading import load_train_validation


def evaluate_run(run_dir: Path, data_root: Path, split: str, cache_dir: Path) -> dict:
    """Training ids are scored on the copy the run trained on, validation ids on the original
    stage1_train masks (what training validated and selected on)."""
    segmenter = load_segmenter(run_dir / "model.keras")
    data_copy = TrainConfig.from_file(run_dir / "config.json").data_copy
    train_samples, validation = load_train_validation(data_root, data_copy, cache_dir)
    samples, copy = (train_samples, data_copy) if split == "train" else (validation, "stage1_train")
    per_image = {
        s.id: score_image(s.labels, segmenter.segment(s.image)) for s in tqdm(samples, unit="img")
    }
    return {
        "aggregate": aggregate(per_image),
        "per_image": per_image,
        "split": split,
        "data": copy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "validation"], required=True)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args()
    result = evaluate_run(args.run_dir, args.data, args.split, args.cache_dir)
    out = args.run_dir / f"eval_{args.split}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{out}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["aggregate"].items()))


if __name__ == "__main__":
    main()
