"""`edgeseg segment` end to end with a tiny real ONNX model: formats, outputs, resume, safety."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import REPO_ROOT, synthetic_nuclei
from tiny_models import threshold_model

from edgeseg.cli import main
from edgeseg.commands.segment import SAMPLES_DIR, segment
from edgeseg.imageio import DEFAULT_MAX_MEGAPIXELS, read_image
from edgeseg.measure import COLUMNS
from edgeseg.segmenter import load_segmenter


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return threshold_model(tmp_path_factory.mktemp("model") / "threshold.onnx")


@pytest.fixture(scope="module")
def segmenter(model: Path):
    return load_segmenter(model, threads=1)


def _gray(seed: int) -> np.ndarray:
    """A 96 x 96 uint8 fluorescence-like image with 8 nuclei."""
    return synthetic_nuclei((96, 96), count=8, seed=seed)[0]


def _rgba(seed: int) -> np.ndarray:
    gray = _gray(seed)
    return np.dstack([gray, gray, gray, np.full_like(gray, 255)])


def _run(model: Path, *args: str | os.PathLike):
    result = CliRunner().invoke(main, ["segment", *map(str, args), "--model", str(model)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _summary(output: Path) -> list[dict[str, str]]:
    with open(output / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _stack(planes: int, nuclear: int) -> np.ndarray:
    """uint16 planes of noise except plane ``nuclear``, which holds the nuclei."""
    data = np.random.default_rng(1).integers(0, 30, (planes, 96, 96)).astype(np.uint16)
    data[nuclear] = _gray(5).astype(np.uint16) * 200
    return data


# name -> (write the file, extra CLI options, the plane the segmenter should see)
FORMATS = {
    "gray8.png": (lambda p: cv2.imwrite(str(p), _gray(0)), [], lambda: _gray(0)),
    "gray16.tif": (
        lambda p: tifffile.imwrite(p, _gray(1).astype(np.uint16) * 257),
        [],
        lambda: _gray(1).astype(np.uint16) * 257,
    ),
    "rgba.png": (
        lambda p: cv2.imwrite(str(p), cv2.cvtColor(_rgba(2), cv2.COLOR_RGBA2BGRA)),
        [],
        lambda: _rgba(2),
    ),
    "rgb.jpg": (
        lambda p: cv2.imwrite(str(p), np.repeat(_gray(3)[..., None], 3, 2)),
        [],
        None,  # lossy: compared with the decoded file
    ),
    "channels.tif": (
        lambda p: tifffile.imwrite(p, _stack(3, 2), imagej=True, metadata={"axes": "CYX"}),
        ["--channel", "2"],
        lambda: _stack(3, 2)[2],
    ),
    "pages.tif": (
        lambda p: tifffile.imwrite(p, _stack(4, 1), imagej=True, metadata={"axes": "ZYX"}),
        ["--page", "1"],
        lambda: _stack(4, 1)[1],
    ),
    "bigendian.tif": (
        lambda p: tifffile.imwrite(p, (_gray(4).astype(np.uint16) * 200).astype(">u2")),
        [],
        lambda: _gray(4).astype(np.uint16) * 200,
    ),
    "float32.tif": (
        lambda p: tifffile.imwrite(p, _gray(6).astype(np.float32) / 255),
        [],
        lambda: _gray(6).astype(np.float32) / 255,
    ),
}


@pytest.mark.parametrize("name", FORMATS)
def test_formats_give_the_segmenters_labels(
    tmp_path: Path, model: Path, segmenter, name: str
) -> None:
    write, options, plane = FORMATS[name]
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / name)
    result = _run(model, tmp_path / "in", "-o", tmp_path / "out", *options)
    assert result.exit_code == 0, result.output
    stem = Path(name).stem
    labels = tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif")
    expected_input = plane() if plane else read_image(tmp_path / "in" / name)
    assert labels.dtype == np.uint16
    assert labels.max() > 0
    np.testing.assert_array_equal(labels, segmenter.segment(expected_input))
    with open(tmp_path / "out" / f"{stem}_nuclei.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS and len(rows) == labels.max()
    (row,) = _summary(tmp_path / "out")
    assert row["status"] == "ok" and int(row["nuclei"]) == labels.max()


def test_png_labels_overlay_and_summary_screen(tmp_path: Path, model: Path, segmenter) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    result = _run(model, tmp_path / "in", "-o", tmp_path / "out", "--format", "png", "--overlay")
    assert result.exit_code == 0, result.output
    labels = cv2.imread(str(tmp_path / "out" / "a_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, segmenter.segment(_gray(0)))
    overlay = cv2.imread(str(tmp_path / "out" / "a_overlay.png"))
    assert overlay.shape == (96, 96, 3)
    assert "1 segmented" in result.stdout and "images/s" in result.stdout


def test_bad_files_fail_alone(tmp_path: Path, model: Path) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a_good.png"), _gray(0))
    (tmp_path / "in" / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    tifffile.imwrite(tmp_path / "in" / "c_stack.tif", _stack(3, 0), photometric="minisblack")
    cv2.imwrite(str(tmp_path / "in" / "d_good.png"), _gray(1))
    (tmp_path / "notes.txt").write_text("not an image")
    result = _run(model, tmp_path / "in", tmp_path / "notes.txt", "-o", tmp_path / "out")
    assert result.exit_code == 1
    rows = {row["output_stem"]: row for row in _summary(tmp_path / "out")}
    assert [rows[s]["status"] for s in ("a_good", "d_good")] == ["ok", "ok"]
    assert rows["b_corrupt"]["status"] == "failed"
    assert "corrupt" in rows["b_corrupt"]["error"]
    assert "--page N" in rows["c_stack"]["error"]
    assert "unsupported file type" in rows["notes"]["error"]
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed_lines) == 3
    assert any("b_corrupt.png" in line and "corrupt" in line for line in failed_lines)
    assert (tmp_path / "out" / "a_good_labels.tif").is_file()


def test_huge_image_refused(tmp_path: Path, model: Path) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.png"), _gray(0))
    result = _run(model, tmp_path / "in", "-o", tmp_path / "out", "--max-megapixels", "0.005")
    assert result.exit_code == 1
    assert "above the limit" in _summary(tmp_path / "out")[0]["error"]


def test_resume_overwrite_and_foreign_results(tmp_path: Path, model: Path) -> None:
    (tmp_path / "in").mkdir()
    for index in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"i{index}.png"), _gray(index))
    out = tmp_path / "out"
    assert _run(model, tmp_path / "in", "-o", out).exit_code == 0
    (out / "i1_labels.tif").unlink()  # as if the run died before writing it
    stale = out / ".i2_labels.x1y2z3w4.part.tif"  # a killed run's temporary file
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200,) * 2)
    (out / ".notes.partial").write_text("the user's own")
    result = _run(model, tmp_path / "in", "-o", out)
    assert result.exit_code == 0
    assert "2 already done" in result.stderr
    assert [row["status"] for row in _summary(out)] == ["skipped", "ok", "skipped"]
    assert all(row["nuclei"] for row in _summary(out))
    assert [p.name for p in out.glob(".*.part*")] == [".notes.partial"]
    result = _run(model, tmp_path / "in", "-o", out, "--overwrite")
    assert [row["status"] for row in _summary(out)] == ["ok"] * 3
    other = threshold_model(tmp_path / "other" / "steeper.onnx", steepness=30.0)
    result = _run(other, tmp_path / "in", "-o", out)
    assert result.exit_code == 1
    assert "other settings" in result.output and "--overwrite" in result.output
    assert _run(other, tmp_path / "in", "-o", out, "--overwrite").exit_code == 0


def test_same_stem_in_two_folders(tmp_path: Path, model: Path) -> None:
    for folder, seed in (("plate1", 0), ("plate2", 1)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "A01.png"), _gray(seed))
    result = _run(model, tmp_path / "plate1", tmp_path / "plate2", "-o", tmp_path / "out")
    assert result.exit_code == 0
    first = tifffile.imread(tmp_path / "out" / "plate1__A01_labels.tif")
    second = tifffile.imread(tmp_path / "out" / "plate2__A01_labels.tif")
    assert not np.array_equal(first, second)


def test_output_inside_input_refused(tmp_path: Path, model: Path) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    result = _run(model, tmp_path / "in", "-o", tmp_path / "in" / "results")
    assert result.exit_code == 1
    assert "never writes beside" in result.output
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]


def test_tampered_model_refused(tmp_path: Path) -> None:
    model = threshold_model(tmp_path / "model" / "m.onnx")
    with open(model, "r+b") as handle:  # flip one byte after the manifest was written
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    result = _run(model, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "sha256" in result.output and "refusing" in result.output
    assert not (tmp_path / "out" / "a_labels.tif").exists()


def test_no_network_during_a_full_run(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("edgeseg tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    result = _run(model, "--samples", "-o", tmp_path / "out", "--overlay")
    assert result.exit_code == 0, result.output
    rows = _summary(tmp_path / "out")
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}


def test_samples_are_small_and_cited() -> None:
    images = sorted(SAMPLES_DIR.glob("*.png"))
    assert len(images) == 4
    assert sum(path.stat().st_size for path in images) < 1.5e6
    readme = (SAMPLES_DIR / "README.md").read_text()
    assert "BBBC038" in readme and "Caicedo" in readme
    assert all(path.stem in readme for path in images)


def test_help_teaches(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["segment", "--help"])
    assert result.exit_code == 0
    for text in ("_labels.tif", "_nuclei.csv", "summary.csv", "--overwrite", "Resume", "a__X"):
        assert text in result.output
    words = " ".join(result.output.split())
    assert "--diameter PX|auto Typical nucleus diameter in your images, in pixels" in words
    assert "'auto' measures it per image" in words
    assert "(the model's value is in its manifest" in words and "DSB-like images" in words
    (limit,) = [param for param in segment.params if param.name == "max_megapixels"]
    assert f"[default: {DEFAULT_MAX_MEGAPIXELS:g}]" in limit.help
    assert CliRunner().invoke(main, ["segment", "-o", str(tmp_path)]).exit_code == 2


def test_diameter_rescales_and_is_part_of_resume(tmp_path: Path) -> None:
    sized = threshold_model(tmp_path / "model" / "sized.onnx", nucleus_diameter=18.0)
    (tmp_path / "in").mkdir()
    image = cv2.resize(_gray(0), (192, 192), interpolation=cv2.INTER_LINEAR)  # nuclei x2
    cv2.imwrite(str(tmp_path / "in" / "a.png"), image)
    out = tmp_path / "out"
    result = _run(sized, tmp_path / "in", "-o", out, "--diameter", "36")
    assert result.exit_code == 0, result.output
    assert "nuclei of 36 px rescaled x0.5 (the model's are 18 px)" in result.stderr
    labels = tifffile.imread(out / "a_labels.tif")
    segmenter = load_segmenter(sized, threads=1)
    np.testing.assert_array_equal(labels, segmenter.segment(image, diameter=36))
    assert not np.array_equal(labels, segmenter.segment(image))
    assert _summary(out)[0]["diameter_px"] == "36"
    marker = json.loads((out / ".edgeseg-done" / "a.json").read_text())
    assert (marker["settings"]["diameter"], marker["settings"]["model_diameter"]) == (36, 18)

    again = _run(sized, tmp_path / "in", "-o", out, "--diameter", "36")
    assert again.exit_code == 0 and _summary(out)[0]["status"] == "skipped"
    for options in ([], ["--diameter", "50"]):
        refused = _run(sized, tmp_path / "in", "-o", out, *options)
        assert refused.exit_code == 1
        assert "other settings" in refused.output and "diameter 36.0" in refused.output
    assert _run(sized, tmp_path / "in", "-o", out, "--overwrite").exit_code == 0
    assert _summary(out)[0]["diameter_px"] == ""


def test_diameter_needs_a_model_that_recorded_one(tmp_path: Path, model: Path) -> None:
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    result = _run(model, tmp_path / "in", "-o", tmp_path / "out", "--diameter", "40")
    assert result.exit_code == 1
    assert "--diameter 40: model 'threshold-test' records no nucleus_diameter" in result.output
    assert not (tmp_path / "out").exists()
    for bad in ("0", "-3", "big"):
        refused = _run(model, tmp_path / "in", "-o", tmp_path / "out", "--diameter", bad)
        assert refused.exit_code == 2 and "--diameter" in refused.output
    assert "neither a positive number of pixels nor 'auto'" in refused.output
    auto = _run(model, tmp_path / "in", "-o", tmp_path / "out", "--diameter", "auto")
    assert auto.exit_code == 1 and "--diameter auto: model 'threshold-test'" in auto.output


def test_auto_diameter_is_recorded_and_part_of_resume(tmp_path: Path) -> None:
    sized = threshold_model(tmp_path / "model" / "sized.onnx", nucleus_diameter=18.0)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    out = tmp_path / "out"
    result = _run(sized, tmp_path / "in", "-o", out, "--diameter", "AUTO")
    assert result.exit_code == 0, result.output
    assert "come out over 54 px are re-segmented shrunk to the model's 18 px" in result.stderr
    segmenter = load_segmenter(sized, threads=1)
    image = cv2.imread(str(tmp_path / "in" / "a.png"), cv2.IMREAD_UNCHANGED)
    labels = tifffile.imread(out / "a_labels.tif")
    np.testing.assert_array_equal(labels, segmenter.segment(image, diameter="auto"))
    assert _summary(out)[0]["diameter_px"] == "auto"
    marker = json.loads((out / ".edgeseg-done" / "a.json").read_text())
    assert marker["settings"]["diameter"] == "auto"
    refused = _run(sized, tmp_path / "in", "-o", out, "--diameter", "18")
    assert refused.exit_code == 1 and "other settings" in refused.output


def test_tta_averages_flips_and_is_part_of_resume(tmp_path: Path, model: Path, monkeypatch) -> None:
    import edgeseg.segmenter

    calls = []
    averaged = edgeseg.segmenter.predict_flip_averaged
    monkeypatch.setattr(
        edgeseg.segmenter,
        "predict_flip_averaged",
        lambda *args: calls.append(args[1].shape) or averaged(*args),
    )
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    out = tmp_path / "out"
    result = _run(model, tmp_path / "in", "-o", out, "--tta")
    assert result.exit_code == 0, result.output
    assert calls == [_gray(0).shape[:2]]
    assert "each image averaged with its 3 mirror images (--tta)" in result.stderr
    image = cv2.imread(str(tmp_path / "in" / "a.png"), cv2.IMREAD_UNCHANGED)
    expected = load_segmenter(model, threads=1, test_time_flips=True).segment(image)
    np.testing.assert_array_equal(tifffile.imread(out / "a_labels.tif"), expected)
    marker = json.loads((out / ".edgeseg-done" / "a.json").read_text())
    assert marker["settings"]["test_time_flips"] is True
    refused = _run(model, tmp_path / "in", "-o", out)
    assert refused.exit_code == 1 and "other settings" in refused.output
    assert _run(model, tmp_path / "in", "-o", out, "--tta").exit_code == 0
    assert _summary(out)[0]["status"] == "skipped"


SLOW_RUN = """
import sys, time
import edgeseg.segmenter as s
infer = s.Segmenter.infer
def slow(self, *args):
    time.sleep(0.25)
    return infer(self, *args)
