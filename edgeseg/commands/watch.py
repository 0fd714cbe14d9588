"""`edgeseg watch`: a drop folder whose images are segmented as they arrive (a service)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from edgeseg.commands.options import OutputFolder
from edgeseg.commands.segment import (
    diameter_note,
    exit_interrupted,
    flips_note,
    load_segmenter_or_fail,
    segment,
)

if TYPE_CHECKING:
    from edgeseg.rescale import Diameter

# Options with exactly `edgeseg segment`'s meaning, shared so the two never drift apart.
SHARED_OPTIONS = (
    "model",
    "backend",
    "channel",
    "page",
    "tile",
    "diameter",
    "test_time_flips",
    "threads",
    "overlay",
    "label_format",
    "max_megapixels",
)
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)
)


def _log(message: str) -> None:
    click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", err=True)


@click.command("watch")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=OutputFolder(),
    help="Folder for the results, created if needed; not FOLDER nor inside it.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    help="Seconds between two looks at FOLDER.",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="A file is taken once its size and modification time have not changed for this "
    "many seconds and it decodes; raise it for slow network copies.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Do every image in FOLDER (waiting for those still being copied), then exit; "
    "exit status 1 if any failed.",
)
def watch(
    folder: Path,
    output: Path,
    interval: float,
    settle: float,
    once: bool,
    model: str | None,
    backend: str | None,
    channel: int | None,
    page: int | None,
    tile: int | None,
    diameter: Diameter,
    test_time_flips: bool,
    threads: int | None,
    overlay: bool,
    label_format: str,
    max_megapixels: float | None,
) -> None:
    """Segment the images that arrive in FOLDER (searched recursively), until stopped.

    \b
    Outputs, naming of X_labels.tif / X_nuclei.csv / summary.csv, resume and failure
    isolation are those of `edgeseg segment` (see its --help). Watching adds:
      - an image is taken only when complete: unchanged for --settle seconds and
        decodable. One that never decodes fails (named in summary.csv) after a minute;
        a failed file is tried again when it changes.
      - output names are given as images arrive and kept across restarts: X, or
        plate2__X when a plate1/X came first.
      - each file is done once, and again if it is replaced under the same name
        (its size or modification time changes), as `edgeseg segment` does.
      - summary.csv lists every image done into OUT with these settings.
    Ctrl-C or SIGTERM (systemctl stop) finishes the image in progress, writes
    summary.csv and exits 0; if that takes too long, Ctrl-C twice more aborts at once
    (exit 130; nothing is half-written either way). Restart it with the same command:
    done images are not redone. Run one watcher per output folder. Nothing is ever sent
    over the network.

    \b
    Examples:
      edgeseg watch /srv/edgeseg/in -o /srv/edgeseg/out
      edgeseg watch D:\\scans -o D:\\results --settle 15 --overlay
      edgeseg watch incoming/ -o results/ --model exported/unet.onnx --once
      edgeseg watch /srv/edgeseg/in -o /srv/edgeseg/out --diameter 80
    """
    from edgeseg.batch import (
        BatchError,
        BatchSettings,
        ImageResult,
        check_output_folder,
        output_lock,
        summary_lines,
    )
    from edgeseg.imageio import DEFAULT_MAX_MEGAPIXELS
    from edgeseg.watch import FolderWatcher, watch_folder

    settings = BatchSettings(
        output=output,
        page=page,
        channel=channel,
        label_format=label_format,
        overlay=overlay,
        max_megapixels=max_megapixels or DEFAULT_MAX_MEGAPIXELS,
        diameter=diameter,
        test_time_flips=test_time_flips,
        tile=tile,
    )
    segmenter = load_segmenter_or_fail(
        model, backend, threads, tile, diameter, test_time_flips=test_time_flips
    )
    try:
        check_output_folder(output, [folder])  # before the lock makes OUT
        click.get_current_context().with_resource(output_lock(output))  # until the end
    except BatchError as error:
        raise click.ClickException(str(error)) from error
    try:
        watcher = FolderWatcher(folder, segmenter, settings, settle, warn=_log)
    except BatchError as error:
        raise click.ClickException(
            f"{error} (edgeseg watch never replaces results: use another output folder, or "
            "redo them once with edgeseg segment --overwrite)"
        ) from error

    def report(result: ImageResult) -> None:
        if result.status == "failed":
            _log(f"FAILED {result.job.source}: {result.error}")
        else:
            _log(f"ok {result.job.source}: {result.nuclei} nuclei ({result.seconds:.1f} s)")

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()  # only that: the loop notices it, finishes the image in progress and ends
        signal.signal(
            signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        )

    name = segmenter.manifest.get("name", "?")
    _log(
        f"watching {folder} every {interval:g} s (files taken once unchanged for {settle:g} s) "
        f"with model {name} on {segmenter.backend.name}{diameter_note(segmenter, diameter)}"
        f"{flips_note(test_time_flips)}; "
        f"results in {output}"
    )
    if not once:
        _log("stop with Ctrl-C or SIGTERM: the image in progress is finished first")
    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    started = time.perf_counter()
    try:
        results = watch_folder(watcher, interval=interval, once=once, stop=stop, on_result=report)
    except KeyboardInterrupt as interrupt:
        exit_interrupted(
            interrupt, f"aborted; run the same command again to go on. Results are in {output}"
        )
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if stop.is_set():
        _log(f"stopped; run the same command again to go on. Results are in {output}")
    click.echo("\n".join(summary_lines(results, time.perf_counter() - started, output)))
    if once and (any(result.status == "failed" for result in results) or watcher.unlistable):
        sys.exit(1)  # a folder it could not list holds images left undone


watch.params.extend(param for param in segment.params if param.name in SHARED_OPTIONS)
