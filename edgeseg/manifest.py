"""Model manifests: the JSON beside every model artifact that says how to run it and
proves the artifact is the one that was verified.

A manifest lives at ``<artifact>.json`` (``unet.onnx`` -> ``unet.onnx.json``) and records
the artifact's sha256; the runtime refuses to load an artifact whose bytes do not match, so a
truncated copy or a tampered file can never silently produce wrong nuclei. The manifest
itself is plain JSON and editable on purpose (thresholds re-tuned for a lab's images): its
verification record says what the export measured; it is not a signature.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeseg.atomic import write_text

FORMAT_VERSION = 1
OUTPUT_CHANNELS = ("foreground", "boundary")
#: The output layouts this runtime reads; a manifest without ``output_channels`` is the first.
CHANNEL_LAYOUTS = (OUTPUT_CHANNELS, (*OUTPUT_CHANNELS, "distance"))
#: Sections the runtime reads as JSON objects, when a manifest has them.
OBJECT_SECTIONS = (
    "input", "output", "preprocess", "tile", "postprocess", "verification", "nucleus_diameter",
)  # fmt: skip


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match its artifact."""


def manifest_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(artifact: str | os.PathLike, **fields: Any) -> Path:
    """Write ``<artifact>.json`` with ``fields`` plus the artifact's name and sha256."""
    artifact = Path(artifact)
    manifest = {
        "format_version": FORMAT_VERSION,
        "artifact": artifact.name,
        "sha256": file_sha256(artifact),
        "output_channels": list(OUTPUT_CHANNELS),
        **fields,
    }
    return write_text(
        manifest_path(artifact), json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    )


def read_manifest(artifact: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load the manifest of ``artifact``; with ``verify`` refuse a hash mismatch."""
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not path.is_file():
        raise ManifestError(
            f"{artifact}: no manifest {path.name} beside it; refusing an unverified model"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: unreadable manifest ({error})") from error
    check_layout(manifest, path)
    if verify:
        check_sha256(artifact, file_sha256(artifact), manifest)
    return manifest


def check_sha256(artifact: Path, actual: str, manifest: Mapping[str, Any]) -> None:
    """Refuse ``artifact`` (whose bytes hash to ``actual``) unless its manifest says so."""
    expected = manifest.get("sha256")
    if not isinstance(expected, str):
        raise ManifestError(f"{artifact}: its manifest has no sha256 to check the file against")
    if actual != expected:
        raise ManifestError(
            f"{artifact}: sha256 {actual[:12]}... does not match its manifest "
            f"({expected[:12]}...): the file was modified or corrupted; refusing to load it"
        )


def check_layout(manifest: Any, path: Path) -> None:
    """Refuse a manifest whose sections have the wrong JSON type, or whose output channels
    are not in the order the runtime reads them, before any of it is used."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: a manifest is a JSON object, not {type(manifest).__name__}")
    wrong = [key for key in OBJECT_SECTIONS if not isinstance(manifest.get(key, {}), dict)]
    if wrong:
        raise ManifestError(f"{path}: {', '.join(wrong)} must be JSON objects ({{...}})")
    channels = manifest.get("output_channels", list(OUTPUT_CHANNELS))
    if channels not in [list(layout) for layout in CHANNEL_LAYOUTS]:
        raise ManifestError(
            f"{path}: output_channels {channels!r}; this runtime reads "
            f"{' or '.join(repr(list(layout)) for layout in CHANNEL_LAYOUTS)}, in that order"
        )


def output_channels(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The model's output maps, in order (checked by ``check_layout``)."""
    return tuple(manifest.get("output_channels", OUTPUT_CHANNELS))


def refuse_unverified(artifact: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Refuse an artifact that failed its accuracy gate at export (edgeseg export), or whose
    gate never finished: the manifest is written "pending" before the gate runs, so an
    export killed or crashed during its check leaves an artifact nobody verified."""
    verification = manifest.get("verification", {})
    if verification.get("status") == "pending":
        raise ManifestError(
            f"{artifact}: its accuracy check at export never finished (the export was "
            "interrupted or failed); refusing to run it. Export it again"
        )
    if verification.get("status") == "rejected":
        failed = verification.get("failed")
        failed = ", ".join(map(str, failed)) if isinstance(failed, list) else None
        raise ManifestError(
            f"{artifact}: this artifact failed its accuracy check at export "
            f"({failed or 'see its manifest'} outside "
            "the limits its manifest's verification records); refusing to run it. "
            "Re-export it, or choose a larger --max-drop at export if the loss is acceptable"
        )
