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


# -- initialisation, per paper, at construction and after reset_parameters() --------
def _truncated(std):
    """(std, bound) of JAX's truncated normal with variance std**2."""
    return std, 2 * std / 0.87962566103423978


def expected_init(model: nn.Module) -> list[tuple[str, nn.Module, str, float, float]]:
    """Per weight layer: (name, module, distribution, std, bound) of the weights.

    distribution: "uniform" (bound = b), "normal" (bound = inf) or "truncated".
    """
    expected = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        fan_in = module.weight[0].numel()
        fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
        if isinstance(model, PermutedMNISTMLP):
            gain = 1.0 if model.init == "lop" and module is model.head else 2.0
            bound = math.sqrt(3 * gain / fan_in)
            expected.append((name, module, "uniform", bound / math.sqrt(3), bound))
        elif isinstance(model, ContinualImageNetConvNet):
            if model.init == "lop":  # torch's default
                bound = 1 / math.sqrt(fan_in)
                expected.append((name, module, "uniform", bound / math.sqrt(3), bound))
            else:
                expected.append((name, module, "truncated", *_truncated(fan_in**-0.5)))
        elif model.init == "sc":  # the ResNet
            scale = 2.0 if isinstance(module, nn.Conv2d) else 1.0
            std = math.sqrt(scale / fan_out)
            expected.append((name, module, "truncated", *_truncated(std)))
        else:
            scale = 2.0 if isinstance(module, nn.Conv2d) else 1.0
            std = math.sqrt(scale / fan_in)
            expected.append((name, module, "normal", std, math.inf))
    return expected


def assert_follows_init(model: nn.Module) -> None:
    """Weights within the init's bounds with its std (on layers big enough to tell);
    biases zero where the init zeroes them, else within torch's default bound."""
    zero_bias = not (
        isinstance(model, ContinualImageNetConvNet) and model.init == "lop"
    )
    for name, module, distribution, std, bound in expected_init(model):
        weight = module.weight.detach()
        assert weight.abs().max() <= bound * (1 + 1e-6), name
        if distribution == "normal":
            assert weight.abs().max() > 2.5 * std, name  # not truncated
        elif weight.numel() >= 2000:
            assert weight.abs().max() > 0.95 * bound, name  # fills the interval
        if weight.numel() >= 2000:
            assert weight.std().item() == pytest.approx(std, rel=0.06), name
        if zero_bias:
            assert torch.count_nonzero(module.bias) == 0, name
        else:
            assert 0 < module.bias.abs().max() <= 1 / math.sqrt(weight[0].numel())
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
            assert torch.all(module.running_mean == 0)
            assert torch.all(module.running_var == 1)
            assert module.num_batches_tracked == 0


MODELS = {
    "mlp-sc": lambda: PermutedMNISTMLP(width=300, init="sc"),
    "mlp-lop": lambda: PermutedMNISTMLP(width=300, init="lop"),
    "convnet-lop": lambda: ContinualImageNetConvNet(),
    "convnet-sc": lambda: ContinualImageNetConvNet(padding="same", init="sc"),
    "resnet-sc": lambda: IncrementalCIFARResNet18(base_channels=16, init="sc"),
    "resnet-lop": lambda: IncrementalCIFARResNet18(
        base_channels=16, extra_fc=0, init="lop"
    ),
}


@pytest.mark.parametrize("name", MODELS)
def test_construction_follows_the_papers_init(name):
    torch.manual_seed(1)
    assert_follows_init(MODELS[name]())


