"""`edgeseg export`: convert a trained model for edge runtimes and verify every artifact
(needs the `export` extra; the TensorRT engine step also needs TensorRT and a GPU). A Mask
R-CNN, named by its maskrcnn.json, is exported graph by graph into one folder per target."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

EXIT_ENGINE_NOT_BUILT = 3
EXIT_REJECTED = 4


@click.command()
@click.option(
    "--model",
    "model",
    required=True,
    metavar="NAME_OR_PATH",
    help="A .keras model, a Mask R-CNN's maskrcnn.json (RUN/model/maskrcnn.json), a training "
    "run's folder, or its name under ./training/runs (NAME/model.keras or "
    "NAME/model/maskrcnn.json), or the "
    "TensorRT-ready .onnx / maskrcnn.json of an earlier trt-* export (to build its engine here).",
)
@click.option(
    "--target",
    required=True,
    metavar="TARGET",
    help="tflite-fp32, tflite-fp16, tflite-int8, onnx-fp32, onnx-int8, trt-fp16, trt-int8, or "
    "all (every one of them; trt-* write the TensorRT-ready ONNX everywhere and build the "
    "engine only where TensorRT and a GPU exist, else exit status 3).",
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="DSB2018 folder holding stage1_train: calibration crops come from its training ids, "
    "verification uses its validation ids. Without it int8 targets are refused and "
    "verification is skipped.",
)
@click.option(
    "--calib-images",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="INT8 calibration crops: one random tile per training image, taking further tiles "
    "from the same images only when the training split has fewer images than this.",
)
@click.option(
    "--verify-images",
    type=click.IntRange(min=1),
    help="Verify on only the first N validation images [default: all].",
)
@click.option(
    "--evaluate-test/--no-evaluate-test",
    default=True,
    show_default=True,
    help="Also score every artifact on DATA/stage1_test (the held-out test split, when present) "
    "and record the numbers in its manifest under 'evaluation', so they can be re-measured "
    "with `edgeseg segment` + `edgeseg eval`. They are reported only, never used to decide.",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Reject an artifact whose pixel IoU or DSB score is this many points below the source's.",
)
@click.option(
    "--min-agreement",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="Reject an artifact whose labels overlap the source's (mean foreground IoU) less than "
    "this, even if it scores as well: it would be another model.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: <run>/export/ for a .keras or a run's maskrcnn.json, beside "
    "a TensorRT-ready .onnx or maskrcnn.json].",
)
@click.option(
    "--tile",
    type=click.IntRange(min=16),
    default=256,
    show_default=True,
    help="The fixed tile size the artifacts take; the runtime tiles larger images. A Mask R-CNN "
    "takes whole images: TILE is then the side of its calibration crops (a multiple of 32) and "
    "the image size its TensorRT engines are tuned for.",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=32,
    show_default=True,
    help="Overlap of neighbouring tiles at run time (written to the manifest).",
)
@click.option(
    "--split",
    "split_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Train/validation id split JSON [default: the fixed DSB2018 split of training/].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Decode cache for --data [default: $EDGESEG_CACHE or ~/.cache/edgeseg].",
)
def export(
    model: str,
    target: str,
    data_root: Path | None,
    calib_images: int,
    verify_images: int | None,
    evaluate_test: bool,
    max_drop: float,
    min_agreement: float,
    out_dir: Path | None,
    tile: int,
    overlap: int,
    split_file: Path | None,
    cache_dir: Path | None,
) -> None:
    """Export MODEL to TARGET, then check each artifact against the model it came from.

    Writes <model>-<target>.<tflite|onnx|engine> plus its .json manifest (source and its
    sha256, tensors, quantization, calibration ids and hash, tool versions, verification).
    Every artifact is run through the edgeseg runtime on the validation images next to the
    Keras model, with the same tiles and post-processing; a drop of more than --max-drop
    points in pixel IoU or DSB score rejects it (the file is kept, its manifest says
    "rejected"). trt-* targets write a TensorRT-ready ONNX and, where TensorRT and a CUDA GPU
    exist, build and verify the engine.

    A Mask R-CNN (--model RUN/model/maskrcnn.json) becomes the folder
    <out>/<model>-<target>/ holding stage1, box_head and mask_head graphs and their
    maskrcnn.json (run it with edgeseg segment --model <that folder>/maskrcnn.json). INT8
    calibrates stage 1 on the training crops and the heads on the RoI crops the FP32 model
    makes from them; if all-INT8 fails the gate, the heads are kept FP32 (the manifest's
    int8_graphs and attempts say so). The gate runs the whole model through the runtime.
    Example: edgeseg export --model maskrcnn --target onnx-int8 --data /data/dsb2018
    (the run name maskrcnn stands for training/runs/maskrcnn/model/maskrcnn.json).

    Exit status: 0 done; 1 error; 3 TensorRT engine not built here (the ONNX to build it from
    was written; the command to run on the target GPU is printed); 4 an artifact was rejected.

    Example: edgeseg export --model unet --target onnx-int8 --data /data/dsb2018
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgeseg.data.dataset import DatasetError
    from edgeseg.manifest import ManifestError
    from edgeseg.models import is_maskrcnn
    from export.pipeline import (
        ExportError,
        ExportSettings,
        converts_from_keras,
        default_out_dir,
        open_exporter,
        resolve_source,
    )
    from export.targets import missing_modules, resolve_targets

    try:
        targets = resolve_targets(target)
    except KeyError as error:
        raise click.BadParameter(error.args[0], param_hint="--target") from error
    try:
        source = resolve_source(model)
        if overlap >= tile and not is_maskrcnn(source):  # the runtime could not tile with it
            raise click.BadParameter(
                f"{tile} is not larger than --overlap {overlap}", param_hint="--tile"
            )
        from_keras = converts_from_keras(source)
        missing = (
            missing_modules(tuple({m for t in targets for m in t.needs})) if from_keras else []
        )
        if missing:
            raise click.ClickException(
                f"exporting a Keras model needs {', '.join(sorted(missing))}, not installed "
                "here: pip install 'edgeseg[export]'"
            )
        if from_keras and data_root is None and any(t.quantized for t in targets):
            raise click.ClickException(
                "int8 targets are calibrated on real training images: pass --data DIR "
                "(the DSB2018 folder holding stage1_train)"
            )
        samples: dict[str, Any] = {}
        if data_root is not None:
            samples = _split_samples(data_root, split_file, cache_dir, verify_images)
            if evaluate_test:
                samples |= _test_samples(data_root, cache_dir)
        exporter = open_exporter(
            source,
            out_dir or default_out_dir(source),
            ExportSettings(tile, overlap, calib_images, max_drop, min_agreement),
            **samples,
        )
        if data_root is None:
            click.echo(
                "no --data: verification SKIPPED; manifests say verification "
                '"skipped" and the runtime still loads the artifacts (only their hash is '
                "checked), so verify before deploying"
            )
        outcomes = []
        for each in targets:
            outcome = exporter.export(each)
            outcomes.append(outcome)
            for artifact in outcome.artifacts:
                click.echo(f"{each.name}: {_summary(artifact.path, artifact.manifest)}")
            if outcome.engine_missing:
                written = f"wrote {outcome.artifacts[0].path}; " if outcome.artifacts else ""
                click.echo(
                    f"{each.name}: {written}TensorRT engine NOT built ({outcome.engine_missing});"
                    f" build it on the target GPU with: {outcome.engine_command}"
                )
    except (ExportError, DatasetError, ManifestError) as error:
        raise click.ClickException(str(error)) from error
    if any(outcome.rejected for outcome in outcomes):
        raise SystemExit(EXIT_REJECTED)
    if any(outcome.engine_missing for outcome in outcomes):
        raise SystemExit(EXIT_ENGINE_NOT_BUILT)


