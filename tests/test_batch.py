"""The batch runner with a stand-in segmenter: naming, resume rules, isolation, bounded memory."""

from __future__ import annotations

import _thread
import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import synthetic_nuclei
from skimage.measure import regionprops

from edgeseg import batch
from edgeseg.batch import (
    BatchError,
    BatchSettings,
    check_output_folder,
    discover_images,
    output_stems,
    plan_batch,
    run_batch,
    write_summary,
)

MANIFEST = {"name": "stand-in", "sha256": "ab" * 32}


class ThresholdSegmenter:
    """Labels = connected bright regions; optionally slow, to exercise the pipeline."""

    manifest = MANIFEST

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.diameters: list[float | None] = []

    def segment(
        self, image: np.ndarray, diameter: float | None = None, max_megapixels: float = 100.0
    ) -> np.ndarray:
        self.calls += 1
        self.diameters.append(diameter)
        time.sleep(self.delay)
        gray = image if image.ndim == 2 else image[..., 0]
        _, labels = cv2.connectedComponents((gray > 100).astype(np.uint8))
        return labels.astype(np.uint16)

    def infer(
        self, image: np.ndarray, diameter: float | None = None, max_megapixels: float = 100.0
    ):
        labels = self.segment(image, diameter)
        return lambda: labels