@pytest.mark.parametrize("name", MODELS)
def test_reset_parameters_redraws_from_the_construction_init(name):
    torch.manual_seed(2)
    model = MODELS[name]()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model.train()
        model(torch.rand(4, 3, 32, 32))  # running statistics move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.reset_parameters()
    assert_follows_init(model)
    for key, value in model.named_parameters():
        if "weight" in key and value.dim() > 1:
            assert not torch.equal(value, before[key]), key  # new draws
    # The head alone, from the same init; the rest untouched.
    rest = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.head.weight.fill_(7.0)
    model.reset_head_parameters()
    assert_follows_init(model)
    head = {f"{n}.{p}" for n, m in model.named_modules() if m is model.head for p in
            ("weight", "bias")}  # fmt: skip
    for key, value in model.state_dict().items():
        if key not in head:
            assert torch.equal(value, rest[key]), key
    # The draws come from torch's global generator, like construction's.
    torch.manual_seed(3)
    model.reset_parameters()
    first = [p.clone() for p in model.parameters()]
    torch.manual_seed(3)
    model.reset_parameters()
    assert all(
        torch.equal(a, b) for a, b in zip(first, model.parameters(), strict=True)
    )


def test_mlp_head_gain_per_paper():
    torch.manual_seed(0)
    sc, lop = PermutedMNISTMLP(width=2000), PermutedMNISTMLP(width=2000, init="lop")
    # SC: ReLU gain on the head too (bound sqrt(6/2000)); LoP: linear gain (sqrt(3/..)).
    assert sc.head.weight.abs().max() > 0.95 * math.sqrt(6 / 2000)
    assert lop.head.weight.abs().max() <= math.sqrt(3 / 2000)
    assert lop.head.weight.abs().max() > 0.95 * math.sqrt(3 / 2000)
    for a, b in zip(sc.linear_layers[:-1], lop.linear_layers[:-1], strict=True):
        assert a.weight.abs().max() > 0.95 * math.sqrt(6 / 2000)
        assert b.weight.abs().max() > 0.95 * math.sqrt(6 / 2000)


def test_convnet_sc_variant_has_same_padding_and_2048_features():
    model = ContinualImageNetConvNet(padding="same", init="sc")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2048, 128),
        (128, 128),
        (128, 2),
    ]
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    # SAME padding keeps the 32x32 map through the first conv.
    assert model.layers[:2](torch.rand(1, 3, 32, 32)).shape == (1, 32, 32, 32)
    lop = ContinualImageNetConvNet()
    assert (lop.padding, lop.init) == ("valid", "lop")
    assert lop.layers[:2](torch.rand(1, 3, 32, 32)).shape == (1, 32, 28, 28)
    assert n_params(model) - n_params(lop) == (2048 - 512) * 128


def test_resnet_init_per_paper():
    torch.manual_seed(0)
    sc = IncrementalCIFARResNet18(init="sc")
    lop = IncrementalCIFARResNet18(extra_fc=0, init="lop")
    # The widest conv: 512 x 512 x 3 x 3, fan_in = fan_out = 4608.
    assert sc.stages[3][1].conv2.weight.std().item() == pytest.approx(
        math.sqrt(2 / 4608), rel=0.01
    )
    # SC's linear layers scale with fan_out: the head (100 outputs) is wide.
    assert sc.head.weight.std().item() == pytest.approx(math.sqrt(1 / 100), rel=0.03)
    assert sc.fc[0].weight.std().item() == pytest.approx(math.sqrt(1 / 512), rel=0.02)
    # LoP's stem conv: fan_in 27, fan_out 576, so fan_in gives the larger std.
    stem = lop.stem[0].weight
    assert stem.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.1)
    assert lop.head.weight.std().item() == pytest.approx(math.sqrt(1 / 512), rel=0.03)
    assert torch.count_nonzero(lop.head.bias) == torch.count_nonzero(sc.head.bias) == 0


