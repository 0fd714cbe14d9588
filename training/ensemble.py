"""Average the probabilities of several finished runs of one recipe in a single network, so
the runtime, export and benchmarks treat the ensemble as any other model:

    python -m training.ensemble training/runs/unet_multiscale_long_ensemble \\
        training/runs/unet_multiscale_long training/runs/unet_multiscale_long_seed43

Why one flat graph and not a loop over models: every export target, the INT8 calibration and
the verification gate then see the ensemble exactly as the runtime runs it, one tile, one
call. Members must share every setting but the seed and thread count (same input,
preprocessing, tiling).

The folder gets ``model.keras``, ``config.json`` (the members' shared recipe, with the first
member's seed), ``state.json`` (the members: folder relative to the ensemble's parent, seed,
best epoch, weights' sha256) and
``model.keras.json``; then tune its thresholds (training.tune_postprocess), score it
(training.evaluate_run) and write its card (training.card) like a trained run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeseg.atomic import write_text
from edgeseg.manifest import file_sha256, manifest_path, read_manifest
from training.config import TrainConfig
from training.manifest import write_model_manifest


class EnsembleError(ValueError):
    """The runs cannot be averaged; the message names the run and why."""


def build_ensemble(members: Sequence[Any], name: str) -> Any:
    """One Keras model whose output is the mean of ``members``' outputs on the same input.

    Each member is copied into the graph with its layers renamed ``member<i>_...`` (layer
    names must be unique), weights unchanged.
    """
    import keras

    image = keras.Input((None, None, 1), name="image")
    outputs = []
    for index, member in enumerate(members):

        def renamed(layer: Any, prefix: str = f"member{index}_") -> Any:
            config = layer.get_config()
            config["name"] = prefix + layer.name
            return layer.__class__.from_config(config)

        copy = keras.models.clone_model(member, input_tensors=image, clone_function=renamed)
        copy.set_weights(member.get_weights())
        outputs.append(copy.output)
    averaged = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(image, averaged, name=name)


#: Settings members may differ in: neither changes what a trained network computes.
FREE_SETTINGS = ("seed", "threads")


def member_records(run_dirs: Sequence[Path]) -> tuple[list[TrainConfig], list[dict[str, Any]]]:
    """Each run's config and state; refuses runs that differ in more than FREE_SETTINGS or
    have not finished."""
    configs = [TrainConfig.from_file(run / "config.json") for run in run_dirs]
    states = [json.loads((run / "state.json").read_text()) for run in run_dirs]
    recipe = asdict(configs[0])
    for run, config, state in zip(run_dirs, configs, states, strict=True):
        differing = sorted(
            key
            for key, value in asdict(config).items()
            if key not in FREE_SETTINGS and value != recipe[key]
        )
        if differing:
            raise EnsembleError(f"{run}: differs from {run_dirs[0]} in {', '.join(differing)}")
        if state["epoch"] < config.epochs:
            raise EnsembleError(
                f"{run}: not finished ({state['epoch']} of {config.epochs} epochs); resume it first"
            )
    return configs, states


def write_ensemble(out: Path, run_dirs: Sequence[Path]) -> Path:
    """Write the ensemble of ``run_dirs`` (their best models) into the new folder ``out``;
    returns its manifest."""
    import training.losses  # noqa: F401  (registers the custom loss a model may name)
    from edgeseg.backends.keras import load_keras_file

    if len(run_dirs) < 2:
        raise EnsembleError("an ensemble needs at least two runs")
    if out.exists():
        raise EnsembleError(f"{out} exists; choose a new folder for the ensemble")
    configs, states = member_records(run_dirs)
    models = [load_keras_file(run / "model.keras") for run in run_dirs]
    # built in a sibling folder renamed at the end: a failure leaves no half an ensemble
    building = out.with_name(f".{out.name}.part")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    build_ensemble(models, configs[0].model).save(building / "model.keras")
    write_text(building / "config.json", configs[0].to_json())
    state = {
        "epoch": configs[0].epochs,
        "best_epoch": None,
        "wall_seconds": sum(member["wall_seconds"] for member in states),
        "wall_time_note": "the members' training times summed; averaging them trains nothing",
        "machine": states[0].get("machine", "n/a"),
        "members": [
            {
                "run": os.path.relpath(run, out.parent),  # the same wherever the repo is
                "seed": config.seed,
                "best_epoch": member["best_epoch"],
                "sha256": file_sha256(run / "model.keras"),
            }
            for run, config, member in zip(run_dirs, configs, states, strict=True)
        ],
    }
    write_text(building / "state.json", json.dumps(state, indent=2) + "\n")
    # the members trained on the same split, so their nuclei's measured size is the ensemble's
    first = read_manifest(run_dirs[0] / "model.keras", verify=False)
    write_model_manifest(building, first.get("nucleus_diameter"))
    building.rename(out)
    return manifest_path(out / "model.keras")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="new folder for the ensemble")
    parser.add_argument("runs", type=Path, nargs="+", help="finished training runs")
    args = parser.parse_args()
    print(f"wrote {write_ensemble(args.out, args.runs)}")


if __name__ == "__main__":
    main()
