"""The fixed train/validation split of DSB2018 stage1_train.

Written once to ``training/splits/dsb2018_stage1.json`` and never changed: every model is
tuned and selected on the same validation ids, and stage1_test is never touched. Validation
ids are drawn only from ids present in both stage1_train and stage1_train_fixed, so the split
is the same whichever copy is trained on; the draw is stratified by imaging modality so the
few brightfield and stained images are represented.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeseg.data.dataset import DatasetError, find_samples
from edgeseg.imageio import read_image
from edgeseg.preprocess import image_kind

SPLIT_FILE = Path(__file__).parent / "splits" / "dsb2018_stage1.json"
SEED = 20180416
VALIDATION_FRACTION = 0.1


def make_split(train_dir: Path, fixed_dir: Path, seed: int = SEED) -> dict:
    """Draw the split from the two stage1 training copies (run once; see module doc)."""
    refs = {ref.id: ref for ref in find_samples(train_dir)}
    shared = sorted(set(refs) & {ref.id for ref in find_samples(fixed_dir)})
    kinds = {i: image_kind(read_image(refs[i].image_path)) for i in sorted(refs)}
    rng = np.random.default_rng(seed)
    validation: list[str] = []
    for kind in sorted(set(kinds.values())):
        candidates = [i for i in shared if kinds[i] == kind]
        count = max(1, round(VALIDATION_FRACTION * len(candidates)))
        validation += [str(i) for i in rng.choice(candidates, size=count, replace=False)]
    validation.sort()
    return {
        "description": "Fixed DSB2018 stage1 train/validation split by image id; never change it.",
        "seed": seed,
        "validation_fraction": VALIDATION_FRACTION,
        "stratified_by": "edgeseg.preprocess.image_kind",
        "validation": validation,
        "train": sorted(set(refs) - set(validation)),
        "kinds": kinds,
    }


def load_split(path: Path = SPLIT_FILE) -> dict:
    """The split in ``path``, refused (naming the file) unless it has non-empty, disjoint
    ``train`` and ``validation`` lists of ids: an empty validation list would skip the
    verification of every export made with it."""
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: unreadable split file ({error})") from error
    for key in ("train", "validation"):
        ids = split.get(key) if isinstance(split, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise DatasetError(f"{path}: a split file needs a non-empty {key!r} list of ids")
    if shared := sorted(set(split["train"]) & set(split["validation"])):
        raise DatasetError(f"{path}: ids in both train and validation: {shared[:3]}")
    return split


if __name__ == "__main__":
    import sys

    if SPLIT_FILE.exists():
        sys.exit(f"{SPLIT_FILE} exists and must never change")
    data_root = Path(sys.argv[1])
    split = make_split(data_root / "stage1_train", data_root / "stage1_train_fixed")
    SPLIT_FILE.write_text(json.dumps(split, indent=1) + "\n")
    print(f"wrote {SPLIT_FILE}: {len(split['train'])} train, {len(split['validation'])} val")
