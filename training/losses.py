"""Loss for the [foreground, boundary(, distance)] maps: per-channel BCE plus soft Dice on
foreground.

Dice counters the class imbalance of sparse nuclei; BCE keeps the boundary channel sharp. The
distance target lies in [0, 1] (training/targets.py), so it is a soft BCE target too: its
gradient at the logit is the plain difference, as for the other maps.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="edgeseg")
class SegmentationLoss(keras.losses.Loss):
    def __init__(
        self,
        boundary_weight: float = 1.0,
        dice_weight: float = 1.0,
        distance_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.boundary_weight = boundary_weight
        self.dice_weight = dice_weight
        self.distance_weight = distance_weight

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        bce = keras.losses.binary_crossentropy(y_true[..., :, None], y_pred[..., :, None])
        foreground_bce = ops.mean(bce[..., 0], axis=(1, 2))
        boundary_bce = ops.mean(bce[..., 1], axis=(1, 2))
        distance_bce = 0.0
        if y_pred.shape[-1] == 3:  # a model that also predicts the distance map
            distance_bce = ops.mean(bce[..., 2], axis=(1, 2))
        true_fg, pred_fg = y_true[..., 0], y_pred[..., 0]
        intersection = ops.sum(true_fg * pred_fg, axis=(1, 2))
        total = ops.sum(true_fg, axis=(1, 2)) + ops.sum(pred_fg, axis=(1, 2))
        dice = 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)
        return (
            foreground_bce
            + self.boundary_weight * boundary_bce
            + self.distance_weight * distance_bce
            + self.dice_weight * dice
        )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "boundary_weight": self.boundary_weight,
            "dice_weight": self.dice_weight,
            "distance_weight": self.distance_weight,
        }
