"""Find the (model, target) configurations to benchmark, and say which cannot run here.

A configuration is one artifact beside its manifest (``<artifact>.json``), or a Mask R-CNN:
one ``maskrcnn.json`` naming its three graphs. They are found in training run folders
(``training/runs/<model>/``, its ``model/maskrcnn.json`` and its ``export/``), in folders given
with ``--artifacts``, and among the built-in models (the default one). Whether one can run is
decided here from cheap checks (is the runtime installed, is there a GPU) so that a missing
TensorRT becomes a row with a reason, never a crash or a made-up number.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeseg.backends import SUFFIXES
from edgeseg.backends import artifact_format as _artifact_format
from edgeseg.manifest import ManifestError, file_sha256, read_manifest
from edgeseg.maskrcnn_model import MANIFEST_NAME, read_maskrcnn_manifest

#: Every export target of the project, in report order.
TARGETS = (
    "keras-fp32",
    "tflite-fp32",
    "tflite-fp16",
    "tflite-int8",
    "onnx-fp32",
    "onnx-int8",
    "trt-fp16",
    "trt-int8",
)
_DEFAULT_TARGET = {"keras": "keras-fp32", "onnx": "onnx", "litert": "tflite", "tensorrt": "trt"}
_ARTIFACT_SUFFIXES = {suffix for suffixes in SUFFIXES.values() for suffix in suffixes}


@dataclass(frozen=True)
class Configuration:
    """One artifact to benchmark; ``unavailable`` is the reason it cannot run here, or None.

    ``files`` are what the model is made of on disk (its size): the artifact, or the graphs
    a Mask R-CNN manifest names. ``copies`` are other paths holding the same files and
    manifest (the built-in default is a copy of a run's export), benchmarked once as this.
    """

    model: str
    target: str
    artifact: Path
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    backend: str | None = None
    unavailable: str | None = None
    files: tuple[Path, ...] = field(default=(), compare=False)
    copies: tuple[Path, ...] = field(default=(), compare=False)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.target}"


#: The target of an artifact whose manifest cannot be read.
UNREADABLE = "?"


def _has_nvidia_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def _installed(*modules: str) -> bool:
    return any(importlib.util.find_spec(module) is not None for module in modules)


def availability(artifact: Path, fmt: str, backend: str | None) -> str | None:
    """Why this artifact cannot run on this machine, or None when it can (cheap checks only).

    The worker still catches BackendUnavailable at load time, so a check missed here becomes
    an unavailable row all the same.
    """
    if fmt == "tensorrt":
        if not _installed("tensorrt"):
            return "TensorRT engine: the tensorrt Python module is not installed"
        if not _has_nvidia_gpu():
            return "TensorRT engine: no NVIDIA GPU"
    if backend == "onnx-tensorrt":
        import onnxruntime

        if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
            return (
                "needs TensorRT and an NVIDIA GPU: this onnxruntime has no "
                "TensorrtExecutionProvider (this .onnx is the TensorRT-ready export; build "
                "its engine on a machine with TensorRT)"
            )
    if fmt == "keras" and not (_installed("keras") and _installed("tensorflow")):
        return "TensorFlow/Keras is not installed (the train extra)"
    if fmt == "litert" and not _installed("ai_edge_litert", "tflite_runtime"):
        return "LiteRT is not installed (ai-edge-litert or tflite-runtime)"
    return None


def _model_files(artifact: Path) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The manifest and the (file, format) the model is made of; the worker's load verifies
    the bytes. A file missing, or a manifest that names none, is a broken model (a failed
    row), not one this machine cannot run."""
    if artifact.name == MANIFEST_NAME:  # a Mask R-CNN: three graphs named by one manifest
        manifest = read_maskrcnn_manifest(artifact)
        try:
            graphs = manifest["graphs"].values()
            files = [(artifact.parent / str(g["file"]), str(g["backend"])) for g in graphs]
        except (AttributeError, KeyError, TypeError) as error:
            raise ManifestError(f"{artifact}: malformed graphs entry ({error!r})") from error
    else:
        manifest = read_manifest(artifact, verify=False)
        files = [(artifact, _artifact_format(artifact, manifest))]
    for path, _ in files:
        if not path.is_file():
            raise ManifestError(f"{path}: missing (its manifest {artifact.name} names it)")
    return manifest, files


def configuration(artifact: Path, model: str | None = None) -> Configuration:
    """Describe one artifact: its model (run folder name, else manifest), target, runtime."""
    manifest, files = _model_files(artifact)
    fmt = files[0][1]
    target = str(manifest.get("target") or _DEFAULT_TARGET.get(fmt, fmt))
    if model is None:
        name = str(manifest.get("model") or manifest.get("name") or artifact.stem)
        model = name.removesuffix(f"-{target}")
    # A TensorRT target exported as ONNX runs only through ONNX Runtime's TensorRT provider.
    backend = "onnx-tensorrt" if target.startswith("trt") and fmt == "onnx" else None
    reasons = (availability(path, file_fmt, backend) for path, file_fmt in files)
    unavailable = next(filter(None, reasons), None)
    paths = tuple(path for path, _ in files)
    return Configuration(model, target, artifact, manifest, backend, unavailable, paths)


def manifests_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Artifacts described by a ``<artifact>.json`` in ``folder`` (config.json etc. skipped),
    and Mask R-CNN manifests, which are their model's artifact."""
    paths = folder.rglob("*.json") if recursive else folder.glob("*.json")
    return sorted(
        path if path.name == MANIFEST_NAME else path.with_suffix("")
        for path in paths
        if path.name == MANIFEST_NAME or Path(path.stem).suffix.lower() in _ARTIFACT_SUFFIXES
    )


def _run_artifacts(runs_dir: Path) -> Iterable[tuple[Path, str | None]]:
    if not runs_dir.is_dir():
        return
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        for folder in (run, run / "model", run / "export"):
            if folder.is_dir():
                yield from ((artifact, run.name) for artifact in manifests_in(folder))
        # Exported Mask R-CNNs are folders of three graphs: export/<target>/maskrcnn.json.
        if (run / "export").is_dir():
            yield from ((path, run.name) for path in sorted((run / "export").rglob(MANIFEST_NAME)))


def _builtin_default() -> Iterable[tuple[Path, str | None]]:
    from edgeseg.models import list_models

    yield from ((model.artifact, None) for model in list_models() if model.is_default)


def _identity(config: Configuration) -> object:
    """What makes two configurations the same: model name, target, the bytes of its files
    and its manifest (thresholds, tiling), not the path; for a broken one, its path."""
    if config.target == UNREADABLE or not config.files:
        return config.artifact.resolve()
    try:
        digests = tuple(file_sha256(path) for path in config.files)
    except OSError:  # unreadable now: its own row, where the worker will say why
        return config.artifact.resolve()
    manifest = json.dumps(config.manifest, sort_keys=True, default=str)
    return config.model, config.target, digests, manifest


def _shown(path: Path) -> Path:
    """``path`` relative to the working folder where it lies below it, as reports show it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _split(values: Iterable[str]) -> list[str]:
    """Accept ``--targets a,b`` as well as ``--targets a --targets b``."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def discover(
    runs_dir: Path | None = Path("training/runs"),
    artifact_paths: Sequence[Path] = (),
    models: Sequence[str] = (),
    targets: Sequence[str] = (),
    include_builtin: bool = True,
) -> list[Configuration]:
    """Every configuration found, filtered by ``models``/``targets``, one per model: copies
    of one artifact (same bytes, same manifest) are one configuration, the first found.

    ``artifact_paths`` (folders searched recursively, or artifact files) replace the scan of
    ``runs_dir``. A target asked for by name but found for none of the models becomes an
    unavailable row per model, so a missing export is visible in the report.
    """
    models, targets = _split(models), _split(targets)
    if artifact_paths:
        sources: list[tuple[Path, str | None]] = []
        for path in map(Path, artifact_paths):
            found = [path] if path.is_file() else manifests_in(path, recursive=True)
            if not found:  # else the report would quietly hold only the built-in model
                raise ValueError(f"{path}: no exported model (an artifact with its manifest)")
            sources += [(artifact, None) for artifact in found]
    else:
        sources = list(_run_artifacts(runs_dir)) if runs_dir is not None else []
    if include_builtin:
        sources += list(_builtin_default())
    found: dict[object, Configuration] = {}
    for artifact, model in sources:
        try:
            config = configuration(artifact, model)
        except ManifestError as error:
            config = Configuration(
                model or artifact.stem, UNREADABLE, artifact, unavailable=str(error)
            )
        key = _identity(config)
        first = found.setdefault(key, config)
        known = {path.resolve() for path in (first.artifact, *first.copies)}
        if artifact.resolve() not in known:
            found[key] = replace(first, copies=(*first.copies, _shown(artifact)))
    named = {c.model for c in found.values()}
    unreadable = any(c.target == UNREADABLE for c in found.values())  # may be the one asked for
    if (unknown := [model for model in models if model not in named]) and not unreadable:
        where = ", ".join(map(str, artifact_paths)) if artifact_paths else str(runs_dir)
        raise ValueError(
            f"no model named {', '.join(unknown)} in {where} (found: "
            f"{', '.join(sorted(named)) or 'none'})"
        )
    configs = [  # an artifact named on the command line whose manifest cannot be read names
        c  # no model or target to filter by: it is shown, so the user learns why it failed
        for c in found.values()
        if (c.target == UNREADABLE and artifact_paths)
        or ((not models or c.model in models) and (not targets or c.target in targets))
    ]
    present = {(c.model, c.target) for c in configs}
    readable = {c.model for c in configs if c.target != UNREADABLE}
    for model in sorted(readable | set(models)):
        for target in targets:
            if (model, target) not in present:
                reason = f"no {target} artifact found for model {model}"
                configs.append(Configuration(model, target, Path("-"), unavailable=reason))
    order = {target: index for index, target in enumerate(TARGETS)}
    return sorted(configs, key=lambda c: (c.model, order.get(c.target, len(order)), c.artifact))
