"""The complete, JSON-serialisable description of one training run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeseg.manifest import CHANNEL_LAYOUTS, OUTPUT_CHANNELS
from edgeseg.preprocess import StainedChannel, checked_stained_channel
from training.augment import AugmentConfig


@dataclass
class TrainConfig:
    model: str
    model_kwargs: dict = field(default_factory=dict)
    data_copy: str = "stage1_train_fixed"  # or "stage1_train"
    epochs: int = 40
    steps_per_epoch: int = 100
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_learning_rate: float = 5e-5
    warmup_epochs: int = 1
    boundary_weight: float = 1.0
    dice_weight: float = 1.0
    #: The maps the model predicts (edgeseg.manifest.CHANNEL_LAYOUTS); "distance" adds the
    #: normalised distance to the nucleus edge (training/targets.py), weighted by
    #: ``distance_weight`` in the loss.
    output_channels: tuple[str, ...] = OUTPUT_CHANNELS
    distance_weight: float = 1.0
    seed: int = 42
    threads: int = 2
    stained_channel: StainedChannel = "luma"  # or "hematoxylin" (edgeseg.preprocess)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        checked_stained_channel(self.stained_channel)  # a typo fails here, not in a later step
        self.output_channels = tuple(self.output_channels)  # JSON gives a list
        if self.output_channels not in CHANNEL_LAYOUTS:
            raise ValueError(
                f"output_channels {list(self.output_channels)}: choose one of "
                f"{', '.join(str(list(layout)) for layout in CHANNEL_LAYOUTS)}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        values = json.loads(Path(path).read_text())
        augment = AugmentConfig.from_dict(values.pop("augment", {}))
        return cls(**values, augment=augment)
