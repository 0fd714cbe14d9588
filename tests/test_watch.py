"""`edgeseg watch` with a tiny real ONNX model: arrivals, partial files, stop and restart.

Every wait is bounded: the watcher runs in a thread or subprocess that the test stops.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import REPO_ROOT, synthetic_nuclei
from tiny_models import threshold_model

import edgeseg.watch
from edgeseg.batch import BatchSettings, read_marker
from edgeseg.cli import main
from edgeseg.imageio import read_plane
from edgeseg.segmenter import load_segmenter
from edgeseg.watch import FolderWatcher, watch_folder

DEADLINE_S = 60.0  # generous: the CI machine may be busy; a passing run takes ~1 s per test


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return threshold_model(tmp_path_factory.mktemp("model") / "threshold.onnx")


class Recording:
    """The real segmenter, remembering every image it was given."""

    def __init__(self, model: Path) -> None:
        self.inner = load_segmenter(model, threads=1)
        self.manifest = self.inner.manifest
        self.seen: list[np.ndarray] = []

    def segment(
        self, image: np.ndarray, diameter: float | None = None, max_megapixels: float = 100.0
    ) -> np.ndarray:
        self.seen.append(image.copy())
        return self.inner.segment(image, diameter)

    def infer(
        self, image: np.ndarray, diameter: float | None = None, max_megapixels: float = 100.0
    ):
        labels = self.segment(image, diameter)
        return lambda: labels


def _gray(seed: int) -> np.ndarray:
    return synthetic_nuclei((96, 96), count=8, seed=seed)[0]


def _png(seed: int) -> bytes:
    return cv2.imencode(".png", _gray(seed))[1].tobytes()


def _write(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(seed))


def _summary(output: Path) -> dict[str, dict[str, str]]:
    with open(output / "summary.csv", newline="") as handle:
        return {row["output_stem"]: row for row in csv.DictReader(handle)}


def _markers(output: Path) -> set[str]:
    return {path.stem for path in (output / ".edgeseg-done").glob("*.json")}


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextmanager
def _watching(watcher: FolderWatcher) -> Iterator[None]:
    """Run the watch loop in a thread; stop it (bounded) and re-raise its error at the end."""
    stop, errors = threading.Event(), []

    def loop() -> None:
        try:
            watch_folder(watcher, interval=0.05, stop=stop)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive(), "the watch loop did not stop"
    if errors:
        raise errors[0]


def test_images_arriving_while_watching_are_done_once(tmp_path: Path, model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    segmenter = Recording(model)
    watcher = FolderWatcher(folder, segmenter, BatchSettings(output=out), settle=0.2)
    arrivals = ["A.png", "B.png", "plate2/A.png", "C.png"]

    def arrive() -> None:
        for seed, name in enumerate(arrivals):
            _write(folder / name, seed)
            time.sleep(0.1)

    with _watching(watcher):
        writer = threading.Thread(target=arrive)
        writer.start()
        writer.join()
        _wait_for(lambda: len(_markers(out)) == 4, "4 images")
        time.sleep(0.3)  # a few more polls: nothing may be done again
    rows = _summary(out)
    assert sorted(rows) == ["A", "B", "C", "plate2__A"]
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert len(segmenter.seen) == 4
    for stem in rows:
        assert tifffile.imread(out / f"{stem}_labels.tif").max() > 0
    assert not list(out.glob(".*.part*"))


def test_a_replaced_image_is_done_again_and_links_are_files_of_their_own(
    tmp_path: Path, model: Path
) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    _write(tmp_path / "store" / "key.png", 0)
    folder.mkdir()
    for name in ("A01.png", "A02.png"):  # git-annex style: two links to one content file
        (folder / name).symlink_to(tmp_path / "store" / "key.png")
    tifffile.imwrite(folder / "scan.ome.tif", _gray(1))
    segmenter = Recording(model)
    watcher = FolderWatcher(folder, segmenter, BatchSettings(output=out), settle=0.1)
    with _watching(watcher):
        _wait_for(lambda: _markers(out) == {"A01", "A02", "scan"}, "3 images")
        first = json.loads((out / ".edgeseg-done" / "scan.json").read_text())
        tifffile.imwrite(folder / "scan.ome.tif", _gray(2))  # re-exported under its name
        _wait_for(  # the marker is absent for a moment while the image is done again
            lambda: read_marker(out / ".edgeseg-done" / "scan.json") not in (None, first),
            "the replaced image done again",
        )
    assert len(segmenter.seen) == 4
    assert np.array_equal(segmenter.seen[-1], _gray(2))


def test_a_name_reused_after_its_image_was_filed_away_is_done(tmp_path: Path, model: Path):
    folder, out = tmp_path / "in", tmp_path / "out"
    _write(folder / "Image_0001.png", 0)
    settings = BatchSettings(output=out)
    first = FolderWatcher(folder, Recording(model), settings, settle=0.0)
    first.process(first.poll() or first.poll())
    (folder / "Image_0001.png").unlink()  # archived; the watcher restarts overnight
    watcher = FolderWatcher(folder, Recording(model), settings, settle=0.0)
    _write(folder / "Image_0001.png", 1)  # the next day's image under the same name
    assert [job.stem for job in watcher.poll() or watcher.poll()] == ["Image_0001"]


def test_partial_files_are_taken_only_when_complete(tmp_path: Path, model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    segmenter = Recording(model)
    watcher = FolderWatcher(folder, segmenter, BatchSettings(output=out), settle=0.5)
    truncated, data = folder / "truncated.png", _png(1)
    truncated.write_bytes(data[: len(data) // 2])  # a copy that stalled half-way
    slow = folder / "slow.tif"
    tifffile.imwrite(tmp_path / "whole.tif", _gray(2).astype(np.uint16) * 200)
    whole = (tmp_path / "whole.tif").read_bytes()
    with _watching(watcher):
        with open(slow, "wb") as handle:  # written in pieces, each sooner than --settle
            for start in range(0, len(whole), len(whole) // 5 + 1):
                handle.write(whole[start : start + len(whole) // 5 + 1])
                handle.flush()
                time.sleep(0.05)
        time.sleep(1.0)  # the stalled copy has long been unchanged, but does not decode
        assert "truncated" not in _markers(out)
        with open(truncated, "ab") as handle:
            handle.write(data[len(data) // 2 :])
        _wait_for(lambda: _markers(out) == {"slow", "truncated"}, "both files")
    rows = _summary(out)
    assert [rows[stem]["status"] for stem in ("slow", "truncated")] == ["ok", "ok"]
    assert len(segmenter.seen) == 2  # each taken once, and only whole:
    complete = [_gray(2).astype(np.uint16) * 200, _gray(1)]
    for image in segmenter.seen:
        assert any(np.array_equal(image, expected) for expected in complete)


def test_a_settled_undecodable_file_is_decoded_once_per_settle_time(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polling every 2 s must not decode a huge stalled copy every 2 s."""
    folder = tmp_path / "in"
    folder.mkdir()
    data = _png(1)
    stalled = folder / "stalled.png"
    stalled.write_bytes(data[: len(data) // 2])
    decoded: list[Path] = []

    def counting(path, *args):
        decoded.append(path)
        return read_plane(path, *args)

    monkeypatch.setattr(edgeseg.watch, "read_plane", counting)
    watcher = FolderWatcher(folder, Recording(model), BatchSettings(tmp_path / "out"), settle=0.3)
    time.sleep(0.3)
    assert [watcher.poll() for _ in range(4)] == [[]] * 4
    assert decoded == [stalled]  # the same bytes, not decoded again at once,
    time.sleep(0.3)
    assert watcher.poll() == []
    assert decoded == [stalled] * 2  # but again after --settle: it may have been completed
    stalled.write_bytes(data)  # the copy went on: a new version, decoded and taken
    assert watcher.poll() == []
    time.sleep(0.3)
    assert [job.source for job in watcher.poll()] == [stalled]
    assert decoded == [stalled] * 3


def test_undecodable_file_fails_then_is_retried_when_replaced(tmp_path: Path, model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    (folder / "bad.png").parent.mkdir()
    (folder / "bad.png").write_bytes(b"not a png at all")
    watcher = FolderWatcher(folder, Recording(model), BatchSettings(out), settle=0.1, patience=0.3)
    with _watching(watcher):
        _wait_for(lambda: (out / "summary.csv").is_file() and "bad" in _summary(out), "a row")
        assert _summary(out)["bad"]["status"] == "failed"
        assert "corrupt" in _summary(out)["bad"]["error"]
        time.sleep(0.3)
        assert len(watcher.results) == 1  # failed once, not again and again
        _write(folder / "bad.png", 3)
        _wait_for(lambda: _markers(out) == {"bad"}, "the replaced file")
    assert [row["status"] for row in _summary(out).values()] == ["ok"]


SLOW_WATCH = """
import sys, time
import edgeseg.segmenter as s
infer = s.Segmenter.infer
def slow(self, *args):
    time.sleep(0.3)
    return infer(self, *args)
s.Segmenter.infer = slow
from edgeseg.cli import main
main(sys.argv[1:])
"""


def test_stop_and_restart_lose_nothing_and_do_nothing_twice(tmp_path: Path, model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    stems = [f"i{index}" for index in range(6)]
    for index, stem in enumerate(stems):
        _write(folder / f"{stem}.png", index)
    args = ["watch", folder, "-o", out, "--model", model, "--interval", "0.05", "--settle", "0"]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WATCH, *map(str, args)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: bool(_markers(out)) or process.poll() is not None, "a first image")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "stopped" in stderr and "images:" in stdout
    done_before = _markers(out)
    assert 1 <= len(done_before) < 6
    rows = _summary(out)
    assert {stem for stem, row in rows.items() if row["status"] == "ok"} == done_before
    assert all((out / f"{stem}_labels.tif").is_file() for stem in done_before)
    assert not list(out.glob(".*.part*"))

    result = CliRunner().invoke(main, [*map(str, args), "--once"])
    assert result.exit_code == 0, result.output
    rows = _summary(out)
    assert {stem for stem, row in rows.items() if row["status"] == "skipped"} == done_before
    assert {stem for stem, row in rows.items() if row["status"] == "ok"} == (
        set(stems) - done_before
    )
    assert _markers(out) == set(stems)


def test_names_survive_restarts_and_moved_images_stay_in_summary(
    tmp_path: Path, model: Path
) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    _write(folder / "a" / "X.png", 0)
    args = ["watch", str(folder), "-o", str(out), "--model", str(model), "--settle", "0"]
    args += ["--interval", "0.05"]
    assert CliRunner().invoke(main, [*args, "--once"]).exit_code == 0
    (folder / "a" / "X.png").unlink()  # filed away by the lab after it was done
    _write(folder / "b" / "X.png", 1)
    _write(folder / "Y.png", 2)
    result = CliRunner().invoke(main, [*args, "--once"])
    assert result.exit_code == 0, result.output
    rows = _summary(out)
    assert {stem: row["status"] for stem, row in rows.items()} == {
        "X": "skipped",
        "b__X": "ok",
        "Y": "ok",
    }
    assert rows["X"]["file"].endswith("X.png") and rows["X"]["nuclei"]


def test_bad_output_folders_and_foreign_results_refused(tmp_path: Path, model: Path) -> None:
    folder = tmp_path / "in"
    _write(folder / "a.png", 0)
    inside = CliRunner().invoke(
        main, ["watch", str(folder), "-o", str(folder / "out"), "--model", str(model), "--once"]
    )
    assert inside.exit_code == 1 and "never writes beside" in inside.output
    args = ["watch", str(folder), "-o", str(tmp_path / "out"), "--settle", "0", "--once"]
    args += ["--interval", "0.05"]
    assert CliRunner().invoke(main, [*args, "--model", str(model)]).exit_code == 0
    other = threshold_model(tmp_path / "other" / "steeper.onnx", steepness=30.0)
    result = CliRunner().invoke(main, [*args, "--model", str(other)])
    assert result.exit_code == 1
    assert "other settings" in result.output and "segment --overwrite" in result.output


def test_once_on_an_empty_folder_and_help_teaches(tmp_path: Path, model: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    empty = CliRunner().invoke(
        main, ["watch", str(folder), "-o", str(tmp_path / "o1"), "--model", str(model), "--once"]
    )
    assert empty.exit_code == 0 and "images:   0" in empty.output
    help_text = CliRunner().invoke(main, ["watch", "--help"]).output
    for text in ("--settle", "--once", "SIGTERM", "edgeseg watch", "--overlay", "--model"):
        assert text in help_text
    assert "--diameter PX" in help_text and "Typical nucleus diameter" in help_text


def test_diameter_reaches_the_watcher_and_its_records(tmp_path: Path) -> None:
    sized = threshold_model(tmp_path / "model" / "sized.onnx", nucleus_diameter=18.0)
    folder, out = tmp_path / "in", tmp_path / "out"
    image = cv2.resize(_gray(0), (192, 192), interpolation=cv2.INTER_LINEAR)
    folder.mkdir()
    cv2.imwrite(str(folder / "A.png"), image)
    args = ["watch", str(folder), "-o", str(out), "--settle", "0", "--once", "--interval", "0.05"]
    result = CliRunner().invoke(main, [*args, "--model", str(sized), "--diameter", "36"])
    assert result.exit_code == 0, result.output
    assert "rescaled x0.5" in result.output
    expected = load_segmenter(sized, threads=1).segment(image, diameter=36)
    np.testing.assert_array_equal(tifffile.imread(out / "A_labels.tif"), expected)
    assert _summary(out)["A"]["diameter_px"] == "36"
    again = CliRunner().invoke(main, [*args, "--model", str(sized)])  # without --diameter
    assert again.exit_code == 1 and "diameter 36.0" in again.output


def test_tta_reaches_the_watcher_and_its_records(tmp_path: Path, model: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    cv2.imwrite(str(folder / "A.png"), _gray(0))
    args = ["watch", str(folder), "-o", str(out), "--settle", "0", "--once", "--interval", "0.05"]
    result = CliRunner().invoke(main, [*args, "--model", str(model), "--tta"])
    assert result.exit_code == 0, result.output
    assert "averaged with its 3 mirror images (--tta)" in result.output
    marker = json.loads((out / ".edgeseg-done" / "A.json").read_text())
    assert marker["settings"]["test_time_flips"] is True
    again = CliRunner().invoke(main, [*args, "--model", str(model)])  # without --tta
    assert again.exit_code == 1 and "test_time_flips" in again.output


def _segment(folder: Path, out: Path, model: Path):
    """`edgeseg segment FOLDER -o OUT`, as a user runs it beside a watch."""
    return CliRunner().invoke(main, ["segment", str(folder), "-o", str(out), "--model", str(model)])


def _unlistable(
    monkeypatch: pytest.MonkeyPatch, folder: Path, error: type[OSError] = PermissionError
) -> None:
    """Listing ``folder`` fails as a folder without read permission does (tests run as root,
    which permissions do not stop), or as one removed since its parent was listed."""
    import os

    scandir = os.scandir

    def refusing(path=".", *args):
        if Path(path) == folder:
            raise error(13, "Permission denied", str(folder))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", refusing)


def test_an_unreadable_subfolder_is_named_by_segment_and_waited_for_by_watch(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    _write(folder / "a.png", 0)
    _write(folder / "locked" / "b.png", 1)
    _unlistable(monkeypatch, folder / "locked")
    segment = _segment(folder, tmp_path / "s", model)
    assert segment.exit_code == 1
    assert f"{folder / 'locked'}: cannot list this folder (Permission denied)" in segment.output
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())
    args = ["watch", str(folder), "-o", str(tmp_path / "w"), "--model", str(model)]
    watch = CliRunner().invoke(main, [*args, "--settle", "0", "--interval", "0.05", "--once"])
    assert watch.exit_code == 1, watch.output  # --once ends with that folder's images undone
    assert watch.output.count(f"cannot list {folder / 'locked'} (Permission denied)") == 1
    assert set(_summary(tmp_path / "w")) == {"a"}


def test_a_subfolder_removed_while_listing_is_no_error(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    _write(folder / "a.png", 0)
    (folder / "moving").mkdir()
    _unlistable(monkeypatch, folder / "moving", FileNotFoundError)
    result = _segment(folder, tmp_path / "s", model)
    assert result.exit_code == 0, result.output
    assert set(_summary(tmp_path / "s")) == {"a"}


def test_a_folder_listed_but_not_entered_is_named(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeseg.batch

    folder = tmp_path / "in"
    _write(folder / "a.png", 0)
    _write(folder / "plate" / "b.png", 1)
    recorded = edgeseg.batch.outputs_recorded

    def refusing(where: Path) -> set[str]:  # as a folder without its x bit refuses a stat
        if where == folder / "plate":
            raise PermissionError(13, "Permission denied", str(where / ".edgeseg-done"))
        return recorded(where)

    monkeypatch.setattr(edgeseg.batch, "outputs_recorded", refusing)
    result = _segment(folder, tmp_path / "s", model)
    assert result.exit_code == 1
    assert f"{folder / 'plate'}: cannot list this folder (Permission denied)" in result.output
