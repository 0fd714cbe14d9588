"""Write the Mask R-CNN run's MODEL_CARD.md from what its folder proves (never typed numbers).

    python -m training.maskrcnn.card training/runs/maskrcnn
reads config.json, state.json, log.csv, model/maskrcnn.json, postprocess.json (thresholds
tuned on validation, when present) and the eval_<split>.json files `edgeseg eval` wrote.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from training.card import (
    data_line,
    footer_line,
    read_evaluations,
    results_tables,
    wall_time_line,
    write_card,
)
from training.maskrcnn.config import MaskRCNNTrainConfig
from training.maskrcnn.manifest import model_manifest


def _stage1_flops(run_dir: Path, tile: int) -> float:
    """Backbone + FPN + RPN FLOPs on a tile; the heads' cost grows with the detections."""
    import keras

    from training.complexity import conv_flops

    stage1 = keras.saving.load_model(model_manifest(run_dir).parent / "stage1.keras", compile=False)
    return conv_flops(stage1, tile) / 1e9


def render_card(run_dir: Path, tile: int = 256) -> str:
    config = MaskRCNNTrainConfig.from_file(run_dir / "config.json")
    state = json.loads((run_dir / "state.json").read_text())
    manifest = json.loads(model_manifest(run_dir).read_text())
    rows = list(csv.DictReader((run_dir / "log.csv").open()))
    validation = state["best_metrics"]
    thresholds = "the runtime defaults (not tuned)"
    tuned = run_dir / "postprocess.json"
    if tuned.is_file():  # scored with the tuned thresholds the model ships with
        tuning = json.loads(tuned.read_text())
        validation = tuning["validation"]
        thresholds = f"tuned on validation: {json.dumps(tuning['chosen'])}"
    restarts = [
        f"step {w['from_step']} -> {w['restarted_at']}" + (f" ({w['note']})" if "note" in w else "")
        for w in state.get("warm_starts", [])
    ]
    graphs = ", ".join(f"{name} {count:,}" for name, count in manifest["graph_params"].items())
    lines = [
        "# Model card: maskrcnn",
        "",
        f"- Architecture: Mask R-CNN, ResNet-style backbone (stem {config.stem_width}, widths "
        f"{list(config.widths)}, {config.blocks} blocks per stage) + FPN ({config.fpn_channels} "
        f"channels) + RPN, RoIAlign, box head ({config.box_head_units} units), mask head "
        f"({config.mask_head_convs} convs x {config.mask_head_channels}); three graphs, proposal "
        "decoding/NMS/RoIAlign in the numpy runtime (edgeseg/maskrcnn.py).",
        f"- Parameters: {manifest['params']:,} ({graphs}); stage-1 FLOPs per {tile}x{tile} "
        f"image: {_stage1_flops(run_dir, tile):.2f} G (convolutions, multiply-add = 2).",
        data_line(config.data_copy),
        f"- Training: from scratch (no pretrained weights), {state['step']} of {config.steps} "
        f"steps x batch {config.batch_size}, {config.augment.crop}px crops, AdamW "
        f"{config.learning_rate:g} (warm-up, cosine to 0), seed {config.seed}, float32; "
        f"shipped weights: step {state['best_step']}, selected on validation (mean of pixel "
        f"IoU and DSB score); runtime thresholds {thresholds}.",
        f"- Warm starts (checkpoints too big to commit; fresh optimizer from the best model): "
        f"{', '.join(restarts) or 'none'}.",
        wall_time_line(state),
        f"- Final training loss: {float(rows[-1]['total']):.4f} (log.csv has every "
        f"{config.checkpoint_every} steps).",
        "",
        *results_tables(run_dir, read_evaluations(run_dir), validation),
        "",
        footer_line(
            "`edgeseg segment --model training/runs/maskrcnn/model/maskrcnn.json` + `edgeseg eval`"
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    write_card(render_card)
