"""Describe the machine a benchmark ran on, so its numbers can be compared with others'.

Latency depends on the CPU's vector units (AVX2, AVX-512, VNNI for int8), on the cores used
and on what else was running (the load average), so all of that goes into every report.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions change the numbers (runtimes, maths, image decoding).
LIBRARIES = (
    "edgeseg",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "onnxruntime",
    "onnxruntime-gpu",
    "ai-edge-litert",
    "tflite-runtime",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "tensorrt",
    "onnx",
)
#: CPU flags that decide which inference kernels run (shown in the markdown report).
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, flags and physical core count from /proc/cpuinfo (None where unknown)."""
    model, flags, cores = None, [], set()
    physical_id = None
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = value.split()
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    return {
        "model": model or platform.processor() or platform.machine(),
        "flags": flags,
        "simd_flags": [flag for flag in SIMD_FLAGS if flag in flags],
        "physical_cores": len(cores) or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries in LIBRARIES (absent ones are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def gpus() -> list[str]:
    """NVIDIA GPUs as nvidia-smi names them (name, driver, memory); empty when none."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        result = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def describe_environment(threads: int | None) -> dict[str, Any]:
    """Everything about this machine and software that the numbers depend on."""
    return {
        "cpu": cpu_info(),
        "threads": threads,
        "gpus": gpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
