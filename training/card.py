"""Write a run's MODEL_CARD.md from what the run folder proves: config, state, log and the
evaluation JSONs written by `edgeseg eval` (never from numbers typed by hand).

    python -m training.card training/runs/unet
reads ``eval_test.json`` (stage1_test) and, when present, ``eval_train.json`` beside the run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

from edgeseg.atomic import write_text
from training.config import TrainConfig

METRICS = (
    ("pixel_accuracy", "pixel accuracy"),
    ("pixel_iou", "foreground pixel IoU (survey's mIoU)"),
    ("mean_iou_2class", "two-class mean IoU (Keras MeanIoU)"),
    ("dsb_score", "DSB score (mean AP over IoU 0.50-0.95)"),
    ("ap50", "AP50"),
    ("f1_50", "F1@0.5"),
    ("count_abs_error", "mean absolute nucleus count error"),
)


#: Card columns, each from eval_<split>.json; validation_x3 (training.evaluate_run --magnify 3)
#: shows how a model copes with nuclei three times the size of its training data's.
SPLITS = ("train", "validation", "validation_x3", "test")


#: How a model card names what stained slides reach the network as.
STAINED_INPUT = {"luma": "inverted luma", "hematoxylin": "hematoxylin density"}


#: What the card says of a model with the distance map (training/targets.py).
DISTANCE_NOTE = (
    " (distance: each nucleus's distance to its edge over its largest, trained with weight "
    "`distance_weight`; seeds need it over the manifest's `distance_threshold`)"
)


def _percent(value: float | None, key: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:.2f}" if key == "count_abs_error" else f"{100 * value:.2f} %"


def _selected_epoch(state: dict, tuned: bool) -> str:
    """Which epoch's weights the run ships, and on what it was chosen (validation only)."""
    if "shipped_epoch" in state:
        return f"ships epoch {state['shipped_epoch']}: {state['shipped_because']}"
    thresholds = (
        "post-processing thresholds then tuned on validation (postprocess.json)"
        if tuned
        else "post-processing thresholds the best of the per-epoch grid (not tuned further)"
    )
    if "members" in state:  # training.ensemble: no epochs of its own, so no per-epoch grid
        epochs = ", ".join(str(member["best_epoch"]) for member in state["members"])
        if not tuned:
            thresholds = "the default post-processing thresholds (not tuned yet)"
        return f"each member's best epoch on validation ({epochs}), {thresholds}"
    return (
        f"best epoch {state['best_epoch']} (selected on validation: mean of pixel IoU and "
        f"DSB score), {thresholds}"
    )


def training_lines(config: TrainConfig, state: dict, run_dir: Path) -> list[str]:
    """How the weights were made: one run's schedule, or the runs an ensemble averages."""
    seeds = f"seed {config.seed}"
    lines = []
    if "members" in state:
        seeds = "seeds " + ", ".join(str(member["seed"]) for member in state["members"])
        runs = ", ".join(f"`{member['run']}`" for member in state["members"])
        lines.append(
            f"- Ensemble: the probabilities of {runs} averaged in one network "
            "(training.ensemble); each member trained as below."
        )
    lines.append(
        f"- Training: {state['epoch']} of {config.epochs} epochs x {config.steps_per_epoch} steps "
        f"x batch {config.batch_size}, {config.augment.crop}px crops, Adam "
        f"{config.learning_rate:g} cosine to {config.min_learning_rate:g}, {seeds}, "
        f"float32; {_selected_epoch(state, (run_dir / 'postprocess.json').is_file())}."
    )
    lines += schedule_change_lines(state)
    lines.append(wall_time_line(state))
    if "log_note" in state:  # what happened to the log while the run went on
        lines.append(f"- Log: {state['log_note']}.")
    if "members" not in state:  # an ensemble trained nothing itself
        rows = list(csv.DictReader((run_dir / "log.csv").open()))
        lines.append(
            f"- Final training loss: {float(rows[-1]['loss']):.4f} (log.csv has every epoch)."
        )
    return lines


def data_line(data_copy: str) -> str:
    """The card's data provenance: which copy, which split, and that test is only scored."""
    return (
        f"- Data: DSB2018 `{data_copy}`, training ids of the fixed split "
        "(training/splits/dsb2018_stage1.json); validation: its 67 ids of `stage1_train`; "
        "test: the 65 `stage1_test` images, used only for the numbers below."
    )


