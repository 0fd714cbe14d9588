"""The `edgeseg` command line: one click group, one module per command under edgeseg.commands.

Commands import their heavy dependencies (TensorFlow, ONNX Runtime, training code) only when
they run, so `edgeseg --help` is instant and works on a runtime-only install.
"""

from __future__ import annotations

import errno

import click

from edgeseg import __version__
from edgeseg.commands.bench import bench
from edgeseg.commands.data import data
from edgeseg.commands.evaluate import evaluate
from edgeseg.commands.export import export
from edgeseg.commands.segment import segment
from edgeseg.commands.train import train
from edgeseg.commands.watch import watch


class _Commands(click.Group):
    """The command group, turning a file system refusal anywhere in a command (a folder that
    cannot be written, a path inside /proc) into the one-line error click prints."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except OSError as error:
            # Only refusals about a path the user gave; a closed pipe (`| head`) is click's
            # to end quietly, and anything else is a fault whose traceback must be seen.
            if error.filename is None or error.errno == errno.EPIPE:
                raise
            raise click.ClickException(f"{error.filename}: {error.strerror}") from error
        except KeyboardInterrupt:  # before a command's own handling (loading a model, ...)
            click.echo("\nInterrupted.", err=True)
            ctx.exit(130)  # the shell's convention for Ctrl-C, not click's "Aborted!" and 1


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="edgeseg")
def main() -> None:
    """Offline nucleus segmentation for microscopy images.

    Nothing is ever uploaded: edgeseg opens no network connection. Start with
    `edgeseg COMMAND --help`.
    """


main.add_command(data)
main.add_command(evaluate, name="eval")
main.add_command(train)
main.add_command(segment)
main.add_command(export)
main.add_command(bench)
main.add_command(watch)
