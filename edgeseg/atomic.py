"""Write files whole or not at all: into a temporary file beside the target, renamed onto it
only once complete, so a crash, a full disk or Ctrl-C never leaves a truncated output that
a later run (or a resume) would trust."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)  # read once, while importing is single-threaded, and put back
os.umask(_UMASK)


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    The temporary name, ``.<stem>.<random>.part<suffix>``, keeps the suffix (libraries pick
    the format from it) and is what cleanup after a killed run looks for.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".part{final.suffix}", dir=final.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    os.chmod(temporary_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; others may need to read
    try:
        yield temporary_path
        os.replace(temporary_path, final)
    finally:
        temporary_path.unlink(missing_ok=True)


def write_text(final: str | os.PathLike, text: str) -> Path:
    """``final`` holding ``text``, written atomically."""
    with atomic_path(final) as temporary:
        temporary.write_text(text)
    return Path(final)
