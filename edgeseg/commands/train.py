"""`edgeseg train`: full-precision Keras training (needs the `train` extra).

The semantic models (simple_cnn, unet, resnet, mobilenet_unet) train by epochs
(training/train.py), Mask R-CNN by steps (training/maskrcnn/train.py); both on the same data
and validation split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

MODELS = ("simple_cnn", "unet", "resnet", "mobilenet_unet", "maskrcnn")


@click.command()
@click.option(
    "--model", "model_name", type=click.Choice(MODELS), required=True, help="Architecture to train."
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="DSB2018 folder holding stage1_train and stage1_train_fixed.",
)
@click.option(
    "--out",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: config.json, log.csv, state.json, checkpoints and the best model.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A config.json to start from (e.g. a committed run's).",
)
@click.option("--epochs", type=int, help="Total epochs (overrides the config; not maskrcnn).")
@click.option(
    "--steps",
    type=int,
    help="Steps per epoch; for maskrcnn the total steps (overrides the config).",
)
@click.option(
    "--data-copy",
    type=click.Choice(["stage1_train", "stage1_train_fixed"]),
    help="Which training copy to read (validation ids are the same in both).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last checkpoint, with its stored config.json.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where decoded datasets are cached (default $EDGESEG_CACHE or ~/.cache/edgeseg).",
)
def train(
    model_name: str,
    data_root: Path,
    run_dir: Path,
    config_file: Path | None,
    epochs: int | None,
    steps: int | None,
    data_copy: str | None,
    resume: bool,
    cache_dir: Path | None,
) -> None:
    """Train MODEL on DSB2018 stage1 with the fixed train/validation split.

    Random crops with flips, rotations, rescaling and intensity changes are drawn from the
    training ids; the model is scored on the validation ids (never on stage1_test) through the
    same pipeline as `edgeseg segment`, the best one is kept, and checkpoints let an
    interrupted run continue with --resume. Uses an NVIDIA GPU when TensorFlow sees one.

    simple_cnn, unet, resnet, mobilenet_unet: validated after every epoch; the best model is
    OUT/model.keras. mobilenet_unet starts from ImageNet weights (training/pretrained/).

    maskrcnn: trains for --steps steps (default 12000), checkpoints every 250 and validates
    every 1000 (config fields checkpoint_every, validate_every); the best model is
    OUT/model/maskrcnn.json with its three graphs, which `edgeseg segment --model` takes.

    \b
    Examples:
      edgeseg train --model unet --data /data/dsb2018 --out training/runs/unet
      edgeseg train --model maskrcnn --data /data/dsb2018 --out training/runs/maskrcnn
      edgeseg train --model maskrcnn --data /data/dsb2018 --out training/runs/maskrcnn --resume
    """
    if model_name == "maskrcnn" and epochs is not None:
        raise click.UsageError("maskrcnn trains by steps: use --steps for the total")
    if resume and (run_dir / "config.json").is_file() and (config_file or epochs or steps):
        click.echo(
            f"resuming with {run_dir / 'config.json'}; --config/--epochs/--steps ignored",
            err=True,
        )
    from edgeseg.data.cache import DEFAULT_CACHE_DIR

    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    if model_name == "maskrcnn":
        with _one_line_errors():
            _train_maskrcnn(data_root, run_dir, config_file, steps, data_copy, resume, cache_dir)
        return
    try:
        from training.config import TrainConfig
        from training.train import train as run_training
    except ImportError as error:
        raise _missing_train_extra(error) from error
    config = _read_config(TrainConfig, config_file) or TrainConfig(model=model_name)
    config.model = model_name
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps), ("data_copy", data_copy)):
        if value is not None:
            setattr(config, name, value)
    with _one_line_errors():
        state = run_training(config, data_root, run_dir, resume=resume, cache_dir=cache_dir)
    click.echo(
        f"epoch {state['epoch']}: best validation score {state['best_score']:.4f} "
        f"at epoch {state['best_epoch']}; model in {run_dir / 'model.keras'}"
    )


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """A wrong --data or --out, or missing pretrained weights: one line, no traceback (each
    is found before the data is read)."""
    from edgeseg.data.dataset import DatasetError
    from training.pretrained import PretrainedWeightsError

    try:
        yield
    except DatasetError as error:
        raise click.ClickException(
            f"{error} (--data is the DSB2018 folder holding stage1_train and stage1_train_fixed)"
        ) from error
    except (FileExistsError, PretrainedWeightsError) as error:
        raise click.ClickException(str(error)) from error


def _read_config(config_class: Any, path: Path | None) -> Any:
    """The --config file's settings, or None without one; a clear error for a bad file."""
    if path is None:
        return None
    try:
        return config_class.from_file(path)
    except (OSError, ValueError, TypeError) as error:  # unreadable, not JSON, unknown keys
        raise click.ClickException(f"{path}: not a usable training config ({error})") from error


def _train_maskrcnn(
    data_root: Path,
    run_dir: Path,
    config_file: Path | None,
    steps: int | None,
    data_copy: str | None,
    resume: bool,
    cache_dir: Path,
) -> None:
    try:
        from training.maskrcnn.config import MaskRCNNTrainConfig
        from training.maskrcnn.manifest import model_manifest
        from training.maskrcnn.train import train as run_training
    except ImportError as error:
        raise _missing_train_extra(error) from error
    config = _read_config(MaskRCNNTrainConfig, config_file) or MaskRCNNTrainConfig()
    for name, value in (("steps", steps), ("data_copy", data_copy)):
        if value is not None:
            setattr(config, name, value)
    run_training(config, data_root, run_dir, resume=resume, cache_dir=cache_dir)
    state = json.loads((run_dir / "state.json").read_text())
    click.echo(
        f"step {state['step']}: best validation score {state['best_score']:.4f} at step "
        f"{state['best_step']}; model in {model_manifest(run_dir)}"
    )


def _missing_train_extra(error: ImportError) -> click.ClickException:
    return click.ClickException(
        f"training needs TensorFlow and Keras: pip install 'edgeseg[train]' ({error})"
    )