def _write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image, _ = synthetic_nuclei((64, 64), count=4, seed=index)
        paths.append(folder / f"img{index:02d}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def _summary(output: Path) -> list[dict[str, str]]:
    with open(output / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("blocker", [".edgeseg-done", "summary.csv"])
def test_an_output_where_edgeseg_needs_the_other_kind_is_refused_up_front(
    tmp_path: Path, blocker: str
) -> None:
    (tmp_path / "out").mkdir()
    if blocker == "summary.csv":
        (tmp_path / "out" / blocker).mkdir()
    else:
        (tmp_path / "out" / blocker).write_text("")
    with pytest.raises(BatchError, match=f"{blocker} is a (folder|file)"):
        check_output_folder(tmp_path / "out", [tmp_path / "in"])


def test_stems_unique_names_kept_and_clashes_use_relative_path(tmp_path: Path) -> None:
    paths = [
        tmp_path / "a" / "X.png",
        tmp_path / "b" / "sub" / "X.tif",
        tmp_path / "a" / "Y.png",
        tmp_path / "a" / "Y.TIF",
        tmp_path / "a" / "z.png",
        tmp_path / "b" / "Z.png",
    ]
    assert output_stems(paths) == ["a__X", "b__sub__X", "a__Y_png", "a__Y_tif", "a__z", "b__Z"]
    assert output_stems([tmp_path / "scan.ome.tif", tmp_path / ".ome.tif"]) == ["scan", ".ome"]
    assert output_stems([tmp_path / "one" / "X.png"]) == ["X"]


def test_discovery_recurses_skips_hidden_and_keeps_named_files(tmp_path: Path) -> None:
    _write_images(tmp_path / "in" / "deep", 2)
    (tmp_path / "in" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "in" / ".cache").mkdir()
    (tmp_path / "in" / ".cache" / "c.png").write_bytes(b"x")
    (tmp_path / "in" / "notes.txt").write_text("x")
    (tmp_path / "extra.txt").write_text("x")
    jobs = discover_images([tmp_path / "in", tmp_path / "extra.txt", tmp_path / "in" / "deep"])
    assert [job.source.name for job in jobs] == ["img00.png", "img01.png", "extra.txt"]
    _write_images(tmp_path / "kaggle" / "id1" / "images", 1)  # the DSB2018 layout
    _write_images(tmp_path / "kaggle" / "id1" / "masks", 2)
    _write_images(tmp_path / "kaggle" / "masks", 1)  # no images/ beside: a folder like any
    found = [job.source.relative_to(tmp_path) for job in discover_images([tmp_path / "kaggle"])]
    assert found == [Path("kaggle/id1/images/img00.png"), Path("kaggle/masks/img00.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match="no images found"):
        discover_images([tmp_path / "empty"])


def test_output_folder_never_an_input_folder(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _write_images(images, 1)
    for bad in (images, images / "out", images / "deep" / "er"):
        with pytest.raises(BatchError, match="never writes beside"):
            check_output_folder(bad, [images])
    with pytest.raises(BatchError, match="never writes beside"):
        check_output_folder(images, [images / "img00.png"])
    check_output_folder(tmp_path / "images_out", [images])
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="not a folder"):
        check_output_folder(tmp_path / "file", [images])


def test_run_writes_outputs_summary_and_markers(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    settings = BatchSettings(output=tmp_path / "out", overlay=True)
    jobs = discover_images([tmp_path / "in"])
    results = run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    assert [r.status for r in results] == ["failed", "ok", "ok", "ok"]
    assert "corrupt" in results[0].error
    for stem in ("img00", "img01", "img02"):
        for name in (f"{stem}_labels.tif", f"{stem}_nuclei.csv", f"{stem}_overlay.png"):
            assert (tmp_path / "out" / name).is_file()
        marker = json.loads((tmp_path / "out" / ".edgeseg-done" / f"{stem}.json").read_text())
        assert marker["settings"]["model_sha256"] == MANIFEST["sha256"]
    rows = _summary(tmp_path / "out")
    assert [row["status"] for row in rows] == ["failed", "ok", "ok", "ok"]
    assert int(rows[1]["nuclei"]) > 0 and float(rows[1]["mean_area"]) > 0
    written = tifffile.imread(tmp_path / "out" / "img00_labels.tif")
    expected = 2 * np.sqrt(np.median([r.area for r in regionprops(written)]) / np.pi)
    assert float(rows[1]["median_diameter_px"]) == pytest.approx(expected, abs=0.01)
    assert not list((tmp_path / "out").glob(".*.part*"))


def test_a_post_processing_failure_fails_its_image_alone(tmp_path: Path) -> None:
    """Post-processing runs on the writer thread: its errors must stay per image too."""

    class FailsSecond(ThresholdSegmenter):
        def infer(
            self, image: np.ndarray, diameter: float | None = None, max_megapixels: float = 100.0
        ):
            if self.calls == 1:
                self.calls += 1
                return lambda: np.array(1 / 0)
            return super().infer(image, diameter)

    _write_images(tmp_path / "in", 3)
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    results = run_batch(FailsSecond(), plan_batch(jobs, settings, MANIFEST), settings)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert "division by zero" in results[1].error
    assert not (tmp_path / "out" / "img01_labels.tif").exists()


def test_plan_skips_complete_redoes_incomplete_refuses_foreign(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 3)
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    (tmp_path / "out" / "img01_nuclei.csv").unlink()
    plan = plan_batch(jobs, settings, MANIFEST)
    assert [job.stem for job in plan.todo] == ["img01"]
    assert [r.job.stem for r in plan.skipped] == ["img00", "img02"]
    assert all(r.nuclei is not None and r.median_diameter for r in plan.skipped)
    marker = tmp_path / "out" / ".edgeseg-done" / "img00.json"
    record = json.loads(marker.read_text())
    del record["median_diameter_px"]  # a marker written before the column existed
    marker.write_text(json.dumps(record))
    write_summary(settings, plan_batch(jobs, settings, MANIFEST).skipped)
    assert _summary(tmp_path / "out")[0]["median_diameter_px"] == ""
    overlay = BatchSettings(output=tmp_path / "out", overlay=True)
    assert len(plan_batch(jobs, overlay, MANIFEST).todo) == 3  # overlays not made yet
    with pytest.raises(BatchError, match="other settings.*model_sha256.*--overwrite"):
        plan_batch(jobs, settings, {**MANIFEST, "sha256": "cd" * 32})
    with pytest.raises(BatchError, match="--overwrite"):
        plan_batch(jobs, BatchSettings(output=tmp_path / "out", channel=1), MANIFEST)
    assert len(plan_batch(jobs, BatchSettings(tmp_path / "out", overwrite=True), MANIFEST).todo)
    other = _write_images(tmp_path / "elsewhere", 1)  # another img00.png: another name
    assert [job.stem for job in plan_batch(discover_images(other), settings, MANIFEST).todo] == [
        "elsewhere__img00"
    ]


def test_thresholds_tuned_again_are_other_settings_but_older_markers_resume(
    tmp_path: Path,
) -> None:
    _write_images(tmp_path / "in", 2)
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    tuned = {**MANIFEST, "postprocess": {"foreground_threshold": 0.5}, "tile": {"size": 256}}
    segmenter = ThresholdSegmenter()
    segmenter.manifest = tuned
    run_batch(segmenter, plan_batch(jobs, settings, tuned), settings)
    assert len(plan_batch(jobs, settings, tuned).skipped) == 2
    retuned = {**tuned, "postprocess": {"foreground_threshold": 0.9}}
    with pytest.raises(BatchError, match="model_postprocess .*0.5.*now .*0.9"):
        plan_batch(jobs, settings, retuned)
    marker = settings.marker("img00")  # as written before thresholds were recorded
    record = json.loads(marker.read_text())
    del record["settings"]["model_postprocess"], record["settings"]["model_tile"]
    marker.write_text(json.dumps(record))
    assert [r.job.stem for r in plan_batch(jobs[:1], settings, retuned).skipped] == ["img00"]
    own_tile = BatchSettings(output=tmp_path / "out", tile=256)  # the model's: no change
    assert len(plan_batch(jobs, own_tile, tuned).skipped) == 2
    record["settings"]["tile"] = 256  # older markers recorded --tile at the model's size
    marker.write_text(json.dumps(record))
    assert [r.job.stem for r in plan_batch(jobs[:1], own_tile, retuned).skipped] == ["img00"]


def test_a_file_replaced_under_its_name_is_done_again(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "in", 2)
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    cv2.imwrite(str(paths[0]), np.zeros((32, 48), np.uint8))  # re-exported by the microscope
    plan = plan_batch(jobs, settings, MANIFEST)
    assert [job.stem for job in plan.todo] == ["img00"]
    run_batch(ThresholdSegmenter(), plan, settings)
    assert tifffile.imread(tmp_path / "out" / "img00_labels.tif").shape == (32, 48)
    rows = _summary(settings.output)
    assert [(row["output_stem"], row["status"], row["nuclei"]) for row in rows][0] == (
        "img00",
        "ok",
        "0",
    )
    assert rows[1]["status"] == "skipped"


def test_outputs_keep_their_names_and_a_new_file_never_takes_another_files(
    tmp_path: Path,
) -> None:
    """plate1/A01 then plate2/A01 into one folder, even with --overwrite: both kept; then
    both plates at once: plate1's A01 keeps its name (no orphaned outputs)."""
    for plate in ("plate1", "plate2"):
        _write_images(tmp_path / plate, 1)[0].rename(tmp_path / plate / "A01.png")
    output = tmp_path / "out"
    for plate, overwrite in (("plate1", False), ("plate2", True)):
        settings = BatchSettings(output=output, overwrite=overwrite)
        plan = plan_batch(discover_images([tmp_path / plate]), settings, MANIFEST)
        run_batch(ThresholdSegmenter(), plan, settings)
    assert (output / "A01_labels.tif").is_file() and (output / "plate2__A01_labels.tif").is_file()
    both = plan_batch(
        discover_images([tmp_path / "plate1", tmp_path / "plate2"]),
        BatchSettings(output=output),
        MANIFEST,
    )
    assert [r.job.stem for r in both.skipped] == ["A01", "plate2__A01"] and not both.todo
    sources = {row["output_stem"]: row["file"] for row in _summary(output)}
    assert sources == {
        "A01": str(tmp_path / "plate1" / "A01.png"),
        "plate2__A01": str(tmp_path / "plate2" / "A01.png"),
    }


def test_symbolic_links_are_files_of_their_own(tmp_path: Path) -> None:
    """git-annex and DataLad folders hold links, several of them to one content file; a
    link re-pointed to new content is a changed file, done again."""
    store = _write_images(tmp_path / "store", 2)
    plate = tmp_path / "plate"
    plate.mkdir()
    for name in ("A01_control.png", "A02_control.png"):
        (plate / name).symlink_to(store[0])
    jobs = discover_images([plate, plate / "A01_control.png"])
    assert [job.stem for job in jobs] == ["A01_control", "A02_control"]
    settings = BatchSettings(output=tmp_path / "out")
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    os.utime(store[1], ns=(1, 1))  # another size and time than store[0]
    (plate / "A02_control.png").unlink()
    (plate / "A02_control.png").symlink_to(store[1])
    assert [job.stem for job in plan_batch(jobs, settings, MANIFEST).todo] == ["A02_control"]


def test_a_link_added_beside_its_target_gets_a_name_of_its_own(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "in", 1)
    settings = BatchSettings(output=tmp_path / "out")
    run_batch(
        ThresholdSegmenter(),
        plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST),
        settings,
    )
    (tmp_path / "in" / "B01.png").symlink_to(paths[0])
    plan = plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST)
    assert [job.stem for job in plan.todo] == ["B01"]
    assert [r.job.stem for r in plan.skipped] == ["img00"]


def test_linked_folders_are_searched_once_and_cannot_loop(tmp_path: Path) -> None:
    _write_images(tmp_path / "store" / "day1", 2)
    plate = tmp_path / "plate"
    _write_images(plate, 1)
    (plate / "day1").symlink_to(tmp_path / "store" / "day1")
    (plate / "again").symlink_to(tmp_path / "store" / "day1")  # the same folder twice
    (plate / "loop").symlink_to(plate)
    jobs = discover_images([plate])
    assert [job.source.relative_to(plate).as_posix() for job in jobs] == [
        "img00.png",
        "again/img00.png",  # "day1" is the folder "again" already was
        "again/img01.png",
    ]


def test_a_folder_reached_by_another_path_resumes(tmp_path: Path) -> None:
    """A linked home folder, or macOS's /tmp: one folder, whichever path names it."""
    _write_images(tmp_path / "real" / "in", 2)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "alias" / "in"])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    plan = plan_batch(discover_images([tmp_path / "real" / "in"]), settings, MANIFEST)
    assert plan.todo == [] and len(plan.skipped) == 2


def test_edgeseg_outputs_among_images_are_not_read_as_images(tmp_path: Path) -> None:
    images = _write_images(tmp_path / "in", 2)
    for label_format in ("tif", "png"):  # a results folder made from files, kept beside them
        settings = BatchSettings(tmp_path / "in" / "results", label_format=label_format)
        run_batch(
            ThresholdSegmenter(), plan_batch(discover_images(images), settings, MANIFEST), settings
        )
    assert [job.stem for job in discover_images([tmp_path / "in"])] == ["img00", "img01"]
    settings.marker("img00").unlink()  # as while an interrupted run redid it
    assert [job.stem for job in discover_images([tmp_path / "in"])] == ["img00", "img01"]
    # Results written into another folder of raw images hide none of its images.
    plate = _write_images(tmp_path / "plate", 2)
    settings = BatchSettings(output=tmp_path / "plate")
    run_batch(
        ThresholdSegmenter(), plan_batch(discover_images(images), settings, MANIFEST), settings
    )
    assert [job.source for job in discover_images([tmp_path / "plate"])] == plate


def test_other_format_labels_are_kept_unless_overwriting(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 1)
    jobs = discover_images([tmp_path / "in"])
    for label_format in ("tif", "png"):
        settings = BatchSettings(output=tmp_path / "out", label_format=label_format)
        run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    labels = sorted(path.name for path in (tmp_path / "out").glob("img00_labels.*"))
    assert labels == ["img00_labels.png", "img00_labels.tif"]
    settings = BatchSettings(output=tmp_path / "out", label_format="tif", overwrite=True)
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    labels = sorted(path.name for path in (tmp_path / "out").glob("img00_labels.*"))
    assert labels == ["img00_labels.tif"]


def test_overwrite_that_fails_keeps_the_earlier_results(tmp_path: Path) -> None:
    """A mistyped option can fail every image: nothing already written may be lost."""
    paths = _write_images(tmp_path / "in", 2)
    jobs = discover_images([tmp_path / "in"])
    first = BatchSettings(output=tmp_path / "out", overlay=True)
    run_batch(ThresholdSegmenter(), plan_batch(jobs, first, MANIFEST), first)
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").glob("img00*")}
    paths[0].write_bytes(b"now unreadable")
    again = BatchSettings(output=tmp_path / "out", overwrite=True, diameter=30.0)
    results = run_batch(ThresholdSegmenter(), plan_batch(jobs, again, MANIFEST), again)
    assert [result.status for result in results] == ["failed", "ok"]
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").glob("img00*")} == before
    assert not (tmp_path / "out" / "img01_overlay.png").exists()  # replaced, not asked for

    class TooMany(ThresholdSegmenter):
        def segment(self, image: np.ndarray, *args: object) -> np.ndarray:
            return np.full(image.shape[:2], 70000, np.int32)  # past uint16

    kept = {path.name: path.read_bytes() for path in (tmp_path / "out").glob("img01*")}
    again = BatchSettings(output=tmp_path / "out", overwrite=True, label_format="png")
    results = run_batch(TooMany(), plan_batch(jobs[1:], again, MANIFEST), again)
    assert results[0].status == "failed" and "65535" in results[0].error
    assert {path.name: path.read_bytes() for path in (tmp_path / "out").glob("img01*")} == kept
    assert again.marker("img01").is_file()


def test_a_write_failing_midway_leaves_every_earlier_output_and_the_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import edgeseg.batch
    from edgeseg.atomic import atomic_path

    _write_images(tmp_path / "in", 1)
    jobs = discover_images([tmp_path / "in"])
    settings = BatchSettings(output=tmp_path / "out", overlay=True)
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").rglob("img00*")}
    again = BatchSettings(output=tmp_path / "out", overlay=True, overwrite=True, diameter=30.0)

    def disk_full(path: Path, labels: np.ndarray) -> None:  # as write_labels meets it
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"half a TIFF")
            raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:  # the labels are written after the CSV and overlay
        patch.setattr(edgeseg.batch, "write_labels", disk_full)
        result = run_batch(ThresholdSegmenter(), plan_batch(jobs, again, MANIFEST), again)[0]
    assert result.status == "failed"
    assert f"{tmp_path / 'out' / 'img00_labels.tif'}: No space left on device" in result.error
    after = {path.name: path.read_bytes() for path in (tmp_path / "out").rglob("img00*")}
    assert after == before  # CSV, overlay, labels and done-marker as the first run left them
    assert not [path for path in (tmp_path / "out").iterdir() if ".part" in path.name]

    (tmp_path / "out" / "img00_overlay.png").unlink()
    (tmp_path / "out" / "img00_overlay.png").mkdir()  # a folder squatting on a name
    result = run_batch(ThresholdSegmenter(), plan_batch(jobs, again, MANIFEST), again)[0]
    assert result.status == "failed" and "img00_overlay.png" in result.error
    assert (tmp_path / "out" / "img00_nuclei.csv").read_bytes() == before["img00_nuclei.csv"]
    assert again.marker("img00").is_file()


