"""Export one model to a target end to end: convert, describe, record, verify.

Each artifact gets its manifest (edgeseg.manifest) before it is verified, so the gate loads
it exactly as a user will, through edgeseg.segmenter; the manifest is then rewritten with the
verdict. A rejected artifact is kept for inspection but marked "rejected".

Sources: a Keras ``.keras`` model (every target), or the TensorRT-ready ``.onnx`` of an
earlier trt-* export, from which only its engine is built (on the GPU machine that runs it).
A Mask R-CNN (three graphs named by a maskrcnn.json) is exported by export.maskrcnn_pipeline,
which shares `BaseExporter`'s calibration crops, reference labels and gate.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from edgeseg import __version__
from edgeseg.atomic import atomic_path
from edgeseg.data.dataset import Sample
from edgeseg.manifest import (
    CHANNEL_LAYOUTS,
    ManifestError,
    file_sha256,
    manifest_path,
    output_channels,
    read_manifest,
    refuse_unverified,
    write_manifest,
)
from edgeseg.models import is_maskrcnn
from edgeseg.postprocess import PostprocessSettings
from edgeseg.preprocess import preprocessing
from edgeseg.segmenter import load_segmenter
from edgeseg.tiling import TileSettings
from export.calibration import Calibration, calibration_tiles
from export.targets import TARGETS, Target
from export.verify import (
    MIN_MASK_AGREEMENT,
    REPORTED,
    Reference,
    SegmentsImages,
    held_out_evaluation,
    skipped,
    source_segmenter,
    verify,
)

PREPROCESS = {"name": "percentile-gray", "version": 1, "function": "edgeseg.preprocess.normalize"}
TOOLS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai_edge_litert", "tensorrt")
#: Where `edgeseg train --out training/runs/NAME` puts runs, from the repository root.
RUNS_DIR = Path("training") / "runs"
#: A Mask R-CNN run's model manifest, inside its run folder (training/maskrcnn/manifest.py).
MASKRCNN_MODEL = Path("model") / "maskrcnn.json"
#: Manifest sections an engine inherits from the TensorRT-ready ONNX it is built from.
INHERITED = (
    "name", "model", "target", "precision", "input", "output", "output_channels", "tile",
    "preprocess", "postprocess", "nucleus_diameter", "quantization", "calibration",
)  # fmt: skip


class ExportError(RuntimeError):
    """The export cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class ExportSettings:
    tile: int = 256
    overlap: int = 32
    calib_images: int = 64
    max_drop: float = 1.0
    min_agreement: float = MIN_MASK_AGREEMENT


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def verification(self) -> dict[str, Any]:
        return self.manifest["verification"]


@dataclass
class Outcome:
    target: Target
    artifacts: list[Artifact] = field(default_factory=list)
    #: Set when a TensorRT engine could not be built here: why, and the command to build it.
    engine_missing: str | None = None
    engine_command: str | None = None

    @property
    def rejected(self) -> bool:
        return any(a.verification["status"] == "rejected" for a in self.artifacts)


def resolve_source(name_or_path: str | Path) -> Path:
    """A model file, a training run's folder, or its name under training/runs/ (the run's
    ``model.keras``, or a Mask R-CNN's ``model/maskrcnn.json``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folders = [path] if path.is_dir() else [RUNS_DIR / str(name_or_path)]
    for folder in folders:
        for name in ("model.keras", MASKRCNN_MODEL):
            if (folder / name).is_file():
                return folder / name
    raise ExportError(
        f"{name_or_path}: no such model file, and no model.keras or {MASKRCNN_MODEL} "
        f"in {folders[0]}"
    )


def default_out_dir(source: Path) -> Path:
    """``<run>/export/`` for a Keras model; beside it for a TensorRT-ready ONNX (Mask R-CNN:
    export.maskrcnn_pipeline.default_out_dir)."""
    from export import maskrcnn_pipeline

    if is_maskrcnn(source):
        return maskrcnn_pipeline.default_out_dir(source)
    return source.parent / "export" if source.suffix.lower() == ".keras" else source.parent


def converts_from_keras(source: Path) -> bool:
    """Whether exporting ``source`` converts a Keras model (and so needs the export extra),
    rather than only building the engine of a TensorRT-ready export."""
    from export import maskrcnn_pipeline

    if is_maskrcnn(source):
        return maskrcnn_pipeline.converts_from_keras(source)
    return source.suffix.lower() == ".keras"


def open_exporter(
    source: Path, out_dir: Path, settings: ExportSettings = ExportSettings(), **samples: Any
) -> BaseExporter:
    """The exporter for ``source``: a Mask R-CNN manifest (.json) or a single model file;
    ``samples`` are `BaseExporter`'s image sets."""
    from export.maskrcnn_pipeline import MaskRCNNExporter

    kind = MaskRCNNExporter if is_maskrcnn(source) else Exporter
    return kind(source, out_dir, settings, **samples)


