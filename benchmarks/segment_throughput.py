"""End-to-end throughput of `edgeseg segment`: images/s, peak RSS and where the time goes.

    python -m benchmarks.segment_throughput /data/dsb2018/stage1_test --out results.json

Two measurements on the same images, for the default model (or --model):
  * end to end: the real `edgeseg segment` command in a fresh subprocess (its pipeline
    overlaps decoding, inference and writing), wall time and the child's peak RSS;
  * stage split: the same steps run one after another in this process, each timed
    (decode, inference, instances, measure + write), to show which stage to optimise.
Both run on the images as they are and on every non-overlapping 256x256 crop of them, the
size the runtime's speed goal is stated for. The command's fixed start-up (Python, imports,
model load) is timed on one image and reported apart, so ``steady_images_per_s`` is the rate
a long batch sees. This shared 2-core VM's speed drifts by a third from minute to minute, so
the end-to-end run is repeated (``--repeats``) and the median reported beside every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

from edgeseg.atomic import write_text
from edgeseg.batch import walk_images
from edgeseg.imageio import read_plane, write_labels
from edgeseg.measure import measure_nuclei, write_nuclei_csv
from edgeseg.postprocess import labels_from_maps
from edgeseg.preprocess import to_gray
from edgeseg.segmenter import load_segmenter

CROP = 256


def dsb_images(root: Path) -> list[Path]:
    """The image files under ``root``: a DSB split's ``*/images/*.png`` or a flat folder."""
    kaggle = sorted(root.glob("*/images/*.png"))
    return kaggle or sorted(walk_images(root))


def crops(images: list[Path], folder: Path) -> list[Path]:
    """Write every non-overlapping CROP x CROP tile of each image (row-major, from top-left)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        for y in range(0, image.shape[0] - CROP + 1, CROP):
            for x in range(0, image.shape[1] - CROP + 1, CROP):
                written.append(folder / f"{path.stem}_{y}_{x}.png")
                cv2.imwrite(str(written[-1]), image[y : y + CROP, x : x + CROP])
    return written


def end_to_end(
    images: list[Path], model: str | None, threads: int | None, out: Path, repeats: int = 1
) -> dict:
    """Median of ``repeats`` timings of the real command (each run also listed)."""
    runs = [_end_to_end_once(images, model, threads, out / f"run{i}") for i in range(repeats)]
    median = {
        key: statistics.median(run[key] for run in runs)
        for key in ("seconds", "images_per_s", "startup_and_first_image_s")
    }
    steady = [run["steady_images_per_s"] for run in runs if run["steady_images_per_s"]]
    return {
        "images": len(images),
        **median,
        "steady_images_per_s": statistics.median(steady) if steady else None,
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "runs": runs,
    }


def _end_to_end_once(images: list[Path], model: str | None, threads: int | None, out: Path) -> dict:
    """Time the real command on all images and on the first alone (start-up + one image)."""
    seconds, peak_rss_kb = _timed_command(images, model, threads, out / "all")
    startup, _ = _timed_command(images[:1], model, threads, out / "one")
    measurable = len(images) > 1 and seconds > startup  # too few images: noise wins
    steady = (len(images) - 1) / (seconds - startup) if measurable else None
    return {
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "startup_and_first_image_s": startup,
        "steady_images_per_s": steady,
        "peak_rss_mb": peak_rss_kb / 1024,
    }


def _timed_command(
    images: list[Path], model: str | None, threads: int | None, out: Path
) -> tuple[float, int]:
    """Wall seconds of one `edgeseg segment` run; a fresh wrapper reports its peak RSS (kB)."""
    command = [sys.executable, "-m", "edgeseg", "segment", *map(str, images), "-o", str(out)]
    command += ["--model", model] if model else []
    command += ["--threads", str(threads)] if threads else []
    started = time.perf_counter()
    wrapper = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *command], check=True, capture_output=True, text=True
    )
    return time.perf_counter() - started, int(wrapper.stdout.split()[-1])


_WRAPPER = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, capture_output=True)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def stage_split(images: list[Path], model: str | None, threads: int | None, out: Path) -> dict:
    segmenter = load_segmenter(model, threads=threads)
    totals = dict.fromkeys(("decode", "inference", "instances", "measure_write"), 0.0)
    out.mkdir(parents=True, exist_ok=True)
    segmenter.predict_probabilities(read_plane(images[0]))  # warm-up
    for path in images:
        t0 = time.perf_counter()
        image = read_plane(path)
        t1 = time.perf_counter()
        maps = segmenter.predict_probabilities(image)
        t2 = time.perf_counter()
        labels = labels_from_maps(maps, segmenter.settings)
        t3 = time.perf_counter()
        write_nuclei_csv(out / f"{path.stem}_nuclei.csv", measure_nuclei(labels, to_gray(image)))
        write_labels(out / f"{path.stem}_labels.tif", labels)
        t4 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            totals[key] += seconds
    total = sum(totals.values())
    return {
        "images": len(images),
        "ms_per_image": {key: 1000 * value / len(images) for key, value in totals.items()},
        "share": {key: value / total for key, value in totals.items()},
        "images_per_s_sequential": len(images) / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="a DSB split folder or a folder of images")
    parser.add_argument("--model", help="model name or artifact path [default: built-in]")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs [default: 3]")
    args = parser.parse_args()
    images = dsb_images(args.images)
    results = {
        "model": args.model or "built-in default",
        "threads": args.threads,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory() as scratch:
        sets = {"as_is": images, f"crops_{CROP}": crops(images, Path(scratch) / "crops")}
        for name, paths in sets.items():
            results[name] = {
                "end_to_end": end_to_end(
                    paths, args.model, args.threads, Path(scratch) / name, args.repeats
                ),
                "stage_split": stage_split(
                    paths, args.model, args.threads, Path(scratch) / f"{name}-split"
                ),
            }
    write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
