"""The `edgeseg segment` throughput benchmark script runs end to end on a tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
from conftest import synthetic_nuclei
from tiny_models import threshold_model

from benchmarks import segment_throughput


def test_throughput_script_reports_every_stage(tmp_path: Path, monkeypatch) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):
        cv2.imwrite(str(images / f"img{seed}.png"), synthetic_nuclei((300, 260), seed=seed)[0])
    model = threshold_model(tmp_path / "model.onnx")
    out = tmp_path / "results.json"
    argv = ["segment_throughput", str(images), "--model", str(model), "--out", str(out)]
    argv += ["--repeats", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    segment_throughput.main()
    results = json.loads(out.read_text())
    assert results["crops_256"]["end_to_end"]["images"] == 2  # 300x260: one 256 tile each
    for name in ("as_is", "crops_256"):
        end_to_end = results[name]["end_to_end"]
        assert end_to_end["images"] == 2
        assert end_to_end["startup_and_first_image_s"] > 0
        assert end_to_end["steady_images_per_s"] is None or end_to_end["steady_images_per_s"] > 0
        assert results[name]["end_to_end"]["peak_rss_mb"] > 10
        assert len(end_to_end["runs"]) == 2
        split = results[name]["stage_split"]
        assert set(split["ms_per_image"]) == {"decode", "inference", "instances", "measure_write"}
        assert abs(sum(split["share"].values()) - 1) < 1e-9
