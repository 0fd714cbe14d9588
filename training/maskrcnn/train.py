"""Train Mask R-CNN end to end from (image, instance labels) pairs; resumable by step.

`MaskRCNNTrainer.train_step` is one seeded optimisation step on a batch of crops;
`train_on_samples` is the loop around it, `train` the same on DSB2018 with the fixed split.
Every ``validate_every`` steps the whole validation images go through the NumPy runtime (what
ships) and are scored like the semantic models (training.selection.selection_score). Run folder
(``training/runs/<name>/``):
  config.json     the exact MaskRCNNTrainConfig
  log.csv         per checkpoint interval: mean losses, learning rate, validation metrics
                  (where validated; same columns as the semantic models), cumulative seconds
  state.json      last step, best validation score, step and metrics, wall time, machine
  checkpoints/    tf.train checkpoints of the three graphs, optimizer and step (for resume)
  model/          the best graphs on validation and maskrcnn.json (training.maskrcnn.manifest)
"""

from __future__ import annotations

import csv
import json
import math
import time
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from edgeseg.data.cache import DEFAULT_CACHE_DIR
from edgeseg.data.dataset import Sample
from edgeseg.maskrcnn import MaskRCNN
from edgeseg.maskrcnn_model import GRAPHS, keras_stage
from edgeseg.metrics import aggregate, score_image
from edgeseg.preprocess import image_kind, normalize
from training.data_loading import load_train_validation
from training.maskrcnn.config import MaskRCNNTrainConfig
from training.maskrcnn.data import instance_crop
from training.maskrcnn.losses import head_losses, mask_loss, rpn_losses
from training.maskrcnn.manifest import model_manifest, save_model
from training.maskrcnn.model import build_box_head, build_mask_head, build_stage1
from training.maskrcnn.roi_align import roi_align
from training.maskrcnn.targets import batch_targets
from training.selection import selection_score
from training.train import (
    VALIDATION_KEYS,
    _sampling_weights,
    machine_description,
)

LOSS_NAMES = ("rpn_objectness", "rpn_box", "classification", "box", "mask")
LOSS_NAMES_TOTAL = (*LOSS_NAMES, "total")
VALIDATION_COLUMNS = (*(f"val_{key}" for key in VALIDATION_KEYS), "val_selection_score")
_TARGET_TYPES = [tf.int32, tf.float32, tf.float32, tf.int32, tf.int32, tf.float32, tf.float32]
_TARGET_TYPES += [tf.float32, tf.int32, tf.int32, tf.float32, tf.float32]


