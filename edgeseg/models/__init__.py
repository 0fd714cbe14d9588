"""Built-in models: artifacts packaged in this folder, each beside its manifest.

A built-in model is an artifact (``unet-int8.tflite``) plus its manifest
(``unet-int8.tflite.json``, see edgeseg.manifest), looked up by the manifest's ``name``.
The default model is the one whose name is the single line of ``default.txt`` in this folder;
with no ``default.txt`` and exactly one packaged model, that model is the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from edgeseg.backends import SUFFIXES
from edgeseg.manifest import read_manifest

DEFAULT_FILE = "default.txt"


class ModelNotFoundError(LookupError):
    """No model matches the name or path asked for; the message says what exists."""


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    artifact: Path
    manifest: dict[str, Any]
    is_default: bool


def models_dir() -> Path:
    """The folder the built-in models are installed in (package data of edgeseg.models)."""
    return Path(str(files(__name__)))


def list_models() -> list[BuiltinModel]:
    """Every packaged model, sorted by name, the default one flagged."""
    folder = models_dir()
    manifests = {}
    for path in sorted(folder.glob("*.json")):
        artifact = folder / path.stem  # unet.onnx.json describes unet.onnx
        manifest = read_manifest(artifact, verify=False)  # verified when loaded
        manifests[str(manifest.get("name", artifact.name))] = (artifact, manifest)
    default_file = folder / DEFAULT_FILE
    if default_file.is_file():
        default = default_file.read_text().strip()
    else:
        default = next(iter(manifests)) if len(manifests) == 1 else None
    return [
        BuiltinModel(name, artifact, manifest, name == default)
        for name, (artifact, manifest) in sorted(manifests.items())
    ]


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """The artifact to load: the default model (None), a built-in name, or a file path."""
    if name_or_path is not None and Path(name_or_path).is_file():
        return Path(name_or_path)
    models = list_models()
    names = ", ".join(model.name for model in models) or "none installed"
    if name_or_path is None:
        default = next((model for model in models if model.is_default), None)
        if default is not None:
            return default.artifact
        if not models:
            raise ModelNotFoundError(
                "no built-in model installed: pass the path of an exported model "
                "(its .json manifest beside it)"
            )
        raise ModelNotFoundError(
            f"no default among the built-in models ({names}): {DEFAULT_FILE} in "
            f"{models_dir()} must name one; or choose one by name"
        )
    match = next((model for model in models if model.name == str(name_or_path)), None)
    if match is not None:
        return match.artifact
    path = Path(name_or_path)
    if isinstance(name_or_path, os.PathLike) or len(path.parts) > 1 or _is_artifact(path):
        raise ModelNotFoundError(f"{path}: no such model file")
    raise ModelNotFoundError(
        f"unknown model {str(name_or_path)!r}: built-in models are {names}; "
        "or pass the path of an exported model file"
    )


def is_maskrcnn(artifact: Path) -> bool:
    """A Mask R-CNN is three graphs, so it is named by its manifest (``maskrcnn.json``)."""
    return artifact.suffix.lower() == ".json"


def _is_artifact(path: Path) -> bool:
    return any(path.suffix.lower() in suffixes for suffixes in SUFFIXES.values())
