"""Spectral, Parseval, L2 Init, UPGD, NaP and layer reset (clenv.methods)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clenv.methods import (
    UPGD,
    Compose,
    HeadReset,
    L2Init,
    LayerReset,
    NormalizeAndProject,
    Parseval,
    SpectralRegularization,
    make_method,
    split_name,
)
from clenv.methods.spectral import (
    _stack_layers,
    power_iteration,
    power_iteration_gradients,
)
from tests.methods_helpers import batch, mlp, train_step


def normed_mlp(seed=0, widths=(6, 16, 12, 3)):
    """Linear -> LayerNorm -> ReLU hidden layers (what --norm layer builds)."""
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers += [nn.LayerNorm(widths[i + 1]), nn.ReLU()]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():  # gains and offsets away from their init, so they count
        for module in model:
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
                module.bias.add_(0.3 * torch.randn_like(module.bias))
    return model


def conv_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 7),
        nn.LayerNorm(7),
        nn.ReLU(),
        nn.Linear(7, 2),
    ).double()
    with torch.no_grad():
        model[4].weight.add_(0.2)
        model[4].bias.add_(0.1)
    return model


def grads_added(method, model):
    """What ``after_backward`` adds to zero gradients."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.after_backward()
    return [p.grad.clone() for p in model.parameters()]


# ------------------------------------------------------------------------- spectral


def dense_spectral_term(model, strength, k, target):
    total = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            matrix = module.weight.reshape(module.weight.shape[0], -1)
            sigma = torch.linalg.svdvals(matrix)[0]
            total = total + (sigma**k - target) ** 2 + module.bias.square().sum()
        elif isinstance(module, nn.LayerNorm):
            total = total + (module.weight - 1).square().sum()
            total = total + module.bias.square().sum()
    return strength * total


@pytest.mark.parametrize("unroll", [True, False])
@pytest.mark.parametrize(("k", "target"), [(2, 2.0), (2, 1.0), (1, 0.5)])
def test_spectral_term_and_gradient_equal_the_dense_svd_reference(unroll, k, target):
    model = conv_model()
    method = SpectralRegularization(
        model, strength=0.3, k=k, target=target, power_iterations=400, unroll=unroll
    )
    reference = dense_spectral_term(model, 0.3, k, target)
    expected = torch.autograd.grad(reference, list(model.parameters()))
    # SC's iteration divides by (norm + 1e-6): a relative bias of ~1e-6 / sigma^2
    assert method.penalty().item() == pytest.approx(reference.item(), rel=1e-5)
    added = grads_added(method, model)
    for got, want in zip(added, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def test_spectral_is_scs_term_at_scs_settings():
    """SC's 10 iterations from a fixed start: not converged, but a fixed function of
    W (the same value every step, as SC's PRNGKey(layer index) start)."""
    model = mlp((6, 16, 16, 3))
    method = SpectralRegularization(model)
    assert (method.strength, method.k, method.target, method.power_iterations) == (
        0.1,
        2,
        2.0,
        10,
    )
    first, second = method.penalty().item(), method.penalty().item()
    assert first == second
    persistent = SpectralRegularization(model, persistent=True, power_iterations=1)
    start = [v.clone() for v in persistent.vectors]
    persistent.penalty()
    assert not torch.equal(start[0], persistent.vectors[0])


def test_spectral_lewandowski_setting_is_zero_at_orthogonal_weights():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).double()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.linalg.qr(torch.randn(4, 4).double())[0])
            layer.bias.zero_()
    method = SpectralRegularization(model, target=1.0, power_iterations=50)
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    assert SpectralRegularization(model).penalty().item() > 0.1  # SC's target 2


def autograd_spectral_gradients(method):
    """The gradient of ``method.penalty()`` by autograd through SC's 10 unrolled
    iterations (what after_backward computed before its hand-written backward)."""
    return torch.autograd.grad(method.penalty(), method.params, allow_unused=True)


def hand_written_spectral_gradients(method, model):
    """What ``after_backward`` adds, in the order of ``method.params``."""
    added = dict(zip(model.parameters(), grads_added(method, model), strict=True))
    return [added[param] for param in method.params]


