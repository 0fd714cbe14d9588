"""The verification gate: an exported artifact must segment like the model it came from.

Both run through the same runtime pipeline (edgeseg.segmenter: normalise, the same tiles, the
same post-processing) on held-out images, so the difference measured is the conversion's alone.
An engine built from a TensorRT-ready ONNX is compared with the ONNX's labels but scored
against the FP32 scores the ONNX's own gate recorded on the same images, so the drop measured
is both conversions'. Callers choose the images (the command line uses the validation split).
Anything that segments a raw image into labels can be gated: a tiled `Segmenter`, or a Mask
R-CNN.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeseg.backends import load_backend
from edgeseg.data.cache import DECODE_VERSION
from edgeseg.data.dataset import Sample
from edgeseg.metrics import aggregate, foreground_iou, score_image
from edgeseg.segmenter import Segmenter
from edgeseg.tiling import TileSettings


class SegmentsImages(Protocol):
    """What the gate runs: raw image in, uint16 instance labels out."""

    def segment(self, image: np.ndarray) -> np.ndarray: ...


#: A drop of more than --max-drop points in either of these rejects an artifact.
GATED = ("pixel_iou", "dsb_score")
#: Below this mean foreground IoU with the source's own labels an artifact is another model,
#: even one that happens to score as well or better (the lowest of the 55 exports verified
#: here agrees 96.9 %: the Mask R-CNN as TensorRT INT8). `edgeseg export --min-agreement`.
MIN_MASK_AGREEMENT = 0.9
REPORTED = ("pixel_iou", "dsb_score", "ap50")
#: What the held-out evaluation records: every column of the survey-style results table.
EVALUATED = ("pixel_iou", "mean_iou_2class", "pixel_accuracy", "dsb_score", "ap50", "f1_50")


def source_segmenter(source: Path, manifest: Mapping[str, Any]) -> Segmenter:
    """The source model on its runtime backend, cutting exactly the artifact's tiles."""
    backend = load_backend(source, manifest)
    if backend.input_size is None:  # a Keras model takes any size: give it the export's tile
        size = TileSettings.from_manifest(manifest).size
        backend.input_size = (size, size)
    return Segmenter(backend, manifest)


class Reference:
    """The source model's labels and scores on the verification images, computed once and
    shared by every target exported from it.

    ``recorded`` are scores measured earlier on the same images for the model the source
    itself came from (a TensorRT-ready ONNX's FP32 Keras model, which the GPU machine that
    builds its engine may not be able to run): drops are then measured from them, so two
    conversions cannot each lose ``max_drop``. Labels still come from the source.
    """

    def __init__(
        self,
        segmenter: SegmentsImages,
        samples: Sequence[Sample],
        data: str,
        recorded: Mapping[str, float] | None = None,
    ) -> None:
        if not samples:
            raise ValueError("verification needs at least one image")
        self.segmenter = segmenter
        self.samples = list(samples)
        self.data = data
        self.recorded = dict(recorded) if recorded else None

    @cached_property
    def images(self) -> dict[str, Any]:
        """Which images, decoded how: a recorded reference is reused only where both match."""
        ids = "\n".join(sorted(sample.id for sample in self.samples))
        return {
            "ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
            "decode_version": DECODE_VERSION,
        }

    @property
    def expected(self) -> Mapping[str, float]:
        """The scores an artifact may not fall more than max_drop below."""
        return self.recorded or self.scores

    @cached_property
    def labels(self) -> dict[str, np.ndarray]:
        return {sample.id: self.segmenter.segment(sample.image) for sample in self.samples}

    @cached_property
    def scores(self) -> dict[str, float]:
        return aggregate({s.id: score_image(s.labels, self.labels[s.id]) for s in self.samples})


def verify(
    candidate: SegmentsImages,
    reference: Reference,
    max_drop: float,
    min_agreement: float = MIN_MASK_AGREEMENT,
) -> dict[str, Any]:
    """Score the candidate against the ground truth and the reference; reject it when pixel
    IoU or DSB score falls more than ``max_drop`` percentage points below the reference's,
    or when its labels agree with the reference's less than ``min_agreement``."""
    per_image, agreement = {}, []
    for sample in reference.samples:
        labels = candidate.segment(sample.image)
        per_image[sample.id] = score_image(sample.labels, labels)
        agreement.append(foreground_iou(reference.labels[sample.id], labels))
    scores, expected = aggregate(per_image), reference.expected
    change = {key: 100 * (scores[key] - expected[key]) for key in REPORTED}
    failed = [key for key in GATED if -change[key] > max_drop]
    mask_agreement = float(np.mean(agreement))
    if mask_agreement < min_agreement:
        failed.append("mask_agreement")
    return {
        "status": "rejected" if failed else "passed",
        "failed": failed,
        "data": reference.data,
        "images": len(per_image),
        **reference.images,
        "max_drop_points": max_drop,
        "mask_agreement": mask_agreement,
        "min_mask_agreement": min_agreement,
        "reference": {key: expected[key] for key in REPORTED},
        "reference_model": (
            "the model the source was converted from, as its manifest recorded"
            if reference.recorded
            else "the source"
        ),
        "artifact": {key: scores[key] for key in REPORTED},
        "change_points": change,
    }


def held_out_evaluation(
    candidate: SegmentsImages, samples: Sequence[Sample], data: str
) -> dict[str, Any]:
    """The artifact's own scores on held-out test images, recorded so anyone can re-measure
    them with `edgeseg segment` + `edgeseg eval`. Reported only: nothing is chosen on them."""
    per_image = {s.id: score_image(s.labels, candidate.segment(s.image)) for s in samples}
    scores = aggregate(per_image)
    return {"data": data, "images": len(per_image)} | {key: scores[key] for key in EVALUATED}


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}