def tool_versions() -> dict[str, str]:
    """Versions of the conversion and runtime libraries this process actually used."""
    loaded = {name: sys.modules[name] for name in TOOLS if name in sys.modules}
    return {"edgeseg": __version__} | {
        name: str(getattr(module, "__version__", "unknown")) for name, module in loaded.items()
    }


def source_record(source: Path, sha256: str, artifact_folder: Path) -> dict[str, str]:
    """What an artifact was made from: its path from the artifact's folder (the same from
    any working folder, and as long as the two move together), else absolute."""
    try:
        path = os.path.relpath(os.path.abspath(source), os.path.abspath(artifact_folder))
    except ValueError:  # Windows: another drive
        path = os.path.abspath(source)
    return {"path": Path(path).as_posix(), "sha256": sha256}


class BaseExporter:
    """What every source model's export shares: the image sets, the calibration crops and the
    reference labels (computed once, for all its targets), and the gate. Subclasses convert."""

    def __init__(
        self,
        source: Path,
        out_dir: Path,
        settings: ExportSettings = ExportSettings(),
        *,
        calibration_samples: Sequence[Sample] | None = None,
        calibration_label: str = "given samples",
        validation_samples: Sequence[Sample] | None = None,
        validation_label: str = "given samples",
        test_samples: Sequence[Sample] | None = None,
        test_label: str = "given samples",
    ) -> None:
        calibration_ids = {sample.id for sample in calibration_samples or ()}
        shared = calibration_ids & {sample.id for sample in validation_samples or ()}
        if shared:
            raise ExportError(
                f"calibration and validation images overlap ({sorted(shared)[:3]}): "
                "calibrate on training images only"
            )
        self.source = Path(source)
        self.out_dir = Path(out_dir)
        self.settings = settings
        self._calibration_samples = calibration_samples
        self._calibration_label = calibration_label
        self._validation_samples = validation_samples
        self._validation_label = validation_label
        self._test_samples = test_samples
        self._test_label = test_label
        # Intermediate models shared by the targets; removed with the exporter.
        self._scratch = tempfile.TemporaryDirectory(prefix="edgeseg-export-")
        self._open_source()
        try:  # a model made for other input would calibrate and verify on wrong images
            preprocessing(self.source_manifest)
        except ManifestError as error:
            raise ExportError(f"{self.source}: {error}") from error

    def _open_source(self) -> None:
        """Read the source model (and refuse one that cannot be exported)."""
        raise NotImplementedError

    def export(self, target: Target) -> Outcome:
        """Write, describe and verify ``target``'s artifacts."""
        raise NotImplementedError

    def _source_segmenter(self) -> SegmentsImages:
        """The source model in the runtime, segmenting as the artifacts will."""
        raise NotImplementedError

    @property
    def crop_size(self) -> int:
        """Side of the square INT8 calibration crops."""
        raise NotImplementedError

    def _refuse_other_target(self, target: Target, source_kind: str) -> None:
        """A TensorRT-ready source only becomes the engine of the target it was written for."""
        if target.name != self.source_manifest["target"]:
            raise ExportError(
                f"{self.source} is the TensorRT-ready {source_kind} for "
                f"{self.source_manifest['target']}; it cannot become {target.name}"
            )

    @cached_property
    def calibration(self) -> Calibration:
        if not self._calibration_samples:
            raise ExportError("INT8 export needs calibration images from the training split")
        return calibration_tiles(
            self._calibration_samples,
            self.settings.calib_images,
            self.crop_size,
            source=self._calibration_label,
            stained_channel=preprocessing(self.source_manifest),
        )

    @cached_property
    def reference(self) -> Reference | None:
        if not self._validation_samples:
            return None
        reference = Reference(
            self._source_segmenter(), self._validation_samples, self._validation_label
        )
        reference.recorded = self._recorded_reference(reference)
        return reference

    def _recorded_reference(self, reference: Reference) -> dict[str, float] | None:
        """Scores of the model the source was converted from, on the same images decoded the
        same way, when the source's manifest recorded them (a TensorRT-ready ONNX's gate did)."""
        recorded = self.source_manifest.get("verification") or {}
        scores = recorded.get("reference")
        usable = (
            recorded.get("status") == "passed"
            and all(recorded.get(key) == value for key, value in reference.images.items())
            and isinstance(scores, dict)
            and all(isinstance(scores.get(key), int | float) for key in REPORTED)
        )
        return {key: float(scores[key]) for key in REPORTED} if usable else None

    def _judged(self, path: Path) -> dict[str, Any]:
        """Run the artifact whose manifest is written (verification "pending") through the
        runtime: the gate's verdict and, when test images are given, its held-out scores."""
        if self.reference is None:
            verification = skipped("no validation images given: accuracy not checked")
        else:
            verification = verify(
                load_segmenter(path, allow_unverified=True),  # "pending" until judged
                self.reference,
                self.settings.max_drop,
                self.settings.min_agreement,
            )
        judged: dict[str, Any] = {"verification": verification}
        if self._test_samples:
            segmenter = load_segmenter(path, allow_unverified=True)
            judged["evaluation"] = held_out_evaluation(
                segmenter, self._test_samples, self._test_label
            )
        return judged


