"""Write files whole or not at all: into a temporary file beside the target, renamed onto it
only once complete, so a crash, a full disk or Ctrl-C never leaves a truncated output that
a later run (or a resume) would trust."""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)  # read once, while importing is single-threaded, and put back
os.umask(_UMASK)

#: What the temporary files are called: ``.<stem>.<8 random>.part<suffix>`` (tempfile's
#: names). The suffix stays last because libraries pick the format from it (numpy, Keras,
#: OpenCV). Cleanup matches exactly this, never a user's own hidden ``.notes.partial``.
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.part(\.[^.]+)?")
#: A temporary file this old belongs to a killed writer, not to one still at work (another
#: run into the same folder, another process filling the decode cache).
STALE_AFTER_S = 3600.0


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success.

    A failure of the file system names ``final``, the path the user knows, not the
    temporary file.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(  # the stem cut short: a name the file system
            prefix=f".{final.stem[:64]}.",  # takes must not fail for its temporary's length
            suffix=f".part{final.suffix}",
            dir=final.parent,
        )
    except FileExistsError as error:  # mkdir met a file where a folder must be
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(final.parent)) from error
    except OSError as error:
        raise _naming(error, final) from error
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        os.chmod(temporary_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; others may need it
        try:
            yield temporary_path
        except OSError as error:  # a write into the temporary file: a full disk, a quota
            if error.filename not in (None, str(temporary_path)):
                raise
            raise _naming(error, final) from error
        try:
            os.replace(temporary_path, final)
        except OSError as error:
            raise _naming(error, final) from error
    finally:
        temporary_path.unlink(missing_ok=True)


def write_text(final: str | os.PathLike, text: str) -> Path:
    """``final`` holding ``text``, written atomically."""
    with atomic_path(final) as temporary:
        temporary.write_text(text)
    return Path(final)


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` (made if missing) could not take new files, or None: said before the
    work, not after minutes of it. Checks the nearest folder that exists, where it would be
    made."""
    chain = (folder, *folder.absolute().parents)
    existing = next((path for path in chain if path.exists() or path.is_symlink()), None)
    if existing is None:  # a disconnected drive or share
        return f"{folder.absolute().anchor or folder} cannot be reached"
    if not existing.exists():
        return f"{existing} is a link to {os.readlink(existing)}, which does not exist"
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == folder else ", where it would be made,"
        return f"{existing}{where} is not writable by this user"
    return None


def remove_stale_temporaries(folder: Path, older_than_s: float = STALE_AFTER_S) -> None:
    """Delete the temporary files a killed process left in ``folder``; ``older_than_s``
    spares those young enough to belong to a writer still at work."""
    if not folder.is_dir():
        return
    cutoff = time.time() - older_than_s
    for path in folder.glob(".*.part*"):
        if not TEMPORARY_NAME.fullmatch(path.name):
            continue
        try:
            if path.is_file() and path.stat().st_mtime <= cutoff:
                path.unlink()
        except FileNotFoundError:  # its writer finished or cleaned up meanwhile
            continue


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` about ``path``; one raised with a message alone keeps it as its reason."""
    return type(error)(error.errno, error.strerror or str(error), str(path))
