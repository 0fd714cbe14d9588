"""Export targets: what each `--target` name produces and which tools it needs.

One table, so the command line, `--target all` and the pipeline agree on names, file
suffixes, runtime backends and the libraries each stage imports.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

Stage = Literal["tflite", "onnx", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]

_TENSORFLOW = ("tensorflow", "keras")
_ONNX = (*_TENSORFLOW, "tf2onnx", "onnx", "onnxruntime")


@dataclass(frozen=True)
class Target:
    """One export target. TensorRT targets first write a TensorRT-ready ONNX (``.onnx``),
    then, where TensorRT and a GPU exist, the engine (``suffix``)."""

    name: str
    stage: Stage
    precision: Precision
    suffix: str
    backend: str
    #: Modules the stage imports when exporting from a Keras model.
    needs: tuple[str, ...]

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("tflite-fp32", "tflite", "fp32", ".tflite", "litert", _TENSORFLOW),
        Target("tflite-fp16", "tflite", "fp16", ".tflite", "litert", _TENSORFLOW),
        Target("tflite-int8", "tflite", "int8", ".tflite", "litert", _TENSORFLOW),
        Target("onnx-fp32", "onnx", "fp32", ".onnx", "onnx", _ONNX),
        Target("onnx-int8", "onnx", "int8", ".onnx", "onnx", _ONNX),
        Target("trt-fp16", "tensorrt", "fp16", ".engine", "tensorrt", _ONNX),
        Target("trt-int8", "tensorrt", "int8", ".engine", "tensorrt", _ONNX),
    )
}
TARGET_CHOICES = (*TARGETS, "all")


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def resolve_targets(name: str) -> list[Target]:
    """The targets ``name`` stands for; ``all`` is every target whose converters are installed.
    TensorRT targets are always in it: their TensorRT-ready ONNX is written anywhere, and the
    engine is built only where TensorRT and a GPU exist (elsewhere the command says how)."""
    if name != "all":
        if name not in TARGETS:
            raise KeyError(f"unknown target {name!r}; choose one of {', '.join(TARGET_CHOICES)}")
        return [TARGETS[name]]
    return [target for target in TARGETS.values() if not missing_modules(target.needs)]
