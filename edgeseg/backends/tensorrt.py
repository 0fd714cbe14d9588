"""TensorRT backend: a serialized engine (.engine/.plan) on an NVIDIA GPU (TensorRT 10 API).

An engine is built for one GPU model and one TensorRT version (see the export step); device
buffers and copies go through cuda-python's runtime API. Nothing here is imported unless this
backend is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeseg.backends.base import (
    Backend,
    BackendUnavailable,
    from_output,
    manifest_quantization,
    select_tensor,
    to_input,
)


def _import_runtime() -> tuple[Any, Any]:
    try:
        import tensorrt as trt

        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6
            from cuda import cudart
    except ImportError as error:
        raise BackendUnavailable(
            f"TensorRT backend unavailable here: tensorrt/CUDA not importable ({error}); "
            "install edgeseg[trt] on a machine with an NVIDIA GPU, or use --backend onnx"
        ) from error
    return trt, cudart


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: bytes, manifest: Mapping[str, Any], threads: int | None = None):
        trt, self._cudart = _import_runtime()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(engine)
        if self._engine is None:
            raise BackendUnavailable(
                "TensorRT could not deserialize the engine: it was built for another GPU or "
                "TensorRT version; rebuild it on this machine from the ONNX export"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        self._input = inputs[select_tensor(inputs, manifest.get("input", {}).get("name"), "input")]
        self._output = outputs[
            select_tensor(outputs, manifest.get("output", {}).get("name"), "output")
        ]
        last = tuple(self._engine.get_tensor_shape(self._output))[-1]
        self.model_channels = last if last > 0 else None
        batch, height, width = (
            d if d > 0 else None for d in tuple(self._engine.get_tensor_shape(self._input))[:3]
        )
        self.fixed_batch = batch
        self.input_size = (height, width) if height and width else None
        self._input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._output_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._output)))
        self._input_quantization = (
            manifest_quantization(manifest, "input")
            if np.issubdtype(self._input_dtype, np.integer)
            else None
        )
        self._output_quantization = (
            manifest_quantization(manifest, "output")
            if np.issubdtype(self._output_dtype, np.integer)
            else None
        )
        self._stream = self._call(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)

    def _call(self, result: tuple[Any, ...]) -> Any:
        """Unwrap a cuda-python (error, *values) result, raising on any CUDA error."""
        error, *values = result
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA call failed: {error}")
        return values[0] if values else None

    def _device_buffer(self, name: str, size: int) -> int:
        """A device buffer of at least ``size`` bytes bound to tensor ``name``, grown on need."""
        pointer, capacity = self._buffers.get(name, (0, 0))
        if capacity < size:
            if pointer:
                self._call(self._cudart.cudaFree(pointer))
            pointer = int(self._call(self._cudart.cudaMalloc(size)))
            self._buffers[name] = (pointer, size)
            self._context.set_tensor_address(name, pointer)
        return pointer

    def _send(self, host_in: np.ndarray, size_name: str) -> None:
        """Set the input shape and queue its copy to the device (``size_name``: what to
        rebuild the engine for when its optimisation profile refuses the shape)."""
        if not self._context.set_input_shape(self._input, host_in.shape):
            raise ValueError(
                f"the TensorRT engine's optimisation profile does not allow input "
                f"shape {host_in.shape}; rebuild it for this {size_name}"
            )
        device_in = self._device_buffer(self._input, host_in.nbytes)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(
            self._cudart.cudaMemcpyAsync(
                device_in, host_in.ctypes.data, host_in.nbytes, kind, self._stream
            )
        )

    def _execute_and_fetch(self, hosts: Mapping[str, np.ndarray]) -> None:
        """Run the engine, copy each named output into its host array and wait for both."""
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT inference failed (see the TensorRT messages above)")
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, host in hosts.items():
            self._call(
                self._cudart.cudaMemcpyAsync(
                    host.ctypes.data, self._buffers[name][0], host.nbytes, kind, self._stream
                )
            )
        self._call(self._cudart.cudaStreamSynchronize(self._stream))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        host_in = np.ascontiguousarray(to_input(batch, self._input_dtype, self._input_quantization))
        self._send(host_in, "tile size")
        host_out = np.empty(tuple(self._context.get_tensor_shape(self._output)), self._output_dtype)
        self._device_buffer(self._output, host_out.nbytes)
        self._execute_and_fetch({self._output: host_out})
        return from_output(host_out, self._output_quantization)

    def __del__(self) -> None:
        """Free device buffers and the stream; return codes are moot at teardown."""
        for pointer, _ in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(pointer)
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)


class TensorRTGraph(TensorRTBackend):
    """A multi-output engine (a Mask R-CNN graph, edgeseg.maskrcnn_model): one float input in,
    every output back by name. ``entry`` is the graph's manifest entry, whose ``inputs`` and
    ``outputs`` records name the tensors (TensorRT keeps the ONNX names)."""

    def __init__(self, engine: bytes, entry: Mapping[str, Any], threads: int | None = None):
        names = {role: entry[f"{role}s"][0]["name"] for role in ("input", "output")}
        super().__init__(engine, {role: {"name": name} for role, name in names.items()}, threads)
        trt, _ = _import_runtime()
        self._trt = trt
        io = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._outputs = [
            name for name in io if self._engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT
        ]

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; every output, as float32."""
        self._send(np.ascontiguousarray(to_input(batch, self._input_dtype, None)), "image size")
        hosts = {}
        for name in self._outputs:
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            hosts[name] = np.empty(tuple(self._context.get_tensor_shape(name)), dtype)
            self._device_buffer(name, max(hosts[name].nbytes, 1))
        self._execute_and_fetch(hosts)
        return {name: host.astype(np.float32, copy=False) for name, host in hosts.items()}
