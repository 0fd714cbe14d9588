"""The ImageNet encoder weights: checked before use, loaded where torchvision had them, and
read from a .pth pickle without running anything the file names."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow


def test_the_pretrained_encoder_starts_from_the_imagenet_weights() -> None:
    from training.models import build_model
    from training.pretrained import mobilenet_v2_weights

    source = mobilenet_v2_weights()
    model = build_model("mobilenet_unet", decoder_filters=(4, 4, 4, 4, 4))
    first = model.get_layer("features_0_0").get_weights()[0]  # RGB kernels summed for gray
    expected = source["features.0.0.weight"].transpose(2, 3, 1, 0).sum(axis=2, keepdims=True)
    np.testing.assert_array_equal(first, expected)
    depthwise = model.get_layer("features_17_conv_1_0").get_weights()[0]
    np.testing.assert_array_equal(
        depthwise, source["features.17.conv.1.0.weight"].transpose(2, 3, 0, 1)
    )
    projection_bn = model.get_layer("features_17_conv_2_bn")  # torch's conv.3
    gamma, beta, mean, variance = projection_bn.get_weights()
    np.testing.assert_array_equal(variance, source["features.17.conv.3.running_var"])
    random = build_model("mobilenet_unet", pretrained=False, decoder_filters=(4, 4, 4, 4, 4))
    assert not np.allclose(random.get_layer("features_0_0").get_weights()[0], first)


def test_changed_encoder_weights_are_refused(tmp_path: Path, monkeypatch) -> None:
    import training.pretrained as pretrained

    changed = tmp_path / "weights.npz"
    with np.load(pretrained.MOBILENET_V2_FILE) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["features.0.0.weight"] = arrays["features.0.0.weight"] * 1.01
    np.savez(changed, **arrays)
    monkeypatch.setattr(pretrained, "MOBILENET_V2_FILE", changed)
    with pytest.raises(pretrained.PretrainedWeightsError, match="weights.npz: sha256"):
        pretrained.mobilenet_v2_weights()
    from click.testing import CliRunner

    from edgeseg.cli import main

    arguments = ["train", "--model", "mobilenet_unet", "--data", str(tmp_path)]
    result = CliRunner().invoke(main, [*arguments, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "weights.npz: sha256" in result.output  # before the data


def _legacy_pth(
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replace: dict[int, object] | None = None,
    shape: tuple[tuple[int, ...], tuple[int, ...]] = ((2, 2), (2, 1)),
) -> None:
    """Write a state_dict {"w": tensor of ``shape`` (size, strides) at offset 2 of one float
    storage "0" of 6 values} as torch.save did before PyTorch 1.6: magic, protocol, system
    info, the tree, the storage keys, the storages. ``replace`` swaps pickle i (0-4) for
    another object. Stand-ins for torch's classes are importable while it writes."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    torch.FloatStorage, utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __reduce__(self):
            storage = ("storage", FloatStorage, "0", "cpu", 6, None)
            return (_rebuild_tensor_v2, (storage, 2, *shape))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj if isinstance(obj, tuple) and obj[:1] == ("storage",) else None

    pickles = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"w": Tensor()}, ["0"]]
    for index, value in (replace or {}).items():
        pickles[index] = value
    with open(path, "wb") as file:
        for value in pickles:
            Pickler(file, protocol=2).dump(value)
        file.write(np.int64(6).tobytes() + np.arange(6, dtype=np.float32).tobytes())


def test_a_legacy_pth_is_read_as_arrays_with_its_strides(tmp_path: Path, monkeypatch) -> None:
    from training.pretrained.convert_mobilenet_v2 import read_legacy_state_dict

    path = tmp_path / "tiny.pth"
    _legacy_pth(path, monkeypatch)
    arrays = read_legacy_state_dict(path)
    np.testing.assert_array_equal(arrays["w"], [[2.0, 3.0], [4.0, 5.0]])  # offset 2
    _legacy_pth(path, monkeypatch, shape=((2, 2), (1, 2)))  # column-major: a transposed view
    np.testing.assert_array_equal(read_legacy_state_dict(path)["w"], [[2.0, 4.0], [3.0, 5.0]])


@pytest.mark.parametrize("slot", range(5))
def test_a_pth_that_names_other_code_anywhere_is_refused(
    tmp_path: Path, monkeypatch, slot: int
) -> None:
    from training.pretrained.convert_mobilenet_v2 import read_legacy_state_dict

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    _legacy_pth(path, monkeypatch, replace={slot: {"w": Payload()} if slot == 3 else Payload()})
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_legacy_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path, monkeypatch) -> None:
    from training.pretrained.convert_mobilenet_v2 import read_legacy_state_dict

    path = tmp_path / "long.pth"
    _legacy_pth(path, monkeypatch, shape=((4, 4), (4, 1)))  # 16 values from offset 2 of 6
    with pytest.raises(pickle.UnpicklingError, match="leave its storage"):
        read_legacy_state_dict(path)