def test_every_model_names_its_hidden_layers():
    from clenv.methods import find_hidden_layers

    for model in (
        PermutedMNISTMLP(width=20),
        ContinualImageNetConvNet(),
        ContinualImageNetConvNet(padding="same", init="sc"),
    ):
        spec = model.hidden_layer_spec()
        assert [h.name for h in find_hidden_layers(model, spec)] == [
            h.name for h in find_hidden_layers(model)
        ]
        assert find_hidden_layers(model, spec)[-1].next_layer is model.head
    resnet = IncrementalCIFARResNet18(base_channels=8)
    hidden = find_hidden_layers(resnet, resnet.hidden_layer_spec())
    assert hidden[-1].name == "fc.3"
    # A block's units carry their BatchNorm, so a unit reset resets its entries too.
    assert hidden[0].norm is resnet.stages[0][0].bn1
    assert all(h.norm is None for h in hidden[-2:])


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
        lambda: ContinualImageNetConvNet(padding="full"),
        lambda: ContinualImageNetConvNet(init="xavier"),
        lambda: PermutedMNISTMLP(init="LoP"),
        lambda: IncrementalCIFARResNet18(extra_fc=-1),
        lambda: IncrementalCIFARResNet18(init="torch"),
    ],
)
def test_bad_arguments_raise_value_error(factory):
    with pytest.raises(ValueError):
        factory()


# -- each paper's model, as clenv.settings resolves it ------------------------------
ROW_MODELS = {
    "permuted_mnist": PermutedMNISTMLP,
    "continual_imagenet": ContinualImageNetConvNet,
    "incremental_cifar": IncrementalCIFARResNet18,
}


@pytest.mark.parametrize("paper", ["lop", "sc"])
@pytest.mark.parametrize("benchmark", ROW_MODELS)
def test_model_rows_build_each_papers_model(benchmark, paper):
    from clenv.settings import protocol_defaults

    kwargs = protocol_defaults(benchmark, paper, kind="model")
    expected = {
        "permuted_mnist": {"init": paper},
        "continual_imagenet": {
            "padding": {"lop": "valid", "sc": "same"}[paper],
            "init": paper,
        },
        "incremental_cifar": {"init": paper},
    }[benchmark]
    assert kwargs == expected
    torch.manual_seed(0)
    if benchmark == "incremental_cifar":
        kwargs = {**kwargs, "base_channels": 16}  # the init, at a quick size
    model = ROW_MODELS[benchmark](**kwargs)
    for key, value in expected.items():
        assert getattr(model, key) == value
    assert_follows_init(model)
    if benchmark == "continual_imagenet":
        assert model.layers[10].in_features == {"lop": 512, "sc": 2048}[paper]


# -- norm="layer" and activation="crelu"/"fourier" (clenv.models.layers) ------------
def test_default_mlp_is_the_plain_linear_relu_stack():
    """norm=None, activation="relu" builds exactly the old network, draw for draw."""
    torch.manual_seed(3)
    model = PermutedMNISTMLP(20, 16, 2, 5)
    torch.manual_seed(3)
    reference = [nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU()]
    reference.append(nn.Linear(16, 5))
    for layer in reference[::2]:
        nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    assert [type(m) for m in model.layers] == [type(m) for m in reference]
    for ours, theirs in zip(model.layers[::2], reference[::2], strict=True):
        assert torch.equal(ours.weight, theirs.weight)


@pytest.mark.parametrize("name", ["mlp", "convnet", "resnet"])
def test_layer_norm_sits_before_each_hidden_activation(name):
    """SC's use_layernorm: Dense/Conv -> LayerNorm(eps 1e-6) -> ReLU on every hidden
    layer of the MLP and the ConvNet, on the extra FC layers of the ResNet."""
    from clenv.methods import find_hidden_layers

    torch.manual_seed(0)
    model = {
        "mlp": lambda: PermutedMNISTMLP(width=32, norm="layer"),
        "convnet": lambda: ContinualImageNetConvNet(norm="layer", padding="same"),
        "resnet": lambda: IncrementalCIFARResNet18(base_channels=4, norm="layer"),
    }[name]()
    spec = model.hidden_layer_spec()
    hidden = find_hidden_layers(model, spec)
    with_norm = [h for h in hidden if isinstance(h.norm, nn.LayerNorm)]
    expected = {"mlp": 3, "convnet": 5, "resnet": 2}[name]
    assert len(with_norm) == expected
    for h in with_norm:
        assert isinstance(h.activation, nn.ReLU)
        assert h.norm.eps == 1e-6
        assert h.norm.normalized_shape == (h.num_units,)
    if name == "mlp":  # discovery agrees with the spec
        assert [h.activation for h in find_hidden_layers(model)] == [
            h.activation for h in hidden
        ]
    x = torch.rand(2, 3, 32, 32) if name != "mlp" else torch.rand(2, 784)
    assert torch.isfinite(model(x)).all()


