"""The batch job behind `edgeseg segment`: many images in, labels and measurements out.

Built for unattended runs on a clinic workstation:

* one bad file never stops the batch: it is reported (summary.csv, one stderr line) and the
  rest go on;
* a crash or power cut at any moment never leaves a result a re-run would trust: every file
  is written atomically and a per-image done-marker (``OUT/.edgeseg-done/<stem>.json``) is
  written last, so a re-run skips exactly the images whose marker and outputs all exist and
  were made with the same model (thresholds and tiling included) and settings (page,
  channel, nucleus diameter), and a file keeps its outputs' name from run to run;
* reading, inference and post-processing + writing overlap in threads joined by small
  bounded queues, so memory stays a few images (two more per extra inference worker)
  whatever the batch size; post-processing (probabilities -> instances) runs on the writer
  thread, beside the network, not after it, and models that allow it run on two images at
  once.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import itertools
import json
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import atomic_path, remove_stale_temporaries, unwritable_reason
from edgeseg.imageio import (
    DEFAULT_MAX_MEGAPIXELS,
    IMAGE_SUFFIXES,
    ImageReadError,
    check_label_range,
    read_plane,
    write_labels,
)
from edgeseg.measure import measure_nuclei, write_nuclei_csv
from edgeseg.overlay import draw_overlay, write_overlay
from edgeseg.preprocess import preprocessing, to_gray
from edgeseg.rescale import Diameter, diameter_of_areas, diameter_text, recorded_diameter

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = (
    "file", "output_stem", "nuclei", "mean_area", "median_diameter_px", "status", "error",
    "seconds", "diameter_px",
)  # fmt: skip
DONE_DIR = ".edgeseg-done"
LABEL_FORMATS = ("tif", "png")
NUCLEI_SUFFIX = "_nuclei.csv"
PREFETCH = 2  # images decoded ahead of inference, and segmented images waiting to be written
SUMMARY_EVERY_S = 10.0


#: Manifest sections that change labels; markers written before they were recorded lack
#: them and still resume (`_same_settings`).
MANIFEST_SETTINGS = {"postprocess": "model_postprocess", "tile": "model_tile"}


class BatchError(ValueError):
    """The batch as a whole cannot start (no images, a bad output folder, clashing results)."""


@dataclass(frozen=True)
class ImageJob:
    """One input image and the stem its outputs are named after."""

    index: int
    source: Path
    stem: str


@dataclass(frozen=True)
class BatchSettings:
    """What the user asked for; everything needed to name, check and write outputs."""

    output: Path
    page: int | None = None
    channel: int | None = None
    label_format: str = "tif"
    overlay: bool = False
    overwrite: bool = False
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    #: Typical nucleus diameter in the images (px) or "auto", passed to segment(); None: as is.
    diameter: Diameter = None
    #: Whether the segmenter averages over flipped images (edgeseg.test_time_flips).
    test_time_flips: bool = False
    #: The --tile asked for (tiles meet in other places, so labels differ slightly); None:
    #: the model's own.
    tile: int | None = None

    def outputs(self, stem: str) -> dict[str, Path]:
        names = {"nuclei": f"{stem}{NUCLEI_SUFFIX}", "labels": f"{stem}_labels.{self.label_format}"}
        if self.overlay:
            names["overlay"] = f"{stem}_overlay.png"
        return {kind: self.output / name for kind, name in names.items()}

    def stale_outputs(self, stem: str, outdated: bool = False) -> list[Path]:
        """With --overwrite, or when the earlier results are ``outdated`` (made from an
        earlier version of the file), the outputs of ``stem`` an earlier run left that this
        one does not write (labels in the other format, an overlay not asked for now): they
        show the results being replaced. Otherwise nothing is removed; `edgeseg eval`
        refuses two label files for one image rather than guess."""
        if not (self.overwrite or outdated):
            return []
        kept = self.outputs(stem).values()
        candidates = [self.output / name for name in _image_output_names(stem)]
        return [path for path in candidates if path not in kept]

    def marker(self, stem: str) -> Path:
        return self.output / DONE_DIR / f"{stem}.json"

    def fingerprint(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """What makes two runs' labels differ: outputs made otherwise are never reused.

        The diameter, flip, tile and stained-channel keys appear only when not at their
        defaults, so results made before they existed still resume. The model's own diameter,
        stained channel, thresholds and tiling are included because a regenerated manifest
        (thresholds tuned again) changes them without changing the artifact's sha256.
        """
        fingerprint = {
            "model": manifest.get("name"),
            "model_sha256": manifest.get("sha256"),
            "page": self.page,
            "channel": self.channel,
            **{name: manifest[key] for key, name in MANIFEST_SETTINGS.items() if key in manifest},
        }
        if self.diameter is not None:
            fingerprint["diameter"] = self.diameter
            fingerprint["model_diameter"] = recorded_diameter(manifest)
        if self.test_time_flips:
            fingerprint["test_time_flips"] = True
        if self.tile is not None and self.tile != manifest.get("tile", {}).get("size"):
            fingerprint["tile"] = self.tile  # the model's own size asked for is no change
        if (stained_channel := preprocessing(manifest)) != "luma":
            fingerprint["stained_channel"] = stained_channel
        return fingerprint


@dataclass
class ImageResult:
    job: ImageJob
    status: str  # "ok", "failed" or "skipped"
    nuclei: int | None = None
    mean_area: float | None = None
    #: Median diameter (image px) of the nuclei in the labels written: with ``--diameter``
    #: it shows the size the rescaling met.
    median_diameter: float | None = None
    error: str = ""
    seconds: float = 0.0


@dataclass
class BatchPlan:
    todo: list[ImageJob]
    skipped: list[ImageResult]


def discover_images(inputs: Sequence[Path]) -> list[ImageJob]:
    """Expand files and folders (recursively, hidden names skipped) into named jobs.

    A file given by name is always a job, so an unsupported or corrupt one is reported
    rather than silently ignored; inside folders only image suffixes are picked up.
    """
    found: dict[str, Path] = {}  # source_key -> as the user will recognise it
    for item in inputs:
        candidates = walk_images(item) if item.is_dir() else [item]
        for path in candidates:
            found.setdefault(source_key(path), path)
    if not found:
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        raise BatchError(
            f"no images found in {', '.join(map(str, inputs))} (looked for {suffixes})"
        )
    sources = list(found.values())
    stems = output_stems(sources)
    return [ImageJob(i, sources[i], stems[i]) for i in range(len(sources))]


def located(path: Path) -> Path:
    """``path``, absolute, with its folder's symbolic links resolved but not the file's own.

    A folder reached by several paths (a linked home folder, macOS's /tmp) is one folder,
    while a link to a file (git-annex, DataLad, a symlink farm) is a file in its own right,
    named as the user named it, even when two links share one target.
    """
    return Path(os.path.realpath(path.parent)) / path.name


def source_key(path: Path) -> str:
    """What identifies an input file: ``located``, case-folded where the OS ignores case."""
    return os.path.normcase(str(located(path)))


def refuse_unlistable(error: OSError) -> None:
    """A folder that cannot be listed stops the batch: its images would be left out unseen."""
    raise BatchError(
        f"{error.filename}: cannot list this folder ({error.strerror}); its images would be "
        "left out. Make it readable, or give the other folders instead"
    )


def walk_images(
    folder: Path, on_unlistable: Callable[[OSError], None] = refuse_unlistable
) -> Iterable[Path]:
    """Image files below ``folder`` in a stable order; hidden files and folders are skipped,
    and so are edgeseg's own outputs (a results folder kept beside the images) and the
    annotations of the Kaggle / DSB2018 layout (a ``masks`` folder beside ``images``).
    A folder that cannot be listed goes to ``on_unlistable``; one removed while the folder is
    listed (files being moved) held nothing to do and is passed over. Links to folders are
    followed (a plate assembled from links), each folder entered once, so a link to a folder
    above cannot loop."""

    def unlistable(error: OSError) -> None:
        if not isinstance(error, FileNotFoundError | NotADirectoryError):
            on_unlistable(error)

    entered: set[str] = set()
    for root, dirs, files in os.walk(folder, onerror=unlistable, followlinks=True):
        if (real := os.path.realpath(root)) in entered:
            dirs[:] = []
            continue
        entered.add(real)
        annotations = {"masks"} if "images" in dirs else set()
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in annotations)
        try:
            produced = outputs_recorded(Path(root))
        except PermissionError as error:  # listed but not entered: its files cannot be read
            on_unlistable(PermissionError(error.errno, error.strerror, root))
            dirs[:] = []
            continue
        for name in sorted(files):
            if (
                not name.startswith(".")
                and Path(name).suffix.lower() in IMAGE_SUFFIXES
                and name not in produced
            ):
                yield Path(root) / name


def recorded_stems(output: Path) -> dict[str, str]:
    """source_key -> the stem its outputs in ``output`` have, from the done-markers: a file
    keeps its outputs' name from run to run, and no other file takes it."""
    stems = {}
    for marker in sorted((output / DONE_DIR).glob("*.json")):
        record = read_marker(marker)
        if record is not None and isinstance(record.get("source"), str):
            stems[source_key(Path(record["source"]))] = marker.stem
    return stems


def named_as_before(
    jobs: Sequence[ImageJob], output: Path, recorded: Mapping[str, str] | None = None
) -> list[ImageJob]:
    """``jobs`` with the names their files' outputs already have in ``output``; a file new
    there whose name another file's results hold gets its folder's name in front
    (``plate2__A01``), then a number, so an earlier run's results are never replaced by a
    different image's. ``recorded``: `recorded_stems` of ``output`` when already read.

    Markers written before sources were recorded ``located`` (a link by its own path) name
    the link's target: such a link is done again under a new name, never given its
    target's results (two links to one file would otherwise share a name).
    """
    recorded = recorded_stems(output) if recorded is None else recorded
    taken = {stem.casefold() for stem in recorded.values()}
    named = []
    for job in jobs:
        stem = recorded.get(source_key(job.source))
        if stem is None:
            with_folder = f"{located(job.source).parent.name}__{job.stem}"
            stem = free_name((job.stem, with_folder), taken)
        taken.add(stem.casefold())
        named.append(replace(job, stem=stem))
    return named


def free_name(preferred: Sequence[str], taken: set[str]) -> str:
    """The first of ``preferred`` that no output in ``taken`` (case-folded: Windows and macOS
    folders) has, else the last numbered from 2; each `fitted` to the file system."""
    numbered = (f"{preferred[-1]}_{number}" for number in itertools.count(2))
    candidates = (fitted(name) for name in itertools.chain(preferred, numbered))
    return next(name for name in candidates if name.casefold() not in taken)


#: Longest output stem, in bytes: its longest output name (``_overlay.png``, the marker's
#: ``.json``) must stay under the 255 bytes file systems allow in one name.
MAX_STEM_BYTES = 200


def fitted(stem: str) -> str:
    """``stem``, or when too long for an output name its start and a hash of the whole, so
    that long names (deep folders joined by "__") neither fail every run nor meet."""
    raw = stem.encode("utf-8", "surrogatepass")  # Linux's undecodable bytes, Windows' halves
    if len(raw) <= MAX_STEM_BYTES:
        return stem
    start = raw[: MAX_STEM_BYTES - 9].decode("utf-8", "ignore")  # a cut character dropped
    return f"{start}~{hashlib.sha256(raw).hexdigest()[:8]}"


def outputs_recorded(folder: Path) -> set[str]:
    """Names edgeseg's outputs in ``folder`` may have, for every image its done-markers or
    its measurement tables name (any label format or overlay a run, even an interrupted
    one, wrote), in a folder edgeseg has written to."""
    if not (folder / DONE_DIR).is_dir():
        return set()
    markers = [marker.stem for marker in (folder / DONE_DIR).glob("*.json")]
    tables = [table.name[: -len(NUCLEI_SUFFIX)] for table in folder.glob(f"*{NUCLEI_SUFFIX}")]
    return {name for stem in [*markers, *tables] for name in _image_output_names(stem)}


def _image_output_names(stem: str) -> list[str]:
    """Every image edgeseg may write for ``stem``: labels in each format, the overlay."""
    return [*(f"{stem}_labels.{suffix}" for suffix in LABEL_FORMATS), f"{stem}_overlay.png"]


def output_stems(sources: Sequence[Path]) -> list[str]:
    """Name outputs after the file's stem; stems shared by several inputs are disambiguated.

    Clashing stems (compared case-insensitively, for Windows and macOS disks) become the
    path relative to the inputs' common folder joined by "__" (``plate1/A01.tif`` ->
    ``plate1__A01``); if that still clashes the suffix is added (``A01_tif``), then a number.
    """
    absolute = [located(source) for source in sources]
    try:
        root: Path | None = Path(os.path.commonpath([path.parent for path in absolute]))
    except ValueError:  # inputs on different Windows drives share no folder
        root = None

    def by_path(index: int) -> str:
        path = absolute[index].with_suffix("")
        return "__".join(path.relative_to(root).parts if root else path.parts[1:])

    def by_suffix(index: int) -> str:
        return f"{by_path(index)}_{absolute[index].suffix.lstrip('.').lower()}"

    stems = [stem_of(path) for path in absolute]
    for rename in (by_path, by_suffix):
        counts = Counter(stem.casefold() for stem in stems)
        stems = [rename(i) if counts[s.casefold()] > 1 else s for i, s in enumerate(stems)]
    used: set[str] = set()
    unique = []
    for stem in stems:
        unique.append(free_name((stem,), used))
        used.add(unique[-1].casefold())
    return unique


def stem_of(path: Path) -> str:
    """The file name without its extension, ".ome.tif" counting as one (OME-TIFF)."""
    stem = path.stem
    return stem[: -len(".ome")] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def check_output_folder(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is, or is inside, an input folder (or beside an input file).

    edgeseg never writes among the images it reads: a re-run would pick up its own outputs,
    and the original folder of a study must stay untouched.
    """
    if output.exists() and not output.is_dir():
        raise BatchError(f"output {output} exists and is not a folder")
    _check_writable(output)
    target = output.resolve()
    for item in inputs:
        folder = item.resolve() if item.is_dir() else item.resolve().parent
        if target == folder or (item.is_dir() and folder in target.parents):
            where = f"input folder {item}" if item.is_dir() else f"folder of the input {item}"
            relation = "the" if target == folder else "inside the"
            raise BatchError(
                f"output folder {output} is {relation} {where}; edgeseg never writes beside "
                "the images it reads. Choose a folder outside it, e.g. "
                f"-o {folder.parent / (folder.name + '_edgeseg')}"
            )


def _check_writable(output: Path) -> None:
    """Refuse, before any image is read, an output folder (or the folder it would be made in)
    that this user cannot write: every image would fail, one by one."""
    reason = unwritable_reason(output)
    if reason is not None:
        raise BatchError(
            f"output folder {output}: {reason}; choose another -o or ask for write access"
        )
    markers = output / DONE_DIR  # another user's earlier run may have made it theirs alone
    if markers.exists() and not markers.is_dir():
        raise BatchError(
            f"{markers} is a file: edgeseg records finished images in a folder of this name; "
            "move the file away or choose another -o"
        )
    if markers.exists() and not os.access(markers, os.W_OK | os.X_OK):
        raise BatchError(
            f"{markers}: edgeseg records finished images here, and this user cannot write "
            "it; choose another -o or ask for write access"
        )
    if (output / SUMMARY_NAME).is_dir():
        raise BatchError(
            f"{output / SUMMARY_NAME} is a folder: edgeseg writes its table of results "
            "there; move the folder away or choose another -o"
        )


#: Held in OUT while a run writes there (edgeseg.batch.output_lock).
LOCK_NAME = ".edgeseg.lock"


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold OUT for one run: two runs writing one summary.csv (and the same images'
    outputs) would each undo the other's rows. A second run is refused, not queued; the
    temporary files a killed run left are removed at once (watch too, before any image)."""
    from filelock import FileLock, Timeout

    output.mkdir(parents=True, exist_ok=True)
    # writable by all: a lock file one user left must not shut out the next (a service)
    lock = FileLock(output / LOCK_NAME, mode=0o666)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BatchError(
            f"another edgeseg run is writing into {output}; wait for it to end, or choose "
            "another -o"
        ) from None
    except (OSError, NotImplementedError) as error:  # e.g. no file locks on a network share
        raise BatchError(
            f"{output / LOCK_NAME}: cannot lock the output folder ({error}); it is safe to "
            "delete this file when no other edgeseg run writes there"
        ) from error
    try:
        for folder in (output, output / DONE_DIR):  # no other run writes here: any temporary
            remove_stale_temporaries(folder, older_than_s=0)  # is a killed run's, however new
        yield
    finally:
        lock.release()


def plan_batch(
    jobs: Sequence[ImageJob],
    settings: BatchSettings,
    manifest: Mapping[str, Any],
    recorded: Mapping[str, str] | None = None,
) -> BatchPlan:
    """Split jobs into already complete (skipped) and to do; refuse to mix in foreign results.

    Jobs first take the names their files' outputs already have (`named_as_before`, which
    ``recorded`` spares re-reading the markers), so another file's results are never
    touched. An image is complete when its done-marker says it was made with the same model
    (and its thresholds and tiling), page, channel and diameter, and every output this run
    asks for exists. Results made with other settings are never reused nor silently
    replaced. A file changed since its results were made (size or modification time:
    microscopes re-export under the same name) is done again.
    """
    jobs = named_as_before(jobs, settings.output, recorded)
    if settings.overwrite:
        return BatchPlan(jobs, [])
    fingerprint = settings.fingerprint(manifest)
    todo, skipped, clashes = [], [], []
    for job in jobs:
        marker = read_marker(settings.marker(job.stem))
        if marker is None:
            todo.append(job)
        elif not _same_settings(marker.get("settings"), fingerprint):
            clashes.append((job, marker))
        elif _changed_since(marker, job):
            todo.append(job)
        elif _complete(marker, settings.outputs(job.stem).values()):
            skipped.append(
                ImageResult(
                    job,
                    "skipped",
                    marker.get("nuclei"),
                    marker.get("mean_area"),
                    marker.get("median_diameter_px"),
                )
            )
        else:
            todo.append(job)
    if clashes:
        job, marker = clashes[0]
        raise BatchError(
            f"{settings.output} already holds results for {len(clashes)} of these images made "
            f"with other settings, e.g. {job.stem}: "
            f"{_difference(marker, fingerprint)}. Use --overwrite to replace them, or "
            "choose another output folder."
        )
    return BatchPlan(todo, skipped)


def _complete(marker: Mapping[str, Any], outputs: Iterable[Path]) -> bool:
    """Whether every output asked for exists and was made with the marker's results: an
    overlay left from before the file changed is not this version's."""
    listed = marker.get("outputs")
    return all(
        path.is_file() and (not isinstance(listed, list) or path.name in listed) for path in outputs
    )


def read_marker(path: Path) -> dict[str, Any] | None:
    """A done-marker's record, or None when it is absent or unreadable."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or not ours: the image is simply done again
    return marker if isinstance(marker, dict) else None


def source_stamp(path: Path) -> dict[str, int] | None:
    """Size and modification time (ns) of the file ``path`` names, None if it is unreadable."""
    try:
        status = path.stat()
    except OSError:
        return None
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _changed_since(marker: Mapping[str, Any], job: ImageJob) -> bool:
    """Whether ``job``'s file changed after the marker's results were made from it. Markers
    written before stamps were recorded, and files since moved away, count as unchanged."""
    before, now = marker.get("source_stamp"), source_stamp(job.source)
    return before is not None and now is not None and before != now


def _same_settings(recorded: Any, fingerprint: Mapping[str, Any]) -> bool:
    if not isinstance(recorded, dict):
        return False
    own_tile = (fingerprint.get("model_tile") or {}).get("size")
    if recorded.get("tile") == own_tile:  # older markers recorded --tile at the model's size
        recorded = {key: value for key, value in recorded.items() if key != "tile"}
    added = MANIFEST_SETTINGS.values()
    older = {key: value for key, value in fingerprint.items() if key not in added}
    return recorded == fingerprint or (
        not any(key in recorded for key in added) and recorded == older
    )


def _difference(marker: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> str:
    before = marker.get("settings") or {}
    keys = [*fingerprint, *(key for key in before if key not in fingerprint)]
    changed = [key for key in keys if before.get(key) != fingerprint.get(key)]
    return "made with " + ", ".join(
        f"{key} {before.get(key)!r} (now {fingerprint.get(key)!r})" for key in changed
    )


@dataclass
class _Work:
    """One image travelling through the pipeline."""

    job: ImageJob
    image: np.ndarray | None = None
    #: The file's source_stamp taken before it was read: the version the results are of.
    stamp: dict[str, int] | None = None
    #: Post-processes the network's output into labels (Segmenter.infer), on the writer.
    postprocess: Callable[[], np.ndarray] | None = None
    error: str = ""
    seconds: float = 0.0


_END = object()


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C again while an interrupted batch was finishing its images in flight: it stopped
    at once, with summary.csv written and those images left undone (nothing half-written),
    but their inference may still be running in native code."""


class _Stage(threading.Thread):
    """A pipeline thread that keeps its exception for the main thread to re-raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            self._work()
        except BaseException as error:  # re-raised by run_batch in the main thread
            self.error = error
        finally:
            self.finished.set()

    def running(self) -> bool:
        return not self.finished.is_set()

    def wait(self) -> None:
        """Block until the stage has finished. Not ``join()``: before Python 3.13 a Ctrl-C
        inside ``join()`` can leave the thread marked finished while it still runs."""
        if self.ident is None:  # never started: Ctrl-C came while the pipeline started
            return
        while not self.finished.wait(0.2):
            pass


def _put(channel: queue.Queue, item: object, alive: Callable[[], bool]) -> bool:
    """Block on a bounded queue, giving up when the consumer is gone (no deadlock on errors)."""
    while alive():
        try:
            channel.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _get(channel: queue.Queue, alive: Callable[[], bool]) -> object:
    """Take from a queue, or _END once ``alive()`` is false (no deadlock on errors)."""
    while alive():
        try:
            return channel.get(timeout=0.2)
        except queue.Empty:
            continue
    return _END


def _describe(error: BaseException) -> str:
    """One image's failure as summary.csv and the log show it, in the CLI's own words."""
    if isinstance(error, ImageReadError):
        return error.reason
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"  # not "[Errno 28] ...: '...'"
    return str(error) or type(error).__name__


def run_batch(
    segmenter: Any,
    plan: BatchPlan,
    settings: BatchSettings,
    on_result: Callable[[ImageResult], None] | None = None,
    cancel: threading.Event | None = None,
    inference_workers: int = 1,
) -> list[ImageResult]:
    """Segment ``plan.todo``; return every result (skipped first) and write summary.csv.

    ``inference_workers`` threads run the network on different images at once, for a
    backend that allows it (edgeseg.backends.PARALLEL_BACKENDS); results then come in the
    order images finish (summary.csv is always in input order).

    ``on_result`` is called from the writer thread once per finished image (progress bars).
    Setting ``cancel`` stops early and cleanly (edgeseg watch on SIGTERM): the image in
    inference and those waiting to be written are finished, the rest are left out of the
    results, undone, for the next run.
    summary.csv is rewritten atomically every few seconds and at the end, also when the run
    is interrupted; rows of earlier runs for other images of OUT stay in it.
    """
    settings.output.mkdir(parents=True, exist_ok=True)
    for folder in (settings.output, settings.output / DONE_DIR):  # a killed run's leftovers
        remove_stale_temporaries(folder)
    fingerprint = settings.fingerprint(segmenter.manifest)
    results = list(plan.skipped)
    earlier = earlier_rows(settings, [*plan.todo, *(result.job for result in plan.skipped)])
    stop = threading.Event()
    abandoned = threading.Event()  # Ctrl-C twice: images still in flight are not written
    decoded: queue.Queue = queue.Queue(maxsize=PREFETCH)
    segmented: queue.Queue = queue.Queue(maxsize=PREFETCH)

    def running() -> bool:
        return not stop.is_set()

    def read_all() -> None:
        try:
            for job in plan.todo:
                if cancel is not None and cancel.is_set():
                    return
                if not _put(decoded, _read(job, settings), running):
                    return
        finally:
            _put(decoded, _END, running)

    def write_all() -> None:
        last_summary = time.monotonic()
        while (work := _get(segmented, lambda: not abandoned.is_set())) is not _END:
            if abandoned.is_set():
                return
            result = _finish(work, settings, fingerprint)
            results.append(result)
            if on_result is not None:
                on_result(result)
            if time.monotonic() - last_summary > SUMMARY_EVERY_S:
                write_summary(settings, results, earlier)
                last_summary = time.monotonic()

    def infer_all() -> None:
        while (work := _get(decoded, running)) is not _END:
            if cancel is not None and cancel.is_set():
                continue  # decoded but not segmented: left for the next run
            if work.image is not None:
                started = time.perf_counter()
                try:
                    work.postprocess = segmenter.infer(
                        work.image, settings.diameter, settings.max_megapixels
                    )
                except Exception as error:  # one image the model cannot take fails alone
                    work.error, work.image = _describe(error), None
                work.seconds += time.perf_counter() - started
            if not _put(segmented, work, writer.running):
                stop.set()  # the writer is gone: wind every stage down
                return
        _put(decoded, _END, running)  # the end of the input, for the other workers too

    reader, writer = _Stage(read_all, "edgeseg-reader"), _Stage(write_all, "edgeseg-writer")
    workers = [_Stage(infer_all, f"edgeseg-infer{i}") for i in range(max(1, inference_workers))]
    try:
        for stage in (reader, writer, *workers):
            stage.start()
        for worker in workers:
            worker.wait()
    finally:
        try:
            stop.set()  # on Ctrl-C: read no more, but write what is already segmented
            for worker in workers:
                worker.wait()  # each finishes the image it holds
            _put(segmented, _END, writer.running)
            writer.wait()
            reader.wait()
        except KeyboardInterrupt:  # pressed again: stop now, keeping the table of what is done
            abandoned.set()
            with _interrupts_ignored():  # a held-down Ctrl-C must not cut the table short
                write_summary(settings, results, earlier)
            raise BatchInterrupted from None
        write_summary(settings, results, earlier)
    for stage in (reader, writer, *workers):
        if stage.error is not None:
            raise stage.error
    return results


@contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ignore Ctrl-C for a moment (only the main thread may change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _read(job: ImageJob, settings: BatchSettings) -> _Work:
    started = time.perf_counter()
    stamp = source_stamp(job.source)
    try:
        image = read_plane(job.source, settings.page, settings.channel, settings.max_megapixels)
        work = _Work(job, image=image, stamp=stamp)
    except Exception as error:  # any undecodable file fails alone, named in the summary
        work = _Work(job, error=_describe(error))
    work.seconds = time.perf_counter() - started
    return work


def _finish(work: _Work, settings: BatchSettings, fingerprint: Mapping[str, Any]) -> ImageResult:
    """Post-process, measure and write one image; any failure is that image's alone."""
    if work.image is None or work.postprocess is None:
        return ImageResult(work.job, "failed", error=work.error, seconds=work.seconds)
    started = time.perf_counter()
    try:
        labels = work.postprocess()
        counts = _write_outputs(work, labels, settings, fingerprint)
    except Exception as error:  # e.g. disk full, or labels past uint16: report it, keep going
        seconds = work.seconds + time.perf_counter() - started
        return ImageResult(work.job, "failed", error=_describe(error), seconds=seconds)
    seconds = work.seconds + time.perf_counter() - started
    return ImageResult(work.job, "ok", *counts, seconds=seconds)


def _write_outputs(
    work: _Work,
    labels: np.ndarray,
    settings: BatchSettings,
    fingerprint: Mapping[str, Any],
) -> tuple[int, float | None, float | None]:
    """Write CSV, overlay and labels, then the done-marker last.

    All three are written to temporary files first and renamed onto their names only once
    every one is complete, so a failure while writing (a full disk, a folder squatting on a
    name, too many nuclei) leaves this image's earlier results, marker included, as they
    were. A rename that fails (a CSV held open on Windows; the CSV goes first) leaves the
    image without its marker, so the next run does it again.
    Returns the number of nuclei, their mean area and their median diameter (px).
    """
    job, image = work.job, work.image
    check_label_range(labels)
    rows = measure_nuclei(labels, to_gray(image))
    paths = settings.outputs(job.stem)
    marker = settings.marker(job.stem)
    earlier = read_marker(marker)
    outdated = earlier is not None and earlier.get("source_stamp") not in (None, work.stamp)
    stale = settings.stale_outputs(job.stem, outdated)
    for path in [*paths.values(), *stale]:  # a rename onto (or removing) a folder would
        if path.is_dir():  # fail after the others were replaced
            raise IsADirectoryError(errno.EISDIR, "a folder has this output's name", str(path))
    overlay = draw_overlay(image, labels) if "overlay" in paths else None
    with ExitStack() as renames:  # on leaving, each temporary replaces its output
        # entered last, left first: the CSV, the file most often held open, is renamed first
        order = sorted(paths, key=lambda key: key == "nuclei")
        temporary = {key: renames.enter_context(atomic_path(paths[key])) for key in order}
        write_nuclei_csv(temporary["nuclei"], rows)
        if overlay is not None:
            write_overlay(temporary["overlay"], overlay)
        write_labels(temporary["labels"], labels)
        marker.unlink(missing_ok=True)  # until the new marker exists, nothing here is trusted
    for path in stale:
        path.unlink(missing_ok=True)
    areas = [row["area"] for row in rows]  # measured once, for the table and the marker
    mean_area = float(np.mean(areas)) if areas else None
    diameter = diameter_of_areas(areas)
    record = {
        "source": str(located(job.source)),
        "source_stamp": work.stamp,
        "settings": dict(fingerprint),
        "outputs": sorted(path.name for path in paths.values()),
        "nuclei": len(rows),
        "mean_area": mean_area,
        "median_diameter_px": diameter,
    }
    try:
        with atomic_path(marker) as temporary:
            temporary.write_text(json.dumps(record, indent=1) + "\n")
    except OSError:  # outputs without a marker would be anyone's: another file could take
        for path in [*paths.values(), *settings.stale_outputs(job.stem, outdated=True)]:
            path.unlink(missing_ok=True)  # their name and sit beside its results
        raise
    return len(rows), mean_area, diameter


#: File names are bytes on Linux: one that is not UTF-8 is written back as those bytes.
SUMMARY_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}


def earlier_rows(settings: BatchSettings, jobs: Iterable[ImageJob]) -> list[dict[str, str]]:
    """Rows of OUT's summary.csv for images other than ``jobs``' (by name and by file) whose
    results are still there (done-marker present), or which failed and whose file is still
    there: a run on a few images must not hide the others."""
    jobs = list(jobs)
    stems = {job.stem for job in jobs}
    files = {source_key(job.source) for job in jobs}
    try:
        with open(  # a table saved back from Excel starts with a byte-order mark
            settings.output / SUMMARY_NAME,
            newline="",
            **{**SUMMARY_ENCODING, "encoding": "utf-8-sig"},
        ) as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError):  # no summary yet, or not ours: nothing to keep
        return []

    def still_there(row: dict[str, str]) -> bool:
        stem, file = row.get("output_stem") or "", Path(row.get("file") or "")
        if not stem or stem in stems or source_key(file) in files:
            return False
        return settings.marker(stem).is_file() or (row.get("status") == "failed" and file.is_file())

    return [row for row in rows if still_there(row)]


