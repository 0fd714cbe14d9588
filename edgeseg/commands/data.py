"""`edgeseg data ...`: look at a dataset before training or evaluating on it."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Inspect nucleus datasets (Kaggle DSB2018 layout or images/ + labels/ folders)."""


@data.command("check")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check(folder: Path) -> None:
    """Count images and nuclei in FOLDER and verify every file decodes.

    FOLDER is either a Kaggle DSB2018 split (<id>/images/<id>.png + <id>/masks/*.png) or a
    folder with images/ and labels/ (one uint16 label TIFF/PNG per image). Prints the number
    of images and nuclei, image sizes, channels and modality; exits with status 1 and names
    the file on the first malformed sample (missing images/ folder, empty or mis-sized mask,
    unreadable PNG).

    Example: edgeseg data check /data/dsb2018/stage1_train
    """
    from tqdm import tqdm

    from edgeseg.data.check import check_dataset
    from edgeseg.data.dataset import DatasetError

    try:
        summary = check_dataset(folder, progress=lambda refs: tqdm(refs, unit="img", leave=False))
    except DatasetError as error:
        raise click.ClickException(str(error)) from error
    click.echo("\n".join(summary.lines()))
