"""Click options shared by several commands, so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

data_root_option = click.option(
    "--data",
    "data_root",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="DSB2018 folder (holding stage1_test, ...) or one dataset folder in either layout.",
)

split_option = click.option(
    "--split",
    type=click.Choice(["test", "train", "train_fixed"]),
    default="test",
    show_default=True,
    help="Which stage1_* folder of --data to use; ignored for a dataset folder.",
)


class OutputFolder(click.Path):
    """-o: a folder path; an empty one (a shell variable left unset) is refused rather than
    taken for the current folder."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty name; give a folder, e.g. results/", param, ctx)
        return super().convert(value, param, ctx)


class PositiveNumber(click.FloatRange):
    """A number above 0 (infinity allowed: no limit); NaN, which compares false with every
    limit and so would switch the check off, is refused."""

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail("not a number", param, ctx)
        return number


#: --threads beyond this is a typo, not a machine: thread creation alone would hang the run.
THREADS = click.IntRange(min=1, max=256)


class DiameterType(click.ParamType):
    """A positive number of pixels, or "auto"."""

    name = "diameter"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from edgeseg.rescale import parse_diameter

        try:
            return parse_diameter(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


diameter_option = click.option(
    "--diameter",
    type=DiameterType(),
    metavar="PX|auto",
    help="Typical nucleus diameter in your images, in pixels; images are rescaled so nuclei "
    "match the size the model was trained on (the model's value is in its manifest, "
    "nucleus_diameter). 'auto' measures it per image from a first pass and re-segments "
    "only images whose nuclei are far bigger than the model's (e.g. 40x-63x objectives). "
    "Leave unset for DSB-like images.",
)

test_time_flips_option = click.option(
    "--tta",
    "test_time_flips",
    is_flag=True,
    help="Test-time augmentation: average the model's predictions for each image and its "
    "three mirror images. Four times the network work (on each pass of --diameter auto); "
    "slightly more accurate, mostly in the per-nucleus scores (measured in "
    "training/README.md). Not for Mask R-CNN.",
)
