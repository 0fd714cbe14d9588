"""`segment(image, diameter=...)`: rescale to the model's nucleus size, segment, restore.

A fake backend whose output is the image itself (foreground = normalised intensity, no
boundary) shows exactly what the network was given; nuclei are synthetic disks.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import synthetic_nuclei

from edgeseg.backends.base import Backend
from edgeseg.maskrcnn import MaskRCNNConfig
from edgeseg.maskrcnn_model import MaskRCNNGraphs, MaskRCNNSegmenter
from edgeseg.rescale import parse_diameter
from edgeseg.segmenter import Segmenter

MODEL_DIAMETER = 20.0
MANIFEST = {
    "name": "fake-unet",
    "nucleus_diameter": {"median_px": MODEL_DIAMETER, "source": "synthetic"},
    "tile": {"size": 512, "overlap": 32},  # one tile: the backend sees the whole image
    "postprocess": {"min_area": 8},
}


class IdentityBackend(Backend):
    """Foreground = the normalised image, boundary = 0; remembers every batch shape."""

    name = "identity"

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        return np.concatenate([batch, np.zeros_like(batch)], axis=-1)


def _segmenter(manifest: dict | None = None) -> Segmenter:
    return Segmenter(IdentityBackend(), manifest or MANIFEST)


def _foreground_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a > 0, b > 0).sum() / np.logical_or(a > 0, b > 0).sum())


@pytest.mark.parametrize("diameter", [7.0, 33.0, 80.0])
def test_labels_come_back_at_the_original_shape_numbered_1_to_n(diameter: float) -> None:
    image, _ = synthetic_nuclei((101, 157), count=10, seed=1, touching=False)
    labels = _segmenter().segment(image, diameter=diameter)
    assert labels.dtype == np.uint16 and labels.shape == image.shape
    assert labels.max() > 0
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))


def test_colour_images_are_rescaled_too() -> None:
    image, _ = synthetic_nuclei((90, 120), seed=2)
    segmenter = _segmenter()
    colour = segmenter.segment(np.dstack([image] * 3), diameter=40)
    np.testing.assert_array_equal(colour, segmenter.segment(image, diameter=40))
    assert segmenter.segment(image[..., None], diameter=40).shape == image.shape


@pytest.mark.parametrize("diameter", [MODEL_DIAMETER, MODEL_DIAMETER * 1.04, MODEL_DIAMETER / 1.04])
def test_the_models_own_diameter_changes_nothing(diameter: float) -> None:
    image, _ = synthetic_nuclei((96, 130), seed=3)
    segmenter = _segmenter()
    np.testing.assert_array_equal(
        segmenter.segment(image, diameter=diameter), segmenter.segment(image)
    )
    assert segmenter.backend.shapes == [(1, 96, 130, 1)] * 2


def test_nuclei_twice_the_models_size_are_seen_at_half_size() -> None:
    image, truth = synthetic_nuclei((120, 160), count=8, seed=4, touching=False)
    big_image = cv2.resize(image, (320, 240), interpolation=cv2.INTER_LINEAR)
    segmenter = _segmenter()
    labels = segmenter.segment(big_image, diameter=2 * MODEL_DIAMETER)
    assert segmenter.backend.shapes == [(1, 120, 160, 1)]
    assert labels.shape == (240, 320)
    big_truth = cv2.resize(truth, (320, 240), interpolation=cv2.INTER_NEAREST_EXACT)
    assert _foreground_iou(labels, big_truth) > 0.9
    blobs, _ = cv2.connectedComponents((truth > 0).astype(np.uint8))
    assert labels.max() == blobs - 1  # disks that touch are one blob for this fake model


def test_slivers_of_the_resize_below_min_area_are_dropped() -> None:
    image = np.zeros((200, 200), np.uint8)
    image[150:180, 150:180] = 255
    image[100:103, 100:103] = 255  # 9 px: kept at the model's scale (x4), 9 px again after
    image[20:22, 20:22] = 255  # 4 px: above min_area (8) once enlarged, a sliver once back
    labels = _segmenter().segment(image, diameter=MODEL_DIAMETER / 4)
    assert labels.max() == 2 and labels[101, 101] > 0 and labels[20, 20] == 0


def test_a_model_without_a_recorded_diameter_is_refused_by_name() -> None:
    manifest = {key: value for key, value in MANIFEST.items() if key != "nucleus_diameter"}
    segmenter = _segmenter(manifest)
    with pytest.raises(ValueError, match="'fake-unet' records no nucleus_diameter"):
        segmenter.segment(np.zeros((64, 64), np.uint8), diameter=40)
    assert segmenter.segment(np.zeros((64, 64), np.uint8)).max() == 0  # without: as before
    damaged = _segmenter({**manifest, "nucleus_diameter": {"median_px": -3}})
    with pytest.raises(ValueError, match="'fake-unet' records an invalid nucleus_diameter"):
        damaged.segment(np.zeros((64, 64), np.uint8), diameter=40)


@pytest.mark.parametrize("diameter", [0.0, -5.0, float("nan"), float("inf"), 1e-320])
def test_non_positive_diameters_are_refused(diameter: float) -> None:
    with pytest.raises(ValueError, match="positive number of pixels"):
        _segmenter().segment(np.zeros((64, 64), np.uint8), diameter=diameter)


@pytest.mark.parametrize(
    ("diameter", "problem"),
    [(MODEL_DIAMETER / 500, "more than 100 megapixels"), (MODEL_DIAMETER * 10, "smaller than 16")],
)
def test_absurd_scales_are_refused_before_inference(diameter: float, problem: str) -> None:
    segmenter = _segmenter()
    with pytest.raises(ValueError, match=f"{problem}.*check the diameter"):
        segmenter.segment(np.zeros((100, 100), np.uint8), diameter=diameter)
    assert segmenter.backend.shapes == []


def test_an_absurd_diameter_is_named_in_a_readable_message() -> None:
    with pytest.raises(ValueError, match=r"to 1\.\d+e\+\d+x1\.\d+e\+\d+, more than") as error:
        _segmenter().segment(np.zeros((64, 64), np.uint8), diameter=1e-300)
    assert len(str(error.value)) < 300


def test_the_users_megapixel_limit_bounds_the_rescaled_image() -> None:
    segmenter, image = _segmenter(), np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError, match=r"more than 0.02 megapixels \(--max-megapixels\)"):
        segmenter.segment(image, diameter=MODEL_DIAMETER / 2, max_megapixels=0.02)
    assert segmenter.segment(image, MODEL_DIAMETER / 2, max_megapixels=0.05).shape == (100, 100)


def test_auto_re_segments_only_nuclei_far_bigger_than_the_models() -> None:
    from edgeseg.rescale import AUTO_RATIO, median_diameter

    image, truth = synthetic_nuclei((80, 100), count=6, seed=5, touching=False)
    segmenter = _segmenter()
    found = median_diameter(segmenter.segment(image))
    assert found is not None and found < AUTO_RATIO * MODEL_DIAMETER  # seen as it is
    segmenter.backend.shapes.clear()
    np.testing.assert_array_equal(segmenter.segment(image, "auto"), segmenter.segment(image))
    assert segmenter.backend.shapes == [(1, 80, 100, 1)] * 2

    big = cv2.resize(image, (500, 400), interpolation=cv2.INTER_LINEAR)  # nuclei x5
    segmenter.backend.shapes.clear()
    labels = segmenter.segment(big, diameter="auto")
    first_pass = median_diameter(Segmenter(IdentityBackend(), MANIFEST).segment(big))
    assert first_pass > AUTO_RATIO * MODEL_DIAMETER
    scale = MODEL_DIAMETER / first_pass
    assert segmenter.backend.shapes == [
        (1, 400, 500, 1),
        (1, round(400 * scale), round(500 * scale), 1),
    ]
    assert labels.shape == (400, 500)
    big_truth = cv2.resize(truth, (500, 400), interpolation=cv2.INTER_NEAREST_EXACT)
    assert _foreground_iou(labels, big_truth) > 0.9


def test_auto_keeps_the_first_pass_when_shrinking_leaves_too_little() -> None:
    strip = np.zeros((40, 600), np.uint8)
    strip[2:38, 20:580] = 255  # one object ~160 px across: shrunk x0.125 the strip is 5 px high
    segmenter = _segmenter()
    labels = segmenter.segment(strip, diameter="auto")
    np.testing.assert_array_equal(labels, segmenter.segment(strip))
    assert labels.max() == 1


def test_auto_leaves_an_empty_image_alone_and_needs_a_recorded_diameter() -> None:
    segmenter = _segmenter()
    assert segmenter.segment(np.zeros((64, 64), np.uint8), diameter="auto").max() == 0
    assert segmenter.backend.shapes == [(1, 64, 64, 1)]
    manifest = {key: value for key, value in MANIFEST.items() if key != "nucleus_diameter"}
    bare = _segmenter(manifest)
    with pytest.raises(ValueError, match="'fake-unet' records no nucleus_diameter"):
        bare.segment(np.zeros((64, 64), np.uint8), diameter="auto")
    assert bare.backend.shapes == []


def test_maskrcnn_takes_the_same_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(batch: np.ndarray) -> dict[str, np.ndarray]:
        raise AssertionError("the graphs are replaced by a stand-in here")

    graphs = MaskRCNNGraphs("fake", never, never, never)
    config = MaskRCNNConfig().to_dict()
    bare = MaskRCNNSegmenter(graphs, {"name": "fake-maskrcnn", "runtime": config})
    with pytest.raises(ValueError, match="'fake-maskrcnn' records no nucleus_diameter"):
        bare.segment(np.zeros((64, 64), np.uint8), diameter=40)

    sized = MaskRCNNSegmenter(graphs, {**MANIFEST, "runtime": config})
    seen: list[tuple[int, ...]] = []

    def threshold(normalised: np.ndarray) -> np.ndarray:
        seen.append(normalised.shape)
        return cv2.connectedComponents((normalised > 0.5).astype(np.uint8))[1].astype(np.uint16)

    monkeypatch.setattr(sized.model, "segment", threshold)
    image, truth = synthetic_nuclei((120, 160), count=8, seed=5, touching=False)
    labels = sized.segment(image, diameter=2 * MODEL_DIAMETER)
    assert seen == [(60, 80)] and labels.shape == image.shape
    assert _foreground_iou(labels, truth) > 0.8


@pytest.mark.parametrize(
    ("text", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("80", 80.0), ("12.5", 12.5)]
)
def test_diameter_text_is_parsed_as_pixels_or_auto(text: str, expected: object) -> None:
    assert parse_diameter(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "nan", "inf", "big", ""])
def test_diameter_text_that_is_no_size_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="neither a positive number of pixels nor 'auto'"):
        parse_diameter(text)
