"""Export a Mask R-CNN (three graphs named by a maskrcnn.json) to one target, end to end.

The artifact is a folder, ``<out>/<model>-<target>/``, holding the converted ``stage1``,
``box_head`` and ``mask_head`` graphs and the ``maskrcnn.json`` that edgeseg.maskrcnn_model
loads (so ``edgeseg segment --model <folder>/maskrcnn.json`` runs it). As for a semantic
model (export.pipeline), the manifest is written before the gate runs the folder through the
runtime on the validation images next to the Keras source, then rewritten with the verdict.

INT8 first quantizes all three graphs. If that fails the gate, it is made again with stage 1
alone in INT8 and the heads in FP32 (they are a small share of the compute, see
training/maskrcnn/README.md); the manifest says which graphs are INT8 (``int8_graphs``) and
keeps the rejected try's numbers (``attempts``).

Sources: the Keras model of a training run (``<run>/model/maskrcnn.json``, every target), or
the TensorRT-ready maskrcnn.json of an earlier trt-* export, from which only the engines are
built (beside its ONNX graphs, with their own manifest ``maskrcnn-engine.json``).
"""

from __future__ import annotations

import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_path
from edgeseg.maskrcnn import MaskRCNNConfig
from edgeseg.maskrcnn_model import (
    GRAPHS,
    MANIFEST_NAME,
    MaskRCNNGraphs,
    MaskRCNNSegmenter,
    keras_stage,
    load_keras_graphs,
    load_maskrcnn,
    read_maskrcnn_manifest,
    write_maskrcnn_manifest,
)
from export.maskrcnn_calibration import CalibrationError, GraphCalibration, maskrcnn_calibration
from export.maskrcnn_graphs import INPUT_NAMES, FloatGraphs, engine_profile
from export.pipeline import (
    PREPROCESS,
    Artifact,
    BaseExporter,
    ExportError,
    Outcome,
    source_record,
    tool_versions,
)
from export.targets import TARGETS, Precision, Target
from export.verify import SegmentsImages

#: The engines' manifest, beside the TensorRT-ready graphs they are built from.
ENGINE_MANIFEST_NAME = "maskrcnn-engine.json"
#: INT8 plans, tried in order until one passes the gate: the graphs quantized in each.
INT8_PLANS = (GRAPHS, ("stage1",))
#: Manifest sections the engines inherit from the TensorRT-ready graphs.
INHERITED = (
    "model", "target", "precision", "input", "preprocess", "params", "calibration",
    "int8_graphs", "attempts",
)  # fmt: skip
#: Per-graph entries the manifest writer fills in itself.
_GRAPH_FILE_KEYS = ("file", "backend", "sha256")


def converts_from_keras(source: Path) -> bool:
    """Whether exporting ``source`` converts Keras graphs (so it needs the export extra)."""
    graphs = read_maskrcnn_manifest(source)["graphs"]
    return all(graphs[name].get("backend") == "keras" for name in GRAPHS)


def default_out_dir(source: Path) -> Path:
    """``<run>/export/`` for a run's ``<run>/model/maskrcnn.json``, ``export/`` beside any
    other Keras model's manifest; the engines of a TensorRT-ready export go beside it."""
    if not converts_from_keras(source):
        return source.parent
    run = source.parent.parent if source.parent.name == "model" else source.parent
    return run / "export"


