"""Train Mask R-CNN end to end from (image, instance labels) pairs; resumable by step.

`MaskRCNNTrainer.train_step` is one seeded optimisation step on a batch of crops;
`train` is the small loop around it. Run folder (``training/runs/<name>/``):
  config.json     the exact MaskRCNNTrainConfig
  log.csv         mean losses per checkpoint interval, learning rate, seconds
  checkpoints/    tf.train checkpoints of the three graphs, optimizer and step (for resume)
  stage1.keras, box_head.keras, mask_head.keras   the graphs at the last checkpoint
"""

from __future__ import annotations

import csv
import math
import time
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from edgeseg.data.dataset import Sample
from edgeseg.maskrcnn import MaskRCNN
from edgeseg.preprocess import normalize
from training.maskrcnn.config import MaskRCNNTrainConfig
from training.maskrcnn.data import instance_crop
from training.maskrcnn.losses import head_losses, mask_loss, rpn_losses
from training.maskrcnn.model import build_box_head, build_mask_head, build_stage1, keras_stage
from training.maskrcnn.roi_align import roi_align
from training.maskrcnn.targets import batch_targets

LOSS_NAMES = ("rpn_objectness", "rpn_box", "classification", "box", "mask")
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


def train(
    config: MaskRCNNTrainConfig, samples: list[Sample], run_dir: Path, resume: bool = False
) -> MaskRCNNTrainer:
    """Train (or resume) for ``config.steps`` steps; checkpoints and logs every interval."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.threads)
    except RuntimeError:  # TensorFlow already running in this process: keep its pools
        pass
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        config = MaskRCNNTrainConfig.from_file(run_dir / "config.json")
    elif (run_dir / "config.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it or use a new folder")
    else:
        (run_dir / "config.json").write_text(config.to_json())
    trainer = MaskRCNNTrainer(config)
    manager = tf.train.CheckpointManager(trainer.checkpoint, run_dir / "checkpoints", 2)
    if resume and manager.latest_checkpoint:
        trainer.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    images = [normalize(s.image) for s in samples]
    labels = [s.labels for s in samples]
    totals, started = dict.fromkeys((*LOSS_NAMES, "total"), 0.0), time.time()
    while (step := int(trainer.step.numpy())) < config.steps:
        losses = trainer.train_step(*crop_batch(images, labels, config, step))
        totals = {name: totals[name] + losses[name] for name in totals}
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            interval = (step % config.checkpoint_every) + 1
            row = {"step": step + 1, "learning_rate": learning_rate(config, step)}
            row |= {name: value / interval for name, value in totals.items()}
            row["seconds"] = time.time() - started
            _append_log(run_dir / "log.csv", row)
            manager.save(checkpoint_number=step + 1)
            for name in ("stage1", "box_head", "mask_head"):
                getattr(trainer, name).save(run_dir / f"{name}.keras")
            totals, started = dict.fromkeys(totals, 0.0), time.time()
    return trainer


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
