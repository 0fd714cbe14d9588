"""Everything that defines one Mask R-CNN training run, JSON-serialisable for resume.

The runtime half (`MaskRCNNConfig`: anchors, box coding, thresholds) is nested so the
exported model can carry exactly the geometry it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeseg.maskrcnn import MaskRCNNConfig
from training.augment import AugmentConfig


@dataclass
class MaskRCNNTrainConfig:
    runtime: MaskRCNNConfig = field(default_factory=MaskRCNNConfig)
    data_copy: str = "stage1_train_fixed"  # or "stage1_train"; validation ids are in both
    # Network: ResNet-18 layout at half width, FPN and heads narrowed for edge CPUs.
    stem_width: int = 16
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 2
    fpn_channels: int = 64
    box_head_units: int = 128
    mask_head_convs: int = 2
    mask_head_channels: int = 64
    # RPN targets (Faster R-CNN): IoU >= 0.7 positive, < 0.3 negative, 256 anchors, half pos.
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    train_pre_nms_topk: int = 1000
    train_post_nms_topk: int = 256
    # Head targets: 64 RoIs per crop, a quarter positive (IoU >= 0.5), GT boxes included.
    rois_per_image: int = 64
    roi_positive_fraction: float = 0.25
    roi_positive_iou: float = 0.5
    mask_rois_per_image: int = 16
    min_instance_area: int = 4
    # Optimisation.
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    clip_norm: float = 5.0
    steps: int = 12000
    warmup_steps: int = 500
    checkpoint_every: int = 250
    validate_every: int = 1000  # 67 whole images through the NumPy runtime: 1-2 min on 2 cores
    seed: int = 42
    threads: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> MaskRCNNTrainConfig:
        values = json.loads(Path(path).read_text())
        runtime = MaskRCNNConfig.from_dict(values.pop("runtime", {}))
        augment = AugmentConfig.from_dict(values.pop("augment", {}))
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values, runtime=runtime, augment=augment)