class Exporter(BaseExporter):
    """Exports one semantic source model (a .keras, or the TensorRT-ready ONNX of a trt-*
    export, for its engine)."""

    def _open_source(self) -> None:
        self.source_sha256 = file_sha256(self.source)
        suffix = self.source.suffix.lower()
        if suffix == ".keras":
            self._model: Any = _load_keras(self.source)
            # training/runs/unet/model.keras is "unet"; any other file is named by its stem
            stem = self.source.stem
            self.model_name = self.source.parent.name if stem == "model" else stem
            self.source_manifest = self._keras_manifest()
        elif suffix == ".onnx":
            self._model = None
            self.source_manifest = read_manifest(self.source)  # refuses a modified file
            refuse_unverified(self.source, self.source_manifest)  # no engine from a failed ONNX
            target = self.source_manifest.get("target")
            if target not in TARGETS or TARGETS[target].stage != "tensorrt":
                raise ExportError(
                    f"{self.source}: not a TensorRT-ready ONNX (its manifest target is "
                    f"{target!r}); export from the Keras model instead"
                )
            self.model_name = str(self.source_manifest.get("model", self.source.stem))
        else:
            raise ExportError(
                f"{self.source}: export reads a Keras .keras model, a Mask R-CNN's "
                "maskrcnn.json, or the TensorRT-ready .onnx of an earlier trt-* export"
            )
        try:
            self.tiles = TileSettings.from_manifest(self.source_manifest)
        except ValueError as error:  # a TensorRT-ready ONNX's manifest edited by hand
            raise ExportError(f"{self.source}: {error}") from error

    def _channels(self, recorded: dict[str, Any]) -> list[str]:
        """The Keras model's output maps: as its manifest names them, else by their count."""
        count = self._model.output_shape[-1]
        if "output_channels" in recorded:
            channels = list(output_channels(recorded))
        else:  # a .keras without its manifest
            channels = next((list(lay) for lay in CHANNEL_LAYOUTS if len(lay) == count), [])
        if len(channels) != count:
            raise ExportError(
                f"{self.source}: the model returns {count} maps per pixel, its manifest names "
                f"{channels or 'no layout of that many'}; not an edgeseg segmentation model"
            )
        return channels

    def _keras_manifest(self) -> dict[str, Any]:
        """How the runtime runs the Keras source, to verify exports against it."""
        from training.models import size_multiple

        recorded = read_manifest(self.source) if manifest_path(self.source).is_file() else {}
        # as training recorded it, else measured (a .keras without its manifest)
        try:
            multiple = recorded.get("tile", {}).get("multiple") or size_multiple(self._model)
        except ValueError as error:  # e.g. a fixed input size, or output of another size
            raise ExportError(f"{self.source}: not fully convolutional ({error})") from error
        if self.settings.tile % multiple:
            raise ExportError(
                f"tile {self.settings.tile} is not a multiple of {multiple}, "
                f"which a {self._model.name} needs"
            )
        manifest = {
            "backend": "keras",
            "sha256": self.source_sha256,
            "tile": {
                "size": self.settings.tile,
                "overlap": self.settings.overlap,
                "multiple": multiple,
            },
            # what the model was trained on (stained_channel) over the runtime's defaults
            "preprocess": {**PREPROCESS, **recorded.get("preprocess", {})},
            # thresholds tuned on validation travel with the model (training/tune_postprocess.py)
            "postprocess": recorded.get("postprocess", PostprocessSettings().to_dict()),
            "output_channels": self._channels(recorded),
        }
        if "nucleus_diameter" in recorded:  # the training nuclei's size, for segment --diameter
            manifest["nucleus_diameter"] = recorded["nucleus_diameter"]
        return manifest

    @property
    def crop_size(self) -> int:
        return self.tiles.size

    def _source_segmenter(self) -> SegmentsImages:
        return source_segmenter(self.source, self.source_manifest)

    def export(self, target: Target) -> Outcome:
        """Write, describe and verify ``target``'s artifacts (for trt-*, the TensorRT-ready
        ONNX and, where TensorRT runs, its engine)."""
        if self._model is None:
            self._refuse_other_target(target, "graph")
            return self._engine(target, self.source, self.source_manifest, Outcome(target))
        name = f"{self.model_name}-{target.name}"
        if target.stage == "tflite":
            from export.tflite import describe_tflite, write_tflite

            path = self.out_dir / f"{name}.tflite"
            calibration = list(self.calibration.batches()) if target.quantized else None
            quantization = write_tflite(self._saved_model, path, target.precision, calibration)
            tensors = describe_tflite(path)
        else:
            from export.onnx import describe_onnx

            path = self.out_dir / f"{name}.onnx"
            quantization = self._write_onnx(target, path)
            tensors = describe_onnx(path)
        fields: dict[str, Any] = {
            "name": name,
            "model": self.model_name,
            "target": target.name,
            "backend": "litert" if target.stage == "tflite" else "onnx",
            "precision": target.precision,
            "source": source_record(self.source, self.source_sha256, self.out_dir),
            "input": tensors[0],
            "output": tensors[1],
            "output_channels": list(output_channels(self.source_manifest)),
            "tile": self.source_manifest["tile"],
            "preprocess": self.source_manifest["preprocess"],
            "postprocess": self.source_manifest["postprocess"],
        }
        if "nucleus_diameter" in self.source_manifest:  # absent from older models' manifests
            fields["nucleus_diameter"] = self.source_manifest["nucleus_diameter"]
        if quantization:
            fields["quantization"] = quantization
        if target.quantized:
            fields["calibration"] = self.calibration.record()
        if target.quantized and target.stage == "tensorrt":
            from export.onnx import GRAPH_OPTIMIZATION

            fields["graph_optimization"] = GRAPH_OPTIMIZATION
        outcome = Outcome(target, [self._verified(path, fields)])
        if target.stage != "tensorrt" or outcome.rejected:
            return outcome
        return self._engine(target, path, outcome.artifacts[0].manifest, outcome)

    def _write_onnx(self, target: Target, path: Path) -> dict[str, Any]:
        from export.onnx import CALIBRATION_BATCH, quantize_onnx

        if target.quantized:
            batches = self.calibration.chunks(CALIBRATION_BATCH)
            for_tensorrt = target.stage == "tensorrt"
            return quantize_onnx(self._float_onnx, path, batches, for_tensorrt)
        with atomic_path(path) as temporary:
            shutil.copyfile(self._float_onnx, temporary)
        return {}

    @cached_property
    def _float_onnx(self) -> Path:
        """The float32 ONNX graph, converted once for every ONNX and TensorRT target."""
        from export.onnx import write_onnx

        path = Path(self._scratch.name) / "float.onnx"
        write_onnx(self._model, path, self.tiles.size)
        return path

    @cached_property
    def _saved_model(self) -> Path:
        """The SavedModel, exported once for every TFLite target."""
        from export.tflite import save_model

        folder = Path(self._scratch.name) / "saved_model"
        save_model(self._model, folder, self.tiles.size)
        return folder

    def _engine(
        self, target: Target, onnx_path: Path, onnx_manifest: dict[str, Any], outcome: Outcome
    ) -> Outcome:
        """Build and verify the TensorRT engine of a TensorRT-ready ONNX, or say how to."""
        from export.tensorrt import build_engine, engine_unavailable, trtexec_command

        engine = self.out_dir / f"{self.model_name}-{target.name}{target.suffix}"
        input_name = onnx_manifest["input"]["name"]
        reason = engine_unavailable()
        if reason is not None:
            trtexec = trtexec_command(
                onnx_path, engine, target.precision, self.tiles.size, input_name
            )
            outcome.engine_missing = reason
            outcome.engine_command = (
                f"edgeseg export --model {onnx_path} --target {target.name} --data DIR "
                f"(or: {trtexec})"
            )
            return outcome
        build_engine(
            onnx_path,
            engine,
            target.precision,
            self.tiles.size,
            input_name,
            self.out_dir / "tensorrt.timing-cache",
        )
        fields = {key: onnx_manifest[key] for key in INHERITED if key in onnx_manifest}
        fields["backend"] = "tensorrt"
        fields["source"] = source_record(onnx_path, file_sha256(onnx_path), engine.parent)
        outcome.artifacts.append(self._verified(engine, fields))
        return outcome

    def _verified(self, path: Path, fields: dict[str, Any]) -> Artifact:
        """Write the manifest, run the artifact through the runtime, record the verdict and,
        when test images are given, the artifact's held-out test scores."""
        write_manifest(path, **fields, tools=tool_versions(), verification={"status": "pending"})
        write_manifest(path, **fields, **self._judged(path), tools=tool_versions())
        return Artifact(path, read_manifest(path))


def _load_keras(path: Path) -> Any:
    import training.losses  # noqa: F401  (registers the custom loss a checkpoint may name)
    from edgeseg.backends.keras import load_keras_file

    try:
        return load_keras_file(path)
    except ValueError as error:  # a damaged file, named
        raise ExportError(str(error)) from error
