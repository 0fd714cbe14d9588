"""The public Python API: load a model once, then segment images of any size.

    from edgeseg.segmenter import load_segmenter
    segmenter = load_segmenter()              # the built-in default model
    labels = segmenter.segment(image)         # uint16 (H, W), 0 = background
    labels = segmenter.segment(image, diameter=70)  # nuclei ~70 px across, unlike DSB's
    labels = segmenter.segment(image, diameter="auto")  # measured from a first pass
    segmenter = load_segmenter(test_time_flips=True)  # 4x the network cost, a little better

Every path to labels (CLI, benchmarks, export checks) goes through `Segmenter.segment`:
normalise once, predict probabilities tile by tile, post-process once on the full map.
With ``diameter``, the image is first rescaled so its nuclei have the size the model was
trained on (edgeseg.rescale) and the labels come back at the image's own shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from edgeseg.backends import Backend, load_backend
from edgeseg.manifest import ManifestError, output_channels, read_manifest, refuse_unverified
from edgeseg.maskrcnn_model import MaskRCNNSegmenter, load_maskrcnn
from edgeseg.models import is_maskrcnn, resolve_model
from edgeseg.postprocess import PostprocessSettings, labels_from_maps
from edgeseg.preprocess import normalize, preprocessing
from edgeseg.rescale import MAX_MEGAPIXELS, Diameter, segment_at_diameter
from edgeseg.test_time_flips import predict_flip_averaged
from edgeseg.tiling import TileSettings, predict_tiled


def postprocess_settings(manifest: Mapping[str, Any]) -> PostprocessSettings:
    """The thresholds the model was validated with (manifest ``postprocess``, which every
    export and training run records). A section missing, or a setting misspelt or out of
    range, is a damaged manifest, never a reason to segment with thresholds nobody
    validated."""
    if "postprocess" not in manifest:
        raise ManifestError(
            "manifest has no postprocess section (the thresholds the model was validated "
            "with); re-export the model"
        )
    spec = manifest["postprocess"]
    if not isinstance(spec, dict):
        raise ManifestError(f"manifest postprocess must be a mapping, got {spec!r}")
    known = {field.name for field in fields(PostprocessSettings)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ManifestError(
            f"manifest postprocess has unknown settings {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}"
        )
    try:
        return PostprocessSettings(**spec)
    except ValueError as error:
        raise ManifestError(f"manifest postprocess {error}") from error


class Segmenter:
    """A loaded model plus the tiling and post-processing settings that go with it;
    ``test_time_flips`` averages the predictions for the image and its three mirror images."""

    def __init__(
        self,
        backend: Backend,
        manifest: Mapping[str, Any],
        settings: PostprocessSettings | None = None,
        tiles: TileSettings | None = None,
        test_time_flips: bool = False,
    ) -> None:
        self.backend = backend
        self.manifest = dict(manifest)
        self.settings = settings or postprocess_settings(manifest)
        if self.settings.distance_threshold > 0 and "distance" not in output_channels(manifest):
            raise ValueError(  # else every image would fail on its own
                f"postprocess distance_threshold {self.settings.distance_threshold} needs a "
                f"distance map; this model predicts {', '.join(output_channels(manifest))}"
            )
        self.tiles = tiles or TileSettings.from_manifest(manifest)
        self.test_time_flips = test_time_flips
        self.stained_channel = preprocessing(manifest)

    def predict_probabilities(self, image: np.ndarray) -> np.ndarray:
        """Raw image (H, W) or (H, W, C) -> float32 (H, W, M) maps, as the manifest's
        ``output_channels`` name them (foreground, boundary, maybe distance)."""
        predict = predict_flip_averaged if self.test_time_flips else predict_tiled
        return predict(self.backend, normalize(image, self.stained_channel), self.tiles)

    def segment(
        self,
        image: np.ndarray,
        diameter: Diameter = None,
        max_megapixels: float = MAX_MEGAPIXELS,
    ) -> np.ndarray:
        """Raw image (H, W) or (H, W, C) -> uint16 (H, W) instance labels.

        ``diameter``: typical nucleus diameter in ``image``, in pixels, when it differs from
        the training data's (the manifest's ``nucleus_diameter``); "auto" measures it from a
        first pass (edgeseg.rescale); None segments as is. ``max_megapixels`` bounds the
        image once rescaled.
        """
        return self.infer(image, diameter, max_megapixels)()

    def infer(
        self,
        image: np.ndarray,
        diameter: Diameter = None,
        max_megapixels: float = MAX_MEGAPIXELS,
    ) -> Callable[[], np.ndarray]:
        """Run the network now; the returned call post-processes into ``segment``'s labels.

        Split so a batch pipeline can post-process one image on another thread while the
        network runs on the next (edgeseg.batch). With ``diameter`` all is done now.
        """
        if diameter is not None:
            labels = segment_at_diameter(
                self.segment,
                image,
                diameter,
                self.manifest,
                self.settings.min_area,
                max_megapixels,
            )
            return lambda: labels
        probabilities = self.predict_probabilities(image)
        return lambda: labels_from_maps(probabilities, self.settings)


def load_segmenter(
    model: str | os.PathLike | None = None,
    backend: str | None = None,
    threads: int | None = None,
    tile: int | None = None,
    *,
    overlap: int | None = None,
    batch_size: int | None = None,
    allow_unverified: bool = False,
    test_time_flips: bool = False,
) -> Segmenter | MaskRCNNSegmenter:
    """Load a built-in model by name (None: the default) or an exported artifact by path.

    ``backend`` forces a runtime (see edgeseg.backends.BACKENDS), ``threads`` caps CPU
    threads, ``tile``/``overlap``/``batch_size`` override the manifest's tiling. An artifact
    that failed its export accuracy gate, or whose gate never finished, is refused unless
    ``allow_unverified`` (benchmarks, and the gate itself).
    ``test_time_flips`` averages over the image's mirror images (edgeseg.test_time_flips).
    A Mask R-CNN (three graphs) is named by its manifest, ``.../model/maskrcnn.json``; it
    segments whole images, so the tiling options and flip averaging do not apply to it.
    """
    artifact = resolve_model(model)
    if is_maskrcnn(artifact):
        if (tile, overlap, batch_size) != (None, None, None) or test_time_flips:
            raise ValueError(
                f"{artifact}: Mask R-CNN segments whole images; tile, overlap, batch size "
                "and test-time flips do not apply"
            )
        return load_maskrcnn(
            artifact, backend=backend, threads=threads, allow_unverified=allow_unverified
        )
    manifest = read_manifest(artifact, verify=False)  # load_backend verifies the bytes it loads
    if not allow_unverified:
        refuse_unverified(artifact, manifest)
    engine = load_backend(artifact, manifest, backend=backend, threads=threads)
    if tile is not None and engine.input_size not in (None, (tile, tile)):
        height, width = engine.input_size
        raise ValueError(
            f"{artifact}: this model only accepts {height}x{width} tiles; "
            f"it cannot use tile size {tile}"
        )
    try:  # the manifest's tiling, preprocessing and thresholds, checked: errors name the file
        tiles = TileSettings.from_manifest(
            manifest, size=tile, overlap=overlap, batch_size=batch_size
        )
        return Segmenter(engine, manifest, tiles=tiles, test_time_flips=test_time_flips)
    except ValueError as error:
        raise ManifestError(f"{artifact}: {error}") from error
