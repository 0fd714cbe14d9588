"""The watch-folder service behind `edgeseg watch`: images are segmented as they arrive.

Built on edgeseg.batch, so outputs, done-markers, resume and failure isolation are exactly
those of `edgeseg segment`. What watching adds:

* a file is taken only once complete: its size and mtime unchanged for ``settle`` seconds
  (a copy from the microscope PC may stall) and it decodes. One that stays undecodable is
  reported failed after ``patience`` more seconds; a failed file is retried when it changes;
* an output name never changes once given, so names are assigned as files arrive (the
  file's stem, or its path below the folder joined by "__" when that stem is taken) and are
  recovered from the done-markers after a restart;
* summary.csv lists every image whose results in OUT were made with these settings, also
  images since moved out of the folder: a restart must not drop rows;
* setting ``stop`` ends it cleanly: the image in progress is finished, nothing is
  half-written, and the next start picks up the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.batch import (
    BatchError,
    BatchPlan,
    BatchSettings,
    ImageJob,
    ImageResult,
    check_output_folder,
    earlier_rows,
    free_name,
    plan_batch,
    recorded_stems,
    run_batch,
    source_key,
    source_stamp,
    stem_of,
    walk_images,
    write_summary,
)
from edgeseg.imageio import read_plane

PATIENCE_S = 60.0  # how long a complete-looking file may stay undecodable before it fails

Signature = dict[str, int]  # batch.source_stamp: size and mtime_ns


@dataclass
class _Tracked:
    """A file seen in the folder and not done yet."""

    job: ImageJob
    signature: Signature
    since: float  # time.monotonic() when this signature was first seen
    failed: bool = False  # failed with this signature: retried only once the file changes
    #: when a settled file that did not decode is decoded again: once per --settle, not on
    #: every poll (a stalled copy of a large TIFF), yet not never (a writer may complete it
    #: without changing its size or mtime)
    retry_at: float = 0.0


class FolderWatcher:
    """What one watched folder holds: images done, images settling, images that failed.

    Raises BatchError, like `edgeseg segment`, when OUT is inside the folder or holds
    results for these images made with another model, page, channel or diameter.
    """

    def __init__(
        self,
        folder: Path,
        segmenter: Any,
        settings: BatchSettings,
        settle: float,
        patience: float = PATIENCE_S,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        check_output_folder(settings.output, [folder])
        self.warn = warn
        self.unlistable: set[str] = set()  # folders the latest listing could not read
        self._warned: set[str] = set()  # each said once
        self.folder = folder
        self.segmenter = segmenter
        self.settings = settings
        self.settle = settle
        self.patience = patience
        # Files are keyed by batch.source_key: a link is a file of its own, as in segment.
        self._jobs: dict[str, ImageJob] = {}  # source -> its job, stem fixed for good
        self._stems: dict[str, str] = {}  # source -> stem, from the done-markers
        self._taken: set[str] = set()  # casefolded stems in use
        self._results: dict[int, ImageResult] = {}  # job index -> latest result
        #: sources with complete results -> the file's stamp then (None: it was absent)
        self._done: dict[str, Signature | None] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._resume()

    @property
    def results(self) -> list[ImageResult]:
        return [self._results[index] for index in sorted(self._results)]

    def waiting(self) -> bool:
        """Whether some file is still settling (being copied, or not yet decodable)."""
        return any(not tracked.failed for tracked in self._tracked.values())

    def _resume(self) -> None:
        """Take names and finished results from OUT's done-markers; refuse foreign results."""
        self._stems = recorded_stems(self.settings.output)
        self._taken = {stem.casefold() for stem in self._stems.values()}
        present = [self._job(path) for path in walk_images(self.folder, self._skip_unlistable)]
        here = {source_key(job.source) for job in present}
        for source in sorted(self._stems.keys() - here):  # images no longer here
            try:
                plan = self._plan([self._job(Path(source))])
            except BatchError:
                continue  # made with other settings and not ours to judge: left alone
            self._record(plan.skipped)
        plan = self._plan(present)
        self._record(plan.skipped)
        now = time.monotonic()
        for job in plan.todo:
            signature = source_stamp(job.source)
            if signature is not None:
                self._tracked[source_key(job.source)] = _Tracked(job, signature, now)
        jobs = [result.job for result in self.results]
        write_summary(self.settings, self.results, earlier_rows(self.settings, jobs))

    def _plan(self, jobs: list[ImageJob]) -> BatchPlan:
        """plan_batch with the names already read: markers are read once, not per image."""
        return plan_batch(jobs, self.settings, self.segmenter.manifest, self._stems)

    def _skip_unlistable(self, error: OSError) -> None:
        """Watching goes on past a folder it cannot list (another user's, being set up),
        saying so once; its images are taken when it becomes readable."""
        self.unlistable.add(error.filename)
        if error.filename not in self._warned:
            self._warned.add(error.filename)
            self.warn(f"cannot list {error.filename} ({error.strerror}); its images wait")

    def _job(self, path: Path) -> ImageJob:
        key = source_key(path)
        if key not in self._jobs:
            stem = self._stems.get(key) or self._free_stem(path)
            self._taken.add(stem.casefold())
            self._jobs[key] = ImageJob(len(self._jobs), path, stem)
        return self._jobs[key]

    def _free_stem(self, path: Path) -> str:
        """The file's stem, else its path below the folder ("plate2__A01"), else numbered."""
        by_path = "__".join(path.relative_to(self.folder).with_suffix("").parts)
        by_suffix = f"{by_path}_{path.suffix.lstrip('.').lower()}"
        return free_name((stem_of(path), by_path, by_suffix), self._taken)

    def _record(self, results: list[ImageResult]) -> None:
        for result in results:
            self._results[result.job.index] = result
            key = source_key(result.job.source)
            if result.status == "failed":
                if key in self._tracked:
                    self._tracked[key].failed = True
            else:
                tracked = self._tracked.pop(key, None)
                self._done[key] = tracked.signature if tracked else source_stamp(result.job.source)

    def poll(self) -> list[ImageJob]:
        """List the folder once; return the jobs whose files are complete now."""
        now = time.monotonic()
        ready, present = [], set()
        self.unlistable = set()  # a folder readable again is no longer left out
        for path in walk_images(self.folder, self._skip_unlistable):
            key = source_key(path)
            signature = source_stamp(path)
            if signature is None:
                continue  # removed or renamed since the folder was listed
            if key in self._done:
                if self._done[key] == signature:
                    continue
                del self._done[key]  # replaced under its name since it was done: do it again
            present.add(key)
            tracked = self._tracked.get(key)
            if tracked is None:
                self._tracked[key] = _Tracked(self._job(path), signature, now)
            elif signature != tracked.signature:
                tracked.signature, tracked.since = signature, now
                tracked.failed, tracked.retry_at = False, 0.0
            elif not tracked.failed and self._complete(tracked, now):
                ready.append(tracked.job)
        for key in self._tracked.keys() - present:
            del self._tracked[key]  # removed before it was done
        return ready

    def _complete(self, tracked: _Tracked, now: float) -> bool:
        """Settled and decodable, or settled so long that it is time to report it failed."""
        unchanged_for = now - tracked.since
        if unchanged_for < self.settle:
            return False
        if unchanged_for >= self.settle + self.patience:
            return True
        if now < tracked.retry_at:
            return False
        settings = self.settings
        try:
            read_plane(tracked.job.source, settings.page, settings.channel, settings.max_megapixels)
        except Exception:  # truncated, still being written, or bad: not taken yet
            tracked.retry_at = now + self.settle
            return False
        return True

    def process(
        self,
        jobs: list[ImageJob],
        cancel: threading.Event | None = None,
        on_result: Callable[[ImageResult], None] | None = None,
    ) -> None:
        """Segment ``jobs`` with the batch runner; summary.csv keeps every earlier row."""
        indices = {job.index for job in jobs}
        earlier = [result for index, result in self._results.items() if index not in indices]
        plan = BatchPlan(list(jobs), earlier)  # earlier rows ride along to stay in summary.csv
        results = run_batch(self.segmenter, plan, self.settings, on_result, cancel)
        self._record(results[len(earlier) :])


def watch_folder(
    watcher: FolderWatcher,
    *,
    interval: float,
    once: bool = False,
    stop: threading.Event | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
) -> list[ImageResult]:
    """Segment images as they arrive until ``stop`` is set (or, with ``once``, until every
    file in the folder is done or failed); return the results, oldest first."""
    stop = stop or threading.Event()
    while not stop.is_set():
        ready = watcher.poll()
        if ready:
            watcher.process(ready, stop, on_result)
        elif once and not watcher.waiting():
            break
        stop.wait(interval)
    return watcher.results
