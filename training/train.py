"""Train one edgeseg model on DSB2018 stage1 with the fixed split; resumable every epoch.

Run folder layout (``training/runs/<name>/``):
  config.json        the exact TrainConfig
  log.csv            one row per epoch: losses, learning rate, validation metrics, seconds
  checkpoint.keras   model + optimizer after the last finished epoch (for --resume)
  state.json         last finished epoch, best validation score and epoch, wall time
  model.keras        the best model on the validation split (inference only, no optimizer)
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

from edgeseg.atomic import atomic_path, remove_stale_temporaries, write_text
from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.data.dataset import Sample
from edgeseg.preprocess import image_kind, normalize, preprocess_spec
from training.augment import random_crop
from training.config import TrainConfig
from training.data_loading import load_train_validation
from training.manifest import write_model_manifest
from training.nucleus_size import nucleus_diameter_record, training_source
from training.pretrained import check_pretrained
from training.selection import (
    EPOCH_GRID,
    best_result,
    grid_settings,
    score_settings,
    with_distance,
)
from training.targets import edge_distance

#: The validation metrics every run logs (as ``val_<key>``), semantic models and Mask R-CNN.
VALIDATION_KEYS = ("pixel_iou", "dsb_score", "ap50", "f1_50", "mean_iou_2class")


def machine_description() -> str:
    """What a run's state.json says it ran on."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _configure_tensorflow(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already running in this process: keep its pools
            pass


