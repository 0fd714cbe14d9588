"""Normalisation and the probabilities -> instances step every model shares."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import synthetic_he, synthetic_nuclei

from edgeseg.postprocess import PostprocessSettings, instances_from_probabilities
from edgeseg.preprocess import (
    RGB_FROM_HED,
    hematoxylin_density,
    image_kind,
    normalize,
    preprocess_spec,
    preprocessing,
)


def test_normalize_is_bit_depth_invariant() -> None:
    image, _ = synthetic_nuclei()
    as16 = image.astype(np.uint16) * 257
    asfloat = image.astype(np.float32) / 255.0
    np.testing.assert_allclose(normalize(image), normalize(as16), atol=1e-5)
    np.testing.assert_allclose(normalize(image), normalize(asfloat), atol=1e-5)


def test_brightfield_is_inverted_so_nuclei_are_bright() -> None:
    image, labels = synthetic_nuclei()
    brightfield = 255 - image
    assert image_kind(image) == "fluorescence"
    assert image_kind(brightfield) == "brightfield"
    normalized = normalize(brightfield)
    assert normalized[labels > 0].mean() > normalized[labels == 0].mean() + 0.5


def test_stained_rgb_is_detected_and_inverted() -> None:
    image, labels = synthetic_nuclei()
    rgb = np.stack([255 - image // 2, 255 - image, 255 - image // 3], axis=-1).astype(np.uint8)
    rgba = np.dstack([rgb, np.full(image.shape, 255, np.uint8)])
    assert image_kind(rgba) == "stained"
    normalized = normalize(rgba)
    assert normalized[labels > 0].mean() > normalized[labels == 0].mean() + 0.5


def test_touching_nuclei_are_split_by_the_boundary_map() -> None:
    labels = np.zeros((40, 60), np.uint16)
    cv2.circle(labels, (20, 20), 10, 1, -1)
    right = np.zeros_like(labels)
    cv2.circle(right, (38, 20), 10, 1, -1)
    labels[(right > 0) & (labels == 0)] = 2
    foreground = (labels > 0).astype(np.float32)
    boundary = np.zeros_like(foreground)
    boundary[:, 28:31] = 1.0  # the contact line
    result = instances_from_probabilities(foreground, boundary)
    assert result.dtype == np.uint16
    assert result.max() == 2
    # Every pixel of the union is assigned, and each side goes to one instance.
    assert ((result > 0) == (labels > 0)).all()
    assert len(np.unique(result[labels == 1])) <= 2
    assert np.unique(result[:, :25][labels[:, :25] > 0]).size == 1


def test_small_objects_are_dropped_and_seedless_ones_kept() -> None:
    foreground = np.zeros((30, 30), np.float32)
    foreground[2:4, 2:4] = 1  # 4 px: below min_area
    foreground[10:14, 10:14] = 1  # 16 px, fully covered by boundary: no seed
    boundary = np.zeros_like(foreground)
    boundary[10:14, 10:14] = 1
    result = instances_from_probabilities(foreground, boundary, PostprocessSettings(min_area=8))
    assert result.max() == 1
    assert (result == 1).sum() == 16


def test_empty_prediction() -> None:
    zeros = np.zeros((16, 16), np.float32)
    assert instances_from_probabilities(zeros, zeros).max() == 0


def test_tiny_seeds_do_not_fragment_a_nucleus() -> None:
    foreground = np.zeros((40, 40), np.float32)
    cv2.circle(foreground, (20, 20), 12, 1.0, -1)
    boundary = np.ones_like(foreground)
    boundary[12:19, 14:27] = 0.0  # the nucleus' real seed, 91 px
    boundary[27:29, 19:21] = 0.0  # a 4-px hole in a noisy boundary map
    fragmented = instances_from_probabilities(foreground, boundary)
    whole = instances_from_probabilities(
        foreground, boundary, PostprocessSettings(min_seed_area=10)
    )
    assert fragmented.max() == 2
    assert whole.max() == 1
    assert ((whole > 0) == (foreground > 0)).all()


def test_hematoxylin_density_reads_back_the_nuclear_stain_alone() -> None:
    rng = np.random.default_rng(1)
    hematoxylin, eosin = rng.uniform(0, 1.5, (2, 64, 64))
    density = hematoxylin[..., None] * RGB_FROM_HED[0] + eosin[..., None] * RGB_FROM_HED[1]
    measured = hematoxylin_density(np.exp(-density).astype(np.float32))
    offset = measured - hematoxylin  # the image's white level shifts every pixel alike
    assert np.ptp(offset) < 1e-3
    assert abs(np.corrcoef(measured.ravel(), eosin.ravel())[0, 1]) < 0.05


def test_hematoxylin_channel_ignores_eosin_pink_cytoplasm_that_luma_sees() -> None:
    image, labels = synthetic_he()
    assert image_kind(image) == "stained"
    cytoplasm = (labels == 0) & (np.arange(128) < 80)[None, :]
    luma, hematoxylin = normalize(image), normalize(image, "hematoxylin")
    assert hematoxylin[labels > 0].mean() - hematoxylin[cytoplasm].mean() > 0.7
    assert luma[labels > 0].mean() - luma[cytoplasm].mean() < 0.5


def test_hematoxylin_choice_leaves_fluorescence_and_brightfield_alone() -> None:
    image, _ = synthetic_nuclei()
    for gray in (image, 255 - image, np.dstack([image] * 3)):
        np.testing.assert_array_equal(normalize(gray, "hematoxylin"), normalize(gray))


def test_zero_channels_and_black_borders_do_not_swamp_the_hematoxylin_density() -> None:
    image, labels = synthetic_he()
    clean = normalize(image, "hematoxylin")
    saturated = image.copy()
    saturated[::7, ::5, 1] = 0  # green saturated to 0 in scattered pixels, as in dense nuclei
    bordered = image.copy()
    bordered[:6] = 0  # a black border, scale bar or padding
    for damaged in (saturated, bordered):
        inside = normalize(damaged, "hematoxylin")[6:][labels[6:] > 0]
        assert abs(inside.mean() - clean[6:][labels[6:] > 0].mean()) < 0.15


def test_colour_on_black_is_fluorescence_not_a_stain() -> None:
    image, labels = synthetic_nuclei()
    blue = np.dstack([image // 8, image // 4, image])  # DAPI saved as an RGB composite
    assert image_kind(blue) == "fluorescence"
    for channel in ("luma", "hematoxylin"):
        normalized = normalize(blue, channel)
        assert normalized[labels > 0].mean() > normalized[labels == 0].mean() + 0.5


def test_the_manifest_names_the_stained_channel_and_old_manifests_mean_luma() -> None:
    assert preprocess_spec() == {"name": "percentile-gray", "version": 1}  # as shipped so far
    assert preprocessing({}) == "luma"
    assert preprocessing({"preprocess": preprocess_spec("hematoxylin")}) == "hematoxylin"
    with pytest.raises(ValueError, match="'eosin'"):
        preprocessing({"preprocess": {"stained_channel": "eosin"}})
    with pytest.raises(ValueError, match="'eosin'"):
        normalize(synthetic_he()[0], "eosin")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("foreground_threshold", -1, r"foreground_threshold must lie in \[0, 1\], got -1"),
        ("min_seed_area", -2, "min_seed_area must be 0 or more, got -2"),
        ("boundary_threshold", float("nan"), "boundary_threshold must be a number, got nan"),
        ("min_area", "8", "min_area must be a number, got '8'"),
    ],
)
def test_settings_that_would_segment_nonsense_are_refused(setting, value, message) -> None:
    with pytest.raises(ValueError, match=message):
        PostprocessSettings(**{setting: value})
    assert PostprocessSettings(**{setting: np.float32(0.5)}).to_dict()[setting] == 0.5