def test_overwrite_with_a_folder_on_an_output_it_would_remove_keeps_everything(
    tmp_path: Path,
) -> None:
    _write_images(tmp_path / "in", 1)
    jobs = discover_images([tmp_path / "in"])
    first = BatchSettings(output=tmp_path / "out", label_format="png")
    run_batch(ThresholdSegmenter(), plan_batch(jobs, first, MANIFEST), first)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("img00*") if p.is_file()}
    (tmp_path / "out" / "img00_labels.tif").mkdir()  # where the tif a png run removes would be
    again = BatchSettings(output=tmp_path / "out", label_format="png", overwrite=True, diameter=30)
    result = run_batch(ThresholdSegmenter(), plan_batch(jobs, again, MANIFEST), again)[0]
    assert result.status == "failed" and "img00_labels.tif" in result.error
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("img00*") if p.is_file()}
    assert after == before


def test_summary_keeps_the_rows_of_images_not_in_this_run(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    settings.marker("img02").unlink()  # its results are no longer trusted
    one = discover_images([paths[0]])
    run_batch(ThresholdSegmenter(), plan_batch(one, settings, MANIFEST), settings)
    rows = _summary(settings.output)
    assert [(row["output_stem"], row["status"]) for row in rows] == [
        ("img00", "skipped"),
        ("broken", "failed"),
        ("img01", "ok"),
    ]
    # The same file under another name (a stem given when names clashed) is one row.
    renamed = [batch.ImageJob(0, paths[1], "in__img01")]  # plan_batch would keep its name
    run_batch(ThresholdSegmenter(), batch.BatchPlan(renamed, []), settings)
    assert [row["output_stem"] for row in _summary(settings.output)] == [
        "in__img01",
        "img00",
        "broken",
    ]


def test_summary_rows_of_relative_paths_survive_a_run_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    _write_images(tmp_path / "other", 1)
    settings = BatchSettings(output=tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    jobs = discover_images([Path("in/broken.png")])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    monkeypatch.chdir(tmp_path / "other")
    jobs = discover_images([Path("img00.png")])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    rows = _summary(settings.output)
    assert [(row["output_stem"], row["status"]) for row in rows] == [
        ("img00", "ok"),
        ("broken", "failed"),
    ]
    assert rows[1]["file"] == str((tmp_path / "in" / "broken.png").resolve())


def test_a_file_name_that_is_not_utf8_is_summarised_as_its_bytes(tmp_path: Path) -> None:
    (path,) = _write_images(tmp_path / "in", 1)
    odd = path.with_name("odd\udcff.png")  # the byte 0xff, as Linux hands it to Python
    path.rename(odd)
    settings = BatchSettings(output=tmp_path / "out")
    for _ in range(2):  # written, then read back by the next run
        jobs = discover_images([tmp_path / "in"])
        run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    raw = (tmp_path / "out" / "summary.csv").read_bytes()
    assert b"odd\xff.png" in raw and raw.count(b"odd\xff.png") == 1


class _BlockedSegmenter(ThresholdSegmenter):
    """Inference of the first image waits for ``release``: a Ctrl-C then finds it in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()
        self.released_before_return = False

    def segment(self, image: np.ndarray, *args: object) -> np.ndarray:
        if self.calls == 0:
            self.entered.set()
            assert self.release.wait(30), "the test never released inference"
        return super().segment(image, *args)


def _interrupt_later(segmenter: _BlockedSegmenter, times: int) -> threading.Thread:
    """Ctrl-C ``times`` times once the first image is in inference, then release it."""

    def interrupt() -> None:
        segmenter.entered.wait(30)
        for _ in range(times):
            time.sleep(0.3)  # each one is handled before the next (signals do not queue)
            _thread.interrupt_main()
        time.sleep(0.3)
        segmenter.release.set()

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


def _interrupted_run(tmp_path: Path, segmenter: _BlockedSegmenter, times: int) -> BatchSettings:
    """Three images, Ctrl-C ``times`` times during the first; whatever run_batch raises is
    re-raised once the interrupting thread has released inference."""
    _write_images(tmp_path / "in", 3)
    settings = BatchSettings(output=tmp_path / "out")
    plan = plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST)
    # a shell starts background jobs with Ctrl-C ignored, and then interrupt_main does nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter = _interrupt_later(segmenter, times)
    try:
        run_batch(segmenter, plan, settings)
    finally:
        segmenter.released_before_return = segmenter.release.is_set()
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    return settings


def test_ctrl_c_finishes_the_image_in_inference_then_stops(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt) as interrupt:
        _interrupted_run(tmp_path, _BlockedSegmenter(), times=1)
    settings = BatchSettings(output=tmp_path / "out")
    assert not isinstance(interrupt.value, batch.BatchInterrupted)
    assert [(row["output_stem"], row["status"]) for row in _summary(settings.output)] == [
        ("img00", "ok")
    ]
    assert settings.marker("img00").is_file()


def test_ctrl_c_again_stops_at_once_and_writes_nothing_more(tmp_path: Path) -> None:
    segmenter = _BlockedSegmenter()
    with pytest.raises(batch.BatchInterrupted):
        _interrupted_run(tmp_path, segmenter, times=2)
    assert not segmenter.released_before_return  # it did not wait for the image in flight
    settings = BatchSettings(output=tmp_path / "out")
    for stage in [t for t in threading.enumerate() if t.name.startswith("edgeseg-")]:
        stage.join(timeout=5)
    assert _summary(settings.output) == []
    assert not list(settings.output.glob("img00*"))


def test_ctrl_c_while_the_pipeline_starts_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_images(tmp_path / "in", 3)
    settings = BatchSettings(output=tmp_path / "out")
    plan = plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST)
    start, started = batch._Stage.start, []

    def interrupted_start(stage: batch._Stage) -> None:
        if len(started) == 1:  # the reader runs, the writer and workers never start
            raise KeyboardInterrupt
        started.append(stage)
        start(stage)

    monkeypatch.setattr(batch._Stage, "start", interrupted_start)
    finished = threading.Event()

    def run() -> None:
        with pytest.raises(KeyboardInterrupt):
            run_batch(ThresholdSegmenter(), plan, settings)
        finished.set()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert finished.is_set()  # it neither hangs waiting for stages that never ran
    assert (settings.output / "summary.csv").is_file()  # and it still writes the table
    started[0].wait()


def test_write_failure_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_images(tmp_path / "in", 3)
    real_write = batch.write_labels

    def flaky(path: Path, labels: np.ndarray) -> None:
        if "img01" in path.name:  # as the writers raise it: about the file they write
            raise OSError(28, "No space left on device", str(path))
        real_write(path, labels)

    monkeypatch.setattr(batch, "write_labels", flaky)
    settings = BatchSettings(output=tmp_path / "out")
    plan = plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST)
    results = run_batch(ThresholdSegmenter(), plan, settings)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].error == f"{tmp_path / 'out' / 'img01_labels.tif'}: No space left on device"
    assert not (tmp_path / "out" / ".edgeseg-done" / "img01.json").exists()


def test_pipeline_overlaps_and_holds_few_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_images(tmp_path / "in", 16)
    lock = threading.Lock()
    in_flight, peak, reader_threads = [0], [0], set()
    real_read = batch.read_plane

    def counting_read(*args, **kwargs) -> np.ndarray:
        reader_threads.add(threading.current_thread().name)
        image = real_read(*args, **kwargs)
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        return image

    def done(_result: batch.ImageResult) -> None:
        with lock:
            in_flight[0] -= 1

    monkeypatch.setattr(batch, "read_plane", counting_read)
    settings = BatchSettings(output=tmp_path / "out")
    plan = plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST)
    segmenter = ThresholdSegmenter(delay=0.02)
    results = run_batch(segmenter, plan, settings, on_result=done)
    assert [r.status for r in results] == ["ok"] * 16 and segmenter.calls == 16
    assert reader_threads == {"edgeseg-reader"}
    # 2 decoded ahead + 1 in inference + 2 queued for writing + 1 being written (+1 in hand)
    assert 2 <= peak[0] <= 2 * batch.PREFETCH + 3


def test_parallel_inference_workers_give_the_same_results(tmp_path: Path) -> None:
    """Two workers really overlap, and every image still gets its own labels, in order."""

    class Concurrent(ThresholdSegmenter):
        def __init__(self) -> None:
            super().__init__()
            self.lock, self.running, self.peak = threading.Lock(), 0, 0

        def infer(
            self, image: np.ndarray, diameter: float | None = None, max_megapixels: float = 100.0
        ):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(0.03)
            labels = ThresholdSegmenter.segment(self, image, diameter)
            with self.lock:
                self.running -= 1
            return lambda: labels

    _write_images(tmp_path / "in", 8)
    jobs = discover_images([tmp_path / "in"])
    outputs = {}
    for workers in (1, 2):
        settings = BatchSettings(output=tmp_path / f"out{workers}")
        segmenter = Concurrent()
        plan = plan_batch(jobs, settings, MANIFEST)
        results = run_batch(segmenter, plan, settings, inference_workers=workers)
        assert sorted(r.status for r in results) == ["ok"] * 8
        assert segmenter.peak == workers
        assert [row["output_stem"] for row in _summary(settings.output)] == [j.stem for j in jobs]
        outputs[workers] = [(settings.output / f"{j.stem}_labels.tif").read_bytes() for j in jobs]
    assert outputs[1] == outputs[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dead_writer_stops_the_run_instead_of_hanging_it(tmp_path: Path, workers: int) -> None:
    _write_images(tmp_path / "in", 8)
    settings = BatchSettings(output=tmp_path / "out")
    plan = plan_batch(discover_images([tmp_path / "in"]), settings, MANIFEST)

    def broken_progress_bar(_result: batch.ImageResult) -> None:
        raise RuntimeError("progress bar broke")

    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_batch(ThresholdSegmenter(delay=0.05), plan, settings, broken_progress_bar,
                      inference_workers=workers)  # fmt: skip
        except RuntimeError as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "run_batch hung after its writer died"
    assert "progress bar broke" in str(outcome[0])


def test_a_manifest_rewritten_to_another_stained_channel_is_not_resumed(tmp_path: Path) -> None:
    settings = BatchSettings(output=tmp_path / "out")
    luma = settings.fingerprint(MANIFEST)
    assert "stained_channel" not in luma  # results of luma models made before still resume
    hematoxylin = {**MANIFEST, "preprocess": {"name": "percentile-gray", "version": 1}}
    hematoxylin["preprocess"]["stained_channel"] = "hematoxylin"
    assert settings.fingerprint(hematoxylin) == {**luma, "stained_channel": "hematoxylin"}


def test_diameter_reaches_segment_and_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 2)
    jobs = discover_images([tmp_path / "in"])
    sized = {**MANIFEST, "nucleus_diameter": {"median_px": 18.0}}
    plain = BatchSettings(output=tmp_path / "out")
    assert "diameter" not in plain.fingerprint(sized)  # results made before --diameter resume
    assert "tile" not in plain.fingerprint(sized)
    assert BatchSettings(tmp_path / "out", tile=512).fingerprint(sized)["tile"] == 512
    settings = BatchSettings(output=tmp_path / "out", diameter=60.0)
    assert settings.fingerprint(sized) == {
        **plain.fingerprint(sized),
        "diameter": 60.0,
        "model_diameter": 18.0,
    }
    segmenter = ThresholdSegmenter()
    segmenter.manifest = sized
    run_batch(segmenter, plan_batch(jobs, settings, sized), settings)
    assert segmenter.diameters == [60.0, 60.0]
    assert [row["diameter_px"] for row in _summary(tmp_path / "out")] == ["60", "60"]
    marker = json.loads((tmp_path / "out" / ".edgeseg-done" / "img00.json").read_text())
    assert marker["settings"]["diameter"] == 60.0
    assert len(plan_batch(jobs, settings, sized).skipped) == 2
    for other, manifest in (
        (plain, sized),  # the same model without --diameter
        (BatchSettings(output=tmp_path / "out", diameter=30.0), sized),
        (settings, {**sized, "nucleus_diameter": {"median_px": 25.0}}),  # regenerated manifest
    ):
        with pytest.raises(BatchError, match="other settings.*diameter.*--overwrite"):
            plan_batch(jobs, other, manifest)


def test_an_output_folder_that_cannot_be_written_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from edgeseg.batch import check_output_folder

    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(  # as a non-root user sees a read-only folder (tests run as root)
        os, "access", lambda path, mode: Path(path) != locked and access(path, mode)
    )
    with pytest.raises(BatchError, match=f"output folder {locked}: {locked} is not writable"):
        check_output_folder(locked, [tmp_path / "in"])
    inside = locked / "new" / "out"
    with pytest.raises(BatchError, match=f"{inside}: {locked}, where it would be made, is not"):
        check_output_folder(inside, [tmp_path / "in"])
    check_output_folder(tmp_path / "free" / "out", [tmp_path / "in"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BatchError, match=r"afile/sub: .*afile is a file, not a folder"):
        check_output_folder(tmp_path / "afile" / "sub", [tmp_path / "in"])
    shared = tmp_path / "shared"
    (shared / ".edgeseg-done").mkdir(parents=True)
    monkeypatch.setattr(  # another user's earlier run made the markers folder its own
        os, "access", lambda path, mode: Path(path).name != ".edgeseg-done"
    )
    with pytest.raises(BatchError, match="records finished images here, and this user"):
        check_output_folder(shared, [tmp_path / "in"])


def test_a_changed_file_leaves_no_output_of_its_earlier_version(tmp_path: Path) -> None:
    """An overlay of the old image beside the new image's labels would be read as one result."""
    path = _write_images(tmp_path / "in", 1)[0]
    jobs = discover_images([tmp_path / "in"])
    with_overlay = BatchSettings(output=tmp_path / "out", overlay=True)
    plain = BatchSettings(output=tmp_path / "out")
    run_batch(ThresholdSegmenter(), plan_batch(jobs, with_overlay, MANIFEST), with_overlay)
    cv2.imwrite(str(path), np.zeros((40, 50), np.uint8))  # re-exported under the same name
    assert len(plan_batch(jobs, plain, MANIFEST).todo) == 1
    run_batch(ThresholdSegmenter(), plan_batch(jobs, plain, MANIFEST), plain)
    assert not (tmp_path / "out" / "img00_overlay.png").exists()
    assert len(plan_batch(jobs, with_overlay, MANIFEST).todo) == 1


def test_an_overlay_the_marker_does_not_list_is_not_taken_for_a_result(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 1)
    jobs = discover_images([tmp_path / "in"])
    settings = BatchSettings(output=tmp_path / "out")
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    cv2.imwrite(str(tmp_path / "out" / "img00_overlay.png"), np.zeros((8, 8), np.uint8))
    overlay = BatchSettings(output=tmp_path / "out", overlay=True)
    assert len(plan_batch(jobs, overlay, MANIFEST).todo) == 1


def test_results_whose_marker_cannot_be_written_are_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs without a marker belong to no file: another image could take their name."""
    import errno

    from edgeseg.atomic import atomic_path

    def no_room_for_markers(final: Path):
        if Path(final).suffix == ".json":
            raise OSError(errno.ENOSPC, "No space left on device", str(final))
        return atomic_path(final)

    _write_images(tmp_path / "in", 1)
    jobs = discover_images([tmp_path / "in"])
    first = BatchSettings(output=tmp_path / "out", overlay=True, label_format="png")
    run_batch(ThresholdSegmenter(), plan_batch(jobs, first, MANIFEST), first)
    settings = BatchSettings(output=tmp_path / "out")
    monkeypatch.setattr(batch, "atomic_path", no_room_for_markers)
    result = run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)[0]
    assert result.status == "failed" and "No space left on device" in result.error
    assert not list((tmp_path / "out").glob("img00*"))


def test_names_too_long_for_the_file_system_are_shortened_and_stay_apart(tmp_path: Path) -> None:
    plates = [tmp_path / "in" / name for name in ("plate1", "plate2")]
    for plate in plates:  # the same long names in two folders, the names apart only at the end
        for index, path in enumerate(_write_images(plate, 2)):
            path.rename(plate / f"{'x' * 240}{index}.png")
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    results = run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    assert [result.status for result in results] == ["ok"] * 4
    stems = [job.stem for job in jobs]
    assert len(set(stems)) == 4 and all(
        len(stem.encode()) <= batch.MAX_STEM_BYTES for stem in stems
    )
    assert len(plan_batch(jobs, settings, MANIFEST).skipped) == 4


def test_a_summary_saved_back_from_excel_keeps_its_rows(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 2)
    settings = BatchSettings(output=tmp_path / "out")
    jobs = discover_images([tmp_path / "in"])
    run_batch(ThresholdSegmenter(), plan_batch(jobs, settings, MANIFEST), settings)
    table = tmp_path / "out" / "summary.csv"
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())  # Excel's "CSV UTF-8"
    rows = batch.earlier_rows(settings, jobs[1:])
    assert [row["file"] for row in rows] == [str(jobs[0].source)]


def test_a_name_of_any_characters_is_fitted() -> None:
    """Undecodable bytes (Linux) and half surrogate pairs (Windows) are names too."""
    for odd in ("\udcff", "\ud800"):
        stem = batch.fitted(odd * 300)
        assert len(stem.encode("utf-8", "surrogatepass")) <= batch.MAX_STEM_BYTES
    assert batch.fitted("\udcff" * 10) == "\udcff" * 10
