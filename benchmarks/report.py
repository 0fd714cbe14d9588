"""bench.json and bench.md: the survey's Table I extended with latency, memory and size.

Unavailable configurations keep their row with the reason and empty cells; the survey's
published numbers appear as reference rows labelled as not measured here. Instance models
(Mask R-CNN) have no tiles: their tile cells say so, and the 256x256 whole-image latency,
measured for every model, is the column that compares them with the semantic ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.reference import SOURCE
from edgeseg.atomic import atomic_path
from edgeseg.models import models_dir

EMPTY = "—"
NO_TILES = "n/a: whole images"
MAIN_COLUMNS = (
    "Model",
    "Target",
    "Pixel acc. %",
    "Pixel IoU %",
    "2-class mIoU %",
    "DSB %",
    "AP50 %",
    "F1@0.5 %",
    "Count err.",
    "Tile ms, b=1 (p95)",
    "Tile ms, best b",
    "256x256 image ms (p95)",
    "Image ms (p95)",
    "Images/s",
    "Peak RSS MB",
    "Size MB",
    "Load s",
    "Params",
    "FLOPs/tile",
    "Notes",
)
SPREAD_COLUMNS = (
    "Model",
    "Target",
    "Tile b=1: n, median, p95 ms, rel. IQR",
    "256x256 image: n, median, p95 ms, rel. IQR",
    "Image: n, median, p95 ms, rel. IQR",
    "First image ms",
    "Load avg. (1 min)",
)


def write_json(result: Mapping[str, Any], path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(result, indent=2) + "\n")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(columns), _row(["---"] * len(columns)), *map(_row, rows)]


def _pct(value: float | None) -> str:
    return EMPTY if value is None else f"{100 * value:.1f}"


def _timing(summary: Mapping[str, float] | None) -> str:
    if not summary:
        return EMPTY
    return f"{summary['median_ms']:.1f} ({summary['p95_ms']:.1f})"


def _count(value: float | None) -> str:
    """3 significant digits with a k/M/G suffix; n/a when unknown."""
    if value is None:
        return "n/a"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:g}"


def _notes(record: Mapping[str, Any]) -> str:
    if record["status"] == "unavailable":
        return f"not available on this machine: {record['reason']}"
    if record["status"] == "failed":
        return f"failed: {record['reason'].splitlines()[-1]} (see bench.json)"
    sources = {record["params_source"], record["flops_source"]} - {"n/a", "manifest"}
    artifact = Path(record["artifact"])
    copies = [Path(path) for path in record.get("copies", [])]
    builtin = any(path.resolve().parent == models_dir().resolve() for path in [artifact, *copies])
    where = "the built-in default model, " if builtin else ""
    notes = [f"{where}{artifact.name} on {record['backend']}"]
    if copies:
        notes.append("the same file as " + ", ".join(map(str, copies)))
    if record["latency"]["model"] is None:
        notes.append("instance model: segments whole images, no tile latency")
    if record["export_check"] == "rejected":
        notes.append("REJECTED by the export accuracy check")
    elif record["export_check"] == "pending":
        notes.append("NOT VERIFIED: its export accuracy check never finished")
    notes += [f"params/FLOPs from the {source}" for source in sorted(sources)]
    return "; ".join(notes)


def main_row(record: Mapping[str, Any]) -> list[str]:
    """One measured (or unavailable) configuration as a Table I row."""
    head = [record["model"], record["target"]]
    if record["status"] != "ok":
        return [*head, *[EMPTY] * (len(MAIN_COLUMNS) - 3), _notes(record)]
    scores, latency = record["accuracy"], record["latency"]
    tiles = [NO_TILES, NO_TILES]
    if latency["model"] is not None:
        batches = latency["model"]["batches"]
        best = str(latency["model"]["best_batch"])
        tiles = [_timing(batches.get("1")), f"{batches[best]['per_tile_median_ms']:.1f} (b={best})"]
    return [
        *head,
        _pct(scores["pixel_accuracy"]),
        _pct(scores["pixel_iou"]),
        _pct(scores["mean_iou_2class"]),
        _pct(scores["dsb_score"]),
        _pct(scores["ap50"]),
        _pct(scores["f1_50"]),
        f"{scores['count_abs_error']:.1f}",
        *tiles,
        _timing(latency["whole_image"]),
        _timing(latency["end_to_end"]),
        f"{latency['images_per_s']:.2f}",
        f"{record['memory']['peak_rss_mb']:.0f}",
        f"{record['size_bytes'] / 1e6:.2f}",
        f"{record['load_s']:.2f}",
        _count(record["params"]),
        _count(record["flops_per_tile"]),
        _notes(record),
    ]


def reference_row(row: Mapping[str, Any]) -> list[str]:
    """A survey row: only the accuracies it published, labelled as not measured here."""
    cells = [row["model"], "survey (reported)", _pct(row["test_accuracy"]), _pct(row["pixel_iou"])]
    return [*cells, *[""] * (len(MAIN_COLUMNS) - 5), row["note"]]


def _spread(summary: Mapping[str, float] | None) -> str:
    if not summary:
        return EMPTY
    return (
        f"{summary['n']}, {summary['median_ms']:.1f}, {summary['p95_ms']:.1f}, "
        f"{100 * summary['iqr_rel']:.0f}%"
    )


def spread_row(record: Mapping[str, Any]) -> list[str]:
    latency = record["latency"]
    tile = NO_TILES if latency["model"] is None else _spread(latency["model"]["batches"].get("1"))
    return [
        record["model"],
        record["target"],
        tile,
        _spread(latency["whole_image"]),
        _spread(latency["end_to_end"]),
        f"{latency['first_image_ms']:.0f}",
        f"{record['load_average'][0]:.2f}",
    ]


def environment_lines(environment: Mapping[str, Any]) -> list[str]:
    cpu = environment["cpu"]
    libraries = ", ".join(f"{name} {version}" for name, version in environment["libraries"].items())
    load = environment["load_average"] or []
    return [
        f"- CPU: {cpu['model']}; SIMD flags: {' '.join(cpu['simd_flags']) or 'none found'}",
        f"- Cores: {cpu['physical_cores'] or '?'} physical, {cpu['logical_cores']} logical, "
        f"{cpu['usable_cores'] or '?'} usable; inference threads: "
        f"{environment['threads'] or 'runtime default'}",
        f"- GPU: {'; '.join(environment['gpus']) or 'none'}",
        f"- Python {environment['python']} on {environment['platform']}",
        f"- Libraries: {libraries}",
        f"- Load average (1/5/15 min) at start: {' / '.join(f'{v:.2f}' for v in load)}; "
        f"at end: {' / '.join(f'{v:.2f}' for v in environment.get('load_average_end', []))}",
    ]


def markdown(result: Mapping[str, Any]) -> str:
    """The whole report: main table, reference rows, spread, method notes, environment."""
    records, dataset, settings = result["records"], result["dataset"], result["settings"]
    subset = dataset["images"] < dataset["split_images"]
    lines = [
        "# edgeseg benchmark",
        "",
        f"{dataset['images']} of {dataset['split_images']} images of {dataset['folder']}; "
        f"{settings['repeats']} timed repeats per batch size; started {result['started']}.",
    ]
    if subset:
        lines += [
            "",
            f"**Accuracy is on {dataset['images']} images only**: not comparable with the "
            "survey's 65-image numbers (a --quick or --images run).",
        ]
    scored_on = Path(dataset["folder"]).name
    if scored_on != "stage1_test":
        lines += [
            "",
            f"**Accuracy is on {scored_on}, not the held-out stage1_test**: "
            "the survey rows below are test-set numbers; compare these rows with each other.",
        ]
    rows = [main_row(record) for record in records]
    rows += [reference_row(row) for row in result["reference"]]
    lines += ["", *_table(MAIN_COLUMNS, rows), ""]
    lines += [
        f"Survey rows: {SOURCE}; reported numbers, not measured here (test accuracy and "
        "mean IoU on the 65 stage1_test images).",
        "",
        "## Spread (judge a re-run against these)",
        "",
        *_table(SPREAD_COLUMNS, [spread_row(r) for r in records if r["status"] == "ok"]),
        "",
        "## How the numbers were measured",
        "",
        "- Accuracy: `edgeseg eval` scores of the label images `Segmenter.segment` wrote "
        "(what `edgeseg segment` writes); per-image means. Pixel acc. = pixel accuracy, "
        "Pixel IoU = foreground IoU (the survey's metric), DSB = mean AP over IoU "
        "0.50-0.95, count err. = mean |predicted - true| nuclei per image.",
        "- Tile ms: `backend.predict` on one tile of the artifact's tile size, warm, median "
        "(p95) per call; best b = the batch size with the lowest time per tile. Instance "
        f"models (Mask R-CNN) have no tiles ({NO_TILES}).",
        "- 256x256 image ms: `segment` (normalise + inference + post-processing, no decode) "
        "on a 256x256 crop of the first image, warm, median (p95): the latency every row "
        "has, semantic or instance model. For a semantic model with 256-pixel tiles it is one "
        "tile plus post-processing; for Mask R-CNN the whole-image pipeline (stage 1, box "
        "and mask heads, NMS, mask pasting), whose cost grows with the nuclei found.",
        "- Image ms: decode + normalise + tiled inference + post-processing per image, warm "
        "(the first image is run once untimed first); images/s over the split.",
        "- Peak RSS: peak resident memory (VmHWM on Linux) of a fresh process that loaded the "
        "artifact and ran the split (before the larger-batch timings). Load s: "
        "`load_segmenter` in that fresh process, "
        "incl. importing the runtime and checking the sha256.",
        "- Params/FLOPs: from the manifest, else counted on the ONNX graph (Conv, "
        "ConvTranspose, MatMul, Gemm; 2 FLOPs per multiply-add), else n/a. A graph's "
        "parameters are the weights it stores: BatchNorm folded into convolutions by the "
        "exporter makes them slightly fewer than Keras' count_params.",
        "",
        "## Environment",
        "",
        *environment_lines(result["environment"]),
        "",
    ]
    return "\n".join(lines)


def write_markdown(result: Mapping[str, Any], path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(markdown(result))