@pytest.mark.parametrize("unroll", [True, False])
@pytest.mark.parametrize(
    "options",
    [{}, {"target": 1.0}, {"k": 1, "target": 0.5}, {"power_iterations": 1}],
)
@pytest.mark.parametrize("model_fn", [conv_model, normed_mlp])
def test_spectral_hand_written_backward_equals_autograd_through_the_iterations(
    unroll, options, model_fn
):
    model = model_fn()
    method = SpectralRegularization(model, strength=0.3, unroll=unroll, **options)
    expected = autograd_spectral_gradients(method)
    added = hand_written_spectral_gradients(method, model)
    for got, want in zip(added, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    assert any(g.abs().max() > 1e-3 for g in expected)


def test_spectral_float32_gradient_is_as_close_to_float64_as_autograds():
    """On the Permuted-MNIST MLP shape (784-100-100-100-10, so one stack holds the
    784-wide layer and one the three others, zero-padded) in float32, the
    hand-written gradient is as far from a float64 autograd reference as float32
    autograd is."""
    torch.manual_seed(0)
    widths = (784, 100, 100, 100, 10)
    layers = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    model = nn.Sequential(*layers)
    model64 = copy.deepcopy(model).double()
    method = SpectralRegularization(model, strength=0.1)
    assert [len(stack.indices) for stack in method.stacks] == [1, 3]
    method64 = SpectralRegularization(model64, strength=0.1)
    method64.vectors = [v.double() for v in method.vectors]  # the same start
    reference = autograd_spectral_gradients(method64)
    autograd32 = autograd_spectral_gradients(method)
    added = hand_written_spectral_gradients(method, model)
    for got, old, want in zip(added, autograd32, reference, strict=True):
        scale = want.abs().max()
        old_error = (old.double() - want).abs().max() / scale
        new_error = (got.double() - want).abs().max() / scale
        assert new_error <= max(3 * old_error, 1e-6)


def test_spectral_persistent_vectors_advance_as_through_autograd():
    model = mlp((6, 16, 16, 3))
    hand_written = SpectralRegularization(model, persistent=True, power_iterations=2)
    through_autograd = SpectralRegularization(
        model, persistent=True, power_iterations=2
    )
    for _ in range(3):
        expected = autograd_spectral_gradients(through_autograd)
        added = hand_written_spectral_gradients(hand_written, model)
        for got, want in zip(added, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
        for got, want in zip(
            hand_written.vectors, through_autograd.vectors, strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert not torch.equal(
        hand_written.vectors[0], SpectralRegularization(model).vectors[0]
    )


def test_spectral_padding_leaves_each_layers_gradient_alone():
    """A layer's gradient is the same alone and zero-padded into a stack with a
    larger one (zero start entries on the padding keep the norms, hence eps,
    those of the live entries)."""
    torch.manual_seed(0)
    small, large = torch.randn(3, 5).double(), torch.randn(6, 9).double()
    start_small, start_large = torch.randn(3).double(), torch.randn(6).double()

    def sigma_gradient(sigma):
        return 2 * (sigma**2 - 2.0) * 2 * sigma

    alone = power_iteration_gradients(
        small[None], start_small[None], 10, sigma_gradient
    )
    stack = torch.zeros(2, 6, 9, dtype=torch.float64)
    stack[0, :3, :5], stack[1] = small, large
    start = torch.zeros(2, 6, dtype=torch.float64)
    start[0, :3], start[1] = start_small, start_large
    padded = power_iteration_gradients(stack, start, 10, sigma_gradient)
    torch.testing.assert_close(padded[0][0, :3, :5], alone[0][0])
    assert padded[0][0, 3:].abs().max() == 0 and padded[0][0, :, 5:].abs().max() == 0
    torch.testing.assert_close(padded[1][0, :3], alone[1][0])
    torch.testing.assert_close(padded[2][0], alone[2][0])
    # the large layer: autograd through power_iteration
    weight = large.clone().requires_grad_(True)
    sigma, _ = power_iteration(weight.T, start_large, 10)
    (want,) = torch.autograd.grad((sigma**2 - 2.0) ** 2, weight)
    torch.testing.assert_close(padded[0][1], want)


def test_spectral_stacks_share_equal_shapes_and_leave_large_layers_alone():
    weights = [
        torch.zeros(1000, 784),
        torch.zeros(1000, 1000),
        torch.zeros(1000, 1000),
        torch.zeros(10, 1000),
        torch.zeros(1000, 1000, dtype=torch.float64),
    ]
    assert _stack_layers(weights) == [[0], [1, 2], [3], [4]]
    small = [torch.zeros(100, 784), torch.zeros(100, 100), torch.zeros(10, 100)]
    assert _stack_layers(small) == [[0], [1, 2]]


# ------------------------------------------------------------------------- parseval


def test_parseval_is_zero_on_an_orthogonal_matrix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.linalg.qr(torch.randn(5, 5).double())[0])
    method = Parseval(model, strength=0.5, scale=1.0)
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    assert all(g.abs().max() < 1e-12 for g in grads_added(method, model))
    with torch.no_grad():
        model[0].weight.mul_(2)  # rows orthogonal, norm 2: W W^T = 4 I
    assert Parseval(model, scale=4.0).penalty().item() == pytest.approx(0, abs=1e-10)
    assert method.penalty().item() == pytest.approx(0.5 * 5 * 9)


def test_parseval_default_scale_is_the_official_codes_init_gain_squared():
    # wechu/parseval_reg agent.py:286-289: s = init_gain^2, 2 when no gain is given
    # (orthogonal init with gain sqrt(2), agent.py:564-567).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        nn.init.orthogonal_(model[0].weight, gain=2**0.5)
    method = Parseval(model)
    assert method.scale == 2.0
    assert method.penalty().item() == pytest.approx(0.0, abs=1e-12)
    assert Parseval(model, scale=1.0).penalty().item() == pytest.approx(1e-3 * 4)


def test_parseval_gradient_equals_autograd_of_the_dense_formula():
    model = conv_model()
    method = Parseval(model, strength=0.7, scale=1.5)
    hidden = [model[0].weight, model[3].weight]  # not the output layer
    reference = 0.7 * sum(
        (
            w.reshape(w.shape[0], -1) @ w.reshape(w.shape[0], -1).T
            - 1.5 * torch.eye(w.shape[0], dtype=w.dtype)
        )
        .square()
        .sum()
        for w in hidden
    )
    assert method.penalty().item() == pytest.approx(reference.item(), rel=1e-12)
    expected = torch.autograd.grad(
        reference, list(model.parameters()), allow_unused=True
    )
    for got, want in zip(grads_added(method, model), expected, strict=True):
        want = torch.zeros_like(got) if want is None else want
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert grads_added(method, model)[-2].abs().max() == 0  # output layer free
    with_output = Parseval(model, include_output=True)
    assert grads_added(with_output, model)[-2].abs().max() > 0


# --------------------------------------------------------------------------- l2init


def test_l2init_pulls_toward_the_stored_initial_weights_not_zero():
    model = mlp()
    initial = [p.detach().clone() for p in model.parameters()]
    method = L2Init(model, weight_decay=0.1)
    halved_method = L2Init(model, weight_decay=0.1, halve=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    halved = grads_added(halved_method, model)
    added = grads_added(method, model)
    # the gradient of Kumar et al.'s lambda ||theta - theta_0||^2: 2 lambda (...)
    for got, param, start in zip(added, model.parameters(), initial, strict=True):
        torch.testing.assert_close(got, 2 * 0.1 * (param.detach() - start))
    for got, want in zip(halved, added, strict=True):
        torch.testing.assert_close(got, want / 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = sum(
        (p - s).norm() for p, s in zip(model.parameters(), initial, strict=True)
    )
    opt.step()
    after = sum(
        (p - s).norm() for p, s in zip(model.parameters(), initial, strict=True)
    )
    assert after.item() == pytest.approx(0.9 * before.item())  # 1 - 2 lr lambda
    # plain L2 would pull toward zero instead
    l2 = make_method("l2", model, None, weight_decay=0.1)
    assert not torch.allclose(grads_added(l2, model)[0], added[0])


def test_l2init_resume_restores_theta_zero():
    model = mlp(seed=0)
    method = L2Init(model)
    state = copy.deepcopy(method.state_dict())
    other = mlp(seed=5)  # a rebuilt run initialises differently
    resumed = L2Init(other)
    resumed.load_state_dict(state)
    for got, want in zip(resumed.initial, mlp(seed=0).parameters(), strict=True):
        assert torch.equal(got, want.detach())
    with pytest.raises(ValueError, match="same model"):
        L2Init(mlp(widths=(6, 3))).load_state_dict(state)


# ----------------------------------------------------------------------------- upgd


def reference_upgd_step(params, grads, state, lr, wd, beta, sigma, generator, protect):
    """Hand-written FirstOrderGlobalUPGD / NonprotectingGlobalUPGD step (official
    core/optim/weight_upgd/first_order.py), on copies."""
    state["step"] += 1
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        state["u"][i] = beta * state["u"][i] + (1 - beta) * (-g * p)
    eta = max(u.max() for u in state["u"])
    new = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype) * sigma
        s = torch.sigmoid((state["u"][i] / (1 - beta ** state["step"])) / eta)
        update = (g + noise) * (1 - s) if protect else g + noise * (1 - s)
        new.append(p * (1 - lr * wd) - lr * update)
    return new


@pytest.mark.parametrize("protect", [True, False])
def test_upgd_sgd_steps_equal_the_hand_written_update(protect):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    method = make_method(
        "upgd",
        model,
        opt,
        seed=3,
        weight_decay=0.01,
        beta_utility=0.9,
        sigma=0.1,
        protect_gradient=protect,
    )
    params = [p.detach().clone() for p in model.parameters()]
    state = {"step": 0, "u": [torch.zeros_like(p) for p in params]}
    generator = torch.Generator().manual_seed(3)
    for seed in range(3):
        x, y = batch(seed=seed)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        method.after_backward()
        opt.step()
        params = reference_upgd_step(
            params, grads, state, 0.05, 0.01, 0.9, 0.1, generator, protect
        )
        for got, want in zip(model.parameters(), params, strict=True):
            torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)


def per_tensor_upgd_after_backward(method):
    """UPGD.after_backward as one call per tensor (its code before the foreach
    rewrite), for the bit-for-bit comparison below."""
    live = [(p, u) for p, u in zip(method.params, method.utilities, strict=True)]
    live = [(p, u) for p, u in live if p.grad is not None]
    method.step += 1
    beta = method.beta_utility
    for param, utility in live:
        utility.mul_(beta).add_(-param.grad * param, alpha=1 - beta)
    global_max = torch.stack([u.max() for _, u in live]).max()
    for param, utility in live:
        noise = torch.randn(
            param.shape, generator=method.rng.generator, dtype=param.dtype
        )
        noise = noise * method.sigma
        gate = 1 - torch.sigmoid((utility / (1 - beta**method.step)) / global_max)
        if method.protect_gradient:
            param.grad.add_(noise).mul_(gate)
        else:
            param.grad.add_(noise.mul_(gate))
        param.grad.add_(param, alpha=method.weight_decay)


@pytest.mark.parametrize("protect", [True, False])
def test_upgd_foreach_update_is_the_per_tensor_loops_bit_for_bit(protect):
    models = [mlp(widths=(30, 40, 17, 3), dtype=torch.float32) for _ in range(2)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    methods = [
        UPGD(m, o, sigma=0.1, beta_utility=0.9, protect_gradient=protect, seed=1)
        for m, o in zip(models, optimizers, strict=True)
    ]
    for seed in range(5):
        x, y = batch(d=30, seed=seed, dtype=torch.float32)
        for index, (model, optimizer) in enumerate(
            zip(models, optimizers, strict=True)
        ):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            model[-1].bias.grad = None  # a parameter without gradient: skipped
            if index:
                methods[index].after_backward()
            else:
                with torch.no_grad():
                    per_tensor_upgd_after_backward(methods[index])
            optimizer.step()
    for got, want in zip(models[1].parameters(), models[0].parameters(), strict=True):
        assert torch.equal(got, want)
    for got, want in zip(methods[1].utilities, methods[0].utilities, strict=True):
        assert torch.equal(got, want)
    assert methods[1].utilities[-1].abs().max() == 0  # no gradient, no trace
    start = mlp(widths=(30, 40, 17, 3), dtype=torch.float32)
    assert not torch.equal(models[1][0].weight, start[0].weight)
    assert torch.equal(models[1][-1].bias, start[-1].bias)


def test_upgd_refuses_optimizers_whose_step_is_not_plain_sgd():
    model = mlp()
    for optimizer, problem in (
        (torch.optim.Adam(model.parameters()), "Adam"),
        (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), "momentum"),
        (
            torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4),
            "weight_decay",
        ),
    ):
        with pytest.raises(ValueError, match=problem):
            UPGD(model, optimizer)
    method = UPGD(model, None)  # buildable (the registry builds every name) ...
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="no optimizer"):
        method.after_backward()  # ... but it cannot step


