"""`edgeseg segment`: the batch job, folders of microscopy images in, nuclei out."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from edgeseg.backends import BACKENDS
from edgeseg.commands.options import (
    THREADS,
    OutputFolder,
    PositiveNumber,
    diameter_option,
    test_time_flips_option,
)

if TYPE_CHECKING:  # the runtime is imported only when a command runs
    from edgeseg.maskrcnn_model import MaskRCNNSegmenter
    from edgeseg.rescale import Diameter
    from edgeseg.segmenter import Segmenter

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
#: Images a parallel-capable model segments at once when --threads is not given.
PARALLEL_IMAGES = 2


@click.command("segment")
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputFolder(),
    help="Folder for the results, created if needed; not an input folder nor inside one.",
)
@click.option(
    "--model",
    help="Built-in model name, or the path of an exported model with its .json manifest "
    "beside it [default: the built-in default model].",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    help="Runtime to use [default: the one matching the model file].",
)
@click.option(
    "--channel",
    type=click.IntRange(min=0),
    help="Channel to segment in a multichannel image (0 = first), e.g. the DAPI channel.",
)
@click.option(
    "--page",
    type=click.IntRange(min=0),
    help="Page/plane of a multi-page TIFF, Z-stack or time series (0 = first).",
)
@click.option(
    "--tile",
    type=click.IntRange(min=16),
    help="Tile edge in pixels for models that take any size [default: the model's, e.g. 256].",
)
@diameter_option
@test_time_flips_option
@click.option(
    "--threads",
    type=THREADS,
    help="CPU threads for inference [default: every core this process may use, within a "
    "container's CPU quota; ONNX models then run two images "
    "at once, each on half the cores].",
)
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.png (outlines).")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Redo every image, replacing earlier results (and removing its labels in the other "
    "format and an overlay not asked for now); an image that fails keeps its earlier results.",
)
@click.option(
    "--format",
    "label_format",
    type=click.Choice(["tif", "png"]),
    default="tif",
    show_default=True,
    help="Label image format: zlib TIFF or 16-bit PNG.",
)
@click.option(
    "--samples",
    is_flag=True,
    help="Segment the 4 bundled sample images (DSB2018, CC0) to try edgeseg out.",
)
@click.option(
    "--max-megapixels",
    type=PositiveNumber(),
    help="Refuse larger images, as read or as rescaled by --diameter (they need about 60 "
    "bytes of memory per pixel) [default: 100].",
)
def segment(
    inputs: tuple[Path, ...],
    output: Path,
    model: str | None,
    backend: str | None,
    channel: int | None,
    page: int | None,
    tile: int | None,
    diameter: Diameter,
    test_time_flips: bool,
    threads: int | None,
    overlay: bool,
    overwrite: bool,
    label_format: str,
    samples: bool,
    max_megapixels: float | None,
) -> None:
    """Segment the nuclei in every image of INPUT (files and/or folders, searched recursively).

    \b
    Inputs: PNG, JPEG, BMP, TIFF (8/16-bit, float, multi-page, OME-TIFF, ImageJ).
    RGB(A) images are used as colour; in other multichannel images pick the nuclear
    channel with --channel N, and a plane of a multi-page TIFF or stack with --page N.
    Folders are searched (following links to folders) skipping hidden names, edgeseg's own
    outputs, and the masks/ beside images/ of the Kaggle (DSB2018) layout.

    \b
    Outputs in OUT, for an input image X.png:
      X_labels.tif    uint16 instance labels, 0 = background (Fiji, QuPath, napari);
                      a 16-bit X_labels.png with --format png
      X_nuclei.csv    one row per nucleus: label, area, centroid, bbox, mean and
                      integrated intensity, perimeter, eccentricity, solidity
      X_overlay.png   nucleus outlines on the image, with --overlay
      summary.csv     one row per image: nuclei, mean area, median nucleus diameter,
                      status ok/failed/skipped, error, seconds, the --diameter asked
                      (rows of earlier runs for other images of OUT are kept)
    Names: outputs are named after the image's file name. When several inputs share one
    (a/X.png and b/X.tif), each is named after its path below the inputs' common folder,
    folders joined by "__": a__X, b__X (then the extension is added if still needed).
    A file keeps its outputs' name in later runs, and a file new to OUT whose name another
    file's results hold is named after its folder too (b__X, then numbered): results of
    one image are never replaced by another's.

    \b
    Resume: run the same command again after an interruption or a crash: images whose
    outputs are complete are skipped (summary.csv says "skipped"), the others are done,
    and so is an image whose file has changed since (same name, new size or time).
    Results of another model (or of its thresholds or tiling, re-tuned in its manifest),
    --channel, --page, --diameter, --tile or --tta are never replaced without --overwrite:
    OUT holding them is refused. Bookkeeping lives in OUT/.edgeseg-done/.

    \b
    A file that cannot be read fails alone: named on stderr and in summary.csv, and the
    exit status is 1. Nothing is ever sent over the network.

    \b
    Examples:
      edgeseg segment --samples -o out/
      edgeseg segment plate1/ plate2/ -o results/ --overlay
      edgeseg segment stack.ome.tif --channel 0 --page 12 -o results/
      edgeseg segment 40x_scans/ -o results/ --diameter 80
      edgeseg segment mixed_scans/ -o results/ --diameter auto
      edgeseg segment hard_cases/ -o results/ --tta
      edgeseg segment images/ -o results/ --model exported/unet.onnx --threads 4
    """
    from tqdm import tqdm

    from edgeseg.batch import (
        BatchError,
        BatchSettings,
        ImageResult,
        check_output_folder,
        discover_images,
        output_lock,
        plan_batch,
        run_batch,
        summary_lines,
    )
    from edgeseg.imageio import DEFAULT_MAX_MEGAPIXELS

    if samples:
        inputs = (*inputs, SAMPLES_DIR)
    if not inputs:
        raise click.UsageError("give INPUT files or folders, or --samples")
    settings = BatchSettings(
        output=output,
        page=page,
        channel=channel,
        label_format=label_format,
        overlay=overlay,
        overwrite=overwrite,
        max_megapixels=max_megapixels or DEFAULT_MAX_MEGAPIXELS,
        diameter=diameter,
        test_time_flips=test_time_flips,
        tile=tile,
    )
    try:
        check_output_folder(output, inputs)
        jobs = discover_images(inputs)
    except BatchError as error:
        raise click.ClickException(str(error)) from error
    segmenter, workers = load_for_batch(
        model, backend, threads, tile, diameter, test_time_flips=test_time_flips
    )
    try:  # held until the command ends
        click.get_current_context().with_resource(output_lock(output))
        plan = plan_batch(jobs, settings, segmenter.manifest)
    except BatchError as error:
        raise click.ClickException(str(error)) from error

    name = segmenter.manifest.get("name", "?")
    click.echo(
        f"{len(jobs)} images; model {name} on {segmenter.backend.name}"
        f"{f', {workers} images at a time' if workers > 1 else ''}"
        f"{diameter_note(segmenter, diameter)}{flips_note(test_time_flips)}",
        err=True,
    )
    if plan.skipped:
        click.echo(
            f"{len(plan.skipped)} already done in {output} are skipped "
            "(their outputs are complete; --overwrite redoes them)",
            err=True,
        )
    started = time.perf_counter()
    with tqdm(total=len(plan.todo), unit="img", file=sys.stderr, disable=None) as bar:

        def report(result: ImageResult) -> None:
            if result.status == "failed":
                tqdm.write(f"FAILED {result.job.source}: {result.error}", file=sys.stderr)
            bar.update()

        # SIGTERM (a service stop, `kill`, `timeout`) ends the run as Ctrl-C does: cleanly.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            results = run_batch(
                segmenter, plan, settings, on_result=report, inference_workers=workers
            )
        except KeyboardInterrupt as interrupt:
            exit_interrupted(
                interrupt,
                f"\nInterrupted. Finished images are kept in {output}; run the same command "
                "again to do the rest.",
            )
        finally:
            signal.signal(signal.SIGTERM, previous)
    click.echo("\n".join(summary_lines(results, time.perf_counter() - started, output)))
    if any(result.status == "failed" for result in results):
        sys.exit(1)


def exit_interrupted(interrupt: KeyboardInterrupt, message: str) -> NoReturn:
    """Say ``message`` and exit with status 130, deaf to further Ctrl-C.

    After a second Ctrl-C (``BatchInterrupted``) inference may still run in native code,
    which a normal interpreter exit would abort with a crash message: the process then ends
    at once instead (every file is already complete or absent).
    """
    from edgeseg.batch import BatchInterrupted

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    click.echo(message, err=True)
    stages = [thread for thread in threading.enumerate() if thread.name.startswith("edgeseg-")]
    for stage in stages:
        stage.join(timeout=0.5)  # a stage that has finished its work ends within a moment
    if isinstance(interrupt, BatchInterrupted) or any(stage.is_alive() for stage in stages):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to say
                stream.flush()
        os._exit(130)
    sys.exit(130)


def load_for_batch(
    model: str | None,
    backend: str | None,
    threads: int | None,
    tile: int | None,
    diameter: Diameter = None,
    *,
    test_time_flips: bool = False,
) -> tuple[Segmenter | MaskRCNNSegmenter, int]:
    """The model for many images, and how many images it runs at once.

    Without --threads, a model run by ONNX Runtime on the CPU segments two images at once,
    each on half the cores: measured on 2 cores with 256x256 images, 25 % less CPU per image
    than two threads on one image (small tiles spend the rest handing work between threads).
    Two, not one per core, so memory stays a few images on a many-core machine.
    """
    from edgeseg.backends.base import available_cores

    cores = available_cores()
    if threads is not None or cores == 1 or not _runs_in_parallel(model, backend):
        workers = 1
    else:
        workers = min(cores, PARALLEL_IMAGES)
        threads = cores // workers
    segmenter = load_segmenter_or_fail(
        model, backend, threads, tile, diameter, test_time_flips=test_time_flips
    )
    return segmenter, workers


def _runs_in_parallel(model: str | None, backend: str | None) -> bool:
    from edgeseg.backends import PARALLEL_BACKENDS, artifact_format
    from edgeseg.manifest import read_manifest
    from edgeseg.models import is_maskrcnn, resolve_model

    try:
        artifact = resolve_model(model)
        if is_maskrcnn(artifact):  # untested from several threads
            return False
        manifest = read_manifest(artifact, verify=False)
        return (backend or artifact_format(artifact, manifest)) in PARALLEL_BACKENDS
    except (LookupError, ValueError, OSError):
        return False  # load_segmenter_or_fail says what is wrong with the model


def load_segmenter_or_fail(
    model: str | None,
    backend: str | None,
    threads: int | None,
    tile: int | None,
    diameter: Diameter = None,
    *,
    test_time_flips: bool = False,
) -> Segmenter | MaskRCNNSegmenter:
    """Load the model for a command; any reason it cannot load, or cannot serve --diameter
    (no nucleus size in its manifest) or --tta, becomes one clear CLI error before any image
    is read."""
    from edgeseg.rescale import AUTO, diameter_scale, diameter_text, required_diameter
    from edgeseg.segmenter import load_segmenter

    try:
        segmenter = load_segmenter(
            model, backend=backend, threads=threads, tile=tile, test_time_flips=test_time_flips
        )
    except (LookupError, ValueError, RuntimeError, OSError) as error:
        raise click.ClickException(f"cannot load the model: {error}") from error
    try:
        if diameter == AUTO:
            required_diameter(segmenter.manifest)
        elif diameter is not None:
            diameter_scale(segmenter.manifest, diameter)
    except ValueError as error:
        raise click.ClickException(f"--diameter {diameter_text(diameter)}: {error}") from error
    return segmenter


def flips_note(test_time_flips: bool) -> str:
    """What --tta does, for the line a command prints when it starts."""
    return "; each image averaged with its 3 mirror images (--tta)" if test_time_flips else ""


def diameter_note(segmenter: Segmenter | MaskRCNNSegmenter, diameter: Diameter) -> str:
    """How --diameter rescales images, for the line a command prints when it starts."""
    if diameter is None:
        return ""
    from edgeseg.rescale import AUTO, AUTO_RATIO, diameter_scale, recorded_diameter, rescales

    if diameter == AUTO:
        model = recorded_diameter(segmenter.manifest)
        return (
            f"; images whose nuclei come out over {AUTO_RATIO * model:g} px are re-segmented "
            f"shrunk to the model's {model:g} px"
        )
    scale = diameter_scale(segmenter.manifest, diameter)
    action = f"rescaled x{scale:.3g}" if rescales(scale) else "not rescaled"
    model = recorded_diameter(segmenter.manifest)
    return f"; nuclei of {diameter:g} px {action} (the model's are {model:g} px)"
