"""The one interface every inference backend implements.

Tiling and the segmenter only ever call `Backend.predict`, so ONNX Runtime, LiteRT, Keras and
TensorRT are interchangeable. Shared checks live here so that every backend refuses the same
wrong inputs and the same tampered artifacts in the same words.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.manifest import ManifestError, check_sha256


class BackendUnavailable(RuntimeError):
    """The library or hardware a backend needs is missing on this machine."""


class Backend(ABC):
    """A loaded network: normalised (N, H, W, 1) tiles in, (N, H, W, C) probabilities out
    (C maps as the manifest's ``output_channels`` name them)."""

    name: str = "backend"
    #: (H, W) the network was exported for, or None when any size (a multiple of the
    #: manifest's tile.multiple) works.
    input_size: tuple[int, int] | None = None
    #: The batch size the network was exported for, or None when any batch works.
    fixed_batch: int | None = None
    #: How many probability maps the network returns per pixel (the manifest's count).
    channels: int = 2
    #: The count the network's own output shape declares; None where it does not say.
    model_channels: int | None = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 NHWC probabilities (the ``channels`` maps) for a float32 NHWC batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[0] == 0 or batch.shape[3] != 1:
            raise ValueError(f"{self.name}: expected a (N, H, W, 1) batch, got {batch.shape}")
        if self.input_size is not None and batch.shape[1:3] != self.input_size:
            raise ValueError(
                f"{self.name}: this model only accepts {self.input_size[0]}x"
                f"{self.input_size[1]} tiles, got {batch.shape[1]}x{batch.shape[2]}"
            )
        step = self.fixed_batch or batch.shape[0]
        outputs = [self._run_padded(batch[i : i + step], step) for i in range(0, len(batch), step)]
        probabilities = np.concatenate(outputs).astype(np.float32, copy=False)
        expected = (*batch.shape[:3], self.channels)
        if probabilities.shape != expected:
            raise ValueError(
                f"{self.name}: the model returned shape {probabilities.shape} for input "
                f"{batch.shape}, expected {expected}: not an edgeseg segmentation model"
            )
        return probabilities

    def _run_padded(self, chunk: np.ndarray, size: int) -> np.ndarray:
        """Fill a short last chunk up to a fixed batch size and drop the filler afterwards."""
        missing = size - len(chunk)
        if missing:
            chunk = np.concatenate([chunk, np.zeros((missing, *chunk.shape[1:]), chunk.dtype)])
        return self._run(chunk)[: size - missing]

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch that already has the shape the network accepts."""


def read_verified(artifact: Path, manifest: Mapping[str, Any]) -> bytes:
    """Read the artifact once and check those very bytes against the manifest's sha256.

    The runtime is handed these verified bytes, so a file swapped or corrupted after the
    check can never be the one that runs.
    """
    try:
        content = artifact.read_bytes()
    except OSError as error:
        raise ManifestError(f"{artifact}: cannot read the model file ({error.strerror})") from error
    check_sha256(artifact, hashlib.sha256(content).hexdigest(), manifest)
    return content


def select_tensor(names: Sequence[str], wanted: str | None, role: str) -> int:
    """Index of the model's input/output tensor: the manifest's name, or the only one."""
    if wanted in names:
        return list(names).index(wanted)
    if len(names) == 1:
        return 0
    raise ValueError(
        f"the model has {len(names)} {role} tensors {list(names)}; its manifest "
        f"names {wanted!r}, which is not one of them"
    )


def manifest_quantization(manifest: Mapping[str, Any], role: str) -> tuple[float, int]:
    """(scale, zero_point) of an integer input/output, for formats that do not carry it."""
    spec = manifest.get(role, {}).get("quantization") or {}
    if "scale" not in spec or "zero_point" not in spec:
        raise ManifestError(
            f"the model's {role} tensor is integer but the manifest's {role}.quantization "
            "gives no scale and zero_point"
        )
    return float(spec["scale"]), int(spec["zero_point"])


def to_input(
    batch: np.ndarray, dtype: np.dtype, quantization: tuple[float, int] | None
) -> np.ndarray:
    """Cast a float32 batch to the network's input dtype; integer inputs are quantized
    (round, then saturate) with the tensor's (scale, zero_point)."""
    if np.issubdtype(dtype, np.integer):
        if quantization is None:
            raise ValueError(f"integer ({dtype}) model input without scale/zero-point")
        scale, zero_point = quantization
        limits = np.iinfo(dtype)
        quantized = np.round(batch / scale) + zero_point
        return np.clip(quantized, limits.min, limits.max).astype(dtype)
    return batch.astype(dtype, copy=False)


def from_output(values: np.ndarray, quantization: tuple[float, int] | None) -> np.ndarray:
    """The network's output as float32 probabilities, dequantizing integer outputs."""
    if np.issubdtype(values.dtype, np.integer):
        if quantization is None:
            raise ValueError(f"integer ({values.dtype}) model output without scale/zero-point")
        scale, zero_point = quantization
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return values.astype(np.float32, copy=False)


#: Where Linux states a container's CPU quota: cgroup v2, then v1 (quota and period files).
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def available_cores() -> int:
    """The CPU cores this process may use: its affinity, capped by a container's CPU quota.

    `docker run --cpus 2` on a 32-core host leaves the affinity at 32; running 32 threads
    then makes every image slower, so the quota (cgroup cpu.max) counts too.
    """
    cores = _affinity_cores()
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def default_threads() -> int | None:
    """Threads for a runtime given none: None (the runtime's own choice, e.g. ONNX Runtime's
    one per physical core) unless a CPU quota allows fewer cores than the machine shows."""
    quota = cgroup_cpu_quota()
    return quota if quota is not None and quota < _affinity_cores() else None


def _affinity_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_cpu_quota() -> int | None:
    """Whole cores allowed by the CPU quota at the cgroup root this process sees (a
    container's own), rounded up; None if unlimited. A quota set only on a parent cgroup, or
    on a systemd unit outside a container, is not seen."""
    try:
        quota, period = CGROUP_V2_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text().strip()
            period = (CGROUP_V1_CPU / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 writes -1 for no quota
        return None
    return -(-quota_us // period_us)