s.Segmenter.infer = slow
from edgeseg.cli import main
main(sys.argv[1:])
"""


def _done_markers(out: Path) -> set[str]:
    """Stems with a done-marker; not a marker's temporary file that a kill left behind."""
    markers = (out / ".edgeseg-done").glob("*.json")
    return {path.stem for path in markers if not path.name.startswith(".")}


def test_resume_after_kill(tmp_path: Path, model: Path) -> None:
    """SIGKILL mid-run, then re-run: everything done once, nothing done twice or half-trusted."""
    (tmp_path / "in").mkdir()
    for index in range(8):
        cv2.imwrite(str(tmp_path / "in" / f"i{index}.png"), _gray(index))
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "in"), "-o", str(out), "--model", str(model)]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not _done_markers(out) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = _done_markers(out)
    assert 1 <= len(done_before) < 8
    for leftover in out.glob(".*.part*"):  # an image being written when the kill came: its
        os.utime(leftover, (time.time() - 7200,) * 2)  # temporary is stale an hour later
    result = _run(model, tmp_path / "in", "-o", out)
    assert result.exit_code == 0
    rows = _summary(out)
    assert {row["output_stem"] for row in rows if row["status"] == "skipped"} == done_before
    assert {row["output_stem"] for row in rows if row["status"] == "ok"} == (
        {f"i{index}" for index in range(8)} - done_before
    )
    for index in range(8):
        assert tifffile.imread(out / f"i{index}_labels.tif").max() > 0
    assert not list(out.glob(".*.part*"))


