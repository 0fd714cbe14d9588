"""Backends against independent references: ONNX Runtime vs OpenCV, LiteRT and Keras vs the
Keras model they came from; tampered, unverified and mismatched models are refused."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tiny_models import run_reference, threshold_model

from edgeseg.backends import BackendUnavailable, load_backend
from edgeseg.manifest import ManifestError, manifest_path, write_manifest


def _reference(batch: np.ndarray) -> np.ndarray:
    return np.stack([run_reference(tile[..., 0]) for tile in batch]).astype(np.float32)


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    return threshold_model(tmp_path / "threshold.onnx")


def test_onnx_matches_opencv_reference(onnx_model: Path) -> None:
    backend = load_backend(onnx_model, threads=1)
    batch = np.random.default_rng(0).random((3, 40, 56, 1), dtype=np.float32)
    probabilities = backend.predict(batch)
    assert backend.name == "onnx" and backend.input_size is None
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 40, 56, 2)
    np.testing.assert_allclose(probabilities, _reference(batch), atol=1e-5)


def test_fixed_size_onnx_model_reports_and_enforces_its_size(tmp_path: Path) -> None:
    backend = load_backend(threshold_model(tmp_path / "fixed.onnx", tile=32))
    assert backend.input_size == (32, 32)
    with pytest.raises(ValueError, match="only accepts 32x32"):
        backend.predict(np.zeros((1, 16, 16, 1), np.float32))


def _quantized_io_model(path: Path, scale: float) -> Path:
    """The threshold model with uint8 input and int8 output, as a quantized export has."""
    threshold_model(path)
    model = onnx.load(path)
    graph = model.graph
    graph.input[0].name = "image_uint8"
    graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    graph.node[-1].output[0] = "probabilities_float"
    graph.output[0].type.tensor_type.elem_type = TensorProto.INT8
    graph.node.insert(
        0, helper.make_node("DequantizeLinear", ["image_uint8", "s", "zu"], ["image"])
    )
    graph.node.append(
        helper.make_node("QuantizeLinear", ["probabilities_float", "s", "zi"], ["probabilities"])
    )
    graph.initializer.extend(
        [
            helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("zu", TensorProto.UINT8, [], [0]),
            helper.make_tensor("zi", TensorProto.INT8, [], [-128]),
        ]
    )
    onnx.save(model, path)
    return path


def test_onnx_quantized_io_uses_manifest_scale(tmp_path: Path) -> None:
    scale = 1 / 255
    path = _quantized_io_model(tmp_path / "q.onnx", scale)
    write_manifest(
        path,
        backend="onnx",
        input={"name": "image_uint8", "quantization": {"scale": scale, "zero_point": 0}},
        output={"name": "probabilities", "quantization": {"scale": scale, "zero_point": -128}},
    )
    batch = np.random.default_rng(1).random((2, 24, 24, 1), dtype=np.float32)
    probabilities = load_backend(path).predict(batch)
    seen = np.round(batch * 255) / 255  # what the uint8 input can carry
    np.testing.assert_allclose(probabilities, _reference(seen), atol=scale / 2 + 1e-6)

    write_manifest(path, backend="onnx")
    with pytest.raises(ManifestError, match="quantization"):
        load_backend(path)


def test_tampered_model_is_refused_before_onnxruntime_sees_it(
    onnx_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("onnxruntime was handed a tampered model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    data = bytearray(onnx_model.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_model.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="refusing to load") as error:
        load_backend(onnx_model)
    assert str(onnx_model) in str(error.value)


def test_truncated_model_with_a_matching_manifest_is_named(onnx_model: Path) -> None:
    """An export cut short (a full disk) hashes to its own manifest; the runtime must say so."""
    onnx_model.write_bytes(onnx_model.read_bytes()[:100])
    manifest = json.loads(manifest_path(onnx_model).read_text())
    write_manifest(
        onnx_model, **{k: v for k, v in manifest.items() if k not in ("sha256", "artifact")}
    )
    with pytest.raises(ManifestError, match="onnx cannot load this model") as error:
        load_backend(onnx_model)
    assert str(onnx_model) in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"preprocess": "luma"}, "preprocess must be JSON objects"),
        ({"tile": []}, "tile must be JSON objects"),
        ({"output_channels": ["boundary", "foreground"]}, "output_channels"),
    ],
)
def test_malformed_manifest_sections_are_refused(
    onnx_model: Path, change: dict, message: str
) -> None:
    path = manifest_path(onnx_model)
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(ManifestError, match=message) as error:
        load_backend(onnx_model)
    assert str(path) in str(error.value)
    path.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="a manifest is a JSON object, not list"):
        load_backend(onnx_model)


def test_model_without_manifest_is_refused(onnx_model: Path) -> None:
    manifest_path(onnx_model).unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        load_backend(onnx_model)


def test_backend_must_fit_the_model_format(onnx_model: Path) -> None:
    with pytest.raises(ValueError, match="cannot run on the 'litert' backend"):
        load_backend(onnx_model, backend="litert")
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(onnx_model, backend="openvino")


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="this onnxruntime has CUDA",
)
def test_gpu_onnx_backend_refused_without_cuda(onnx_model: Path) -> None:
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
        load_backend(onnx_model, backend="onnx-cuda")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt present")
def test_tensorrt_backend_says_it_is_unavailable(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    write_manifest(engine, backend="tensorrt")
    with pytest.raises(BackendUnavailable, match="TensorRT backend unavailable here"):
        load_backend(engine)


def test_importing_the_runtime_loads_no_inference_library() -> None:
    code = (
        "import sys, edgeseg.cli, edgeseg.segmenter, edgeseg.backends, edgeseg.models\n"
        "heavy = {'onnxruntime', 'tensorflow', 'keras', 'ai_edge_litert', 'tensorrt', 'training',\n"
        "         'export', 'benchmarks'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --- LiteRT and Keras: the test model is made with TensorFlow, which the runtime lacks ---


@pytest.fixture(scope="module")
def keras_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A small dynamic-size Keras model, saved as .keras, float .tflite and int8 .tflite."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(2, 1, activation="sigmoid")(hidden)
    model = keras.Model(inputs, outputs)
    folder = tmp_path_factory.mktemp("keras")
    paths = {"keras": folder / "model.keras", "float": folder / "model.tflite"}
    model.save(paths["keras"])
    paths["float"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    rng = np.random.default_rng(2)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.random((1, 32, 32, 1), dtype=np.float32)] for _ in range(16)
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    paths["int8"] = folder / "model-int8.tflite"
    paths["int8"].write_bytes(converter.convert())
    for key, path in paths.items():
        write_manifest(path, backend="keras" if key == "keras" else "litert")
    return {"model": model, **paths}


@pytest.mark.tensorflow
def test_litert_float_matches_keras(keras_exports: dict) -> None:
    backend = load_backend(keras_exports["float"], threads=1)
    assert backend.name == "litert" and backend.input_size is None
    rng = np.random.default_rng(3)
    for shape in [(2, 24, 40, 1), (1, 32, 32, 1)]:  # new shapes make it resize its tensors
        batch = rng.random(shape, dtype=np.float32)
        expected = keras_exports["model"].predict_on_batch(batch)
        np.testing.assert_allclose(backend.predict(batch), expected, atol=1e-5)


@pytest.mark.tensorflow
def test_litert_int8_quantizes_input_and_dequantizes_output(keras_exports: dict) -> None:
    backend = load_backend(keras_exports["int8"])
    batch = np.random.default_rng(4).random((2, 32, 32, 1), dtype=np.float32)
    probabilities = backend.predict(batch)
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 32, 32, 2)
    expected = keras_exports["model"].predict_on_batch(batch)
    assert np.abs(probabilities - expected).max() < 0.02  # int8 error, not a scale mix-up


@pytest.mark.parametrize(
    ("v2", "v1", "quota"),
    [
        ("max 100000\n", None, None),
        ("150000 100000\n", None, 2),
        ("50000 100000\n", None, 1),
        (None, ("-1", "100000"), None),
        (None, ("400000", "100000"), 4),
        (None, None, None),
    ],
)
def test_container_cpu_quota_caps_the_cores(tmp_path, monkeypatch, v2, v1, quota) -> None:
    """A quota of 1.5 cores allows 2 threads; "max" or -1 means no quota; no files, none."""
    from edgeseg.backends import base

    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    monkeypatch.setattr(base, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(base, "CGROUP_V1_CPU", tmp_path / "cpu")
    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert base.cgroup_cpu_quota() == quota
    assert base.available_cores() == (quota or 8)


def test_a_cpu_quota_below_the_cores_sets_the_runtime_threads(
    onnx_model: Path, monkeypatch
) -> None:
    """ONNX Runtime's own default (a thread per host core) would oversubscribe the quota."""
    from edgeseg.backends import base

    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(base, "cgroup_cpu_quota", lambda: 2)
    assert load_backend(onnx_model)._session.get_session_options().intra_op_num_threads == 2
    assert (
        load_backend(onnx_model, threads=3)._session.get_session_options().intra_op_num_threads == 3
    )
    monkeypatch.setattr(base, "cgroup_cpu_quota", lambda: 16)  # more than the machine has
    assert base.default_threads() is None
    assert load_backend(onnx_model)._session.get_session_options().intra_op_num_threads == 0


