"""The benchmark networks: shapes, parameter counts against closed forms, and init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clenv.models import (
    ContinualImageNetConvNet,
    IncrementalCIFARResNet18,
    PermutedMNISTMLP,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("width,depth", [(1000, 3), (2000, 3), (100, 2)])
def test_mlp_shape_and_parameter_count(width, depth):
    model = PermutedMNISTMLP(width=width, depth=depth)
    expected = (784 * width + width) + (depth - 1) * (width * width + width)
    expected += width * 10 + 10
    assert n_params(model) == expected
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    # SC's net: 784-1000-1000-1000-10 has 2,797,010 parameters.
    if (width, depth) == (1000, 3):
        assert expected == 2_797_010
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == depth and len(set(map(id, relus))) == depth


def test_mlp_init_is_kaiming_uniform_with_zero_bias():
    torch.manual_seed(0)
    model = PermutedMNISTMLP(width=1000)
    for layer in model.linear_layers:
        bound = math.sqrt(6.0 / layer.in_features)
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.99 * bound  # spread over the whole interval
        # A uniform(-b, b) variable has std b / sqrt(3).
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
        assert torch.count_nonzero(layer.bias) == 0
    assert model.head is model.linear_layers[-1]


def test_convnet_matches_lop_layout():
    model = ContinualImageNetConvNet(num_classes=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (5, 5)),
        (32, 64, (3, 3)),
        (64, 128, (3, 3)),
    ]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 128),
        (128, 128),
        (128, 2),
    ]
    expected = (3 * 25 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128)
    expected += 512 * 128 + 128 + 128 * 128 + 128 + 128 * 2 + 2
    assert n_params(model) == expected
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 2)


def resnet18_reference_count(num_classes: int) -> int:
    """torchvision's CIFAR-style ResNet-18 count (no conv biases), by hand."""

    def conv(cin, cout, k):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    total = conv(3, 64, 3) + bn(64)
    cin = 64
    for index, c in enumerate((64, 128, 256, 512)):
        for block in range(2):
            block_in = cin if block == 0 else c
            total += conv(block_in, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
            if block == 0 and (index > 0):
                total += conv(block_in, c, 1) + bn(c)
        cin = c
    return total + 512 * num_classes + num_classes


def test_resnet_variant_layout_and_count():
    lop = IncrementalCIFARResNet18(num_classes=100, extra_fc=0)
    convs = [m for m in lop.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    stem = convs[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in lop.modules())
    conv_biases = sum(c.out_channels for c in convs)
    assert n_params(lop) == resnet18_reference_count(100) + conv_biases
    assert resnet18_reference_count(100) == 11_220_132  # the familiar figure

    sc = IncrementalCIFARResNet18(num_classes=100, extra_fc=2, fc_width=512)
    assert n_params(sc) - n_params(lop) == 2 * (512 * 512 + 512)
    out = sc(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 100)
    for conv in convs:
        assert torch.count_nonzero(conv.bias) == 0


def test_methods_find_the_hidden_layers():
    from clenv.methods import find_hidden_layers, make_method

    convnet = ContinualImageNetConvNet()
    hidden = find_hidden_layers(convnet)
    assert [type(h.layer).__name__ for h in hidden] == ["Conv2d"] * 3 + ["Linear"] * 2
    assert hidden[-1].next_layer is convnet.head
    er = make_method("l2er", convnet, None, preset="imagenet")["er"]
    assert er.layer_names == convnet.fc_activation_names()

    resnet = IncrementalCIFARResNet18(extra_fc=2)
    hidden = find_hidden_layers(resnet, resnet.hidden_layer_spec())
    assert len(hidden) == 8 + 2 and hidden[-1].next_layer is resnet.head
    er = make_method(
        "l2er", resnet, None, preset="cifar", hidden_layers=resnet.hidden_layer_spec()
    )["er"]
    assert er.layer_names == resnet.fc_activation_names() == ["fc.1", "fc.3"]
    lop = IncrementalCIFARResNet18(extra_fc=0)
    assert (
        find_hidden_layers(lop, lop.hidden_layer_spec())[-1].name == "stages.3.1.relu1"
    )


def test_narrow_resnet_scales_the_channels():
    narrow = IncrementalCIFARResNet18(extra_fc=0, base_channels=8)
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 64
    assert narrow(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_resnet_keeps_resolution_in_first_stage():
    model = IncrementalCIFARResNet18(extra_fc=0)
    features = model.stages[0](model.stem(torch.rand(1, 3, 32, 32)))
    assert features.shape == (1, 64, 32, 32)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: PermutedMNISTMLP(width=0),
        lambda: ContinualImageNetConvNet(num_classes=0),
        lambda: ContinualImageNetConvNet(image_size=16),
        lambda: IncrementalCIFARResNet18(extra_fc=-1),
    ],
)
def test_bad_arguments_raise_value_error(factory):
    with pytest.raises(ValueError):
        factory()
