"""read_plane: every input layout a lab produces comes out as the one plane to segment."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from edgeseg.imageio import ImageReadError, read_plane, write_labels


def _planes(count: int, shape: tuple[int, int] = (24, 32), dtype=np.uint16) -> np.ndarray:
    """``count`` planes, plane i filled with i * 50 + 7, so a wrong pick is obvious."""
    return np.stack([np.full(shape, i * 50 + 7, dtype) for i in range(count)])


def test_gray_png_8bit(tmp_path: Path) -> None:
    image = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    np.testing.assert_array_equal(read_plane(tmp_path / "a.png"), image)


def test_rgba_png_keeps_colour_and_channel_picks_one(tmp_path: Path) -> None:
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 255
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_plane(tmp_path / "a.png"), rgba)
    assert (read_plane(tmp_path / "a.png", channel=2) == 30).all()


def test_rgb_jpeg(tmp_path: Path) -> None:
    image = np.full((24, 32, 3), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    assert read_plane(tmp_path / "a.jpg").shape == (24, 32, 3)


def test_16bit_float_and_big_endian_tiff(tmp_path: Path) -> None:
    image = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80
    tifffile.imwrite(tmp_path / "u16.tif", image)
    tifffile.imwrite(tmp_path / "be.tif", image.astype(">u2"), byteorder=">")
    tifffile.imwrite(tmp_path / "f32.tif", image.astype(np.float32) / 7)
    np.testing.assert_array_equal(read_plane(tmp_path / "u16.tif"), image)
    big_endian = read_plane(tmp_path / "be.tif")
    assert big_endian.dtype.isnative
    np.testing.assert_array_equal(big_endian, image)
    np.testing.assert_allclose(read_plane(tmp_path / "f32.tif"), image / 7, rtol=1e-6)


def test_float_nan_becomes_finite(tmp_path: Path) -> None:
    image = np.ones((24, 32), np.float32)
    image[0, 0], image[0, 1] = np.nan, np.inf
    tifffile.imwrite(tmp_path / "nan.tif", image)
    assert np.isfinite(read_plane(tmp_path / "nan.tif")).all()


@pytest.mark.parametrize(
    "write",
    [
        lambda path, data: tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX"}),
        lambda path, data: tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX"}),
        lambda path, data: tifffile.imwrite(path, data, photometric="minisblack"),
    ],
    ids=["imagej", "ome", "plain-stack"],
)
def test_channel_first_stack_needs_and_honours_channel(tmp_path: Path, write) -> None:
    path = tmp_path / "stack.tif"
    write(path, _planes(3))
    with pytest.raises(ImageReadError, match="--channel N|--page N") as error:
        read_plane(path)
    assert error.value.path == path
    assert (read_plane(path, channel=2) == 107).all()
    with pytest.raises(ImageReadError, match="out of range"):
        read_plane(path, channel=3)


def test_channels_last_tiff_needs_channel(tmp_path: Path) -> None:
    path = tmp_path / "hwc.tif"
    tifffile.imwrite(path, np.moveaxis(_planes(5, dtype=np.uint8), 0, -1))
    with pytest.raises(ImageReadError, match="5 channels"):
        read_plane(path)
    assert (read_plane(path, channel=4) == 207).all()


@pytest.mark.parametrize(
    ("samples", "options", "colour"),
    [
        (3, {"photometric": "rgb"}, True),
        (4, {"photometric": "rgb", "extrasamples": ["unassalpha"]}, True),
        (2, {"photometric": "minisblack", "extrasamples": ["assocalpha"]}, True),
        (2, {"photometric": "minisblack"}, False),  # e.g. a membrane and a DAPI channel
        (3, {"photometric": "minisblack"}, False),
        (4, {"photometric": "minisblack", "planarconfig": "separate"}, False),
    ],
)
def test_samples_are_colour_only_when_the_tiff_says_so(
    tmp_path: Path, samples: int, options: dict, colour: bool
) -> None:
    path = tmp_path / "samples.tif"
    data = np.moveaxis(_planes(samples, dtype=np.uint8), 0, -1)
    if options.get("planarconfig") == "separate":
        data = np.moveaxis(data, -1, 0)
    tifffile.imwrite(path, data, **options)
    if colour:
        assert read_plane(path).shape == (24, 32, samples)
    else:
        with pytest.raises(ImageReadError, match=f"has {samples} channels; choose one"):
            read_plane(path)
    assert (read_plane(path, channel=1) == 57).all()


def test_the_format_is_read_from_the_content_not_the_name(tmp_path: Path) -> None:
    tiff_named_png, png_named_tiff = tmp_path / "stack.png", tmp_path / "plain.tif"
    tifffile.imwrite(tiff_named_png, _planes(3), imagej=True, metadata={"axes": "ZYX"})
    cv2.imwrite(str(tmp_path / "plain.png"), np.full((24, 32), 9, np.uint8))
    (tmp_path / "plain.png").rename(png_named_tiff)
    with pytest.raises(ImageReadError, match="has 3 pages"):  # not page 0 alone, silently
        read_plane(tiff_named_png)
    assert (read_plane(png_named_tiff) == 9).all()


def test_multipage_tiff_needs_and_honours_page(tmp_path: Path) -> None:
    imagej = tmp_path / "z.tif"
    tifffile.imwrite(imagej, _planes(4), imagej=True, metadata={"axes": "ZYX"})
    appended = tmp_path / "pages.tif"
    for index, plane in enumerate(_planes(3)):
        tifffile.imwrite(appended, plane, append=index > 0)
    for path, count in ((imagej, 4), (appended, 3)):
        with pytest.raises(ImageReadError, match=f"has {count} pages"):
            read_plane(path)
        assert (read_plane(path, page=count - 1) == (count - 1) * 50 + 7).all()


def test_pages_of_different_sizes_are_never_picked_silently(tmp_path: Path) -> None:
    path = tmp_path / "mixed.tif"
    tifffile.imwrite(path, np.full((40, 30), 9, np.uint8))
    tifffile.imwrite(path, np.full((8, 6), 5, np.uint8), append=True)  # e.g. a second field
    with pytest.raises(ImageReadError, match=r"has 2 pages \(40x30, 8x6\)"):
        read_plane(path)
    assert read_plane(path, page=0).shape == (40, 30)
    assert (read_plane(path, page=1) == 5).all()
    grouped = tmp_path / "grouped.tif"  # tifffile groups pages 0 and 2 (same size) together
    with tifffile.TiffWriter(grouped) as writer:
        for value, shape in ((1, (64, 64)), (2, (52, 34)), (3, (64, 64))):
            writer.write(np.full(shape, value, np.uint8), metadata=None)
    with pytest.raises(ImageReadError, match=r"has 3 pages \(64x64, 52x34, 64x64\)"):
        read_plane(grouped)
    assert [int(read_plane(grouped, page=i)[0, 0]) for i in range(3)] == [1, 2, 3]
    marked = tmp_path / "with_thumbnail.tif"
    tifffile.imwrite(marked, np.full((40, 30), 9, np.uint8))
    tifffile.imwrite(marked, np.full((8, 6), 5, np.uint8), append=True, subfiletype=1)
    assert read_plane(marked).shape == (40, 30)  # a page flagged reduced-resolution is no image
    many = tmp_path / "many.tif"  # fields of two sizes written page by page: a short message
    with tifffile.TiffWriter(many) as writer:
        for index in range(300):
            writer.write(np.zeros((8, 8 - index % 2), np.uint8), metadata=None)
    with pytest.raises(ImageReadError, match=r"has 300 pages \((8x8, 8x7, ){4}\.\.\.\)") as error:
        read_plane(many)
    assert len(str(error.value)) < 400


def test_ome_hyperstack_page_and_channel(tmp_path: Path) -> None:
    data = np.stack([_planes(2) + z * 1000 for z in range(3)])  # Z, C, Y, X
    path = tmp_path / "zc.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX"})
    assert (read_plane(path, page=2, channel=1) == 2057).all()
    with pytest.raises(ImageReadError, match="--channel"):
        read_plane(path, page=0)


def test_page_out_of_range_on_single_image(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="--page 1 is out of range"):
        read_plane(tmp_path / "a.png", page=1)


def test_huge_image_refused_before_decoding(tmp_path: Path) -> None:
    # A PNG header claiming 60000 x 60000 pixels and nothing else: refused by its header.
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (60000).to_bytes(4, "big") * 2
    (tmp_path / "huge.png").write_bytes(header + b"\x08\x00\x00\x00\x00" + b"\x00" * 64)
    with pytest.raises(ImageReadError, match="60000 x 60000 .*above the limit"):
        read_plane(tmp_path / "huge.png")
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((100, 200), np.uint8))
    for name in ("a.jpg", "a.tif"):
        with pytest.raises(ImageReadError, match="200 x 100"):
            read_plane(tmp_path / name, max_megapixels=0.019)
        assert read_plane(tmp_path / name, max_megapixels=0.021).shape[:2] == (100, 200)


@pytest.mark.parametrize("name", ["bad.png", "bad.tif", "bad.jpg"])
def test_corrupt_file_names_the_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError) as error:
        read_plane(tmp_path / name)
    assert name in str(error.value)


@pytest.mark.skipif(sys.platform == "win32", reason="file size limits are a POSIX feature")
@pytest.mark.parametrize("write", ["labels", "overlay"])
def test_a_png_cut_short_by_a_full_disk_fails_and_keeps_the_earlier_file(
    tmp_path: Path, write: str
) -> None:
    """cv2.imwrite reports success when the disk fills as it closes the file."""
    import resource

    from edgeseg.overlay import write_overlay

    rng = np.random.default_rng(0)
    path = tmp_path / f"x_{write}.png"
    if write == "labels":
        array = rng.integers(0, 60000, (256, 256), dtype=np.uint16)
        writer = write_labels
    else:
        array = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        writer = write_overlay
    path.write_bytes(b"earlier result")
    size = len(cv2.imencode(".png", array)[1])
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    # the disk fills within the last buffer, which is flushed when the file is closed
    resource.setrlimit(resource.RLIMIT_FSIZE, (size - 100, limits[1]))
    try:
        with pytest.raises(OSError) as error:
            writer(path, array)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert error.value.filename == str(path)
    assert path.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_lzw_tiffs_are_read(tmp_path: Path) -> None:
    """LZW, common in microscope and scanner exports (written here by OpenCV's libtiff),
    needs imagecodecs, a runtime dependency for that reason."""
    lzw = [cv2.IMWRITE_TIFF_COMPRESSION, 5]
    gray = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)
    cv2.imwrite(str(tmp_path / "gray.tif"), gray, lzw)
    np.testing.assert_array_equal(read_plane(tmp_path / "gray.tif"), gray)
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "rgb.tif"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), lzw)
    np.testing.assert_array_equal(read_plane(tmp_path / "rgb.tif"), rgb)
    planes = [np.full((24, 32), 50 * i + 7, np.uint8) for i in range(3)]
    cv2.imwritemulti(str(tmp_path / "stack.tif"), planes, lzw)
    np.testing.assert_array_equal(read_plane(tmp_path / "stack.tif", page=2), planes[2])
    with pytest.raises(ImageReadError, match="page"):
        read_plane(tmp_path / "stack.tif")  # a stack still needs --page


@pytest.mark.skipif(sys.platform == "win32", reason="named pipes are a POSIX feature here")
def test_a_pipe_or_folder_is_named_for_what_it_is(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "stream.png")
    with pytest.raises(ImageReadError, match="stream.png: not a regular file"):
        read_plane(tmp_path / "stream.png")
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(ImageReadError, match="dir.tif: a folder, not an image file"):
        read_plane(tmp_path / "dir.tif")
    with pytest.raises(ImageReadError, match="gone.png: no such file"):
        read_plane(tmp_path / "gone.png")


def test_png_writer_refuses_what_a_png_cannot_hold(tmp_path: Path) -> None:
    from edgeseg.imageio import write_png

    for array in (np.zeros((4, 4), np.int32), np.zeros((4, 4, 2), np.uint8)):
        with pytest.raises(ValueError, match="a PNG holds 8- or 16-bit"):
            write_png(tmp_path / "x.png", array)
    assert not list(tmp_path.iterdir())
