"""The model shipped inside the package: intact, verified at export, and it finds nuclei."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgeseg.cli import main
from edgeseg.manifest import read_manifest
from edgeseg.models import resolve_model


def test_default_model_is_intact_and_passed_its_export_gate() -> None:
    manifest = read_manifest(resolve_model(None))  # verifies the sha256
    assert manifest["verification"]["status"] == "passed"
    assert manifest["verification"]["images"] >= 60  # the whole validation split


def test_first_readme_command_segments_the_bundled_samples(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["segment", "--samples", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    labels = sorted(tmp_path.glob("*_labels.tif"))
    assert len(labels) == 4
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    counts = [int(row.split(",")[2]) for row in summary[1:]]
    assert all(count > 5 for count in counts), summary
    assert json.loads(next((tmp_path / ".edgeseg-done").glob("*.json")).read_text())["nuclei"] > 0