def test_onnx_models_run_two_images_at_once_on_half_the_cores(model: Path, monkeypatch) -> None:
    """Without --threads a batch runs an ONNX model on two images at once; with it, one image
    on that many threads."""
    from edgeseg.backends import base
    from edgeseg.commands.segment import _runs_in_parallel, load_for_batch

    made = []
    real = load_segmenter

    def spy(*args, **kwargs):
        made.append(kwargs["threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr("edgeseg.segmenter.load_segmenter", spy)
    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(base, "cgroup_cpu_quota", lambda: None)
    assert load_for_batch(str(model), None, None, None)[1] == 2
    assert made == [2]
    assert load_for_batch(str(model), None, 3, None)[1] == 1
    assert made == [2, 3]
    assert _runs_in_parallel(str(model), None)
    assert not _runs_in_parallel(str(model), "onnx-cuda")  # a GPU: one image at a time
    assert not _runs_in_parallel(str(model.with_name("missing.onnx")), None)


def test_a_second_run_into_the_same_output_folder_is_refused(tmp_path: Path, model: Path) -> None:
    from filelock import FileLock

    from edgeseg.batch import LOCK_NAME

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / LOCK_NAME):  # as another run into OUT holds it
        for command in ("segment", "watch"):
            extra = ["--once"] if command == "watch" else []
            result = CliRunner().invoke(
                main, [command, str(tmp_path / "in"), "-o", str(out), "--model", str(model), *extra]
            )
            assert result.exit_code == 1, result.output
            assert f"another edgeseg run is writing into {out}" in result.output
            assert "never replaces results" not in result.output  # advice for another case
            assert not (out / "summary.csv").exists()
    (out / LOCK_NAME).unlink()  # made by this test; edgeseg makes its own writable by all
    killed = out / ".a_labels.k1ll3d00.part.tif"  # a killed run's, seconds old
    killed.write_bytes(b"half")
    result = _run(model, tmp_path / "in", "-o", out)
    assert result.exit_code == 0, result.output  # free again once that run ends
    assert (out / LOCK_NAME).stat().st_mode & 0o777 == 0o666  # another user's run may take it
    assert not killed.exists()  # holding the lock, no temporary can be another run's


def test_an_output_folder_without_file_locks_is_named(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from filelock import FileLock

    from edgeseg.batch import LOCK_NAME

    def unsupported(self, *args, **kwargs):
        raise NotImplementedError("FileSystem does not appear to support flock")

    monkeypatch.setattr(FileLock, "acquire", unsupported)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    result = _run(model, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{tmp_path / 'out' / LOCK_NAME}: cannot lock the output folder" in result.output


def test_ctrl_c_while_the_model_loads_exits_130(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeseg.commands.segment

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(edgeseg.commands.segment, "load_for_batch", interrupted)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "a.png"), _gray(0))
    result = CliRunner().invoke(
        main, ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model)]
    )
    assert result.exit_code == 130
    assert "Interrupted." in result.output and "Aborted" not in result.output