@pytest.mark.tensorflow
def test_litert_uses_every_core_unless_told(keras_exports: dict, monkeypatch) -> None:
    """LiteRT's own default is one thread, which halved its speed in the benchmark."""
    from edgeseg.backends import base, litert

    made = []
    real = litert.interpreter_class()
    monkeypatch.setattr(
        litert, "interpreter_class", lambda: lambda **kw: made.append(kw) or real(**kw)
    )
    monkeypatch.setattr(base.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(base, "cgroup_cpu_quota", lambda: None)
    load_backend(keras_exports["float"])
    load_backend(keras_exports["float"], threads=1)
    assert [kw["num_threads"] for kw in made] == [3, 1]


@pytest.mark.tensorflow
def test_a_cut_short_keras_file_is_named_as_such(keras_exports: dict, tmp_path: Path) -> None:
    from export.pipeline import Exporter, ExportError

    model = tmp_path / "model.keras"
    model.write_bytes(keras_exports["keras"].read_bytes()[:2000])  # a copy that stopped early
    write_manifest(model, backend="keras")  # its hash matches: only the archive tells
    with pytest.raises(ValueError, match=f"{model}: not a complete .keras file"):
        load_backend(model)
    with pytest.raises(ExportError, match=f"{model}: not a complete .keras file"):
        Exporter(model, tmp_path / "out")


@pytest.mark.tensorflow
def test_keras_backend_matches_keras(keras_exports: dict) -> None:
    backend = load_backend(keras_exports["keras"])
    batch = np.random.default_rng(5).random((2, 16, 24, 1), dtype=np.float32)
    expected = keras_exports["model"].predict_on_batch(batch)
    np.testing.assert_allclose(backend.predict(batch), expected, atol=1e-6)


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_opencv_reference(onnx_model: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_model.read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 16, 16, 1), (4, 64, 64, 1), (8, 256, 256, 1))
    config.add_optimization_profile(profile)
    engine = onnx_model.with_suffix(".engine")
    engine.write_bytes(bytes(builder.build_serialized_network(network, config)))
    write_manifest(engine, backend="tensorrt", input={"name": "image"})
    batch = np.random.default_rng(6).random((3, 64, 48, 1), dtype=np.float32)
    np.testing.assert_allclose(load_backend(engine).predict(batch), _reference(batch), atol=1e-4)


@pytest.mark.tensorflow
def test_keras_backend_runs_bilinear_upsampling_on_any_tile_shape() -> None:
    """Tiles change shape with the image (narrow images get narrow tiles); the resnet's
    bilinear UpSampling2D once failed on the third shape when Keras retraced it."""
    keras = pytest.importorskip("keras")
    from edgeseg.backends.keras import KerasBackend

    inputs = keras.Input((None, None, 1))
    hidden = keras.layers.Conv2D(2, 3, strides=2, padding="same")(inputs)
    hidden = keras.layers.UpSampling2D(2, interpolation="bilinear")(hidden)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, activation="sigmoid")(hidden))
    backend = KerasBackend.from_model(model)
    for shape in ((1, 32, 32), (1, 32, 16), (2, 16, 48), (1, 48, 32)):
        batch = np.random.default_rng(0).random((*shape, 1), np.float32)
        output = backend.predict(batch)
        assert output.shape == (*shape, 2)
        np.testing.assert_allclose(output, np.asarray(model(batch)), atol=1e-6)
