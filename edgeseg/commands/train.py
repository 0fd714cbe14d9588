"""`edgeseg train`: full-precision Keras training (needs the `train` extra)."""

from __future__ import annotations

from pathlib import Path

import click

MODELS = ("simple_cnn", "unet", "resnet")


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
    help="Run folder: config, log.csv, checkpoint.keras, model.keras.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A config.json to start from (e.g. a committed run's).",
)
@click.option("--epochs", type=int, help="Total epochs (overrides the config).")
@click.option("--steps", type=int, help="Steps per epoch (overrides the config).")
@click.option(
    "--data-copy",
    type=click.Choice(["stage1_train", "stage1_train_fixed"]),
    help="Which training copy to read (validation ids are the same in both).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
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
    training ids; after every epoch the model is scored on the validation ids (never on
    stage1_test), the best one is saved as OUT/model.keras and a checkpoint is written so an
    interrupted run continues with --resume. Uses an NVIDIA GPU when TensorFlow sees one.

    Example: edgeseg train --model unet --data /data/dsb2018 --out training/runs/unet
    """
    try:
        from training.config import TrainConfig
        from training.train import train as run_training
    except ImportError as error:
        raise click.ClickException(
            f"training needs TensorFlow and Keras: pip install 'edgeseg[train]' ({error})"
        ) from error
    from edgeseg.data.cache import DEFAULT_CACHE_DIR

    config = TrainConfig.from_file(config_file) if config_file else TrainConfig(model=model_name)
    config.model = model_name
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps), ("data_copy", data_copy)):
        if value is not None:
            setattr(config, name, value)
    state = run_training(
        config, data_root, run_dir, resume=resume, cache_dir=cache_dir or DEFAULT_CACHE_DIR
    )
    click.echo(
        f"epoch {state['epoch']}: best validation score {state['best_score']:.4f} "
        f"at epoch {state['best_epoch']}; model in {run_dir / 'model.keras'}"
    )
