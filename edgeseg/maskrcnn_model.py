"""A trained Mask R-CNN on disk: three graph files and the one manifest that pins them.

    model/maskrcnn.json     the manifest, and the path to give ``edgeseg segment --model``
    model/stage1.keras      image -> FPN maps + RPN outputs      (see edgeseg/maskrcnn.py)
    model/box_head.keras    RoI crops -> class logits + box deltas
    model/mask_head.keras   RoI crops -> mask logits

The manifest (``"kind": "maskrcnn"``) carries the `MaskRCNNConfig` the graphs were trained
with (``runtime``) and, for each graph, its file (beside the manifest), format (``backend``)
and sha256. Each graph is checked on the very bytes that are loaded, so a tampered or
mismatched graph is refused by name. The format is recorded per graph, so the graphs that
`edgeseg export` writes (ONNX, LiteRT .tflite, TensorRT engines) run through the same NumPy
runtime; every format returns its outputs by their Keras names. TensorFlow is imported only
for ``.keras`` graphs. An export that failed its accuracy gate is refused like a semantic one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import write_text
from edgeseg.backends import BACKENDS
from edgeseg.backends.base import (
    BackendUnavailable,
    default_threads,
    from_output,
    read_verified,
    to_input,
)
from edgeseg.manifest import FORMAT_VERSION, ManifestError, file_sha256, refuse_unverified
from edgeseg.maskrcnn import MaskRCNN, MaskRCNNConfig, Stage
from edgeseg.preprocess import normalize, preprocessing
from edgeseg.rescale import MAX_MEGAPIXELS, Diameter, segment_at_diameter

KIND = "maskrcnn"
MANIFEST_NAME = "maskrcnn.json"
GRAPHS = ("stage1", "box_head", "mask_head")


def keras_stage(model: Any) -> Stage:
    """Adapt a Keras model to the runtime's stage interface: array in, name -> array out."""

    def run(batch: np.ndarray) -> Mapping[str, np.ndarray]:
        outputs = model(batch, training=False)
        if not isinstance(outputs, list | tuple):
            outputs = [outputs]
        return {
            name: np.asarray(value) for name, value in zip(model.output_names, outputs, strict=True)
        }

    return run