def write_summary(
    settings: BatchSettings,
    results: Iterable[ImageResult],
    earlier: Sequence[Mapping[str, str]] = (),
) -> None:
    """OUT/summary.csv: one row per image in input order, then the ``earlier`` rows as they
    were, rewritten atomically so it is never half a table. This run's rows were made with
    ``settings``, so each carries its diameter."""
    diameter = diameter_text(settings.diameter)
    path = settings.output / SUMMARY_NAME
    with (
        atomic_path(path) as temporary,
        open(temporary, "w", newline="", **SUMMARY_ENCODING) as handle,
    ):
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for result in sorted(results, key=lambda r: r.job.index):
            writer.writerow(
                [
                    os.path.abspath(result.job.source),  # read back from any folder
                    result.job.stem,
                    "" if result.nuclei is None else result.nuclei,
                    "" if result.mean_area is None else round(result.mean_area, 2),
                    "" if result.median_diameter is None else round(result.median_diameter, 2),
                    result.status,
                    result.error,
                    round(result.seconds, 3),
                    diameter,
                ]
            )
        for row in earlier:
            writer.writerow([row.get(column, "") for column in SUMMARY_COLUMNS])


def summary_lines(results: Sequence[ImageResult], seconds: float, output: Path) -> list[str]:
    """The one-screen report printed at the end of a run."""
    counts = Counter(result.status for result in results)
    nuclei = [result.nuclei for result in results if result.nuclei is not None]
    rate = (counts["ok"] + counts["failed"]) / seconds if seconds > 0 else 0.0
    lines = [
        f"images:   {len(results)}: {counts['ok']} segmented, {counts['skipped']} skipped "
        f"(already done), {counts['failed']} failed",
        f"nuclei:   {sum(nuclei)} in {len(nuclei)} images",
        f"time:     {seconds:.1f} s ({rate:.2f} images/s)",
        f"outputs:  {output.resolve()}  (per image: <stem>_labels, <stem>_nuclei.csv; "
        f"every image: {SUMMARY_NAME})",
    ]
    failed = [result for result in results if result.status == "failed"]
    if failed:
        lines.append(f"failed:   {len(failed)} images, listed with the reason in {SUMMARY_NAME}:")
        lines += [f"  {result.job.source}: {result.error}" for result in failed[:5]]
        if len(failed) > 5:
            lines.append(f"  ... and {len(failed) - 5} more")
    return lines
