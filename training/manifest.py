"""The manifest of a trained Keras model, so the runtime can run (and verify) it like any
exported artifact: `edgeseg segment --model training/runs/unet/model.keras`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeseg.manifest import manifest_path, read_manifest, write_manifest
from edgeseg.postprocess import PostprocessSettings
from edgeseg.preprocess import preprocess_spec
from training.config import TrainConfig

TILE_SIZE = 256
TILE_OVERLAP = 32


def postprocess_settings(run_dir: Path) -> PostprocessSettings:
    """The thresholds tuned on validation (training/tune_postprocess.py), else those the best
    epoch was scored at (training/selection.py), else the defaults."""
    tuned, state = run_dir / "postprocess.json", run_dir / "state.json"
    if tuned.is_file():
        return _settings_from(tuned, json.loads(tuned.read_text())["chosen"])
    if state.is_file() and "best_settings" in (recorded := json.loads(state.read_text())):
        return _settings_from(state, recorded["best_settings"])
    return PostprocessSettings()


def _settings_from(path: Path, values: dict[str, Any]) -> PostprocessSettings:
    try:
        return PostprocessSettings(**values)
    except (TypeError, ValueError) as error:  # an edited or damaged file: say which
        raise ValueError(f"{path}: {error}") from error


def write_model_manifest(run_dir: Path, nucleus_diameter: dict[str, Any] | None = None) -> Path:
    """Write ``model.keras.json`` for the best model of the run in ``run_dir``.

    ``nucleus_diameter`` is the training nuclei's size (training/nucleus_size.py); when the
    caller has no data at hand to measure it, the value already in the manifest is kept.
    """
    import keras

    from training.complexity import conv_flops
    from training.models import size_multiple
    from training.pretrained import pretrained_weights

    config = TrainConfig.from_file(run_dir / "config.json")
    state = json.loads((run_dir / "state.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    artifact = run_dir / "model.keras"
    if nucleus_diameter is None and manifest_path(artifact).is_file():
        nucleus_diameter = read_manifest(artifact, verify=False).get("nucleus_diameter")
    measured = {} if nucleus_diameter is None else {"nucleus_diameter": nucleus_diameter}
    pretrained = pretrained_weights(config.model, config.model_kwargs)
    return write_manifest(
        artifact,
        name=f"{config.model}-keras-fp32",
        model=config.model,
        backend="keras",
        target="keras-fp32",
        input={"name": "image", "shape": [None, None, None, 1], "dtype": "float32"},
        output={
            "name": "probabilities",
            "shape": [None, None, None, len(config.output_channels)],
            "dtype": "float32",
        },
        output_channels=list(config.output_channels),
        tile={
            "size": TILE_SIZE,
            "overlap": TILE_OVERLAP,
            "multiple": size_multiple(model),
        },
        preprocess=preprocess_spec(config.stained_channel),
        postprocess=postprocess_settings(run_dir).to_dict(),
        params=model.count_params(),
        flops_per_tile=conv_flops(model, TILE_SIZE),
        flops_tile=TILE_SIZE,
        training={
            "data_copy": config.data_copy,
            "best_epoch": state["best_epoch"],
            "validation": state.get("best_metrics", {}),
            **({"members": state["members"]} if "members" in state else {}),  # an ensemble's
            **({"pretrained": pretrained} if pretrained else {}),
        },
        **measured,
    )
