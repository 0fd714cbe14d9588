"""A decode cache: one compressed .npz per dataset folder, keyed by its content hash.

Merging ~29,000 mask PNGs takes about a minute; training reads the data every epoch and
several tools read it again. The cache key hashes every file's path and bytes, and the
decoder's version, so neither a changed mask (e.g. switching to stage1_train_fixed) nor a
change in how masks are read can ever be served stale.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgeseg.atomic import atomic_path, remove_stale_temporaries
from edgeseg.data.dataset import DatasetError, Sample, SampleRef, find_samples, load_sample

DEFAULT_CACHE_DIR = Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg"))
#: Part of every cache key: raise it whenever edgeseg.data decodes samples differently (2:
#: ground-truth ids past 65535 renumbered, fractional or negative labels refused; 3: masks
#: drawn in any colour channel; 4: foreground masks given as label images refused; 5: class
#: masks too), so caches made by older code are rebuilt instead of served.
DECODE_VERSION = 5


def content_hash(root: Path, refs: Iterable[SampleRef]) -> str:
    """sha256 over the decoder's version and every file's path relative to ``root`` and its
    bytes."""
    digest = hashlib.sha256(f"edgeseg-decode-{DECODE_VERSION}".encode())
    for ref in refs:
        for path in ref.files():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def load_dataset(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    ids: Iterable[str] | None = None,
) -> list[Sample]:
    """Return the samples of ``root`` (optionally only ``ids``), via the cache when given."""
    root = Path(root)
    refs = find_samples(root)
    if cache_dir is None:
        samples = [load_sample(ref) for ref in refs]
    else:
        key = content_hash(root, refs)[:16]
        cache_path = Path(cache_dir) / f"{root.name}-{key}.npz"
        samples = _read_cache(cache_path)
        if samples is None:
            samples = [load_sample(ref) for ref in refs]
            _write_cache(cache_path, samples)
    if ids is None:
        return samples
    wanted = set(ids)
    missing = wanted - {s.id for s in samples}
    if missing:
        raise DatasetError(f"{root}: ids not in dataset: {sorted(missing)[:5]}")
    return [s for s in samples if s.id in wanted]


def _write_cache(path: Path, samples: list[Sample]) -> None:
    """Best effort: a cache that cannot be written (read-only, full disk) only costs time."""
    arrays = {}
    for sample in samples:
        arrays[f"image/{sample.id}"] = sample.image
        arrays[f"labels/{sample.id}"] = sample.labels
    try:
        # caches half-written by killed processes, sparing any another process writes now
        remove_stale_temporaries(path.parent)
        with atomic_path(path) as temporary:
            np.savez_compressed(temporary, **arrays)
    except OSError as error:
        warnings.warn(
            f"{path}: cannot write the decode cache ({error.strerror or error}); the images "
            "are decoded again next time",
            stacklevel=3,
        )


def _read_cache(path: Path) -> list[Sample] | None:
    """The cached samples, or None when the file is damaged (then it is rebuilt, not trusted
    and not left to break every later run)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            ids = sorted(
                name.split("/", 1)[1] for name in archive.files if name.startswith("image/")
            )
            return [Sample(i, archive[f"image/{i}"], archive[f"labels/{i}"]) for i in ids]
    except FileNotFoundError:  # not made yet
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(
            f"{path}: unreadable or damaged decode cache ({error}); rebuilding it", stacklevel=3
        )
        return None
