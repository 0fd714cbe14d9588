"""The shipped model of a Mask R-CNN run: its best graphs on validation and their manifest.

``<run>/model/`` holds the three inference-only ``.keras`` graphs (the trainer never
compiles them, so no optimizer state is saved) and ``maskrcnn.json`` (edgeseg.maskrcnn_model),
so ``edgeseg segment --model <run>/model/maskrcnn.json`` runs exactly what was validated.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgeseg.maskrcnn_model import GRAPHS, MANIFEST_NAME, write_maskrcnn_manifest
from training.train import _atomic_save

if TYPE_CHECKING:
    from training.maskrcnn.train import MaskRCNNTrainer

MODEL_DIR = "model"


def model_manifest(run_dir: Path) -> Path:
    """Where the run's shipped model is (the path to give ``--model``)."""
    return run_dir / MODEL_DIR / MANIFEST_NAME


def save_model(trainer: MaskRCNNTrainer, run_dir: Path, state: dict) -> Path:
    """Save the trainer's current graphs as the run's model; returns its manifest path."""
    path = model_manifest(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    models = {name: getattr(trainer, name) for name in GRAPHS}
    graphs = {name: path.parent / f"{name}.keras" for name in GRAPHS}
    for name in GRAPHS:
        _atomic_save(models[name], graphs[name])
    config = trainer.config
    return write_maskrcnn_manifest(
        path,
        config.runtime,
        graphs,
        "keras",
        name="maskrcnn-keras-fp32",
        model="maskrcnn",
        target="keras-fp32",
        input={
            "name": "image",
            "shape": [None, None, None, 1],
            "dtype": "float32",
            "multiple": config.runtime.size_multiple,
        },
        preprocess={"name": "percentile-gray", "version": 1},
        params=sum(model.count_params() for model in models.values()),
        graph_params={name: model.count_params() for name, model in models.items()},
        training={
            "data_copy": config.data_copy,
            "steps": config.steps,
            "best_step": state["best_step"],
            "validation": state["best_metrics"],
        },
    )
