#!/usr/bin/env python3
"""Build an offline install bundle of the edgeseg runtime, on a machine with internet.

The bundle is a folder to copy to clinic machines (USB stick, file share):

    wheelhouse/        the edgeseg wheel (default model inside) + every runtime dependency,
                       binary wheels for ONE target platform and Python version; no TensorFlow
    models/            extra exported models given with --model (e.g. for the GPU image)
    SHA256SUMS         a hash of every file; install_offline.* refuse any mismatch
    bundle.txt         what the bundle is for (Python version, platform, edgeseg version)
    install_offline.sh / install_offline.ps1, README.md, systemd/, windows/, docker/

Examples (see deploy/README.md):

    python deploy/build_bundle.py                        # for this machine's OS and Python
    python deploy/build_bundle.py --python-version 3.11 --platform manylinux_2_28_x86_64
    python deploy/build_bundle.py --python-version 3.11 --platform win_amd64

pip evaluates environment markers (``colorama; platform_system == "Windows"``) for the
machine it runs on, not for --platform; so after pip's download the dependency closure is
recomputed for the target here, missing wheels are fetched and unneeded ones dropped.
Needs pip and `packaging`, and git (the wheel is built from the checkout's files only).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Copied from deploy/ into the bundle: what a technician needs on an offline machine.
BUNDLED = ("install_offline.sh", "install_offline.ps1", "README.md", "systemd", "windows", "docker")
CHECKSUMS = "SHA256SUMS"
INFO = "bundle.txt"
MAX_ROUNDS = 10  # closure rounds; each adds at least one missing wheel


class BundleError(RuntimeError):
    """The bundle cannot be built as asked; the message says why and what to do."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(bundle: Path) -> Path:
    """SHA256SUMS in `sha256sum` format over every file of the bundle, sorted by path."""
    lines = [
        f"{sha256(path)}  {path.relative_to(bundle).as_posix()}"
        for path in sorted(bundle.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    ]
    target = bundle / CHECKSUMS
    target.write_text("\n".join(lines) + "\n")
    return target


def expand_platforms(platforms: Iterable[str]) -> list[str]:
    """Add the older manylinux tags a manylinux_2_N system also runs (pip < 24 does not)."""
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    expanded: list[str] = []
    for tag in platforms:
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if not match:
            expanded.append(tag)
            continue
        glibc, machine = int(match[1]), match[2]
        for minor in range(glibc, 4, -1):
            expanded.append(f"manylinux_2_{minor}_{machine}")
            if minor in legacy:
                expanded.append(f"{legacy[minor]}_{machine}")
    return list(dict.fromkeys(expanded))


def marker_environment(python_version: str | None, platforms: list[str]) -> dict[str, str]:
    """The values environment markers are evaluated with on the target machine."""
    env = dict(default_environment())
    if python_version:
        env["python_version"] = python_version
        env["python_full_version"] = f"{python_version}.0"
    if not platforms:
        return env
    tag = platforms[0]
    windows_machines = {"win_amd64": "AMD64", "win_arm64": "ARM64", "win32": "x86"}
    if tag in windows_machines:
        system, sys_platform, os_name, machine = "Windows", "win32", "nt", windows_machines[tag]
    else:
        match = re.fullmatch(
            r"(manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux|macosx_\d+_\d+)_(.+)", tag
        )
        if match is None:
            raise BundleError(
                f"unknown platform tag {tag!r} (e.g. manylinux_2_28_x86_64, win_amd64)"
            )
        darwin = match[1].startswith("macosx")
        system, sys_platform = ("Darwin", "darwin") if darwin else ("Linux", "linux")
        os_name, machine = "posix", match[2]
    env.update(
        platform_system=system, sys_platform=sys_platform, os_name=os_name, platform_machine=machine
    )
    return env


def wheel_requirements(wheel: Path, extras: set[str], env: dict[str, str]) -> Iterator[Requirement]:
    """The Requires-Dist of ``wheel`` that apply on the target, with ``extras`` asked for."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**env, "extra": e}) for e in {"", *extras}):
            yield requirement


def plain(requirement: Requirement) -> str:
    """The requirement without its marker (already evaluated for the target)."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"{requirement.name}{extras}{requirement.specifier}"


def closure(
    wheelhouse: Path, roots: list[Requirement], env: dict[str, str]
) -> tuple[set[str], list[str]]:
    """(names of the wheels the target needs, requirements with no wheel in the wheelhouse)."""
    wheels = {
        canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in wheelhouse.glob("*.whl")
    }
    needed: dict[str, set[str]] = {}
    missing: list[str] = []
    queue = list(roots)
    while queue:
        requirement = queue.pop()
        name, extras = canonicalize_name(requirement.name), set(requirement.extras)
        if name in needed and extras <= needed[name]:
            continue
        needed.setdefault(name, set()).update(extras)
        if name not in wheels:
            missing.append(plain(requirement))
            continue
        queue.extend(wheel_requirements(wheels[name], needed[name], env))
    return set(needed), sorted(set(missing))


def run(command: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(command), flush=True)
    if subprocess.run(command, cwd=cwd).returncode != 0:
        raise BundleError(f"failed: {' '.join(command)}")


def build_wheel(wheelhouse: Path) -> Path:
    """Build the edgeseg wheel from a clean copy of the checkout's tracked and new files, so
    stale build/ leftovers or ignored files (venvs, caches, data) never end up in it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        raise BundleError(f"{ROOT} is not a git checkout: {listed.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="edgeseg-src-") as temporary:
        source = Path(temporary)
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheelhouse), str(source)])
    (wheel,) = wheelhouse.glob("edgeseg-*.whl")
    return wheel


def check_default_model(wheel: Path) -> str | None:
    """Why the wheel has no usable default model, or None when it has one."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    manifests = [n for n in names if re.fullmatch(r"edgeseg/models/[^/]+\.json", n)]
    if not manifests:
        return "the edgeseg wheel holds no built-in model (edgeseg/models/ has no manifest)"
    if len(manifests) > 1 and "edgeseg/models/default.txt" not in names:
        return "several built-in models but no edgeseg/models/default.txt naming the default"
    return None


def add_model(artifact: Path, models: Path) -> None:
    """Copy an exported model and its manifest, refusing one whose hash does not match."""
    manifest = artifact.with_name(artifact.name + ".json")
    if not artifact.is_file() or not manifest.is_file():
        raise BundleError(f"{artifact}: the model and its manifest {manifest.name} must exist")
    if json.loads(manifest.read_text()).get("sha256") != sha256(artifact):
        raise BundleError(f"{artifact}: sha256 does not match its manifest; not shipping it")
    models.mkdir(exist_ok=True)
    for path in (artifact, manifest):
        shutil.copy2(path, models / path.name)


def download(
    requirements: list[str], wheelhouse: Path, args: argparse.Namespace, deps: bool
) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "-d",
        str(wheelhouse),
    ]
    for tag in args.platforms:
        command += ["--platform", tag]
    if args.python_version:
        command += ["--python-version", args.python_version]
    run(command + ([] if deps else ["--no-deps"]) + requirements)


