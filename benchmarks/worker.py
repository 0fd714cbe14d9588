"""Benchmark ONE configuration in a fresh process: ``python -m benchmarks.worker SPEC RESULT``.

Peak RSS is a property of the whole process, so each artifact is loaded in a process of its
own; one runtime's arenas or caches never inflate another's numbers. SPEC is a JSON file
(artifact, backend, threads, images, predictions folder, repeats, warmup, batches); RESULT
is written as JSON. Order matters: load, run the split (peak RSS is read here, so it is the
memory `edgeseg segment` would need), time `segment` on one 256x256 image, then the
model-only timings with larger batches.

Instance models (Mask R-CNN: only ``segment``, no tiles) have no model-only timings; their
latency is the 256x256 whole-image one, which every model gets, so all rows compare on it.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.latency import summarize, time_calls
from edgeseg.atomic import write_text

#: The whole-image latency's input: the semantic models' tile size, so the rows compare.
IMAGE_SIZE = (256, 256)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux, VmHWM: ru_maxrss also counts the parent's memory at the moment it spawned
    this worker (the kernel keeps the larger of the two across exec), so every row would
    report at least the harness's own peak. Elsewhere ru_maxrss (KiB, bytes on macOS).
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def tile_shape(segmenter: Any) -> tuple[int, int]:
    """The tile the network sees: its fixed input size, else the tiling size rounded up."""
    if segmenter.backend.input_size is not None:
        return tuple(segmenter.backend.input_size)
    multiple = segmenter.tiles.multiple
    size = -(-segmenter.tiles.size // multiple) * multiple
    return size, size


def model_latency(
    backend: Any, tile: tuple[int, int], batches: Sequence[int], repeats: int, warmup: int
) -> dict[str, Any]:
    """Warm per-call timings of backend.predict per batch size; the best batch per tile."""
    sizes = [backend.fixed_batch] if backend.fixed_batch else list(batches)
    rng = np.random.default_rng(0)
    per_batch = {}
    for size in sizes:
        batch = rng.random((size, *tile, 1), dtype=np.float32)
        summary = summarize(time_calls(functools.partial(backend.predict, batch), repeats, warmup))
        summary["per_tile_median_ms"] = summary["median_ms"] / size
        per_batch[str(size)] = summary
    best = min(per_batch, key=lambda size: per_batch[size]["per_tile_median_ms"])
    return {"tile": list(tile), "batches": per_batch, "best_batch": int(best)}


def run_split(segmenter: Any, images: Sequence[tuple[str, str]], predictions: Path) -> dict:
    """Decode + segment every image, timed per image; write the labels `segment` would."""
    from edgeseg.imageio import read_plane, write_labels

    start = time.perf_counter()
    segmenter.segment(read_plane(images[0][1]))  # warm-up, reported but not in the stats
    first_ms = (time.perf_counter() - start) * 1000
    decode, infer, total = [], [], {}
    for sample_id, path in images:
        start = time.perf_counter()
        image = read_plane(path)
        decoded = time.perf_counter()
        labels = segmenter.segment(image)
        done = time.perf_counter()
        write_labels(predictions / f"{sample_id}_labels.tif", labels)
        decode.append(decoded - start)
        infer.append(done - decoded)
        total[sample_id] = done - start
    return {
        "first_image_ms": first_ms,
        "end_to_end": summarize(list(total.values())),
        "decode": summarize(decode),
        "segment": summarize(infer),
        "images_per_s": len(total) / sum(total.values()),
        "per_image_ms": {key: seconds * 1000 for key, seconds in total.items()},
    }


def probe_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """A ``size`` crop of a split image, mirrored out where the image is smaller: real
    content, so an instance model finds a realistic number of nuclei to mask."""
    from edgeseg.imageio import read_plane

    image = read_plane(path)[: size[0], : size[1]]
    missing = [(0, size[0] - image.shape[0]), (0, size[1] - image.shape[1])]
    return np.pad(image, missing + [(0, 0)] * (image.ndim - 2), mode="symmetric")


def image_latency(segmenter: Any, image: np.ndarray, repeats: int, warmup: int) -> dict[str, Any]:
    """Warm timings of ``segment`` on one image: normalise, inference, post-processing."""
    summary = summarize(time_calls(functools.partial(segmenter.segment, image), repeats, warmup))
    return {"shape": list(image.shape[:2]), **summary}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the artifact, run the split, time the model; everything measured in this process."""
    from edgeseg.backends import BackendUnavailable
    from edgeseg.segmenter import load_segmenter

    rss_before = peak_rss_mb()
    start = time.perf_counter()
    try:
        segmenter = load_segmenter(
            spec["artifact"], spec.get("backend"), spec.get("threads"), allow_unverified=True
        )
    except BackendUnavailable as error:
        return {"status": "unavailable", "reason": str(error)}
    load_s = time.perf_counter() - start
    rss_loaded = peak_rss_mb()
    predictions = Path(spec["predictions"])
    predictions.mkdir(parents=True, exist_ok=True)
    split = run_split(segmenter, spec["images"], predictions)
    rss_split = peak_rss_mb()
    image = probe_image(spec["images"][0][1], IMAGE_SIZE)
    latency: dict[str, Any] = {
        "model": None,  # stays None for instance models: no tiles, whole images only
        "whole_image": image_latency(segmenter, image, spec["repeats"], spec["warmup"]),
        **split,
    }
    if hasattr(segmenter, "predict_probabilities"):
        latency["model"] = model_latency(
            segmenter.backend,
            tile_shape(segmenter),
            spec["batches"],
            spec["repeats"],
            spec["warmup"],
        )
    return {
        "status": "ok",
        "pid": os.getpid(),
        "backend": segmenter.backend.name,
        "load_s": load_s,
        "latency": latency,
        "memory": {
            "rss_before_load_mb": rss_before,
            "peak_rss_after_load_mb": rss_loaded,
            "peak_rss_mb": rss_split,
            "peak_rss_with_batches_mb": peak_rss_mb(),
        },
        "load_average": list(os.getloadavg()),
    }


def main(argv: Sequence[str] | None = None) -> None:
    spec_path, result_path = (Path(arg) for arg in (argv or sys.argv[1:]))
    result = run(json.loads(spec_path.read_text()))
    write_text(result_path, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