def learning_rate(config: MaskRCNNTrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to zero; a pure function of the step for exact resume."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def crop_batch(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    config: MaskRCNNTrainConfig,
    step: int,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step`` of augmented crops; always the same for the same (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    picks = rng.choice(len(images), size=config.batch_size, p=weights)
    pairs = [instance_crop(images[i], labels[i], config.augment, rng) for i in picks]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class MaskRCNNTrainer:
    """The three graphs, their optimizer and a compiled, seeded train step."""

    def __init__(self, config: MaskRCNNTrainConfig) -> None:
        keras.utils.set_random_seed(config.seed)
        self.config = config
        self.stage1 = build_stage1(config)
        self.box_head = build_box_head(config)
        self.mask_head = build_mask_head(config)
        self.variables = [
            *self.stage1.trainable_variables,
            *self.box_head.trainable_variables,
            *self.mask_head.trainable_variables,
        ]
        self.optimizer = keras.optimizers.AdamW(
            config.learning_rate, weight_decay=config.weight_decay, global_clipnorm=config.clip_norm
        )
        self.optimizer.build(self.variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(
            stage1=self.stage1,
            box_head=self.box_head,
            mask_head=self.mask_head,
            optimizer=self.optimizer,
            step=self.step,
        )
        self._compiled = tf.function(
            self._train_step,
            input_signature=[
                tf.TensorSpec([None, None, None, 1], tf.float32),
                tf.TensorSpec([None, None, None], tf.int32),
                tf.TensorSpec([2], tf.int64),
            ],
        )

    def runtime(self) -> MaskRCNN:
        """The numpy runtime on the current weights (what the exported graphs will compute)."""
        stages = (keras_stage(m) for m in (self.stage1, self.box_head, self.mask_head))
        return MaskRCNN(self.config.runtime, *stages)

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """One step on (N, H, W, 1) crops and (N, H, W) instance labels; H, W multiples of 32."""
        multiple = self.config.runtime.size_multiple
        if images.shape[1] % multiple or images.shape[2] % multiple:
            raise ValueError(f"crop size {images.shape[1:3]} is not a multiple of {multiple}")
        step = int(self.step.numpy())
        self.optimizer.learning_rate = learning_rate(self.config, step)
        seed = np.array([self.config.seed, step], np.int64)
        losses = self._compiled(images.astype(np.float32), labels.astype(np.int32), seed)
        self.step.assign_add(1)
        return {name: float(value) for name, value in losses.items()}

    def _train_step(self, images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor) -> dict:
        config, runtime = self.config, self.config.runtime
        with tf.GradientTape() as tape:
            *features, rpn_logits, rpn_deltas = self.stage1(images, training=True)
            targets = tf.numpy_function(
                partial(batch_targets, config=config),
                [tf.stop_gradient(rpn_logits), tf.stop_gradient(rpn_deltas), labels, seed],
                _TARGET_TYPES,
            )
            rpn_labels, rpn_targets = targets[0], targets[1]
            rois, levels, classes, deltas, weights = _merge_images(
                targets[2:7], [[4], [], [], [4], []]
            )
            size = runtime.mask_size
            mask_rois, mask_levels, mask_classes, masks, mask_weights = _merge_images(
                targets[7:], [[4], [], [], [size, size], []]
            )
            rpn_objectness, rpn_box = rpn_losses(
                rpn_logits,
                rpn_deltas,
                tf.reshape(rpn_labels, tf.shape(rpn_logits)),
                tf.reshape(rpn_targets, tf.shape(rpn_deltas)),
                config.rpn_batch_per_image,
            )
            crops = roi_align(
                features,
                rois,
                _image_indices(images, config.rois_per_image),
                levels,
                runtime.strides,
                runtime.pool_size,
                runtime.sampling_ratio,
            )
            class_logits, box_deltas = self.box_head(crops, training=True)
            classification, box = head_losses(class_logits, box_deltas, classes, deltas, weights)
            mask_crops = roi_align(
                features,
                mask_rois,
                _image_indices(images, config.mask_rois_per_image),
                mask_levels,
                runtime.strides,
                runtime.mask_pool_size,
                runtime.sampling_ratio,
            )
            mask_logits = self.mask_head(mask_crops, training=True)
            mask = mask_loss(mask_logits, mask_classes, masks, mask_weights)
            values = (rpn_objectness, rpn_box, classification, box, mask)
            losses = dict(zip(LOSS_NAMES, values, strict=True))
            total = tf.add_n(list(losses.values()))
        gradients = tape.gradient(total, self.variables)
        self.optimizer.apply_gradients(zip(gradients, self.variables, strict=True))
        return {**losses, "total": total}


def _merge_images(tensors: list[tf.Tensor], tails: list[list[int]]) -> list[tf.Tensor]:
    """(N, R, *tail) per-image targets -> (N * R, *tail), with the static shape the heads need."""
    return [tf.reshape(t, [-1, *tail]) for t, tail in zip(tensors, tails, strict=True)]


def _image_indices(images: tf.Tensor, per_image: int) -> tf.Tensor:
    return tf.repeat(tf.range(tf.shape(images)[0]), per_image)


def validate(trainer: MaskRCNNTrainer, validation: list[Sample]) -> dict[str, float]:
    """Mean metrics of whole validation images segmented by the NumPy runtime."""
    runtime = trainer.runtime()
    per_image = {
        sample.id: score_image(sample.labels, runtime.segment(normalize(sample.image)))
        for sample in validation
    }
    return aggregate(per_image)


def train(
    config: MaskRCNNTrainConfig,
    data_root: Path,
    run_dir: Path,
    resume: bool = False,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
) -> MaskRCNNTrainer:
    """Train (or resume) on DSB2018 stage1 with the fixed split (training.data_loading)."""
    config = _run_config(config, run_dir, resume)
    samples, validation = load_train_validation(data_root, config.data_copy, cache_dir)
    return train_on_samples(config, samples, validation, run_dir, resume)


def train_on_samples(
    config: MaskRCNNTrainConfig,
    samples: list[Sample],
    validation: list[Sample],
    run_dir: Path,
    resume: bool = False,
) -> MaskRCNNTrainer:
    """Train (or resume) the run in ``run_dir`` for ``config.steps`` steps; see module doc."""
    if not validation:
        raise ValueError("no validation samples: the best model could never be chosen")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    except RuntimeError:  # TensorFlow already running in this process: keep its pools
        pass
    config = _run_config(config, run_dir, resume)
    if not (run_dir / "config.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config.to_json())
    state_path = run_dir / "state.json"
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
    else:
        state = {"step": 0, "best_score": -1.0, "best_step": None, "wall_seconds": 0.0}
    trainer = MaskRCNNTrainer(config)
    manager = tf.train.CheckpointManager(trainer.checkpoint, run_dir / "checkpoints", 2)
    if resume and manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    elif resume and state["best_step"]:
        _warm_start(trainer, run_dir, state)
    images = [normalize(s.image) for s in samples]
    labels = [s.labels for s in samples]
    weights = _sampling_weights([image_kind(s.image) for s in samples])
    totals, count, started = dict.fromkeys(LOSS_NAMES_TOTAL, 0.0), 0, time.time()
    step = int(trainer.step.numpy())
    with tqdm(total=config.steps, initial=step, unit="step", mininterval=10) as bar:
        while (step := int(trainer.step.numpy())) < config.steps:
            losses = trainer.train_step(*crop_batch(images, labels, config, step, weights))
            totals, count = {name: totals[name] + losses[name] for name in totals}, count + 1
            bar.update()
            bar.set_postfix(loss=f"{losses['total']:.3f}", refresh=False)
            done = step + 1
            validating = done % config.validate_every == 0 or done == config.steps
            if not validating and done % config.checkpoint_every:
                continue
            row = {"step": done, "learning_rate": learning_rate(config, step)}
            row |= {name: value / count for name, value in totals.items()}
            row |= dict.fromkeys(VALIDATION_COLUMNS, "")
            if validating:
                row |= _validate_and_select(trainer, validation, run_dir, state, done)
            state["wall_seconds"] += time.time() - started
            row["seconds"] = state["wall_seconds"]
            state["step"] = done
            state["machine"] = machine_description()
            manager.save(checkpoint_number=done)
            state_path.write_text(json.dumps(state, indent=2) + "\n")
            _append_log(run_dir / "log.csv", row)
            totals, count, started = dict.fromkeys(totals, 0.0), 0, time.time()
    return trainer


def _validate_and_select(
    trainer: MaskRCNNTrainer, validation: list[Sample], run_dir: Path, state: dict, step: int
) -> dict[str, float]:
    """Validate, keep the model if it is the best so far; the log's validation columns."""
    metrics = validate(trainer, validation)
    score = selection_score(metrics)
    if score > state["best_score"]:
        state.update(best_score=score, best_step=step, best_metrics=metrics)
        save_model(trainer, run_dir, state)
    tqdm.write(
        f"step {step}: validation pixel IoU {metrics['pixel_iou']:.4f}, DSB score "
        f"{metrics['dsb_score']:.4f}, selection {score:.4f} (best {state['best_score']:.4f} "
        f"at step {state['best_step']})"
    )
    columns = {f"val_{key}": metrics[key] for key in VALIDATION_KEYS}
    return {**columns, "val_selection_score": score}


def _warm_start(trainer: MaskRCNNTrainer, run_dir: Path, state: dict) -> None:
    """Continue from the committed best model when the checkpoints are gone.

    Checkpoints with AdamW moments exceed the repository's file limit, so a fresh clone has
    only ``model/``: its weights are loaded, the step goes back to the best step (the learning
    rate schedule continues from there), the optimizer starts afresh and the log drops the
    rows after that step. ``state.json`` records the restart.
    """
    directory = model_manifest(run_dir).parent
    for name in GRAPHS:
        saved = keras.saving.load_model(directory / f"{name}.keras", compile=False)
        getattr(trainer, name).set_weights(saved.get_weights())
    best = int(state["best_step"])
    state.setdefault("warm_starts", []).append(
        {"from_step": state["step"], "restarted_at": best, "optimizer": "re-initialised"}
    )
    trainer.step.assign(best)
    state["step"] = best
    (run_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    log = run_dir / "log.csv"
    if log.is_file():
        with log.open(newline="") as handle:
            rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= best]
        log.unlink()
        for row in rows:
            _append_log(log, row)
    tqdm.write(f"no checkpoint: warm start from the best model at step {best}, fresh optimizer")


def _run_config(config: MaskRCNNTrainConfig, run_dir: Path, resume: bool) -> MaskRCNNTrainConfig:
    """A resumed run keeps its stored config (the schedule depends on it); a new one needs a
    fresh folder."""
    path = run_dir / "config.json"
    if resume and path.is_file():
        return MaskRCNNTrainConfig.from_file(path)
    if path.exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it or use a new folder")
    return config


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