def wall_time_line(state: dict) -> str:
    note = state.get("wall_time_note", "shared with other work during the run")
    return (
        f"- Wall time: {state['wall_seconds'] / 3600:.2f} h on {state.get('machine', 'n/a')} "
        f"(CPU only, {note})."
    )


def schedule_change_lines(state: dict) -> list[str]:
    """Changes made to a run's schedule while it ran (state.json ``schedule_changes``)."""
    return [
        f"- Schedule changed after epoch {change['after_epoch']}: "
        f"{change['epochs'][0]} -> {change['epochs'][1]} epochs, {change['why']}."
        for change in state.get("schedule_changes", [])
    ]


def results_tables(run_dir: Path, evaluations: dict, validation: dict) -> list[str]:
    """Metric x split table, then the test split by imaging modality (from eval_test.json)."""
    splits = [s for s in SPLITS if s in evaluations or s == "validation"]
    titles = [s.replace("_x3", " enlarged x3") for s in splits]
    lines = ["| metric | " + " | ".join(titles) + " |", "|---|" + "---|" * len(splits)]
    for key, title in METRICS:
        values = [
            _percent((validation if s == "validation" else evaluations[s]).get(key), key)
            for s in splits
        ]
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    test_by_kind = {}
    if (run_dir / "eval_test.json").is_file():
        test_by_kind = json.loads((run_dir / "eval_test.json").read_text()).get("by_kind", {})
    if test_by_kind:
        lines += ["", "Test split by imaging modality (edgeseg.preprocess.image_kind):", ""]
        lines += ["| modality | images | pixel IoU | DSB score | AP50 |", "|---|---|---|---|---|"]
        lines += [
            f"| {kind} | {group['images']} | {_percent(group['pixel_iou'], 'pixel_iou')} | "
            f"{_percent(group['dsb_score'], 'dsb_score')} | {_percent(group['ap50'], 'ap50')} |"
            for kind, group in test_by_kind.items()
        ]
    return lines


def read_evaluations(run_dir: Path) -> dict[str, dict]:
    """The aggregate scores of every eval_<split>.json in the run folder."""
    evaluations = {}
    for split in SPLITS:
        path = run_dir / f"eval_{split}.json"
        if path.is_file():
            evaluations[split] = json.loads(path.read_text())["aggregate"]
    return evaluations


def render_card(run_dir: Path) -> str:
    import keras

    from training.complexity import conv_flops
    from training.manifest import TILE_SIZE
    from training.pretrained import pretrained_weights

    config = TrainConfig.from_file(run_dir / "config.json")
    state = json.loads((run_dir / "state.json").read_text())
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    evaluations = read_evaluations(run_dir)
    validation = evaluations.get("validation", state.get("best_metrics", {}))
    tuned = run_dir / "postprocess.json"
    if tuned.is_file():  # scored with the tuned post-processing the model ships with
        validation = json.loads(tuned.read_text())["validation"]
    lines = [
        f"# Model card: {config.model}",
        "",
        f"- Architecture: `{config.model}` {json.dumps(config.model_kwargs)}; input one "
        "normalised gray channel (edgeseg.preprocess; stained slides as "
        f"{STAINED_INPUT[config.stained_channel]}), output [{', '.join(config.output_channels)}]"
        f"{DISTANCE_NOTE if 'distance' in config.output_channels else ''}.",
        f"- Parameters: {model.count_params():,}; FLOPs per {TILE_SIZE}x{TILE_SIZE} tile: "
        f"{conv_flops(model, TILE_SIZE) / 1e9:.2f} G (convolutions, multiply-add = 2).",
        f"- Starting weights: {pretrained_weights(config.model, config.model_kwargs) or 'random'}.",
        data_line(config.data_copy),
        *training_lines(config, state, run_dir),
        "",
    ]
    lines += results_tables(run_dir, evaluations, validation)
    lines += ["", footer_line("`edgeseg segment` + `edgeseg eval` with this model")]
    return "\n".join(lines) + "\n"


def footer_line(test_commands: str) -> str:
    """Every card's last line: how its numbers were measured."""
    return (
        f"Numbers are per-image means (edgeseg.metrics). Test numbers come from {test_commands} "
        "(commands in training/README.md)."
    )


def write_card(render: Callable[[Path], str]) -> None:
    """``python -m <card module> RUN_DIR``: (re)write RUN_DIR/MODEL_CARD.md."""
    run = Path(sys.argv[1])
    write_text(run / "MODEL_CARD.md", render(run))
    print(f"wrote {run / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    write_card(render_card)
