"""Run the benchmark: discover configurations, one worker process each, score, report.

Accuracy is scored here with edgeseg.evaluate on the label images each worker wrote, i.e.
exactly what `edgeseg segment` writes and `edgeseg eval` scores. Configurations that cannot
run here become records with ``status: unavailable`` and a reason, and no numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.complexity import complexity
from benchmarks.discover import UNREADABLE, Configuration, discover
from benchmarks.environment import describe_environment
from benchmarks.reference import reference_records
from benchmarks.worker import IMAGE_SIZE
from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.data.dataset import SampleRef, find_samples
from edgeseg.evaluate import evaluate_folder, resolve_split

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
STDERR_TAIL = 1500


class BenchError(RuntimeError):
    """The benchmark as a whole cannot run (no artifacts found, bad data folder)."""


@dataclass(frozen=True)
class BenchSettings:
    """What to benchmark and how hard; ``images`` None means the whole split."""

    data: Path
    split: str = "test"
    models: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    artifacts: tuple[Path, ...] = ()
    runs_dir: Path | None = Path("training/runs")
    include_builtin: bool = True
    images: int | None = None
    repeats: int = 20
    warmup: int = 2
    batches: tuple[int, ...] = (1, 2, 4, 8)
    threads: int | None = None
    cache_dir: Path | None = DEFAULT_CACHE_DIR

    def quick(self) -> BenchSettings:
        """Few images and repeats: every code path in seconds (CI), numbers only indicative."""
        return replace(self, images=self.images or 4, repeats=3, warmup=1, batches=(1, 2))


def select_images(refs: Sequence[SampleRef], count: int | None) -> list[SampleRef]:
    """``count`` samples spread evenly over the sorted ids (the split mixes modalities)."""
    if count is None or count >= len(refs):
        return list(refs)
    return [refs[int(i)] for i in np.linspace(0, len(refs) - 1, count).round()]


def _base_record(config: Configuration) -> dict[str, Any]:
    verification = config.manifest.get("verification") or {}
    return {
        "model": config.model,
        "target": config.target,
        "artifact": str(config.artifact),
        "copies": [str(path) for path in config.copies],  # the same bytes, benchmarked once
        "backend": config.backend,
        "export_check": verification.get("status"),  # the export gate's verdict, if any
        # an artifact whose manifest cannot be read is broken, not merely unsupported here
        "status": "failed" if config.target == UNREADABLE else "unavailable",
        "reason": config.unavailable,
    }


def _run_worker(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run benchmarks.worker in a fresh interpreter; a crash becomes a ``failed`` result."""
    spec_path, result_path = folder / "spec.json", folder / "result.json"
    spec_path.write_text(json.dumps(spec))
    path = os.pathsep.join(filter(None, (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))))
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(result_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    if process.returncode != 0 or not result_path.is_file():
        tail = process.stderr.strip()[-STDERR_TAIL:] or f"exit status {process.returncode}"
        return {"status": "failed", "reason": f"the worker process failed: {tail}"}
    return json.loads(result_path.read_text())


def bench_configuration(
    config: Configuration,
    refs: Sequence[SampleRef],
    dataset: Path,
    settings: BenchSettings,
    scratch: Path,
) -> dict[str, Any]:
    """One record: worker timings and memory, accuracy of its labels, size and complexity."""
    record = _base_record(config)
    if config.unavailable:
        return record
    scratch.mkdir(parents=True)
    spec = {
        "artifact": str(config.artifact),
        "backend": config.backend,
        "threads": settings.threads,
        "images": [(ref.id, str(ref.image_path)) for ref in refs],
        "predictions": str(scratch / "predictions"),
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "batches": list(settings.batches),
    }
    worker = _run_worker(spec, scratch)
    if worker["status"] != "ok":
        return {**record, **worker}
    scores = evaluate_folder(
        scratch / "predictions", dataset, ids=[ref.id for ref in refs], cache_dir=settings.cache_dir
    )
    return {
        **record,
        **worker,
        "reason": None,
        "accuracy": scores["aggregate"],
        "per_image": scores["per_image"],
        "size_bytes": sum(path.stat().st_size for path in config.files),
    }


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx" and path.is_file()


def _graphs(config: Configuration, configs: Sequence[Configuration]) -> list[Path]:
    """ONNX graphs to count parameters/FLOPs on: this artifact, then the model's fp32 ONNX.

    A Mask R-CNN (a manifest over three graphs) has none: its work per image depends on how
    many nuclei it finds, so a per-tile count would not mean anything.
    """
    own = [config.artifact] if _is_onnx(config.artifact) else []
    fp32 = [
        c.artifact
        for c in configs
        if c.model == config.model and c.target == "onnx-fp32" and _is_onnx(c.artifact)
    ]
    return [*own, *(path for path in fp32 if path != config.artifact)]


def run_bench(
    settings: BenchSettings, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Benchmark every configuration found; returns what bench.json holds."""
    dataset = resolve_split(Path(settings.data), settings.split)
    all_refs = find_samples(dataset)
    refs = select_images(all_refs, settings.images)
    try:
        configs = discover(
            settings.runs_dir,
            settings.artifacts,
            settings.models,
            settings.targets,
            settings.include_builtin,
        )
    except ValueError as error:  # an --artifacts path holding no model, an unknown --models
        raise BenchError(str(error)) from error
    if not configs:
        where = ", ".join(map(str, settings.artifacts)) or str(settings.runs_dir)
        raise BenchError(f"no model artifacts (with a .json manifest) found in {where}")
    environment = describe_environment(settings.threads)
    started = time.time()
    records = []
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as scratch:
        for index, config in enumerate(configs):
            if progress:
                progress(f"[{index + 1}/{len(configs)}] {config.label} ({config.artifact.name})")
            record = bench_configuration(
                config, refs, dataset, settings, Path(scratch) / str(index)
            )
            if record["status"] == "ok":
                tiles = record["latency"]["model"]  # None for instance models
                tile = tuple(tiles["tile"]) if tiles else IMAGE_SIZE
                record.update(
                    complexity(config.manifest, config.artifact, tile, _graphs(config, configs))
                )
            records.append(record)
    environment["load_average_end"] = list(os.getloadavg())
    return {
        "environment": environment,
        "settings": {
            **{key: value for key, value in asdict(settings).items() if key != "cache_dir"},
            "data": str(settings.data),
            "artifacts": [str(path) for path in settings.artifacts],
            "runs_dir": None if settings.artifacts else str(settings.runs_dir or ""),
        },
        "dataset": {"folder": str(dataset), "images": len(refs), "split_images": len(all_refs)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": time.time() - started,
        "records": records,
        "reference": reference_records(),
    }


def write_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    """bench.json, bench.md and bench.png in ``out``."""
    from benchmarks.plot import write_plot
    from benchmarks.report import write_json, write_markdown

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md", out / "bench.png"]
    write_json(result, paths[0])
    write_markdown(result, paths[1])
    write_plot(result, paths[2])
    return paths
