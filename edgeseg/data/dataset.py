"""Read nucleus datasets into (image, uint16 instance labels) pairs.

Two layouts are understood, picked automatically per folder:

* Kaggle DSB2018: ``<root>/<id>/images/<id>.png`` and ``<root>/<id>/masks/*.png``, one binary
  mask per nucleus; the masks are merged into one label image (nucleus k gets label k).
* Plain: ``<root>/images/<name>.<ext>`` with ``<root>/labels/<name>.<tif|png>`` (a label image
  per sample, the layout StarDist and Cellpose users already have).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgeseg.imageio import IMAGE_SUFFIXES, ImageReadError, read_image

LABEL_SUFFIXES = (".tif", ".tiff", ".png")


class DatasetError(ValueError):
    """A dataset folder or file is malformed; the message names the file."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's files are; reading is deferred so listing is cheap."""

    id: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    label_path: Path | None = None

    def files(self) -> tuple[Path, ...]:
        extra = (self.label_path,) if self.label_path else ()
        return (self.image_path, *self.mask_paths, *extra)


@dataclass
class Sample:
    id: str
    image: np.ndarray
    labels: np.ndarray


def _ours(path: Path) -> bool:
    """Not what other tools leave in data folders: hidden files and folders (macOS's ``._``
    copies, ``.ipynb_checkpoints``) and the ``__MACOSX`` folder of zips made on a Mac."""
    return not path.name.startswith(".") and path.name != "__MACOSX"


def _kaggle_refs(root: Path) -> list[SampleRef]:
    refs = []
    for sample_dir in sorted(p for p in root.iterdir() if p.is_dir() and _ours(p)):
        images_dir = sample_dir / "images"
        if not images_dir.is_dir():
            split = any((child / "images").is_dir() for child in sample_dir.iterdir())
            hint = f" ({root} holds whole splits: give one, e.g. {sample_dir})" if split else ""
            raise DatasetError(f"{sample_dir}: missing images/ folder{hint}")
        image_path = images_dir / f"{sample_dir.name}.png"
        if not image_path.is_file():
            found = sorted(filter(_ours, images_dir.glob("*.png")))
            if len(found) != 1:
                raise DatasetError(f"{images_dir}: expected one image named {image_path.name}")
            image_path = found[0]
        masks_dir = sample_dir / "masks"
        if not masks_dir.is_dir():  # Kaggle's first stage1_test release came without masks
            raise DatasetError(
                f"{sample_dir}: no masks/ folder, so no ground truth to train or score with "
                "(an image without nuclei has an empty masks/ folder)"
            )
        mask_paths = tuple(sorted(filter(_ours, masks_dir.glob("*.png"))))
        refs.append(SampleRef(sample_dir.name, image_path, mask_paths=mask_paths))
    return refs


def _plain_refs(root: Path) -> list[SampleRef]:
    images_dir, labels_dir = root / "images", root / "labels"
    refs: list[SampleRef] = []
    by_id: dict[str, Path] = {}
    for image_path in sorted(images_dir.iterdir()):
        if image_path.suffix.lower() not in IMAGE_SUFFIXES or not _ours(image_path):
            continue
        if image_path.stem in by_id:  # a.png and a.tif: one label image for which?
            raise DatasetError(
                f"{image_path}: same name as {by_id[image_path.stem].name}, so both would "
                f"share one label image; rename or remove one"
            )
        by_id[image_path.stem] = image_path
        candidates = [labels_dir / f"{image_path.stem}{suffix}" for suffix in LABEL_SUFFIXES]
        label_path = next((c for c in candidates if c.is_file()), None)
        if label_path is None:
            raise DatasetError(
                f"{image_path}: no label image {image_path.stem}.tif/.png in {labels_dir}"
            )
        refs.append(SampleRef(image_path.stem, image_path, label_path=label_path))
    return refs


