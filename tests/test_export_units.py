"""Export pieces that need no TensorFlow: targets, calibration crops, the TensorRT command
line, and the command's message when the export extra is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import synthetic_nuclei

from edgeseg.data.dataset import Sample
from edgeseg.metrics import score_image
from edgeseg.preprocess import normalize
from export.calibration import calibration_tiles
from export.targets import TARGETS, resolve_targets
from export.tensorrt import trtexec_command


def test_all_includes_the_tensorrt_ready_onnx_targets() -> None:
    assert [t.name for t in resolve_targets("all")] == list(TARGETS)  # export extra installed
    assert resolve_targets("onnx-int8") == [TARGETS["onnx-int8"]]
    with pytest.raises(KeyError, match="unknown target"):
        resolve_targets("onnx-int4")


def test_calibration_crops_are_seeded_normalised_tiles_of_the_given_images() -> None:
    samples = [Sample(f"s{i}", *synthetic_nuclei((50, 70), seed=i)) for i in range(3)]
    samples.append(Sample("small", *synthetic_nuclei((20, 30), count=2, seed=9)))
    first = calibration_tiles(samples, 6, 32, seed=3, source="train")
    again = calibration_tiles(samples, 6, 32, seed=3, source="train")
    other = calibration_tiles(samples, 6, 32, seed=4, source="train")
    assert first.tiles.shape == (6, 32, 32, 1) and first.tiles.dtype == np.float32
    assert first.sha256 == again.sha256 and first.ids == again.ids
    assert first.sha256 != other.sha256
    assert set(first.ids) == {s.id for s in samples}  # each image once before any repeats
    assert first.tiles.min() >= 0.0 and first.tiles.max() <= 1.0
    record = first.record()
    assert record["ids"] == list(first.ids) and record["count"] == 6 and record["tile"] == 32
    # a crop is a window of the whole normalised image, not of a separately normalised crop
    index = first.ids.index("s0")
    whole = normalize(samples[0].image)
    windows = np.lib.stride_tricks.sliding_window_view(whole, (32, 32))
    assert np.any(np.all(windows == first.tiles[index, ..., 0], axis=(2, 3)))
    assert [batch.shape for batch in first.batches()] == [(1, 32, 32, 1)] * 6


def test_trtexec_command_builds_the_same_profile() -> None:
    command = trtexec_command(Path("m.onnx"), Path("out/m.engine"), "int8", 256, "image")
    assert command.startswith("trtexec --onnx=m.onnx --saveEngine=out/m.engine --fp16 --int8")
    assert "--minShapes=image:1x256x256x1" in command
    assert "--maxShapes=image:16x256x256x1" in command


def test_missing_export_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.targets
    from edgeseg.cli import main

    model = tmp_path / "model.keras"
    model.write_bytes(b"never read")
    monkeypatch.setattr(export.targets, "missing_modules", lambda modules: ["tensorflow"])
    result = CliRunner().invoke(
        main, ["export", "--model", str(model), "--target", "onnx-fp32"], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert "pip install 'edgeseg[export]'" in result.output


def test_calibration_may_never_see_validation_images(tmp_path: Path) -> None:
    from export.pipeline import Exporter, ExportError

    sample = Sample("same", *synthetic_nuclei((32, 32)))
    with pytest.raises(ExportError, match="overlap"):
        Exporter(
            tmp_path / "model.keras",
            tmp_path,
            calibration_samples=[sample],
            validation_samples=[sample],
        )


def test_help_names_every_target_and_unknown_ones_are_refused() -> None:
    from edgeseg.cli import main
    from edgeseg.commands.export import export

    (option,) = [param for param in export.params if param.name == "target"]
    assert all(name in option.help for name in TARGETS)
    result = CliRunner().invoke(main, ["export", "--model", "m.keras", "--target", "onnx-int4"])
    assert result.exit_code == 2 and "unknown target 'onnx-int4'" in result.output


class _Fixed:
    """A segmenter that returns given labels, whatever the image."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def segment(self, image: np.ndarray) -> np.ndarray:
        return self.labels


def test_an_artifact_that_disagrees_with_its_source_is_rejected_even_if_it_scores_better() -> None:
    from export.verify import MIN_MASK_AGREEMENT, Reference, verify

    image, truth = synthetic_nuclei((64, 64), count=6, seed=1, touching=False)
    source = Reference(_Fixed(np.roll(truth, 9, axis=1)), [Sample("a", image, truth)], "test")
    result = verify(_Fixed(truth), source, max_drop=1.0)  # perfect, and unlike its source
    assert result["change_points"]["pixel_iou"] > 0
    assert result["mask_agreement"] < MIN_MASK_AGREEMENT
    assert (result["status"], result["failed"]) == ("rejected", ["mask_agreement"])
    assert verify(_Fixed(np.roll(truth, 9, axis=1)), source, max_drop=1.0)["status"] == "passed"


def test_recorded_scores_of_the_original_model_set_the_bar() -> None:
    """An engine gated against its ONNX alone could lose max_drop on top of the ONNX's own
    loss; against the FP32 scores the ONNX recorded, the two losses add up."""
    from export.verify import Reference, verify

    image, truth = synthetic_nuclei((96, 96), count=16, seed=1, touching=False)
    samples = [Sample("a", image, truth)]
    onnx = _Fixed(np.where(truth == 5, 0, truth))  # lost one small nucleus in conversion
    engine = _Fixed(np.where(np.isin(truth, [5, 7]), 0, truth))  # and another one
    against_onnx = verify(engine, Reference(onnx, samples, "test"), max_drop=10.0)
    assert against_onnx["status"] == "passed" and against_onnx["reference_model"] == "the source"
    fp32 = score_image(truth, truth)  # what the ONNX's gate recorded for the FP32 model
    result = verify(engine, Reference(onnx, samples, "test", recorded=fp32), max_drop=10.0)
    assert (result["status"], result["failed"]) == ("rejected", ["dsb_score"])
    assert result["reference"]["pixel_iou"] == 1.0 and "converted" in result["reference_model"]
    assert result["ids_sha256"] == Reference(onnx, samples, "x").images["ids_sha256"]


def test_a_source_is_a_model_file_a_run_folder_or_a_run_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export.pipeline import ExportError, resolve_source

    run = tmp_path / "training" / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "model.keras").write_bytes(b"a model")
    assert resolve_source(run / "model.keras") == run / "model.keras"
    assert resolve_source(run) == run / "model.keras"  # the folder, as a shell completes it
    monkeypatch.chdir(tmp_path)
    assert resolve_source("tiny").resolve() == (run / "model.keras").resolve()
    with pytest.raises(ExportError, match=r"nothing: no such model file, and no model.keras"):
        resolve_source("nothing")