def build(args: argparse.Namespace) -> Path:
    """Create the bundle folder ``args.out``; on any failure remove it (no half bundle)."""
    if args.out.exists():
        raise BundleError(f"{args.out} exists; remove it or choose another --out")
    try:
        return _fill(args)
    except BaseException:
        shutil.rmtree(args.out, ignore_errors=True)
        raise


def _fill(args: argparse.Namespace) -> Path:
    out: Path = args.out
    wheelhouse = out / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    wheel = build_wheel(wheelhouse)
    problem = check_default_model(wheel)
    if problem and not args.allow_no_model:
        raise BundleError(
            f"{problem}: `edgeseg segment` and the install self-test would fail on the "
            "target. Add the default model to edgeseg/models/ first (or pass --allow-no-model "
            "to build a bundle whose users give --model)."
        )
    env = marker_environment(args.python_version, args.platforms)
    roots = [Requirement("edgeseg"), Requirement("pip"), *map(Requirement, args.also)]
    _, missing = closure(wheelhouse, roots, env)
    download(missing, wheelhouse, args, deps=True)
    for _ in range(MAX_ROUNDS):
        needed, missing = closure(wheelhouse, roots, env)
        if not missing:
            break
        download(missing, wheelhouse, args, deps=False)
    else:
        raise BundleError(f"dependencies still missing after {MAX_ROUNDS} rounds: {missing}")
    for path in wheelhouse.glob("*.whl"):
        if canonicalize_name(parse_wheel_filename(path.name)[0]) not in needed:
            print(f"dropping {path.name}: not needed on the target", flush=True)
            path.unlink()
    for artifact in args.model:
        add_model(artifact, out / "models")
    for name in BUNDLED:
        source = DEPLOY / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, out / name)
    python = args.python_version or platform.python_version().rsplit(".", 1)[0]
    tags = " ".join(args.platforms) or f"{sys.platform} {platform.machine()} (built here)"
    (out / INFO).write_text(
        f"edgeseg={wheel.name.split('-')[1]}\npython={python}\nplatforms={tags}\n"
        f"default_model={'none' if problem else 'yes'}\n"
        f"built={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
    )
    write_checksums(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="bundle folder to create [default: dist/edgeseg-bundle-<python>-<platform>]",
    )
    parser.add_argument("--python-version", help="target Python, e.g. 3.11 [default: this Python]")
    parser.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        default=[],
        help="target wheel platform tag, repeatable, e.g. manylinux_2_28_x86_64 or win_amd64 "
        "[default: this machine]",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="another package to ship, e.g. cuda-python for the GPU image",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        type=Path,
        metavar="ARTIFACT",
        help="also ship this exported model (its .json beside it) in models/",
    )
    parser.add_argument(
        "--allow-no-model",
        action="store_true",
        help="build even though the wheel has no default model (the self-test will then fail)",
    )
    args = parser.parse_args(argv)
    args.platforms = expand_platforms(args.platforms)
    if args.out is None:
        python = (args.python_version or platform.python_version().rsplit(".", 1)[0]).replace(
            ".", ""
        )
        where = args.platforms[0] if args.platforms else "here"
        args.out = ROOT / "dist" / f"edgeseg-bundle-py{python}-{where}"
    try:
        out = build(args)
    except BundleError as error:
        print(f"build_bundle: {error}", file=sys.stderr)
        return 1
    wheels = list((out / "wheelhouse").glob("*.whl"))
    size = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    print(f"\nbundle: {out}\n  {len(wheels)} wheels, {size / 1e6:.1f} MB")
    print("  copy it to the target machine, then verify and install it there with")
    print("  bash install_offline.sh            (Linux)")
    print("  powershell -ExecutionPolicy Bypass -File install_offline.ps1   (Windows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