def _split_samples(
    data_root: Path, split_file: Path | None, cache_dir: Path | None, verify_images: int | None
) -> dict[str, Any]:
    """Training ids of DATA/stage1_train for calibration, validation ids for verification."""
    from edgeseg.data.cache import DEFAULT_CACHE_DIR, load_dataset
    from training.split import SPLIT_FILE, load_split

    folder = data_root / "stage1_train"
    if not folder.is_dir():
        raise click.ClickException(f"{data_root}: no stage1_train folder (--data is DSB2018's)")
    split = load_split(split_file or SPLIT_FILE)
    by_id = {s.id: s for s in load_dataset(folder, cache_dir or DEFAULT_CACHE_DIR)}
    unknown = sorted((set(split["train"]) | set(split["validation"])) - set(by_id))
    if unknown:
        raise click.ClickException(f"{folder}: split ids not in the dataset: {unknown[:3]}")
    validation = [by_id[i] for i in split["validation"]][:verify_images]
    return {
        "calibration_samples": [by_id[i] for i in split["train"]],
        "calibration_label": f"{data_root.name}/{folder.name} training split",
        "validation_samples": validation,
        "validation_label": f"{data_root.name}/{folder.name} validation split, "
        f"first {len(validation)} images",
    }


def _test_samples(data_root: Path, cache_dir: Path | None) -> dict[str, Any]:
    """DATA/stage1_test with its released masks, if the folder is there."""
    from edgeseg.data.cache import DEFAULT_CACHE_DIR, load_dataset

    folder = data_root / "stage1_test"
    if not folder.is_dir():
        return {}
    return {
        "test_samples": load_dataset(folder, cache_dir or DEFAULT_CACHE_DIR),
        "test_label": f"{data_root.name}/{folder.name}",
    }


def _summary(path: Path, manifest: dict[str, Any]) -> str:
    """One line: the file, its size, the gate's numbers and any held-out test numbers."""
    from edgeseg.maskrcnn_model import GRAPHS

    verification = manifest["verification"]
    size = path.stat().st_size
    if manifest.get("kind") == "maskrcnn":  # a manifest naming three graph files
        from export.maskrcnn_pipeline import graph_bytes

        size = graph_bytes(path, manifest)
    head = f"wrote {path} ({size / 1e6:.2f} MB); verification "
    if verification["status"] == "skipped":
        return head + "SKIPPED (no --data)"
    change = verification["change_points"]
    numbers = ", ".join(
        f"{label} {100 * verification['artifact'][key]:.2f}% ({change[key]:+.2f})"
        for key, label in (("pixel_iou", "pixel IoU"), ("dsb_score", "DSB"), ("ap50", "AP50"))
    )
    line = (
        f"{verification['status'].upper()} on {verification['images']} images: mask agreement "
        f"{100 * verification['mask_agreement']:.2f}%, {numbers}"
    )
    if manifest.get("int8_graphs") not in (None, list(GRAPHS)):
        line += f"; INT8 in {', '.join(manifest['int8_graphs'])} only, the other graphs FP32"
    if verification["status"] == "rejected":
        reasons = [
            f"mask agreement under {100 * verification['min_mask_agreement']:.0f}%"
            if key == "mask_agreement"
            else f"{key} fell more than {verification['max_drop_points']} points"
            for key in verification["failed"]
        ]
        line += f"; {' and '.join(reasons)}: file kept, manifest marked rejected"
    if "evaluation" in manifest:
        test = manifest["evaluation"]
        line += (
            f"; held-out {test['data']} ({test['images']} images): pixel IoU "
            f"{100 * test['pixel_iou']:.2f}%, DSB {100 * test['dsb_score']:.2f}%"
        )
    return head + line
