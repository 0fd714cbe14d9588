"""Reading images and writing label images the way microscopy tools expect.

Every read error names the file: a technician with 500 images must know which one is bad.
Label images are written whole or not at all (edgeseg.atomic), so a crash never leaves a
truncated output that a re-run would trust.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import tifffile

from edgeseg.atomic import atomic_path

TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"} | TIFF_SUFFIXES


class ImageReadError(ValueError):
    """An input image could not be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as an image file."""
    if path.is_dir():
        return "a folder, not an image file"
    if path.exists():  # a pipe, a socket, a device
        return "not a regular file (a pipe or device cannot be read as an image)"
    return "no such file"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/BMP/TIFF as a numpy array, channels last, colour in RGB(A) order."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, _not_a_file(path))
    suffix = path.suffix.lower()
    if _is_tiff(path):
        try:
            array = tifffile.imread(path)
        except Exception as error:  # tifffile raises many types for corrupt files
            raise ImageReadError(path, f"unreadable TIFF ({error})") from error
        return _native(np.asarray(array))
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


def check_label_range(labels: np.ndarray) -> None:
    """Refuse labels a uint16 label image cannot hold."""
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 instances do not fit a uint16 label image")


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a uint16 instance label image (TIFF or PNG) that Fiji, QuPath and napari open."""
    path = Path(path)
    try:
        check_label_range(labels)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    labels16 = labels.astype(np.uint16, copy=False)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        write_png(path, labels16)
        return
    with atomic_path(path) as temporary:
        tifffile.imwrite(temporary, labels16, compression="zlib")


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` (OpenCV's channel order) as a PNG, atomically. Encoded by OpenCV but
    written by Python: cv2.imwrite reports success even when the disk fills as the file is
    closed, which left cut-short PNGs counted as results."""
    if (
        array.dtype not in (np.uint8, np.uint16)
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))
    ):  # OpenCV would write other types as 8-bit without a word
        raise ValueError(
            f"{path}: a PNG holds 8- or 16-bit gray, BGR or BGRA, not {array.dtype} {array.shape}"
        )
    encoded, data = cv2.imencode(".png", array)
    if not encoded:
        raise ValueError(f"{path}: OpenCV could not encode this PNG")
    with atomic_path(path) as temporary:
        temporary.write_bytes(data.tobytes())


DEFAULT_MAX_MEGAPIXELS = 100.0
_CHANNEL_AXES = "CS"
_GENERIC_AXES = "QI"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_plane(
    path: str | os.PathLike,
    page: int | None = None,
    channel: int | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> np.ndarray:
    """Read the one 2-D image a segmenter sees: (H, W), or (H, W, 2-4) gray+alpha or colour.

    ``page`` picks a plane of a multi-page/multi-plane TIFF and ``channel`` one channel of a
    multichannel image; both are required exactly when the file is ambiguous without them, so
    a Z-stack or a 3-channel fluorescence stack is never silently collapsed. Images above
    ``max_megapixels`` are refused before decoding: segmenting takes about 60 bytes of memory
    per pixel, and a clear refusal beats the workstation running out of memory.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, _not_a_file(path))
    if _is_tiff(path):  # by content: a TIFF named .png is still read page by page
        array = _read_tiff_plane(path, page, channel, max_megapixels)
    else:
        size = _header_size(path)
        if size is not None:
            _check_size(path, size, max_megapixels)
        array = read_image(path)
        _check_size(path, array.shape[:2], max_megapixels)
        axes = "YX" if array.ndim == 2 else "YXS"
        array = _apply(array, axes, _plan(path, axes, array.shape, page, channel))
    if array.size == 0:
        raise ImageReadError(path, f"empty image of shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ImageReadError(path, f"unsupported pixel type {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        finite = array[np.isfinite(array)]
        if finite.size == 0:
            raise ImageReadError(path, "no finite pixel value (all NaN or infinite)")
        array = np.nan_to_num(array, nan=0.0, posinf=finite.max(), neginf=finite.min())
    return array


def _is_tiff(path: Path) -> bool:
    """Whether the file starts as a (Big)TIFF does, whatever its name says."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError as error:
        raise ImageReadError(path, error.strerror or str(error)) from error


def _check_size(path: Path, size: tuple[int, ...], max_megapixels: float) -> None:
    height, width = int(size[0]), int(size[1])
    megapixels = height * width / 1e6
    if megapixels > max_megapixels:
        raise ImageReadError(
            path,
            f"image is {width} x {height} ({megapixels:,.0f} megapixels), above the limit of "
            f"{max_megapixels:g} megapixels; crop or downsample it, or raise --max-megapixels "
            "if this computer has the memory (about 60 bytes per pixel)",
        )


def _header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PNG/JPEG/BMP header without decoding; None if not parseable."""
    with open(path, "rb") as handle:
        head = handle.read(32)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
        if head.startswith(b"BM") and len(head) >= 26:
            width = int.from_bytes(head[18:22], "little", signed=True)
            height = int.from_bytes(head[22:26], "little", signed=True)
            return abs(height), abs(width)
        if head.startswith(b"\xff\xd8"):
            return _jpeg_size(handle)
    return None


def _jpeg_size(handle: BinaryIO) -> tuple[int, int] | None:
    """Walk JPEG markers to the first start-of-frame segment, which holds the size."""
    handle.seek(2)
    while True:
        marker = handle.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        length_bytes = handle.read(2)
        if len(length_bytes) < 2:
            return None
        length = int.from_bytes(length_bytes, "big")
        if marker[1] in _JPEG_FRAME_MARKERS:
            frame = handle.read(5)
            if len(frame) < 5:
                return None
            return int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
        handle.seek(length - 2, os.SEEK_CUR)


def _read_tiff_plane(
    path: Path, page: int | None, channel: int | None, max_megapixels: float
) -> np.ndarray:
    """Read only the TIFF page(s) needed, using tifffile's axes (ImageJ, OME, shaped)."""
    try:
        with tifffile.TiffFile(path) as tif:
            read = (
                _read_own_page
                if len(tif.series) > 1 and not (tif.is_ome or tif.is_imagej)
                else _read_series_plane
            )
            array, axes, index = read(path, tif, page, channel, max_megapixels)
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types for corrupt files
        raise ImageReadError(path, f"unreadable TIFF ({error})") from error
    return _apply(_native(array), axes, index)


def _read_series_plane(
    path: Path, tif: tifffile.TiffFile, page: int | None, channel: int | None, megapixels: float
) -> tuple[np.ndarray, str, list[int | slice]]:
    """The array holding the plane asked for, with its axes and the index of the plane."""
    # Thumbnails and previews are flagged reduced-resolution: never the image.
    images = [s for s in tif.series if not s.keyframe.is_reduced] or tif.series
    series = images[0]
    if len(images) > 1 and _plane_count(series.axes, series.shape) == 1:
        sizes = ", ".join("x".join(map(str, s.shape)) for s in images)
        index = _pick_index(path, "page", page, len(images), f"images ({sizes})")
        series, page = images[index], None
    shape = tuple(series.shape)
    colour = _samples_are_colour(series.keyframe)
    axes, index = _planned(path, series.axes, shape, page, channel, megapixels, colour)
    page_shape = tuple(series.keyframe.shape)
    leading = len(shape) - len(page_shape)
    if (
        axes == series.axes
        and leading >= 0
        and shape[leading:] == page_shape
        and int(np.prod(shape[:leading])) == len(series.pages)
    ):  # read just the one page holding the plane and channel asked for
        key = int(np.ravel_multi_index(index[:leading], shape[:leading])) if leading else 0
        array = np.asarray(tif.asarray(key=key, series=series)).reshape(page_shape)
        return array, axes[leading:], index[leading:]
    return series.asarray(), axes, index


def _read_own_page(
    path: Path, tif: tifffile.TiffFile, page: int | None, channel: int | None, megapixels: float
) -> tuple[np.ndarray, str, list[int | slice]]:
    """A TIFF of pages written one by one, of different sizes and without stack metadata:
    tifffile groups the pages of one size into a series, so ``--page`` counts the file's own
    pages instead (thumbnails flagged reduced-resolution left out), and none is chosen
    silently."""
    pages = [p for p in tif.pages if not p.is_reduced] or list(tif.pages)
    chosen = pages[0]
    if len(pages) > 1:
        sizes = ", ".join("x".join(map(str, p.shape)) for p in pages[:8])
        sizes += ", ..." if len(pages) > 8 else ""
        chosen = pages[_pick_index(path, "page", page, len(pages), f"pages ({sizes})")]
        page = None
    colour = _samples_are_colour(chosen)
    axes, index = _planned(
        path, chosen.axes, tuple(chosen.shape), page, channel, megapixels, colour
    )
    return chosen.asarray(), axes, index


def _samples_are_colour(page: tifffile.TiffPage) -> bool:
    """Whether a page's samples are one colour image (RGB, or gray plus alpha) rather than
    separate channels, which the TIFF's photometric tag and extra-sample types tell: a
    MINISBLACK page of 2-4 samples is a multichannel stack (DAPI may be any of them)."""
    photometric = tifffile.PHOTOMETRIC
    if page.photometric in (photometric.RGB, photometric.YCBCR, photometric.PALETTE):
        return True
    extra = tuple(page.extrasamples)
    alpha = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
    return page.samplesperpixel == 2 and len(extra) == 1 and extra[0] in alpha


def _planned(
    path: Path,
    axes: str,
    shape: tuple[int, ...],
    page: int | None,
    channel: int | None,
    megapixels: float,
    colour: bool,
) -> tuple[str, list[int | slice]]:
    """The logical axes of an array of ``shape`` and the index of the plane asked for; its
    size is refused before any pixel is read."""
    axes = _logical_axes(axes, shape)
    _check_size(path, (shape[axes.index("Y")], shape[axes.index("X")]), megapixels)
    return axes, _plan(path, axes, shape, page, channel, colour)


def _native(array: np.ndarray) -> np.ndarray:
    """Big-endian TIFF data in the machine's byte order, which OpenCV and ONNX expect."""
    if array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("="))
    return array


def _logical_axes(axes: str, shape: tuple[int, ...]) -> str:
    """Fix tifffile's generic axes for a channels-last stack it stored as pages, e.g. (H, W, 5)."""
    if (
        len(shape) == 3
        and all(axis in _GENERIC_AXES + "YX" for axis in axes)
        and shape[2] <= 16 < min(shape[0], shape[1])
    ):
        return "YXC"
    return axes


def _plane_count(axes: str, shape: tuple[int, ...]) -> int:
    sizes = [n for a, n in zip(axes, shape, strict=True) if a not in "YX" + _CHANNEL_AXES]
    return int(np.prod(sizes))


def _pick_index(path: Path, option: str, value: int | None, count: int, what: str) -> int:
    """Validate ``--page``/``--channel`` against what the file has; name the file if wrong."""
    if value is None:
        raise ImageReadError(
            path, f"has {count} {what}; choose one with --{option} N (0 to {count - 1})"
        )
    if not 0 <= value < count:
        raise ImageReadError(
            path, f"--{option} {value} is out of range: the image has {count} {what}"
        )
    return value


def _plan(
    path: Path,
    axes: str,
    shape: tuple[int, ...],
    page: int | None,
    channel: int | None,
    colour: bool = True,
) -> list[int | slice]:
    """One index per axis: a number for plane and channel axes, a full slice for Y, X and
    colour (``colour``: 2-4 samples per pixel are a colour image, not channels)."""
    planes = [i for i, a in enumerate(axes) if a not in "YX" + _CHANNEL_AXES and shape[i] > 1]
    channels = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES and shape[i] > 1]
    if (
        channel is not None
        and page is None
        and not channels
        and len(planes) == 1
        and axes[planes[0]] in _GENERIC_AXES
    ):
        channels, planes = planes, []  # a plain (C, H, W) stack: the user says it is channels
    if len(channels) > 1:
        raise ImageReadError(path, f"unsupported layout: several channel axes ({axes} {shape})")
    index: list[int | slice] = [0 if n == 1 else slice(None) for n in shape]
    index[axes.index("Y")] = index[axes.index("X")] = slice(None)
    plane_count = int(np.prod([shape[i] for i in planes]))
    if planes or page is not None:
        plane_axes = "".join(axes[i] for i in planes)
        if not planes:
            described = "page"
        elif plane_axes in _GENERIC_AXES:
            described = "pages (if they are channels, use --channel N instead)"
        else:
            described = f"pages/planes (axes {plane_axes})"
        flat = _pick_index(path, "page", page, plane_count, described)
        for i, value in zip(
            planes, np.unravel_index(flat, [shape[i] for i in planes]), strict=True
        ):
            index[i] = int(value)
    if channels:
        axis = channels[0]
        colour = colour and axes[axis] == "S" and shape[axis] in (2, 3, 4)
        if channel is not None or not colour:
            index[axis] = _pick_index(path, "channel", channel, shape[axis], "channels")
    elif channel is not None:
        _pick_index(path, "channel", channel, 1, "channel")
    return index


def _apply(array: np.ndarray, axes: str, index: list[int | slice]) -> np.ndarray:
    """Index ``array`` and order what is left as (Y, X[, S])."""
    kept = [a for a, i in zip(axes, index, strict=True) if isinstance(i, slice)]
    array = array[tuple(index)]
    order = [kept.index(a) for a in "YX"] + [i for i, a in enumerate(kept) if a not in "YX"]
    return np.ascontiguousarray(array.transpose(order))
