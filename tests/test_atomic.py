"""Whole-or-nothing writes: what a failure leaves, and what a killed process's leftovers become."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from edgeseg.atomic import atomic_path, remove_stale_temporaries, unwritable_reason
from edgeseg.manifest import manifest_path, write_manifest


def test_atomic_path_outputs_readable_by_others(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "out.txt") as temporary:
        temporary.write_text("x")
    mode = (tmp_path / "out.txt").stat().st_mode
    assert mode & stat.S_IRUSR and mode & stat.S_IRGRP
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_manifest_that_cannot_be_written_leaves_nothing_half_written(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"model")
    manifest_path(artifact).mkdir()  # something else already holds the manifest's name
    with pytest.raises(OSError):
        write_manifest(artifact, backend="onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]


def test_a_failure_names_the_path_asked_for_not_the_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as error, atomic_path(tmp_path / "file" / "a.txt"):
        pass
    assert error.value.filename == str(tmp_path / "file")
    (tmp_path / "taken.txt").mkdir()
    with pytest.raises(IsADirectoryError) as error, atomic_path(tmp_path / "taken.txt") as part:
        part.write_text("x")
    assert error.value.filename == str(tmp_path / "taken.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.txt"]


def test_leftovers_of_killed_writers_are_removed_once_old_enough(tmp_path: Path) -> None:
    old, young = tmp_path / ".cache.ab12cd34.part.npz", tmp_path / ".cache.ef56gh78.part.npz"
    for path in (old, young):
        path.write_bytes(b"half")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    users = [tmp_path / name for name in (".notes.partial", ".plan.party.txt", "kept.npz")]
    for path in users:
        path.write_text("the user's own")
        os.utime(path, (hour_ago, hour_ago))
    remove_stale_temporaries(tmp_path)  # young: perhaps another process still writing it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [young.name, *(u.name for u in users)]
    )
    remove_stale_temporaries(tmp_path, older_than_s=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(u.name for u in users)


def test_a_full_disk_names_the_file_being_written(tmp_path: Path) -> None:
    with pytest.raises(OSError) as error, atomic_path(tmp_path / "summary.csv"):
        raise OSError(28, "No space left on device")  # what write() raises: no filename
    assert error.value.filename == str(tmp_path / "summary.csv")
    assert list(tmp_path.iterdir()) == []


def test_a_name_near_the_file_system_limit_is_still_written(tmp_path: Path) -> None:
    final = tmp_path / f"{'n' * 240}_nuclei.csv"  # 251 bytes of the 255 a name may have
    with atomic_path(final) as temporary:
        temporary.write_text("x")
    assert final.read_text() == "x"


def test_a_folder_is_judged_by_the_nearest_folder_that_exists(tmp_path: Path) -> None:
    assert unwritable_reason(tmp_path / "new" / "deeper") is None
    (tmp_path / "file").write_text("x")
    assert (
        unwritable_reason(tmp_path / "file" / "out")
        == f"{tmp_path / 'file'} is a file, not a folder"
    )
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert unwritable_reason(tmp_path / "dangling" / "out") == (
        f"{tmp_path / 'dangling'} is a link to {tmp_path / 'gone'}, which does not exist"
    )
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        reason = unwritable_reason(locked / "out")
        assert reason == f"{locked}, where it would be made, is not writable by this user"
