"""`edgeseg eval`: score any tool's predicted label images against DSB2018-style ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edgeseg.atomic import unwritable_reason
from edgeseg.commands.options import data_root_option, split_option

SUMMARY_ROWS = (
    ("dsb_score", "DSB score (mean AP, IoU 0.50-0.95)"),
    ("ap50", "AP@0.5 TP/(TP+FP+FN)"),
    ("f1_50", "F1@0.5"),
    ("precision_50", "precision@0.5"),
    ("recall_50", "recall@0.5"),
    ("pixel_iou", "foreground pixel IoU"),
    ("pixel_precision", "foreground pixel precision"),
    ("pixel_recall", "foreground pixel recall"),
    ("mean_iou_2class", "mean IoU, 2 classes (Keras)"),
)


def summary_lines(result: dict) -> list[str]:
    """A few readable lines: image count, percentages, and the nucleus count error."""
    scores = result["aggregate"]
    lines = [f"images:   {scores['images']} from {result['dataset']}"]
    if result["missing"]:
        lines.append(f"skipped:  {len(result['missing'])} images without a prediction")
    width = max(len(label) for _, label in SUMMARY_ROWS)
    lines += [f"{label:<{width}}  {100 * scores[key]:6.2f}%" for key, label in SUMMARY_ROWS]
    lines.append(f"{'nucleus count error':<{width}}  {scores['count_abs_error']:6.2f} per image")
    for kind, group in result.get("by_kind", {}).items():
        lines.append(
            f"{kind + ':':<13} {group['images']:3d} images, pixel IoU "
            f"{100 * group['pixel_iou']:.2f}%, DSB {100 * group['dsb_score']:.2f}%, "
            f"AP50 {100 * group['ap50']:.2f}%"
        )
    return lines


def json_destination(value: str | None) -> Path | None:
    """``--json``'s file; a name ending in a separator is a folder (Path would drop the
    separator and write a file of that name), refused before minutes of scoring."""
    if value is None:
        return None
    if not value:
        raise click.BadParameter("an empty name; give a file, e.g. scores.json")
    if value.endswith(("/", os.sep)) or Path(value).is_dir():
        value = value.rstrip("/" + os.sep) + os.sep
        raise click.BadParameter(f"{value} names a folder; give a file, e.g. {value}scores.json")
    reason = unwritable_reason(Path(value).absolute().parent)
    if reason is not None:
        raise click.BadParameter(f"cannot write {value}: {reason}")
    return Path(value)


@click.command("eval")
@click.argument("pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@data_root_option
@split_option
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    callback=lambda context, parameter, value: json_destination(value),
    help="Also write aggregate and per-image scores to this JSON file.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Decode cache for the ground truth [default: $EDGESEG_CACHE or ~/.cache/edgeseg].",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Score only the images that have a prediction instead of failing on a missing one.",
)
def evaluate(
    pred_dir: Path,
    data_root: Path,
    split: str,
    json_path: Path | None,
    cache_dir: Path | None,
    allow_missing: bool,
) -> None:
    """Score predicted label images in PRED_DIR against the ground truth in --data.

    PRED_DIR holds one uint16 instance label image per sample, <id>_labels.tif (or
    _labels.png), 0 for background, as most segmentation tools can write. A 0/255
    foreground mask is not one (it would score all nuclei as one) and is refused.
    Every id of the split must have one. Prints the image count and mean per-image scores:
    the DSB2018 score (TP/(TP+FP+FN) averaged over IoU thresholds 0.50-0.95, a match needing
    IoU > threshold), AP, F1, precision and recall at IoU 0.5, foreground pixel IoU,
    precision and recall (recall well under precision: outlines drawn tighter than the
    ground truth's, or nuclei missed), 2-class mean IoU and the nucleus count error.
    --json also writes every image's scores.

    Example: edgeseg eval predictions/ --data /data/dsb2018 --split test --json scores.json
    """
    from tqdm import tqdm

    from edgeseg.atomic import write_text
    from edgeseg.data.cache import DEFAULT_CACHE_DIR
    from edgeseg.data.dataset import DatasetError
    from edgeseg.evaluate import EvaluationError, evaluate_folder
    from edgeseg.imageio import ImageReadError

    try:
        result = evaluate_folder(
            pred_dir,
            data_root,
            split=split,
            progress=lambda samples: tqdm(samples, unit="img", leave=False),
            cache_dir=cache_dir or DEFAULT_CACHE_DIR,
            allow_missing=allow_missing,
        )
    except (DatasetError, EvaluationError, ImageReadError) as error:
        raise click.ClickException(str(error)) from error
    click.echo("\n".join(summary_lines(result)))
    if json_path is not None:
        write_text(json_path, json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
