"""TensorRT engines from a TensorRT-ready ONNX graph (TensorRT 10 Python API).

An engine is tied to one GPU model and one TensorRT version, so it is built on the machine
that runs it; where TensorRT or a GPU is missing, `trtexec_command` says how to build it there.
trt-int8 graphs are explicitly quantized (Q/DQ); the FP16 flag lets the float layers between
them run in half precision too.
"""

from __future__ import annotations

from pathlib import Path

from edgeseg.atomic import atomic_path
from export.targets import Precision

OPT_BATCH = 4  # edgeseg.tiling's default tiles per call
MAX_BATCH = 16


def engine_unavailable() -> str | None:
    """Why no engine can be built on this machine, or None when one can."""
    try:
        import tensorrt as trt
    except ImportError as error:
        return f"TensorRT is not installed here ({error})"
    try:
        trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as error:  # TensorRT raises a bare error when no CUDA GPU answers
        return f"TensorRT finds no usable CUDA GPU here ({error})"
    return None


Shape = tuple[int, ...]
#: The (min, opt, max) input shapes an engine is built for.
Profile = tuple[Shape, Shape, Shape]


def _shape(batch: int, tile: int) -> tuple[int, int, int, int]:
    return (batch, tile, tile, 1)


def tile_profile(tile: int) -> Profile:
    """Batches 1..MAX_BATCH of ``tile`` tiles (a semantic model's input)."""
    return _shape(1, tile), _shape(OPT_BATCH, tile), _shape(MAX_BATCH, tile)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: Precision,
    tile: int,
    input_name: str,
    timing_cache: Path,
    profile: Profile | None = None,
) -> None:
    """Parse ``onnx_path``, build for ``profile`` (default: batches 1..MAX_BATCH of ``tile``
    tiles), serialize."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(input_name, *(profile or tile_profile(tile)))
    config.add_optimization_profile(shapes)
    cached = timing_cache.read_bytes() if timing_cache.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its messages)")
    with atomic_path(engine_path) as temporary:
        temporary.write_bytes(bytes(serialized))
    with atomic_path(timing_cache) as temporary:
        temporary.write_bytes(bytes(config.get_timing_cache().serialize()))


def trtexec_command(
    onnx_path: Path,
    engine_path: Path,
    precision: Precision,
    tile: int,
    input_name: str,
    profile: Profile | None = None,
) -> str:
    """The same build as `build_engine`, as a trtexec command line."""
    shapes = " ".join(
        f"--{kind}Shapes={input_name}:{'x'.join(map(str, shape))}"
        for kind, shape in zip(("min", "opt", "max"), profile or tile_profile(tile), strict=True)
    )
    flags = "--fp16 --int8" if precision == "int8" else "--fp16"
    return (
        f"trtexec --onnx={onnx_path} --saveEngine={engine_path} {flags} {shapes} "
        f"--timingCacheFile={engine_path.parent / 'tensorrt.timing-cache'}"
    )
