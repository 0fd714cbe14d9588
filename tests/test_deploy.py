"""deploy/: the offline bundle's checks and install logic.

The fast tests run the real install_offline.sh on tiny stand-in wheels, without network. The
real bundle (built from PyPI, installed with --no-index, samples segmented) is opt-in:
EDGESEG_TEST_BUNDLE=1 pytest -m bundle.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO_ROOT
from tiny_models import threshold_model

from edgeseg.commands.segment import SAMPLES_DIR

DEPLOY = REPO_ROOT / "deploy"
PYTHON = "{}.{}".format(*sys.version_info[:2])
needs_shell = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("sha256sum") is None,
    reason="install_offline.sh needs bash and sha256sum (Linux)",
)


def _load_build_bundle() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_bundle", DEPLOY / "build_bundle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_bundle = _load_build_bundle()

# Stands in for the edgeseg CLI: `segment -o OUT` writes a label file, but only with --model,
# like a bundle built without a default model.
STUB_CLI = """
import sys
from pathlib import Path

def main():
    args = sys.argv[1:]
    if "--model" not in args:
        sys.exit("Error: cannot load the model: no built-in model installed")
    out = Path(args[args.index("-o") + 1])
    out.mkdir(parents=True)
    (out / "sample_labels.tif").write_bytes(b"labels")
"""


def _wheel(
    folder: Path,
    name: str,
    requires: tuple[str, ...] = (),
    files: dict[str, str] | None = None,
    scripts: dict[str, str] | None = None,
) -> Path:
    """A minimal pure-Python wheel pip can install."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-1.0.dist-info"
    entries = dict(files or {})
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires
    )
    entries[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if scripts:
        entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{script} = {target}\n" for script, target in scripts.items()
        )
    entries[f"{info}/RECORD"] = "".join(f"{entry},,\n" for entry in entries) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for entry, text in entries.items():
            archive.writestr(entry, text)
    return path


@pytest.fixture(scope="module")
def pip_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This environment's pip zipped like its wheel: enough for `python pip.whl/pip install`."""
    import pip

    source = Path(pip.__file__).parent
    path = tmp_path_factory.mktemp("pip") / f"pip-{pip.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for file in source.rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, Path("pip") / file.relative_to(source))
    return path


def _bundle(folder: Path, wheels: list[Path], python: str = PYTHON) -> Path:
    (folder / "wheelhouse").mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, folder / "wheelhouse" / wheel.name)
    shutil.copy2(DEPLOY / "install_offline.sh", folder)
    (folder / "bundle.txt").write_text(f"python={python}\nplatforms=test\n")
    build_bundle.write_checksums(folder)
    return folder