def _crop_dataset(
    config: TrainConfig, images: list, labels: list, weights: np.ndarray, epoch0: int
):
    import keras

    # measured once on whole images, so crops keep each nucleus's true distance profile
    distances = [
        edge_distance(label) if "distance" in config.output_channels else None for label in labels
    ]

    class CropBatches(keras.utils.PyDataset):
        """Deterministic batches: batch i of epoch e always comes from seed (seed, e, i)."""

        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = epoch0

        def __len__(self) -> int:
            return config.steps_per_epoch

        def __getitem__(self, index: int):
            rng = np.random.default_rng([config.seed, self.epoch, index])
            picks = rng.choice(len(images), size=config.batch_size, p=weights)
            pairs = [
                random_crop(
                    images[i], labels[i], config.augment, rng, config.output_channels, distances[i]
                )
                for i in picks
            ]
            return (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return CropBatches()


def _sampling_weights(kinds: list[str]) -> np.ndarray:
    """Sample images with weight 1/sqrt(count of their modality): rare kinds seen more."""
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    weights = np.array([1.0 / math.sqrt(counts[kind]) for kind in kinds])
    return weights / weights.sum()


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Linear warm-up then cosine decay; a pure function of the epoch, so resume is exact."""
    if epoch < config.warmup_epochs:
        return config.learning_rate * (epoch + 1) / (config.warmup_epochs + 1)
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / "state.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume or a new --out")


def train(
    config: TrainConfig,
    data_root: Path,
    run_dir: Path,
    resume: bool = False,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    verbose: int | str = "auto",
) -> dict:
    """Train (or resume) on DSB2018 stage1 with the fixed split; returns the final state."""
    if resume and (run_dir / "config.json").is_file():
        config = TrainConfig.from_file(run_dir / "config.json")
    elif not resume:  # before minutes of loading data
        refuse_existing_run(run_dir)
        check_pretrained(config.model, config.model_kwargs)
    train_samples, validation = load_train_validation(data_root, config.data_copy, cache_dir)
    return train_on_samples(config, train_samples, validation, run_dir, resume, verbose)


def train_on_samples(
    config: TrainConfig,
    train_samples: list[Sample],
    validation: list[Sample],
    run_dir: Path,
    resume: bool = False,
    verbose: int | str = "auto",
) -> dict:
    """Train (or resume) the run in ``run_dir`` on explicit samples; returns the final state."""
    _configure_tensorflow(config.threads)
    import keras

    from edgeseg.backends.keras import KerasBackend
    from edgeseg.postprocess import PostprocessSettings
    from edgeseg.segmenter import Segmenter
    from edgeseg.tiling import TileSettings
    from training.losses import SegmentationLoss
    from training.manifest import TILE_OVERLAP, TILE_SIZE
    from training.models import build_model, size_multiple

    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)  # models a killed run was writing
    state_path, checkpoint_path = run_dir / "state.json", run_dir / "checkpoint.keras"
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        model = keras.saving.load_model(checkpoint_path)
    else:
        refuse_existing_run(run_dir)
        keras.utils.set_random_seed(config.seed)
        (run_dir / "config.json").write_text(config.to_json())
        state = {"epoch": 0, "best_score": -1.0, "best_epoch": None, "wall_seconds": 0.0}
        model = build_model(
            config.model, channels=len(config.output_channels), **config.model_kwargs
        )
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss=SegmentationLoss(
                config.boundary_weight, config.dice_weight, config.distance_weight
            ),
        )

    images = [normalize(s.image, config.stained_channel) for s in train_samples]
    labels = [s.labels for s in train_samples]
    diameter = nucleus_diameter_record(labels, training_source(config.data_copy))
    weights = _sampling_weights([image_kind(s.image) for s in train_samples])
    tiles = TileSettings(TILE_SIZE, TILE_OVERLAP, size_multiple(model))
    validation_manifest = {"preprocess": preprocess_spec(config.stained_channel)}
    epoch_grid = with_distance(EPOCH_GRID, config.output_channels)

    class EpochEnd(keras.callbacks.Callback):
        """Validate on whole images, keep the best model, checkpoint for resume."""

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.time()

        def on_epoch_end(self, epoch, logs=None):
            backend = KerasBackend.from_model(self.model)
            # probabilities only: each epoch is scored over the thresholds of epoch_grid
            segmenter = Segmenter(backend, validation_manifest, PostprocessSettings(), tiles)
            maps = [(s.labels, segmenter.predict_probabilities(s.image)) for s in validation]
            best = best_result(score_settings(maps, grid_settings(epoch_grid)))
            metrics, score = best["validation"], best["selection_score"]
            for key in VALIDATION_KEYS:
                logs[f"val_{key}"] = metrics[key]
            logs["val_selection_score"] = score
            for key in ("foreground_threshold", "boundary_threshold", "distance_threshold"):
                if key in epoch_grid:  # a run's log keeps its columns when it is resumed
                    logs[f"val_{key}"] = best["settings"][key]
            state["wall_seconds"] += time.time() - self.started
            logs["seconds"] = state["wall_seconds"]
            state["epoch"] = epoch + 1
            improved = score > state["best_score"]
            if improved:
                state.update(
                    best_score=score,
                    best_epoch=epoch + 1,
                    best_metrics=metrics,
                    best_settings=best["settings"],
                )
                _atomic_save(inference_copy(self.model), run_dir / "model.keras")
                # thresholds tuned for the weights this replaces no longer apply
                (run_dir / "postprocess.json").unlink(missing_ok=True)
            _atomic_save(self.model, checkpoint_path)
            state["machine"] = machine_description()
            write_text(state_path, json.dumps(state, indent=2) + "\n")  # --resume reads it
            if improved:
                write_model_manifest(run_dir, diameter)

    dataset = _crop_dataset(config, images, labels, weights, state["epoch"])
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda e: learning_rate(config, e)),
        EpochEnd(),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
    ]
    if state["epoch"] < config.epochs:
        model.fit(
            dataset,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            callbacks=callbacks,
            verbose=verbose,
        )
    return state


def inference_copy(model):
    """The same network and weights without optimizer state (clone_model keeps it): a third
    of the file size, and nothing in the shipped model that inference does not use."""
    import keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def _atomic_save(model, path: Path) -> None:
    with atomic_path(path) as temporary:
        model.save(temporary)