def find_samples(root: str | os.PathLike) -> list[SampleRef]:
    """List the samples under ``root`` (either layout), sorted by id."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    if (root / "images").is_dir() and (root / "labels").is_dir():
        refs = _plain_refs(root)
    else:
        refs = _kaggle_refs(root)
    if not refs:
        raise DatasetError(
            f"{root}: no samples found (expected <id>/images/<id>.png folders "
            "or images/ + labels/ folders)"
        )
    return refs


def merge_masks(mask_paths: tuple[Path, ...], shape: tuple[int, int]) -> np.ndarray:
    """Merge one-nucleus binary masks into a uint16 label image (later masks win overlaps)."""
    labels = np.zeros(shape, dtype=np.uint16)
    for index, mask_path in enumerate(mask_paths, start=1):
        mask = read_image(mask_path)
        if mask.ndim == 3:  # a nucleus drawn in any colour; alpha (opaque everywhere) is not one
            mask = mask[..., :3].max(axis=-1)
        if mask.shape != shape:
            raise DatasetError(f"{mask_path}: mask size {mask.shape} differs from image {shape}")
        foreground = mask > 0
        if not foreground.any():
            raise DatasetError(f"{mask_path}: empty mask")
        labels[foreground] = index
    return labels


def instance_labels(path: Path, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label image as uint16 instance ids, refusing what is not one (fractions, negatives,
    the wrong size, a foreground mask) instead of truncating, wrapping or merging it; ids
    above 65535 are renumbered."""
    if labels.ndim != 2 or labels.shape != shape:
        raise DatasetError(f"{path}: label image {labels.shape} does not match image {shape}")
    if labels.dtype.kind not in "buif" or (
        labels.dtype.kind == "f" and not np.array_equal(labels, np.floor(labels))
    ):
        raise DatasetError(f"{path}: label values must be whole numbers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{path}: label values must be >= 0 (0 is background)")
    reason = binary_mask_reason(labels)
    if reason:
        raise DatasetError(f"{path}: {reason}")
    if labels.size and labels.max() > np.iinfo(np.uint16).max:
        ids, inverse = np.unique(labels, return_inverse=True)
        if len(ids) > np.iinfo(np.uint16).max:
            raise DatasetError(f"{path}: {len(ids) - 1} nuclei, more than a uint16 image holds")
        labels = inverse.reshape(labels.shape) + (ids[0] != 0)
    return labels.astype(np.uint16)


#: Regions smaller than this are stray annotation pixels, not nuclei, to the mask check.
MASK_REGION_MIN_AREA = 16


def _few_values(values: np.ndarray, most: int) -> np.ndarray | None:
    """The distinct values, in increasing order, or None when there are more than ``most``:
    a few linear passes instead of sorting every foreground pixel of a large image."""
    found = []
    while values.size:
        if len(found) == most:
            return None
        found.append(values.min())
        values = values[values != found[-1]]
    return np.array(found, dtype=values.dtype)


def binary_mask_reason(labels: np.ndarray) -> str | None:
    """Why ``labels`` looks like a foreground or class mask rather than instance labels,
    else None.

    A thresholded mask (0/1 or 0/255), or a class map (1 interior, 2 boundary), read as
    labels scores every nucleus as one: the numbers come out wrong with nothing to say so.
    At least three nucleus-sized regions, none holding half the foreground, and three times
    as many regions as label values are taken as such a mask: instance labels give every
    nucleus its own value. One nucleus with stray pixels or cut in pieces by the image edge
    is not.
    """
    values = _few_values(labels[labels > 0], most=3)
    if values is None or not values.size:  # many nuclei, or none
        return None
    _, _, stats, _ = cv2.connectedComponentsWithStats((labels > 0).astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    regions = int((areas >= MASK_REGION_MIN_AREA).sum())
    if regions < 3 or regions < 3 * values.size or areas.max() * 2 >= areas.sum():
        return None
    if values.size == 1:
        return (
            f"one label value ({values[0].item():g}) covers {regions} separate regions: a "
            "foreground mask, not an instance label image; give each nucleus its own number "
            "(e.g. skimage.measure.label)"
        )
    listed = ", ".join(f"{value.item():g}" for value in values)
    return (
        f"{values.size} label values ({listed}) cover {regions} separate regions: a class "
        "mask (e.g. interior and boundary), not an instance label image; give each nucleus "
        "its own number"
    )


def load_sample(ref: SampleRef) -> Sample:
    """Decode one sample; raises DatasetError naming the file for anything malformed."""
    try:
        image = read_image(ref.image_path)
        shape = image.shape[:2]
        if ref.label_path is not None:
            labels = instance_labels(ref.label_path, read_image(ref.label_path), shape)
        else:
            labels = merge_masks(ref.mask_paths, shape)
    except ImageReadError as error:
        raise DatasetError(str(error)) from error
    return Sample(ref.id, image, labels)