def _install(bundle: Path, *args: str | os.PathLike) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        # Anything pip could be pointed at besides the wheelhouse must be ignored.
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": str(bundle.parent / "elsewhere"),
    }
    return subprocess.run(
        ["bash", str(bundle / "install_offline.sh"), "--python", sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@needs_shell
def test_hashes_refuse_modified_missing_and_unlisted_files(tmp_path: Path) -> None:
    wheels = [_wheel(tmp_path / "w", "alpha"), _wheel(tmp_path / "w", "beta")]
    bundle = _bundle(tmp_path / "bundle", wheels)
    assert _install(bundle, "--verify-only").returncode == 0
    alpha = bundle / "wheelhouse" / wheels[0].name
    original = alpha.read_bytes()
    alpha.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = _install(bundle, "--verify-only")
    assert result.returncode == 1
    assert f"{alpha.name}: FAILED" in result.stdout + result.stderr
    alpha.write_bytes(original)
    extra = _wheel(bundle / "wheelhouse", "intruder")  # would be installed if pip saw it
    result = _install(bundle, "--verify-only")
    assert result.returncode == 1 and "not listed" in result.stderr and extra.name in result.stderr
    extra.unlink()
    (bundle / "wheelhouse" / wheels[1].name).unlink()
    assert _install(bundle, "--verify-only").returncode == 1


@needs_shell
def test_install_takes_nothing_from_outside_the_wheelhouse(tmp_path: Path, pip_wheel: Path) -> None:
    edgeseg = _wheel(tmp_path / "w", "edgeseg", requires=("helper",))
    _wheel(tmp_path / "elsewhere", "helper")  # on PIP_FIND_LINKS only
    bundle = _bundle(tmp_path / "bundle", [edgeseg, pip_wheel])
    result = _install(bundle, "--prefix", tmp_path / "prefix")
    assert result.returncode == 1, result.stderr
    assert "helper" in result.stderr and "wheelhouse alone" in result.stderr
    assert not (tmp_path / "prefix" / "venv").exists()


@needs_shell
def test_install_self_test_fails_clearly_without_a_model(tmp_path: Path, pip_wheel: Path) -> None:
    edgeseg = _wheel(
        tmp_path / "w",
        "edgeseg",
        files={"edgeseg_stub.py": STUB_CLI},
        scripts={"edgeseg": "edgeseg_stub:main"},
    )
    bundle = _bundle(tmp_path / "bundle", [edgeseg, pip_wheel])
    prefix = tmp_path / "prefix"
    result = _install(bundle, "--prefix", prefix)
    assert result.returncode == 3, result.stderr
    assert "SELF-TEST FAILED" in result.stderr and "no built-in model" in result.stderr
    assert (prefix / "venv" / "bin" / "edgeseg").is_file()  # installed; only the test failed
    assert _install(bundle, "--prefix", prefix).returncode == 1  # never replaced silently
    model = tmp_path / "model.onnx"
    model.write_bytes(b"stand-in")
    result = _install(bundle, "--prefix", prefix, "--replace", "--model", model)
    assert result.returncode == 0, result.stderr
    assert "self-test passed: 1 label images" in result.stdout


@needs_shell
def test_install_refuses_another_python(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", [_wheel(tmp_path / "w", "edgeseg")], python="2.7")
    result = _install(bundle, "--prefix", tmp_path / "prefix")
    assert result.returncode == 1 and "for Python 2.7" in result.stderr
    assert not (tmp_path / "prefix").exists()


def test_dependencies_are_resolved_for_the_target_platform(tmp_path: Path) -> None:
    """pip evaluates markers for the building machine; the bundle needs the target's."""
    folder = tmp_path / "wheelhouse"
    _wheel(
        folder,
        "app",
        requires=(
            "dep>=1",
            "colorama; platform_system == 'Windows'",
            "litert; platform_system != 'Windows'",
            "fast[speed]",
        ),
    )
    _wheel(folder, "dep")
    _wheel(folder, "litert")
    _wheel(folder, "fast", requires=("speedup; extra == 'speed'", "slow; extra == 'slowly'"))
    _wheel(folder, "speedup")
    roots = [build_bundle.Requirement("app")]
    linux = build_bundle.marker_environment("3.11", ["manylinux_2_28_x86_64"])
    windows = build_bundle.marker_environment("3.10", ["win_amd64"])
    assert (windows["platform_system"], windows["python_version"]) == ("Windows", "3.10")
    needed, missing = build_bundle.closure(folder, roots, linux)
    assert needed == {"app", "dep", "litert", "fast", "speedup"} and missing == []
    needed, missing = build_bundle.closure(folder, roots, windows)
    assert "litert" not in needed and missing == ["colorama"]


def test_manylinux_platforms_include_older_compatible_tags() -> None:
    tags = build_bundle.expand_platforms(["manylinux_2_28_x86_64", "win_amd64"])
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-1] == "win_amd64"
    for tag in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"):
        assert tag in tags
    assert "manylinux_2_29_x86_64" not in tags


@pytest.mark.bundle
@pytest.mark.skipif(
    os.environ.get("EDGESEG_TEST_BUNDLE") != "1",
    reason="builds a real bundle from PyPI (network, ~130 MB, minutes): EDGESEG_TEST_BUNDLE=1",
)
@needs_shell
def test_real_bundle_installs_offline_and_segments(tmp_path: Path) -> None:
    bundle, prefix = tmp_path / "bundle", tmp_path / "prefix"
    build = subprocess.run(
        [sys.executable, str(DEPLOY / "build_bundle.py"), "--out", str(bundle), "--allow-no-model"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = [path.name.lower() for path in (bundle / "wheelhouse").glob("*.whl")]
    assert any(name.startswith("onnxruntime-") for name in wheels)
    assert not any(name.startswith(("tensorflow", "keras")) for name in wheels)
    model = threshold_model(tmp_path / "model" / "threshold.onnx")
    if "default_model=none" in (bundle / "bundle.txt").read_text():
        result = _install(bundle, "--prefix", prefix)
        assert result.returncode == 3 and "no built-in model" in result.stderr
        result = _install(bundle, "--prefix", prefix, "--replace", "--model", model)
    else:
        result = _install(bundle, "--prefix", prefix)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "self-test passed" in result.stdout
    images = tmp_path / "incoming"
    shutil.copytree(SAMPLES_DIR, images, ignore=shutil.ignore_patterns("*.md"))
    watch = subprocess.run(
        [prefix / "venv" / "bin" / "edgeseg", "watch", images, "-o", tmp_path / "out"]
        + ["--once", "--settle", "0", "--interval", "0.1", "--model", model],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert watch.returncode == 0, watch.stderr
    assert len(list((tmp_path / "out").glob("*_labels.tif"))) == 4
