"""Score a folder of predicted label images against a dataset's ground truth.

Any tool's output can be scored the same way, so edgeseg models, exported models and other
segmenters (StarDist, Cellpose, ...) are compared with one implementation of the metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from edgeseg.data.cache import DEFAULT_CACHE_DIR, load_dataset
from edgeseg.data.dataset import binary_mask_reason, find_samples
from edgeseg.imageio import read_image
from edgeseg.metrics import aggregate, score_image
from edgeseg.preprocess import image_kind

SPLIT_FOLDERS = {
    "test": "stage1_test",
    "train": "stage1_train",
    "train_fixed": "stage1_train_fixed",
}
PREDICTION_SUFFIXES = ("_labels.tif", "_labels.tiff", "_labels.png")


class EvaluationError(ValueError):
    """Predictions cannot be scored; the message names the file."""


def resolve_split(data_root: Path, split: str) -> Path:
    """The dataset folder to score against: ``data_root/stage1_<split>`` or data_root itself.

    data_root may be the DSB2018 folder (holding stage1_test, stage1_train, ...) or one
    dataset folder in either layout edgeseg.data reads; ``split`` is ignored in the latter case.
    """
    if split not in SPLIT_FOLDERS:
        raise EvaluationError(f"unknown split {split!r}: choose one of {sorted(SPLIT_FOLDERS)}")
    data_root = Path(data_root)
    if any(path.is_dir() for path in data_root.glob("stage1_*")):  # not stage1_notes.txt
        folder = data_root / SPLIT_FOLDERS[split]
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such folder for split {split!r}")
        return folder
    find_samples(data_root)  # raises DatasetError naming the folder if it holds no samples
    return data_root


def prediction_paths(pred_dir: Path, ids: Iterable[str]) -> dict[str, Path | None]:
    """``<pred_dir>/<id>_labels.tif`` (or .tiff, or .png, in any letter case, as Windows
    tools write them) for each id; None where absent. The folder is listed once.

    Two label files for one image are refused: which one holds the results to score is not
    for the evaluator to guess.
    """
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in Path(pred_dir).iterdir():
        for rank, suffix in enumerate(PREDICTION_SUFFIXES):
            if path.name.lower().endswith(suffix) and path.is_file():
                found.setdefault(path.name[: -len(suffix)], []).append((rank, path))
    paths: dict[str, Path | None] = {}
    for sample_id in ids:
        candidates = [path for _, path in sorted(found.get(sample_id, []))]
        if len(candidates) > 1:
            raise EvaluationError(
                f"{' and '.join(map(str, candidates))}: two label files for image {sample_id}; "
                "remove the one that is not the result to score"
            )
        paths[sample_id] = candidates[0] if candidates else None
    return paths


def evaluate_folder(
    pred_dir: Path,
    data_root: Path,
    split: str = "test",
    ids: Iterable[str] | None = None,
    progress: Callable[[list], Iterable] | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    allow_missing: bool = False,
) -> dict:
    """Score ``<pred_dir>/<id>_labels.tif`` for every id of the split (or only ``ids``).

    Returns {"aggregate": mean scores plus "images", "by_kind": the same per imaging modality
    (edgeseg.preprocess.image_kind), "per_image": {id: scores}, "kinds": {id: modality},
    "dataset": folder scored against, "missing": ids without a prediction}. A missing
    prediction is an error naming the file unless ``allow_missing``, which scores only the
    images predicted: the aggregate then covers fewer images, so it is off by default.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: no such prediction folder")
    folder = resolve_split(Path(data_root), split)
    known = [ref.id for ref in find_samples(folder)]
    wanted = known if ids is None else list(ids)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise EvaluationError(f"{folder}: ids not in dataset: {unknown[:5]}")
    paths = prediction_paths(pred_dir, wanted)
    missing = [sample_id for sample_id, path in paths.items() if path is None]
    if missing and not allow_missing:
        expected = pred_dir / f"{missing[0]}_labels.tif"
        raise EvaluationError(
            f"{expected}: missing prediction ({len(missing)} of {len(wanted)} images have none)"
        )
    present = [sample_id for sample_id in wanted if paths[sample_id] is not None]
    if not present:
        raise EvaluationError(f"{pred_dir}: no <id>_labels.tif predictions for {folder}")
    samples = load_dataset(folder, cache_dir=cache_dir, ids=present)
    per_image, kinds = {}, {}
    for sample in progress(samples) if progress else samples:
        kinds[sample.id] = image_kind(sample.image)
        path = paths[sample.id]
        pred = read_image(path)
        if pred.size == 0:  # tifffile reads a damaged file as nothing, with a warning
            raise EvaluationError(f"{path}: no pixels could be read (damaged or truncated?)")
        if pred.ndim == 3 and pred.shape[2] in (3, 4) and path.suffix.lower() == ".png":
            # OpenCV reads a palette (indexed) PNG as its colours
            raise EvaluationError(
                f"{path}: a colour image ({pred.shape[2]} channels), not a label image; label "
                "images hold one id per pixel (a palette PNG is read as its colours: save the "
                "labels as a 16-bit TIFF or gray PNG)"
            )
        if pred.ndim != 2:
            raise EvaluationError(f"{path}: expected a 2-D label image, got shape {pred.shape}")
        reason = binary_mask_reason(pred)
        if reason:
            raise EvaluationError(f"{path}: {reason}")
        try:
            per_image[sample.id] = score_image(sample.labels, pred)
        except ValueError as error:
            raise EvaluationError(f"{path}: {error}") from error
    return {
        "aggregate": aggregate(per_image),
        "by_kind": by_kind(per_image, kinds),
        "per_image": per_image,
        "kinds": kinds,
        "dataset": str(folder),
        "missing": missing,
    }


def by_kind(
    per_image: Mapping[str, Mapping[str, float]], kinds: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Aggregate scores per imaging modality: one mean hides a model failing on a stain."""
    groups: dict[str, dict[str, Mapping[str, float]]] = {}
    for sample_id, scores in per_image.items():
        groups.setdefault(kinds[sample_id], {})[sample_id] = scores
    return {kind: aggregate(groups[kind]) for kind in sorted(groups)}
