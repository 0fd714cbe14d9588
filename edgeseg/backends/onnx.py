"""ONNX Runtime backend: the default runtime, CPU only unless a GPU provider is asked for.

ONNX Runtime does not report the scale and zero-point of an integer (quantized) model input
or output, so those come from the manifest's ``input.quantization`` / ``output.quantization``
(``{"scale": float, "zero_point": int}``). A manifest may ask for ``graph_optimization: basic``.
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

#: Execution providers per backend name. Listed explicitly so that onnxruntime never picks a
#: provider on its own (the Azure provider, for one, would talk to the network).
PROVIDERS = {
    "onnx": ["CPUExecutionProvider"],
    "onnx-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnx-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


class OnnxBackend(Backend):
    def __init__(
        self,
        model: bytes,
        manifest: Mapping[str, Any],
        threads: int | None = None,
        name: str = "onnx",
    ) -> None:
        import onnxruntime as ort

        self.name = name
        providers = PROVIDERS[name]
        if providers[0] not in ort.get_available_providers():
            raise BackendUnavailable(
                f"backend {name!r} unavailable here: this onnxruntime has no {providers[0]} "
                "(install onnxruntime-gpu and the CUDA libraries, or use --backend onnx)"
            )
        options = ort.SessionOptions()
        # "basic" keeps Q/DQ nodes unfused: a quantized graph then runs as the exact float
        # simulation of its quantization, as TensorRT computes it; ONNX Runtime's fused x86
        # int8 kernels can saturate on symmetric (TensorRT-style) int8 graphs.
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            if manifest.get("graph_optimization") == "basic"
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads would otherwise spin, taking the core the batch pipeline's reader and
        # writer need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Planned per-shape buffers cost memory for each concurrent call and bought no speed
        # here: peak RSS 159 -> 151 MB on 256x256 images, 237 -> 209 MB on stage1_test.
        options.enable_mem_pattern = False
        self._session = ort.InferenceSession(model, sess_options=options, providers=providers)
        if self._session.get_providers()[0] != providers[0]:  # ORT silently falls back to CPU
            raise BackendUnavailable(
                f"backend {name!r} unavailable here: {providers[0]} failed "
                "to initialise (see the onnxruntime messages above)"
            )

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        tensor_in = inputs[
            select_tensor([t.name for t in inputs], _name(manifest, "input"), "input")
        ]
        tensor_out = outputs[
            select_tensor([t.name for t in outputs], _name(manifest, "output"), "output")
        ]
        self._input_name, self._output_name = tensor_in.name, tensor_out.name
        last = tensor_out.shape[-1] if tensor_out.shape else None
        self.model_channels = last if isinstance(last, int) and last > 0 else None
        batch, height, width = (d if isinstance(d, int) else None for d in tensor_in.shape[:3])
        self.fixed_batch = batch
        self.input_size = (height, width) if height and width else None
        self._input_dtype = _dtype(tensor_in.type)
        integer_in = np.issubdtype(self._input_dtype, np.integer)
        integer_out = np.issubdtype(_dtype(tensor_out.type), np.integer)
        self._input_quantization = manifest_quantization(manifest, "input") if integer_in else None
        self._output_quantization = (
            manifest_quantization(manifest, "output") if integer_out else None
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input_name: to_input(batch, self._input_dtype, self._input_quantization)}
        (output,) = self._session.run([self._output_name], feed)
        return from_output(output, self._output_quantization)


def _name(manifest: Mapping[str, Any], role: str) -> str | None:
    return manifest.get(role, {}).get("name")


def _dtype(onnx_type: str) -> np.dtype:
    if onnx_type not in _DTYPES:
        raise ValueError(
            f"unsupported ONNX model tensor type {onnx_type}; expected one of {sorted(_DTYPES)}"
        )
    return np.dtype(_DTYPES[onnx_type])