def test_channel_layer_norm_normalises_each_position_over_channels():
    from clenv.models import ChannelLayerNorm

    norm = ChannelLayerNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 4, 3, 5)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6)
    expected = expected * norm.weight.view(1, 4, 1, 1) + norm.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(norm(x), expected)


def test_crelu_doubles_features_and_matches_its_formula():
    from clenv.models import CReLU, FourierFeatures

    x = torch.randn(5, 7)
    out = CReLU()(x)
    assert out.shape == (5, 14)
    torch.testing.assert_close(out[:, 0::2], torch.relu(x))
    torch.testing.assert_close(out[:, 1::2], torch.relu(-x))
    # a permutation of the paper's concatenation [relu(x), relu(-x)]
    concatenated = torch.cat([torch.relu(x), torch.relu(-x)], dim=1)
    assert torch.equal(out.sort(1).values, concatenated.sort(1).values)
    fourier = FourierFeatures()(x)
    torch.testing.assert_close(fourier[:, 0::2], torch.sin(x))
    torch.testing.assert_close(fourier[:, 1::2], torch.cos(x))
    conv = CReLU()(torch.randn(2, 3, 4, 4))
    assert conv.shape == (2, 6, 4, 4)


@pytest.mark.parametrize("activation", ["crelu", "fourier"])
def test_two_feature_activations_double_the_next_layers_inputs(activation):
    """Parameter counts (docs/methods.md): width stays the units; each layer after a
    CReLU/Fourier layer reads 2 * width features."""
    width, depth = 50, 3
    model = PermutedMNISTMLP(width=width, depth=depth, activation=activation)
    expected = (784 * width + width) + (depth - 1) * (2 * width * width + width)
    expected += 2 * width * 10 + 10
    assert n_params(model) == expected
    assert model(torch.rand(3, 784)).shape == (3, 10)
    conv = ContinualImageNetConvNet(activation=activation)
    assert conv.layers[3].in_channels == 64  # 32 channels, 2 features each
    assert conv(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    resnet = IncrementalCIFARResNet18(base_channels=4, activation=activation)
    assert resnet.head.in_features == 2 * 512
    assert resnet(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    spec = model.hidden_layer_spec()
    assert [type(model.get_submodule(s[1])).__name__ for s in spec] == [
        {"crelu": "CReLU", "fourier": "FourierFeatures"}[activation]
    ] * depth


def test_make_mlp_draws_the_same_weights_as_a_hand_written_ppo_mlp():
    """The PPO agent's mlp() with layer_init, rebuilt with make_mlp, is identical."""
    from clenv.models import make_mlp

    def layer_init(layer, std=2**0.5):
        torch.nn.init.orthogonal_(layer.weight, std)
        torch.nn.init.constant_(layer.bias, 0.0)
        return layer

    torch.manual_seed(1)
    layers = []
    fan_in = 6
    for width in (16, 16):
        layers += [layer_init(nn.Linear(fan_in, width)), nn.ReLU()]
        fan_in = width
    layers.append(layer_init(nn.Linear(fan_in, 2), std=0.01))
    by_hand = nn.Sequential(*layers)
    torch.manual_seed(1)
    built = make_mlp(
        (6, 16, 16, 2), init=layer_init, head_init=lambda m: layer_init(m, std=0.01)
    )
    assert str(built) == str(by_hand)
    pairs = zip(built.state_dict().values(), by_hand.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_norm_and_activation_arguments_are_checked():
    from clenv.models import make_mlp

    with pytest.raises(ValueError, match="norm must be None or 'layer'"):
        PermutedMNISTMLP(norm="batch")
    with pytest.raises(ValueError, match="activation must be one of"):
        ContinualImageNetConvNet(activation="gelu")
    with pytest.raises(ValueError, match="sizes"):
        make_mlp((4,))
