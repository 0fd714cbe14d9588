"""Score a trained run on the training or validation ids of the fixed split, in-process.

    python -m training.evaluate_run training/runs/unet --data /data/dsb2018 --split train

writes ``eval_<split>.json`` in the run folder in the format of `edgeseg eval --json`, using
the same runtime pipeline as `edgeseg segment` (Segmenter with the Keras backend). The test
split is scored with `edgeseg segment` + `edgeseg eval` instead (training/README.md), so that
published test numbers come from the user-facing commands.

``--magnify 3`` scores the images and masks enlarged three times (``eval_<split>_x3.json``):
other labs image at other magnifications, and DSB's training ids hold few nuclei much bigger
than their median, so this asks, without touching the test split, whether a model still finds
whole nuclei when they are several times the size it mostly saw. ``--diameter auto`` (or a
number) segments as `edgeseg segment --diameter` does (``eval_<split>_x3_auto.json``), and
``--tta`` as `edgeseg segment --tta` (``eval_<split>_tta.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgeseg.atomic import write_text
from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.evaluate import by_kind
from edgeseg.metrics import aggregate, score_image
from edgeseg.preprocess import image_kind
from edgeseg.rescale import Diameter, diameter_text, parse_diameter
from edgeseg.segmenter import load_segmenter
from training.config import TrainConfig
from training.data_loading import load_train_validation


def magnified(
    image: np.ndarray, labels: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (bilinear) and its instance ``labels`` (nearest) enlarged ``factor`` times."""
    if factor == 1.0:
        return image, labels
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    bigger = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    # OpenCV resizes 16-bit but not 32-bit integers; the instance count stays far below 2**16.
    big_labels = cv2.resize(labels.astype(np.uint16), size, interpolation=cv2.INTER_NEAREST)
    return bigger, big_labels.astype(labels.dtype)


def evaluate_run(
    run_dir: Path,
    data_root: Path,
    split: str,
    cache_dir: Path,
    magnify: float = 1.0,
    diameter: Diameter = None,
    test_time_flips: bool = False,
) -> dict:
    """Training ids are scored on the copy the run trained on, validation ids on the original
    stage1_train masks (what training validated and selected on)."""
    segmenter = load_segmenter(run_dir / "model.keras", test_time_flips=test_time_flips)
    data_copy = TrainConfig.from_file(run_dir / "config.json").data_copy
    train_samples, validation = load_train_validation(data_root, data_copy, cache_dir)
    samples, copy = (train_samples, data_copy) if split == "train" else (validation, "stage1_train")
    per_image, kinds = {}, {}
    for sample in tqdm(samples, unit="img"):
        kinds[sample.id] = image_kind(sample.image)
        image, labels = magnified(sample.image, sample.labels, magnify)
        per_image[sample.id] = score_image(labels, segmenter.segment(image, diameter))
    return {
        "aggregate": aggregate(per_image),
        "by_kind": by_kind(per_image, kinds),
        "per_image": per_image,
        "kinds": kinds,
        "split": split,
        "data": copy,
        "magnify": magnify,
        "diameter": diameter,
        "test_time_flips": test_time_flips,
    }


def _diameter_argument(text: str) -> Diameter:
    """parse_diameter for argparse, which would otherwise hide the reason a value is wrong."""
    try:
        return parse_diameter(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", choices=["train", "validation"], required=True)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument(
        "--magnify", type=float, default=1.0, help="enlarge images and masks this many times"
    )
    parser.add_argument(
        "--diameter", type=_diameter_argument, help='nucleus diameter in pixels, or "auto"'
    )
    parser.add_argument(
        "--tta", action="store_true", help="average over flipped images (segment --tta)"
    )
    args = parser.parse_args()
    if args.magnify <= 0:
        parser.error("--magnify must be positive")
    result = evaluate_run(
        args.run_dir, args.data, args.split, args.cache_dir, args.magnify, args.diameter, args.tta
    )
    suffix = "" if args.magnify == 1.0 else f"_x{args.magnify:g}"
    suffix += "" if args.diameter is None else f"_{diameter_text(args.diameter)}"
    suffix += "_tta" if args.tta else ""
    out = args.run_dir / f"eval_{args.split}{suffix}.json"
    write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"{out}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["aggregate"].items()))


if __name__ == "__main__":
    main()
