"""Tests for graphinterp.sources.models: the paper's MLP/CNN, specs, torchvision by name."""
from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from graphinterp.data.datasets import DATASETS, dataset_info
from graphinterp.common.errors import DataError, UnsupportedModelError
from graphinterp.sources.models import MODELS, build_model, cnn, default_spec, mlp, torchvision_model


def _children(model: nn.Module) -> list:
    return [name for name, _ in model.named_children()]


def test_mlp_matches_paper_table_1():
    model = mlp()
    assert _children(model) == ["flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    shapes = [tuple(model.get_submodule(n).weight.shape) for n in ("fc1", "fc2", "fc3")]
    assert shapes == [(64, 784), (64, 64), (10, 64)]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert isinstance(model.relu1, nn.ReLU) and isinstance(model.flatten, nn.Flatten)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.randn(5, 784)).shape == (5, 10)


@pytest.mark.parametrize("hidden", [(), (7,), (5, 6, 7)])
def test_mlp_names_follow_depth(hidden):
    model = mlp(in_features=12, hidden=hidden, num_classes=3, bias=True)
    n = len(hidden) + 1
    expected = ["flatten"] + [x for i in range(1, n) for x in (f"fc{i}", f"relu{i}")] + [f"fc{n}"]
    assert _children(model) == expected
    widths = [12, *hidden, 3]
    for i in range(1, n + 1):
        layer = model.get_submodule(f"fc{i}")
        assert (layer.in_features, layer.out_features) == (widths[i - 1], widths[i])
        assert layer.bias is not None
    assert model(torch.randn(2, 12)).shape == (2, 3)


def test_cnn_matches_paper_table_1():
    model = cnn()
    assert _children(model) == ["conv1", "relu0", "pool", "flatten", "fc1", "relu1", "fc2", "relu2", "fc3"]
    conv = model.conv1
    assert conv.weight.shape == (16, 3, 3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.bias is None
    assert model.pool.kernel_size == 2
    assert (model.fc1.in_features, model.fc1.out_features) == (16 * 16 * 16, 64)
    assert (model.fc2.in_features, model.fc3.in_features, model.fc3.out_features) == (64, 64, 10)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    # fc1 really sees the flattened pooled feature map
    assert model[:4](x).shape == (3, model.fc1.in_features)


def test_cnn_for_28x28_grayscale():
    model = cnn(in_channels=1, image_size=28)
    assert model.fc1.in_features == 16 * 14 * 14
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "builder, kwargs, word",
    [
        (mlp, {"in_features": 0}, "in_features"),
        (mlp, {"hidden": [64, -1]}, "hidden width"),
        (mlp, {"hidden": "64"}, "hidden"),
        (mlp, {"num_classes": 2.5}, "num_classes"),
        (mlp, {"bias": "no"}, "bias"),
        (cnn, {"image_size": 1}, "image_size"),
        (cnn, {"channels": True}, "channels"),
    ],
)
def test_invalid_sizes_raise(builder, kwargs, word):
    with pytest.raises(UnsupportedModelError, match=word) as info:
        builder(**kwargs)
    assert "\n" not in str(info.value)


def _shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_build_model_equals_builders_and_spec_survives_weights_only(tmp_path):
    spec = {"name": "cnn", "kwargs": {"in_channels": 1, "image_size": 28, "hidden": [32], "bias": True}}
    path = tmp_path / "spec.pt"
    torch.save({"arch": spec}, path)
    restored = torch.load(path, weights_only=True)["arch"]
    assert restored == spec
    assert _shapes(build_model(restored)) == _shapes(cnn(in_channels=1, image_size=28, hidden=(32,), bias=True))
    assert _shapes(build_model({"name": "mlp"})) == _shapes(mlp())


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"name": "lstm"}, ["lstm", "mlp", "cnn", "transformer"]),
        ({"name": "mlp", "kwargs": {"depth": 3}}, ["depth", "in_features", "hidden"]),
        ({"name": "mlp", "kwargs": {"hidden": [0]}}, ["hidden"]),
        ({"name": "mlp", "kwargs": [1, 2]}, ["kwargs"]),
        ({"name": "mlp", "params": {}}, ["params"]),
        ("mlp", ["spec"]),
        ({"name": "torchvision", "kwargs": {"num_classes": 10}}, ["arch"]),
        ({"kwargs": {}}, ["spec"]),
    ],
)
def test_build_model_rejects_bad_specs(spec, words):
    with pytest.raises(UnsupportedModelError) as info:
        build_model(spec)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_default_specs_fit_their_dataset(dataset, model_name):
    spec = default_spec(dataset, model_name)
    assert spec["name"] == model_name
    assert json.loads(json.dumps(spec)) == spec  # plain values only
    info = dataset_info(dataset)
    model = build_model(spec)
    assert model(torch.randn(2, *info["input_shape"])).shape == (2, info["num_classes"])
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def test_default_spec_sizes():
    assert default_spec("digits", "mlp")["kwargs"]["in_features"] == 64
    assert _shapes(build_model(default_spec("digits", "mlp"))) == _shapes(mlp(64, (32, 32)))
    assert _shapes(build_model(default_spec("mnist", "mlp"))) == _shapes(mlp())
    assert _shapes(build_model(default_spec("cifar10", "cnn"))) == _shapes(cnn())
    assert build_model(default_spec("cifar10", "mlp")).fc1.in_features == 3072
    assert build_model(default_spec("fashion_mnist", "cnn")).fc1.in_features == 16 * 14 * 14
    assert default_spec("CIFAR-10", "cnn") == default_spec("cifar10", "cnn")


def test_default_spec_unknown_names():
    with pytest.raises(DataError, match="mnist"):
        default_spec("imagenet", "mlp")
    with pytest.raises(UnsupportedModelError, match="mlp"):
        default_spec("mnist", "resnet")


def test_torchvision_model_is_random_and_offline(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("torchvision_model must not download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    model = torchvision_model("resnet18", num_classes=7)
    assert model.fc.out_features == 7
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert torchvision_model("resnet18").fc.out_features == 1000
    torch.manual_seed(1)
    other = torchvision_model("resnet18", num_classes=7)
    assert not torch.equal(model.conv1.weight, other.conv1.weight)
    spec_model = build_model({"name": "torchvision", "kwargs": {"arch": "resnet18", "num_classes": 7}})
    assert _shapes(spec_model) == _shapes(model)


def test_torchvision_model_unknown_name_lists_valid_ones():
    with pytest.raises(UnsupportedModelError) as info:
        torchvision_model("resnet181")
    assert "resnet18" in str(info.value) and "resnet181" in str(info.value)
    with pytest.raises(UnsupportedModelError, match="alexnet|convnext"):
        torchvision_model("not-a-model")
    assert set(MODELS) == {"mlp", "cnn", "torchvision", "transformer"}


def test_models_pickle_free_state_dict_round_trip():
    model = mlp(8, (4,))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = mlp(8, (4,))
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(3, 8)
    assert torch.equal(clone(x), model(x))
