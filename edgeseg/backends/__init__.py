"""Choose and load the inference backend for a model artifact.

The format comes from the manifest's ``backend`` field (else the file suffix); ``backend=``
picks a runtime for that format, e.g. ``onnx-cuda`` for an .onnx file. Runtime libraries are
imported only inside the backend that is used, so importing edgeseg loads none of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeseg.backends.base import Backend, BackendUnavailable, default_threads, read_verified
from edgeseg.manifest import ManifestError, manifest_path, output_channels, read_manifest

__all__ = [
    "BACKENDS",
    "PARALLEL_BACKENDS",
    "SUFFIXES",
    "Backend",
    "BackendUnavailable",
    "load_backend",
]

#: Artifact format -> file suffixes.
SUFFIXES = {
    "onnx": (".onnx",),
    "litert": (".tflite",),
    "keras": (".keras",),
    "tensorrt": (".engine", ".plan"),
}
#: Every backend name ``load_backend`` accepts; the part before "-" is the format it runs.
BACKENDS = ("onnx", "onnx-cuda", "onnx-tensorrt", "litert", "keras", "tensorrt")
#: Backends whose ``predict`` several threads may call at once, one image each: an ONNX
#: Runtime CPU session is thread-safe. (A LiteRT interpreter or TensorRT context is not; a
#: GPU runs one image at a time best.)
PARALLEL_BACKENDS = ("onnx",)


def artifact_format(artifact: Path, manifest: Mapping[str, Any]) -> str:
    """The artifact's format: the manifest's ``backend`` field, else the file suffix."""
    suffix = artifact.suffix.lower()
    declared = manifest.get("backend")
    by_suffix = next((fmt for fmt, suffixes in SUFFIXES.items() if suffix in suffixes), None)
    fmt = str(declared or by_suffix)
    if fmt not in SUFFIXES:
        raise ManifestError(
            f"{artifact}: unknown model format (manifest backend {declared!r}, suffix "
            f"{suffix!r}); expected one of {', '.join(SUFFIXES)}"
        )
    return fmt


def load_backend(
    artifact_path: str | os.PathLike,
    manifest: Mapping[str, Any] | None = None,
    backend: str | None = None,
    threads: int | None = None,
) -> Backend:
    """Load a model artifact whose bytes match its manifest's sha256.

    ``manifest`` defaults to ``<artifact>.json``. The check is made here on the very bytes
    handed to the runtime, so no library ever parses a tampered or truncated file.
    """
    artifact = Path(artifact_path)
    if manifest is None:
        manifest = read_manifest(artifact, verify=False)  # verified below, on the bytes loaded
    fmt = artifact_format(artifact, manifest)
    name = backend or fmt
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name.split("-")[0] != fmt:
        raise ValueError(f"{artifact}: a {fmt} model cannot run on the {name!r} backend")
    content = read_verified(artifact, manifest)
    threads = threads or default_threads()
    try:
        engine = _runtime(fmt, name, artifact, content, manifest, threads)
    except (BackendUnavailable, ImportError, OSError, ValueError):
        raise  # already say what is wrong, in our words
    except Exception as error:  # a runtime's own error type, e.g. ONNX Runtime's InvalidProtobuf
        raise ManifestError(
            f"{artifact}: {name} cannot load this model ({error}); its bytes match its "
            "manifest, so it was written so (an export cut short, or a format or version "
            "this runtime does not read)"
        ) from error
    engine.channels = len(output_channels(manifest))
    if engine.model_channels not in (None, engine.channels):
        raise ManifestError(
            f"{manifest_path(artifact)}: output_channels names {engine.channels} maps, but "
            f"{artifact.name} returns {engine.model_channels}: this manifest does not "
            "describe this model"
        )
    return engine


def _runtime(
    fmt: str,
    name: str,
    artifact: Path,
    content: bytes,
    manifest: Mapping[str, Any],
    threads: int,
) -> Backend:
    """The backend object for a verified artifact of format ``fmt``."""
    if fmt == "onnx":
        from edgeseg.backends.onnx import OnnxBackend

        return OnnxBackend(content, manifest, threads, name=name)
    if fmt == "litert":
        from edgeseg.backends.litert import LiteRTBackend

        return LiteRTBackend(content, manifest, threads)
    if fmt == "keras":
        from edgeseg.backends.keras import KerasBackend

        return KerasBackend(artifact, manifest, threads)
    from edgeseg.backends.tensorrt import TensorRTBackend

    return TensorRTBackend(content, manifest, threads)
