"""The quick-look overlay shows the image as captured, with each nucleus outlined."""

from __future__ import annotations

import numpy as np

from edgeseg.overlay import displayed, draw_overlay


def _slide() -> tuple[np.ndarray, np.ndarray]:
    """A pink stained-slide background with one purple nucleus, and its labels."""
    image = np.empty((40, 40, 3), np.uint8)
    image[:] = (235, 180, 215)
    labels = np.zeros((40, 40), np.uint16)
    labels[10:20, 10:20] = 1
    image[labels == 1] = (90, 40, 140)
    return image, labels


def test_stained_slide_keeps_its_colours_and_polarity() -> None:
    image, labels = _slide()
    overlay = draw_overlay(image, labels)
    background, nucleus = overlay[30, 30], overlay[15, 15]
    assert background[0] > background[1] and background[2] > background[1]  # still pink
    assert background.sum() > nucleus.sum()  # bright background, dark nucleus: not inverted


def test_dim_16bit_image_is_stretched_to_full_range() -> None:
    image = np.full((32, 32), 100, np.uint16)
    image[8:24, 8:24] = 400
    shown = displayed(image)
    assert shown.shape == (32, 32, 3) and shown.dtype == np.uint8
    assert shown[0, 0, 0] == 0 and shown[16, 16, 0] == 255


def test_rgba_alpha_is_dropped() -> None:
    image, _ = _slide()
    rgba = np.concatenate([image, np.full((40, 40, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(displayed(rgba), displayed(image))


def test_only_nucleus_edges_are_coloured() -> None:
    image, labels = _slide()
    labels[10:20, 20:30] = 2  # a touching neighbour
    overlay, plain = draw_overlay(image, labels), displayed(image)
    changed = np.any(overlay != plain, axis=2)
    assert changed[10, 15] and changed[15, 19] and changed[15, 20]  # outer and shared edges
    assert not changed[15, 15] and not changed[30, 30]  # interior and background untouched
    assert not np.array_equal(overlay[15, 19], overlay[15, 20])  # neighbours differ in colour