def write_maskrcnn_manifest(
    path: Path,
    runtime: MaskRCNNConfig,
    graphs: Mapping[str, Path],
    backend: str,
    graph_fields: Mapping[str, Mapping[str, Any]] | None = None,
    **fields: Any,
) -> Path:
    """Write the manifest ``path`` for graph files beside it (written last, atomically: a
    crash while the graphs were being replaced leaves a model that refuses to load).
    ``graph_fields`` adds per-graph details (tensors, precision, quantization) to each entry."""
    entries = {}
    for name in GRAPHS:
        graph = Path(graphs[name])
        if graph.parent.resolve() != path.parent.resolve():
            raise ValueError(f"{graph}: the graphs must sit beside their manifest {path}")
        extra = dict((graph_fields or {}).get(name, {}))
        entries[name] = extra | {
            "file": graph.name,
            "backend": backend,
            "sha256": file_sha256(graph),
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "runtime": runtime.to_dict(),
        "graphs": entries,
        **fields,
    }
    return write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_maskrcnn_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, with ``sha256`` set to the manifest file's own digest.

    That digest pins every graph's bytes and the runtime settings, so it is what results
    are fingerprinted by (edgeseg.batch reuses earlier labels only for the same model).
    """
    try:
        content = path.read_bytes()
        manifest = json.loads(content)
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: unreadable model manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ManifestError(
            f'{path}: not a Mask R-CNN model manifest (no "kind": "{KIND}"); pass a model '
            "file with its .json manifest beside it, or a maskrcnn.json"
        )
    missing = [name for name in GRAPHS if name not in manifest.get("graphs", {})]
    if missing:
        raise ManifestError(f"{path}: the manifest lists no {', '.join(missing)} graph")
    return {**manifest, "sha256": hashlib.sha256(content).hexdigest()}


def load_keras_graph(path: Path) -> Any:
    """A verified .keras graph as a Keras model (training machines only: it needs TensorFlow).
    Keras loads from a path only, so callers check its bytes first (`read_verified`)."""
    try:
        import keras
    except ImportError as error:
        raise BackendUnavailable(
            f"{path}: Keras graphs need TensorFlow/Keras (install edgeseg[train], or use "
            "exported ONNX graphs)"
        ) from error
    return keras.saving.load_model(path, compile=False)


def load_keras_graphs(path: Path) -> dict[str, Any]:
    """The Keras models of the Mask R-CNN whose manifest is ``path``, each verified by sha256
    (what `edgeseg export` converts)."""
    manifest = read_maskrcnn_manifest(path)
    models = {}
    for name in GRAPHS:
        entry = manifest["graphs"][name]
        if entry.get("backend") != "keras":
            raise ManifestError(f"{path}: its {name} graph is {entry.get('backend')!r}, not keras")
        graph = path.parent / str(entry.get("file"))
        read_verified(graph, entry)
        models[name] = load_keras_graph(graph)
    return models


def _keras_graph(
    path: Path, content: bytes, name: str, threads: int | None, entry: Mapping[str, Any]
) -> Stage:
    """A .keras graph (training machines only: it needs TensorFlow)."""
    if threads:
        with suppress(ImportError):  # load_keras_graph says what to install
            import tensorflow as tf

            with suppress(RuntimeError):  # TensorFlow already running here: keep its pools
                tf.config.threading.set_intra_op_parallelism_threads(threads)
    return keras_stage(load_keras_graph(path))  # its bytes were verified just before


def _onnx_graph(
    path: Path, content: bytes, name: str, threads: int | None, entry: Mapping[str, Any]
) -> Stage:
    """An .onnx graph on the providers of backend ``name`` (edgeseg.backends.onnx), all outputs
    by name; the session is built from the verified bytes. ``graph_optimization: basic`` keeps
    Q/DQ nodes unfused (TensorRT-ready int8 graphs, as in edgeseg.backends.onnx)."""
    import onnxruntime as ort

    from edgeseg.backends.onnx import PROVIDERS

    providers = PROVIDERS[name]
    if providers[0] not in ort.get_available_providers():
        raise BackendUnavailable(f"backend {name!r} unavailable here: no {providers[0]}")
    options = ort.SessionOptions()
    if entry.get("graph_optimization") == "basic":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(content, sess_options=options, providers=providers)
    (tensor_in,) = session.get_inputs()
    outputs = [tensor.name for tensor in session.get_outputs()]

    def run(batch: np.ndarray) -> Mapping[str, np.ndarray]:
        values = session.run(outputs, {tensor_in.name: batch.astype(np.float32)})
        return dict(zip(outputs, values, strict=True))

    return run


class _LiteRTGraph:
    """A .tflite graph run through its signature, which keeps the Keras output names (the
    plain tensor names are the converter's own). Integer (int8) inputs and outputs are
    quantized and dequantized with the scales stored in the model."""

    def __init__(self, content: bytes, threads: int | None) -> None:
        from edgeseg.backends.litert import interpreter_class, tensor_quantization

        self._content = content  # the interpreter reads from this buffer: keep it alive
        interpreter = interpreter_class()(model_content=content, num_threads=threads)
        self._runner = interpreter.get_signature_runner()
        ((self._input, detail),) = self._runner.get_input_details().items()
        self._input_type = (detail["dtype"], tensor_quantization(detail))
        self._outputs = {
            key: tensor_quantization(value)
            for key, value in self._runner.get_output_details().items()
        }

    def __call__(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        values = self._runner(**{self._input: to_input(batch, *self._input_type)})
        return {key: from_output(values[key], scale) for key, scale in self._outputs.items()}


def _litert_graph(
    path: Path, content: bytes, name: str, threads: int | None, entry: Mapping[str, Any]
) -> Stage:
    return _LiteRTGraph(content, threads)


def _tensorrt_graph(
    path: Path, content: bytes, name: str, threads: int | None, entry: Mapping[str, Any]
) -> Stage:
    """A TensorRT engine built by `edgeseg export` (GPU machines with TensorRT only)."""
    from edgeseg.backends.tensorrt import TensorRTGraph

    return TensorRTGraph(content, entry, threads).run_all


_LOADERS = {
    "keras": _keras_graph,
    "onnx": _onnx_graph,
    "litert": _litert_graph,
    "tensorrt": _tensorrt_graph,
}


def _load_graph(
    folder: Path, entry: Mapping[str, Any], backend: str | None, threads: int | None
) -> Stage:
    """One verified graph as a stage; ``backend`` picks a runtime for its format."""
    path = folder / str(entry.get("file"))
    fmt = str(entry.get("backend"))
    if fmt not in _LOADERS:
        raise ManifestError(
            f"{path}: Mask R-CNN graphs in format {fmt!r} cannot run here yet "
            f"(supported: {', '.join(_LOADERS)})"
        )
    name = backend or fmt
    if name not in BACKENDS or name.split("-")[0] != fmt:
        raise ValueError(f"{path}: a {fmt} graph cannot run on the {name!r} backend")
    content = read_verified(path, entry)
    return _LOADERS[fmt](path, content, name, threads or default_threads(), entry)


@dataclass(frozen=True)
class MaskRCNNGraphs:
    """The three loaded graphs: the 'backend' of a Mask R-CNN segmenter (named like one)."""

    name: str
    stage1: Stage
    box_head: Stage
    mask_head: Stage
    input_size: tuple[int, int] | None = None  # whole images of any size


class MaskRCNNSegmenter:
    """`edgeseg.segmenter.Segmenter`'s interface for Mask R-CNN: raw image in, labels out."""

    def __init__(self, graphs: MaskRCNNGraphs, manifest: Mapping[str, Any]) -> None:
        self.backend = graphs
        self.manifest = dict(manifest)
        config = MaskRCNNConfig.from_dict(manifest["runtime"])
        self.model = MaskRCNN(config, graphs.stage1, graphs.box_head, graphs.mask_head)
        self.stained_channel = preprocessing(manifest)

    def segment(
        self,
        image: np.ndarray,
        diameter: Diameter = None,
        max_megapixels: float = MAX_MEGAPIXELS,
    ) -> np.ndarray:
        """Raw image (H, W) or (H, W, C) -> uint16 (H, W) instance labels; ``diameter`` and
        ``max_megapixels`` as in `edgeseg.segmenter.Segmenter.segment`."""
        if diameter is not None:
            return segment_at_diameter(
                self.segment,
                image,
                diameter,
                self.manifest,
                self.model.config.min_area,
                max_megapixels,
            )
        return self.model.segment(normalize(image, self.stained_channel))

    def infer(
        self,
        image: np.ndarray,
        diameter: Diameter = None,
        max_megapixels: float = MAX_MEGAPIXELS,
    ) -> Callable[[], np.ndarray]:
        """``segment`` in the two-step form edgeseg.batch expects; here all work is done now
        (box and mask heads are inference too)."""
        labels = self.segment(image, diameter, max_megapixels)
        return lambda: labels


def load_maskrcnn(
    path: str | os.PathLike,
    backend: str | None = None,
    threads: int | None = None,
    allow_unverified: bool = False,
) -> MaskRCNNSegmenter:
    """Load the Mask R-CNN whose manifest is ``path``; every graph is sha256-verified. An
    export that failed its accuracy gate, or whose gate never finished, is refused unless
    ``allow_unverified``."""
    path = Path(path)
    manifest = read_maskrcnn_manifest(path)
    if not allow_unverified:
        refuse_unverified(path, manifest)
    try:  # before three graphs are loaded for nothing
        preprocessing(manifest)
    except ManifestError as error:
        raise ManifestError(f"{path}: {error}") from error
    stages = [
        _load_graph(path.parent, manifest["graphs"][name], backend, threads) for name in GRAPHS
    ]
    formats = {manifest["graphs"][name]["backend"] for name in GRAPHS}
    return MaskRCNNSegmenter(
        MaskRCNNGraphs(backend or "+".join(sorted(formats)), *stages), manifest
    )
