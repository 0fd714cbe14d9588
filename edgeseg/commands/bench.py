"""`edgeseg bench`: accuracy, latency, memory and size of every model artifact on this machine."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from edgeseg.atomic import unwritable_reason
from edgeseg.commands.options import THREADS, data_root_option, split_option


@click.command("bench")
@data_root_option
@split_option
@click.option(
    "--models", multiple=True, help="Only these models (repeat or comma-separate) [default: all]."
)
@click.option(
    "--targets",
    multiple=True,
    help="Only these targets, e.g. onnx-int8,tflite-int8 [default: all found]. A target "
    "named here but not found gets a row saying so.",
)
@click.option(
    "--artifacts",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Folders (searched recursively) or files of artifacts with their .json manifests, "
    "instead of --runs.",
)
@click.option(
    "--runs",
    "runs_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("training/runs"),
    show_default=True,
    help="Training runs (relative to the current folder: run from the repository): "
    "<runs>/<model>/*.keras, <runs>/<model>/export/* and Mask R-CNN manifests "
    "(<runs>/<model>/model/maskrcnn.json, <runs>/<model>/export/**/maskrcnn.json).",
)
@click.option("--repeats", type=click.IntRange(min=1), help="Timed calls per batch [20; quick 3].")
@click.option(
    "--images", type=click.IntRange(min=1), help="Use this many images of the split [all]."
)
@click.option("--threads", type=THREADS, help="CPU threads for inference.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Folder for bench.json, bench.md and bench.png.",
)
@click.option("--quick", is_flag=True, help="4 images, 3 repeats, batches 1 and 2: a smoke test.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Decode cache for the ground truth [default: $EDGESEG_CACHE or ~/.cache/edgeseg].",
)
def bench(
    data_root: Path,
    split: str,
    models: tuple[str, ...],
    targets: tuple[str, ...],
    artifacts: tuple[Path, ...],
    runs_dir: Path,
    repeats: int | None,
    images: int | None,
    threads: int | None,
    out: Path,
    quick: bool,
    cache_dir: Path | None,
) -> None:
    """Benchmark every model artifact that can run here: accuracy on the split, latency,
    peak memory, size, load time, parameters and FLOPs.

    \b
    The built-in default model is always benchmarked too, as the row to compare with
    (leave it out with --models). Each (model, target) runs in a fresh process of its own.
    Targets this machine cannot run (e.g. TensorRT without a GPU) are listed as not
    available, with the reason.
    Instance models (Mask R-CNN) have no tiles: they are timed on whole images, and every
    model's segment latency on one 256x256 image is the column that compares them all.
    Writes OUT/bench.json (every number, the spread, the environment), OUT/bench.md (the
    survey's Table I extended, its published rows labelled as reference) and OUT/bench.png
    (pixel IoU against latency, Pareto front).

    \b
    Examples:
      edgeseg bench --data /data/dsb2018 --out bench-results/
      edgeseg bench --data /data/dsb2018 --models unet --targets onnx-fp32,onnx-int8 --threads 2
      edgeseg bench --quick --artifacts exported/ --data /data/dsb2018
    """
    from dataclasses import replace

    from benchmarks.discover import TARGETS
    from benchmarks.harness import BenchError, BenchSettings, run_bench, write_outputs
    from edgeseg.data.cache import DEFAULT_CACHE_DIR
    from edgeseg.data.dataset import DatasetError
    from edgeseg.evaluate import EvaluationError

    unknown = sorted({t for value in targets for t in value.split(",") if t} - set(TARGETS))
    if unknown:
        raise click.BadParameter(
            f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}",
            param_hint="--targets",
        )
    if not artifacts and not runs_dir.is_dir():
        if click.get_current_context().get_parameter_source("runs_dir") != ParameterSource.DEFAULT:
            raise click.BadParameter(f"{runs_dir}: no such folder", param_hint="--runs")
        click.echo(
            f"no {runs_dir} folder here (it is relative to the current folder): only the "
            "built-in model is benchmarked; give --runs or --artifacts for others",
            err=True,
        )
    settings = BenchSettings(
        data=data_root,
        split=split,
        models=models,
        targets=targets,
        artifacts=artifacts,
        runs_dir=runs_dir,
        images=images,
        threads=threads,
        cache_dir=cache_dir or DEFAULT_CACHE_DIR,
    )
    if quick:
        settings = settings.quick()
    if repeats is not None:
        settings = replace(settings, repeats=repeats)
    reason = unwritable_reason(out)
    if reason is not None:  # before the run, not after minutes of it
        raise click.ClickException(f"{out}: cannot write the results there: {reason}")
    try:
        result = run_bench(settings, progress=lambda line: click.echo(line, err=True))
    except (BenchError, DatasetError, EvaluationError) as error:
        raise click.ClickException(str(error)) from error
    for path in write_outputs(result, out):
        click.echo(f"wrote {path}")
    failed = [r for r in result["records"] if r["status"] == "failed"]
    if failed:  # a script running the benchmark must not take a broken model for a result
        names = ", ".join(f"{r['model']} {r['target']} ({r['artifact']})" for r in failed)
        raise click.ClickException(f"{len(failed)} of {len(result['records'])} failed: {names}")