class MaskRCNNExporter(BaseExporter):
    """Exports one Mask R-CNN; calibration inputs and reference labels are computed once and
    shared by all its targets."""

    def _open_source(self) -> None:
        self.source_manifest = read_maskrcnn_manifest(self.source)
        self.runtime = MaskRCNNConfig.from_dict(self.source_manifest["runtime"])
        self.model_name = str(self.source_manifest.get("model") or self.source.parent.name)
        self._models: dict[str, Any] | None = None
        if converts_from_keras(self.source):
            multiple = self.runtime.size_multiple
            if self.settings.tile % multiple:
                raise ExportError(
                    f"tile {self.settings.tile} is not a multiple of {multiple}, which a "
                    "Mask R-CNN's calibration crops need"
                )
            self._models = load_keras_graphs(self.source)  # each graph's sha256 checked
            return
        target = self.source_manifest.get("target")
        if target not in TARGETS or TARGETS[target].stage != "tensorrt":
            raise ExportError(
                f"{self.source}: neither Keras graphs nor a TensorRT-ready export (its "
                f"manifest target is {target!r}); export from the training run's model instead"
            )

    @property
    def crop_size(self) -> int:
        return self.settings.tile

    def _source_segmenter(self) -> SegmentsImages:
        if self._models is None:  # engines are verified against the graphs they are built from
            return load_maskrcnn(self.source)
        stages = (keras_stage(self._models[name]) for name in GRAPHS)
        return MaskRCNNSegmenter(MaskRCNNGraphs("keras", *stages), self.source_manifest)

    @cached_property
    def _float(self) -> FloatGraphs:
        assert self._models is not None
        return FloatGraphs(self._models, self.runtime, Path(self._scratch.name))

    @cached_property
    def _calibrations(self) -> dict[str, GraphCalibration]:
        assert self._models is not None
        stages = {name: keras_stage(model) for name, model in self._models.items()}
        try:
            return maskrcnn_calibration(stages, self.runtime, self.calibration)
        except CalibrationError as error:
            raise ExportError(f"{self.source}: {error}") from error

    def export(self, target: Target) -> Outcome:
        """Write and verify ``target``'s folder (INT8: falling back to FP32 heads when all-INT8
        fails the gate); for trt-*, then build and verify its engines where TensorRT runs."""
        if self._models is None:
            self._refuse_other_target(target, "export")
            return self._engines(target, self.source, self.source_manifest, Outcome(target))
        folder = self.out_dir / f"{self.model_name}-{target.name}"
        attempts: list[dict[str, Any]] = []
        for int8_graphs in INT8_PLANS if target.quantized else ((),):
            artifact = self._write(target, folder, int8_graphs, attempts)
            if artifact.verification["status"] != "rejected":
                break
            attempts.append({"int8_graphs": list(int8_graphs), **artifact.verification})
        outcome = Outcome(target, [artifact])
        if target.stage != "tensorrt" or outcome.rejected:
            return outcome
        return self._engines(target, artifact.path, artifact.manifest, outcome)

    def _write(
        self,
        target: Target,
        folder: Path,
        int8_graphs: tuple[str, ...],
        attempts: list[dict[str, Any]],
    ) -> Artifact:
        """Convert the three graphs into ``folder``, write its manifest, run the gate."""
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".tflite" if target.stage == "tflite" else ".onnx"
        paths, graph_fields = {}, {}
        for name in GRAPHS:
            quantized = name in int8_graphs
            precision: Precision = target.precision
            if target.quantized and not quantized:
                precision = "fp32"
            paths[name] = folder / f"{name}{suffix}"
            graph_fields[name] = {"precision": precision} | (
                self._write_tflite(name, paths[name], precision)
                if target.stage == "tflite"
                else self._write_onnx(name, paths[name], quantized, target.stage == "tensorrt")
            )
        fields: dict[str, Any] = {
            "name": f"{self.model_name}-{target.name}",
            "model": self.model_name,
            "target": target.name,
            "precision": target.precision,
            # the source manifest pins every graph
            "source": source_record(self.source, self.source_manifest["sha256"], folder),
            "input": self.source_manifest.get("input", {}),
            "preprocess": self.source_manifest.get("preprocess", PREPROCESS),
        }
        if "params" in self.source_manifest:
            fields["params"] = self.source_manifest["params"]
        if target.quantized:
            fields["int8_graphs"] = list(int8_graphs)
            fields["calibration"] = self.calibration.record()  # the crops; heads: per graph
        if attempts:
            fields["attempts"] = list(attempts)
        backend = "litert" if target.stage == "tflite" else "onnx"
        return self._verified(folder / MANIFEST_NAME, paths, backend, graph_fields, fields)

    def _write_tflite(self, name: str, path: Path, precision: Precision) -> dict[str, Any]:
        from export.tflite import describe_tflite_graph, write_tflite

        calibration = self._calibrations[name] if precision == "int8" else None
        batches = calibration.batches(1) if calibration else None
        quantization = write_tflite(self._float.saved_model(name), path, precision, batches)
        return _described(describe_tflite_graph(path), quantization, calibration)

    def _write_onnx(
        self, name: str, path: Path, quantized: bool, for_tensorrt: bool
    ) -> dict[str, Any]:
        from export.onnx import (
            CALIBRATION_BATCH,
            GRAPH_OPTIMIZATION,
            describe_onnx_graph,
            quantize_onnx,
        )

        calibration = self._calibrations[name] if quantized else None
        quantization: dict[str, Any] = {}
        if calibration is not None:
            batches = calibration.batches(CALIBRATION_BATCH)
            quantization = quantize_onnx(
                self._float.onnx(name), path, batches, for_tensorrt, INPUT_NAMES[name]
            )
        else:
            with atomic_path(path) as temporary:
                shutil.copyfile(self._float.onnx(name), temporary)
        fields = _described(describe_onnx_graph(path), quantization, calibration)
        if quantized and for_tensorrt:
            fields["graph_optimization"] = GRAPH_OPTIMIZATION  # run as TensorRT computes
        return fields

    def _engines(
        self,
        target: Target,
        onnx_manifest_path: Path,
        onnx_manifest: dict[str, Any],
        outcome: Outcome,
    ) -> Outcome:
        """Build and verify the TensorRT engines of a TensorRT-ready export, or say how to."""
        from export.tensorrt import build_engine, engine_unavailable, trtexec_command

        folder = onnx_manifest_path.parent
        graphs = onnx_manifest["graphs"]
        plans = {}
        for name in GRAPHS:
            tensor_in = graphs[name]["inputs"][0]
            profile = engine_profile(tensor_in["shape"], self.settings.tile)
            onnx_path = folder / graphs[name]["file"]
            plans[name] = (onnx_path, folder / f"{name}.engine", tensor_in["name"], profile)
        reason = engine_unavailable()
        if reason is not None:
            commands = [
                trtexec_command(onnx, engine, target.precision, self.settings.tile, tensor, profile)
                for onnx, engine, tensor, profile in plans.values()
            ]
            outcome.engine_missing = reason
            outcome.engine_command = (
                f"edgeseg export --model {onnx_manifest_path} --target {target.name} --data DIR "
                f"(or: {' && '.join(commands)})"
            )
            return outcome
        for onnx, engine, tensor, profile in plans.values():
            build_engine(
                onnx,
                engine,
                target.precision,
                self.settings.tile,
                tensor,
                folder / "tensorrt.timing-cache",
                profile,
            )
        fields = {key: onnx_manifest[key] for key in INHERITED if key in onnx_manifest}
        fields["name"] = f"{onnx_manifest['name']}-engine"
        fields["source"] = source_record(onnx_manifest_path, onnx_manifest["sha256"], folder)
        graph_fields = {
            name: {k: v for k, v in graphs[name].items() if k not in _GRAPH_FILE_KEYS}
            for name in GRAPHS
        }
        engines = {name: plan[1] for name, plan in plans.items()}
        manifest = folder / ENGINE_MANIFEST_NAME
        outcome.artifacts.append(
            self._verified(manifest, engines, "tensorrt", graph_fields, fields)
        )
        return outcome

    def _verified(
        self,
        manifest: Path,
        graphs: dict[str, Path],
        backend: str,
        graph_fields: dict[str, dict[str, Any]],
        fields: dict[str, Any],
    ) -> Artifact:
        """Write the manifest, run the graphs through the runtime, record the verdict."""

        def write(**more: Any) -> None:
            write_maskrcnn_manifest(
                manifest,
                self.runtime,
                graphs,
                backend,
                graph_fields,
                **fields,
                **more,
                tools=tool_versions(),
            )

        write(verification={"status": "pending"})
        write(**self._judged(manifest))
        return Artifact(manifest, read_maskrcnn_manifest(manifest))


def _described(
    tensors: dict[str, Any],
    quantization: dict[str, Any],
    calibration: GraphCalibration | None,
) -> dict[str, Any]:
    """A graph's manifest entry: its tensors, and how it was quantized, on what."""
    fields = dict(tensors)
    if quantization:
        fields["quantization"] = quantization
    if calibration is not None:
        fields["calibration"] = calibration.record
    return fields


def graph_bytes(manifest_path: Path, manifest: dict[str, Any]) -> int:
    """Total size of the graph files a Mask R-CNN manifest names."""
    return sum(
        (manifest_path.parent / entry["file"]).stat().st_size
        for entry in manifest["graphs"].values()
    )
