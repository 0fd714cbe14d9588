"""The runtime stays light: no TensorFlow in its install, no stage package in its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "keras", "tf2onnx", "tensorrt", "torch")


def test_runtime_dependencies_pull_no_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert not any(name in runtime for name in HEAVY)
    assert "tensorflow" in " ".join(project["optional-dependencies"]["train"])


def test_runtime_modules_never_import_the_stage_packages_at_top_level() -> None:
    """training/, export/ and benchmarks/ may only be imported inside command functions."""
    for path in (REPO / "edgeseg").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"training", "export", "benchmarks", *HEAVY}, (path, name)