# ------------------------------------------------------------------------------ nap


def test_nap_keeps_each_projected_norm_at_its_initial_value():
    model = normed_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    method = NormalizeAndProject(model, opt)
    assert len(method.groups) == 4  # two weight layers, two LayerNorms
    initial = [method._norm(group).item() for group in method.groups]
    for seed in range(5):
        x, y = batch(seed=seed)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert any(
            abs(method._norm(g).item() - n) > 1e-6
            for g, n in zip(method.groups, initial, strict=True)
        )  # the step moved them ...
        method.after_step(x)  # ... the projection puts them back
        for group, norm in zip(method.groups, initial, strict=True):
            assert method._norm(group).item() == pytest.approx(norm, rel=1e-12)
    keep = NormalizeAndProject(model, norm_params="keep")
    x, _ = batch()
    before = model(x).detach()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model[3].weight.mul_(0.5)
    keep.after_step(x)
    torch.testing.assert_close(model(x).detach(), before)


def test_nap_needs_normalisation_layers_and_says_norm_layer():
    method = make_method("nap", mlp(), None)
    with pytest.raises(ValueError, match="--norm layer"):
        method.after_step(batch()[0])


# ---------------------------------------------------------------------- layer reset


def test_layer_reset_redraws_the_chosen_layers_and_leaves_the_others():
    model = normed_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    method = make_method("layer_reset", model, opt, layers=["3", "4"], seed=1)
    train_step(model, opt, method, *batch())
    chosen = {id(p) for m in (model[3], model[4]) for p in m.parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    method.on_task_switch(0)  # same task: nothing
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    method.on_task_switch(1)
    for name, param in model.named_parameters():
        if id(param) in chosen:
            assert not torch.equal(param, before[name]), name
            assert param not in opt.state
        else:
            assert torch.equal(param, before[name]), name
            assert param in opt.state
    bound = (2.0**0.5) * (3 / 16) ** 0.5  # ReLU gain, LoP's bound, fan_in 16
    assert model[3].weight.abs().max() <= bound and torch.equal(
        model[3].bias, torch.zeros(12, dtype=torch.float64)
    )
    assert torch.equal(model[4].weight, torch.ones(12, dtype=torch.float64))
    with pytest.raises(ValueError, match="no module"):
        LayerReset(model, layers=["fc9"])


def test_layer_reset_defaults_to_the_head_reset():
    results = []
    for cls in (LayerReset, HeadReset):
        model = mlp()
        cls(model, seed=4).on_task_switch(1)
        results.append([p.detach() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    untouched = [p.detach() for p in mlp().parameters()]
    assert torch.equal(results[0][0], untouched[0])
    assert not torch.equal(results[0][-2], untouched[-2])


# ----------------------------------------------------------- composition and resume


def test_composition_order_places_the_new_methods():
    everything = "nap+er+cbp+upgd+snp+parseval+spectral+l2init+l2+layer_reset+reset"
    assert split_name(everything) == [
        "reset",
        "layer_reset",
        "l2",
        "l2init",
        "spectral",
        "parseval",
        "snp",
        "upgd",
        "cbp",
        "er",
        "nap",
    ]


def test_regularisers_compose_with_the_others():
    assert split_name("l2+spectral") == ["l2", "spectral"]
    assert split_name("upgd+l2init") == ["l2init", "upgd"]
    assert split_name("er+l2init") == ["l2init", "er"]
    model = conv_model()
    both = make_method("spectral+l2", model, None, weight_decay=0.01)
    assert isinstance(both, Compose)
    alone = [
        grads_added(make_method("spectral", model, None), model),
        grads_added(make_method("l2", model, None, weight_decay=0.01), model),
    ]
    for got, a, b in zip(grads_added(both, model), *alone, strict=True):
        torch.testing.assert_close(got, a + b)
    method = make_method("l2init+er", mlp(), None)
    assert [m.name for m in method.methods] == ["l2init", "er"]


ACTIVE = {  # settings under which each method acts within 12 steps
    "spectral": {"strength": 0.05},
    "spectral+l2": {"strength": 0.05, "persistent": True},
    "parseval": {"strength": 0.05},
    "l2init": {"weight_decay": 0.05},
    "l2init+er": {"weight_decay": 0.05, "interval": 3, "ascent_lr": 0.05},
    "upgd": {"sigma": 0.05},
    "upgd+cbp": {"sigma": 0.05, "replacement_rate": 0.05, "maturity_threshold": 2},
    "nap": {},
    "layer_reset": {"layers": ["0", "1"]},
}


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_state_round_trip_resumes_identically(name):
    steps = [batch(n=4, seed=s) for s in range(12)]
    tasks = [0] * 4 + [1] * 4 + [2] * 4

    def build():
        model = normed_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        return model, opt, make_method(name, model, opt, seed=2, **ACTIVE[name])

    def run(model, opt, method, indices):
        for i in indices:
            method.on_task_switch(tasks[i])
            train_step(model, opt, method, *steps[i])

    reference = build()
    run(*reference, range(12))
    first = build()
    run(*first, range(7))
    saved = copy.deepcopy(
        (first[0].state_dict(), first[1].state_dict(), first[2].state_dict())
    )
    resumed = build()
    resumed[0].load_state_dict(saved[0])
    resumed[1].load_state_dict(saved[1])
    resumed[2].load_state_dict(saved[2])
    run(*resumed, range(7, 12))
    for p, q in zip(reference[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(p, q)
    fresh = normed_mlp()
    assert any(
        not torch.equal(p, q)
        for p, q in zip(reference[0].parameters(), fresh.parameters(), strict=True)
    )
