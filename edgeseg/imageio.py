"""Reading images and writing label images the way microscopy tools expect.

Every read error names the file: a technician with 500 images must know which one is bad.
Writes go to a temporary file that is renamed into place, so a crash never leaves a
truncated output that a re-run would trust.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import tifffile

TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"} | TIFF_SUFFIXES


class ImageReadError(ValueError):
    """An input image could not be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/BMP/TIFF as a numpy array, channels last, colour in RGB(A) order."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        try:
            array = tifffile.imread(path)
        except Exception as error:  # tifffile raises many types for corrupt files
            raise ImageReadError(path, f"unreadable TIFF ({error})") from error
        array = np.asarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("="))
        return array
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(path, f"unsupported file type {suffix!r}")
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise ImageReadError(path, "unreadable or corrupt image")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.replace(temporary_path, final)
    finally:
        temporary_path.unlink(missing_ok=True)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a uint16 instance label image (TIFF or PNG) that Fiji, QuPath and napari open."""
    path = Path(path)
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: more than 65535 instances do not fit a uint16 label image")
    labels16 = labels.astype(np.uint16, copy=False)
    with atomic_path(path) as temporary:
        if path.suffix.lower() in TIFF_SUFFIXES:
            tifffile.imwrite(temporary, labels16, compression="zlib")
        elif not cv2.imwrite(str(temporary), labels16):
            raise OSError(f"{path}: could not write {path.suffix} image")
