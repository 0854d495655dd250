"""clenv.optim's Muon against a float64 transcription of optax.contrib.muon, and
``fast_calls`` against the optimizers' own ``zero_grad`` and ``step``.

SC's bp_muon runs used optax 0.2.5 (SC's uv.lock:1589-1590). The reference below
transcribes its ``optax/contrib/_muon.py`` (cited ``_muon.py:N``, optax v0.2.5) and
``optax/_src/transform.py`` in numpy float64, on Flax's ``(in, out)`` kernel layout:
a torch ``(out, in)`` weight ``W`` is the kernel ``W.T`` there.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from clenv.methods.base import reset_optimizer_slices
from clenv.models import PermutedMNISTMLP
from clenv.optim import (
    MUON_NS_COEFFICIENTS,
    MuonWithAdam,
    OptaxAdamW,
    OptaxMuon,
    fast_calls,
    make_optimizer,
    newton_schulz,
)

SHAPES = {"tall": (12, 5), "wide": (5, 12), "square": (7, 7)}  # torch (out, in)


# -- the float64 transcription of optax 0.2.5 ----------------------------------------
def optax_orthogonalize(x, coeffs=MUON_NS_COEFFICIENTS, ns_steps=5, eps=1e-8):
    """_muon.py:73-93 (orthogonalize_via_newton_schulz), on a Flax kernel."""
    a, b, c = coeffs
    transposed = x.shape[0] > x.shape[1]  # _muon.py:77-80
    if transposed:
        x = x.T
    x = x / (np.linalg.norm(x) + eps)  # _muon.py:81
    for _ in range(ns_steps):  # _muon.py:73-76, 83-86
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x  # _muon.py:91-92


def optax_muon_run(kernel, grads, lr, beta=0.95, eps=1e-8, weight_decay=0.0,
                   nesterov=True, adaptive=False):  # fmt: skip
    """The kernel after optax's muon steps with ``grads`` (Flax layout): scale_by_muon
    (_muon.py:160-197), add_decayed_weights and scale_by_learning_rate
    (_muon.py:282-283), optax.apply_updates."""
    mu, count = np.zeros_like(kernel), 0
    for g in grads:
        mu = (1 - beta) * g + beta * mu  # _muon.py:162 (tree_update_moment)
        count += 1  # _muon.py:163
        if nesterov:  # _muon.py:164-171
            mu_hat = beta * (mu / (1 - beta ** (count + 1))) + (1 - beta) * (
                g / (1 - beta**count)
            )
        else:  # _muon.py:172-173
            mu_hat = mu / (1 - beta**count)
        update = optax_orthogonalize(mu_hat, eps=eps)  # _muon.py:175-180
        if adaptive:  # _muon.py:181-186
            update = np.einsum("ij,ij,ab->ab", mu_hat, update, update)
        update = (
            np.sqrt(max(1, update.shape[-1] / update.shape[-2])) * update
        )  # :187-190
        update = update + weight_decay * kernel  # add_decayed_weights
        kernel = kernel - lr * update  # scale_by_learning_rate, apply_updates
    return kernel


def optax_adamw_run(param, grads, lr, b1=0.9, b2=0.999, eps=1e-8, nesterov=True):
    """optax.adamw as muon builds it (_muon.py:285-294): scale_by_adam
    (optax/_src/transform.py:281-306), weight decay 0, scale_by_learning_rate."""
    mu, nu, count = np.zeros_like(param), np.zeros_like(param), 0
    for g in grads:
        mu = (1 - b1) * g + b1 * mu  # transform.py:283
        nu = (1 - b2) * g**2 + b2 * nu  # transform.py:284
        count += 1  # transform.py:285
        if nesterov:  # transform.py:286-292
            mu_hat = b1 * (mu / (1 - b1 ** (count + 1))) + (1 - b1) * (
                g / (1 - b1**count)
            )
        else:
            mu_hat = mu / (1 - b1**count)  # transform.py:294
        nu_hat = nu / (1 - b2**count)  # transform.py:298
        param = param - lr * mu_hat / (np.sqrt(nu_hat) + eps)  # transform.py:299-304
    return param


def random_gradients(shape, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(steps)]


def assert_moved_alike(ours, start, expected, tolerance):
    """``ours`` is ``expected`` to ``tolerance`` times the largest move from
    ``start`` (float32 against the float64 reference)."""
    start = np.asarray(start, dtype=np.float64)
    largest = np.abs(expected - start).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance * largest)


def run_optimizer(optimizer, param, grads):
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach()


# -- Newton-Schulz ------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_newton_schulz_is_optaxs_on_the_flax_kernel(shape):
    """clenv's Newton-Schulz of a torch weight W is optax's of the kernel W.T,
    transposed back, and runs in float32 (torch's Muon: bfloat16)."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    expected = optax_orthogonalize(weight.double().numpy().T).T
    ours = newton_schulz(weight)
    assert ours.dtype == torch.float32 and ours.shape == weight.shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=2e-5)
    in_double = newton_schulz(weight.double()).numpy()
    np.testing.assert_allclose(in_double, expected, rtol=0, atol=1e-12)
    # Its singular values are near one (what the iteration is for).
    assert (
        0.5 < torch.linalg.svdvals(ours).min() < torch.linalg.svdvals(ours).max() < 1.5
    )


def test_newton_schulz_of_a_nearly_low_rank_momentum_is_optaxs():
    """A wide matrix of a few decaying rank-1 terms (batch-1 gradients' momentum),
    iterated in its short side's space: as close to optax's float64 result as the
    direct iteration (without the restart every 3 steps, Q's rounding grows to
    ~3e-4)."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(16, 8, generator=generator, dtype=torch.float64)
    right = torch.rand(8, 128, generator=generator, dtype=torch.float64)
    weight = ((left * 0.5 ** torch.arange(8)) @ right).float()
    expected = optax_orthogonalize(weight.double().numpy().T).T
    np.testing.assert_allclose(newton_schulz(weight).numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(
        newton_schulz(weight.T).numpy(), expected.T, rtol=0, atol=2e-5
    )


# -- Muon ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("steps", [1, 6])
def test_muon_steps_are_optaxs(shape, steps):
    """One and several steps of OptaxMuon move a weight as optax's muon moves its
    kernel; torch's Muon (no bias correction, bfloat16) does not."""
    grads = random_gradients(shape, steps)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    expected = optax_muon_run(
        start.double().numpy().T, [g.double().numpy().T for g in grads], lr=0.02
    ).T
    param = nn.Parameter(start.clone())
    ours = run_optimizer(OptaxMuon([param], lr=0.02), param, grads)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=2e-6)
    theirs = nn.Parameter(start.clone())
    torch_muon = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.0, eps=1e-8)
    run_optimizer(torch_muon, theirs, grads)
    assert np.abs(theirs.detach().numpy() - expected).max() > 2e-4


@pytest.mark.parametrize(
    "options",
    [
        dict(nesterov=False),
        dict(weight_decay=0.1),
        dict(adaptive=True),
        dict(momentum=0.8, eps=1e-3),
    ],
    ids=["plain-momentum", "weight-decay", "adaptive", "beta-eps"],
)
def test_muon_options_are_optaxs(options):
    shape = SHAPES["tall"]
    grads = random_gradients(shape, 4, seed=1)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    reference = dict(options)
    if "momentum" in reference:
        reference["beta"] = reference.pop("momentum")
    expected = optax_muon_run(
        start.double().numpy().T,
        [g.double().numpy().T for g in grads],
        lr=0.05,
        **reference,
    ).T
    param = nn.Parameter(start.clone())
    ours = run_optimizer(OptaxMuon([param], lr=0.05, **options), param, grads)
    assert_moved_alike(ours.numpy(), start.numpy(), expected, 1e-5)


def test_muon_refuses_what_optax_would_not_take():
    with pytest.raises(ValueError, match="2-D weights only"):
        OptaxMuon([nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="momentum must be in"):
        OptaxMuon([nn.Parameter(torch.zeros(2, 2))], lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="ns_steps must be an integer"):
        OptaxMuon([nn.Parameter(torch.zeros(2, 2))], lr=0.1, ns_steps=0)
    with pytest.raises(ValueError, match="unknown Muon implementation"):
        make_optimizer("muon", PermutedMNISTMLP(width=4), 0.1, muon_impl="jax")


# -- the Adam part ------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("steps", [1, 5])
def test_adam_part_is_optaxs_nesterov_adamw(nesterov, steps):
    """optax's muon gives the other parameters AdamW with its own nesterov=True;
    nesterov=False is torch's Adam."""
    grads = random_gradients((6,), steps, seed=4)
    start = torch.randn(6, generator=torch.Generator().manual_seed(5))
    expected = optax_adamw_run(
        start.double().numpy(), [g.double().numpy() for g in grads], lr=0.01,
        nesterov=nesterov,
    )  # fmt: skip
    param = nn.Parameter(start.clone())
    adam = OptaxAdamW([param], lr=0.01, nesterov=nesterov)
    ours = run_optimizer(adam, param, grads)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)
    if not nesterov:
        theirs = nn.Parameter(start.clone())
        run_optimizer(torch.optim.Adam([theirs], lr=0.01), theirs, grads)
        torch.testing.assert_close(ours, theirs.detach())


# -- the whole optimizer --------------------------------------------------------------
def test_make_optimizer_muon_is_optaxs_muon_on_a_model():
    """make_optimizer("muon") over an MLP with LayerNorm: each 2-D weight moves as
    optax's muon kernel, each other parameter as its Nesterov AdamW."""
    torch.manual_seed(0)
    model = PermutedMNISTMLP(
        input_dim=12, width=9, depth=2, num_classes=4, norm="layer"
    )
    start = [p.detach().double().numpy().copy() for p in model.parameters()]
    optimizer = make_optimizer("muon", model, 0.01)
    assert isinstance(optimizer, MuonWithAdam)
    assert isinstance(optimizer.muon, OptaxMuon)
    assert isinstance(optimizer.adam, OptaxAdamW)
    generator = torch.Generator().manual_seed(6)
    x, y = torch.randn(16, 12, generator=generator), torch.randint(4, (16,))
    grads: list[list[np.ndarray]] = [[] for _ in start]
    for _ in range(4):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for seen, p in zip(grads, model.parameters(), strict=True):
            seen.append(p.grad.double().numpy().copy())
        optimizer.step()
    for p, first, seen in zip(model.parameters(), start, grads, strict=True):
        if p.dim() == 2:
            expected = optax_muon_run(first.T, [g.T for g in seen], lr=0.01).T
        else:
            expected = optax_adamw_run(first, seen, lr=0.01)
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-5)


def small_model(seed=0):
    torch.manual_seed(seed)
    return PermutedMNISTMLP(input_dim=12, width=8, depth=2, num_classes=4)


def train(model, optimizer, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 12, generator=generator)
        y = torch.randint(4, (5,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_muon_resumes_exactly_through_a_saved_file():
    """torch.save / torch.load of both states mid-run, then the same steps: the
    resumed run is bit for bit the uninterrupted one."""
    model = small_model()
    optimizer = make_optimizer("muon", model, 0.01)
    train(model, optimizer, 3)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer
    )
    train(model, optimizer, 4, seed=2)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = small_model(seed=7)
    resumed.load_state_dict(saved["model"])
    fresh = make_optimizer("muon", resumed, 0.01)
    fresh.load_state_dict(saved["optimizer"])
    train(resumed, fresh, 4, seed=2)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert fresh.muon.state[resumed.head.weight]["step"] == 7


def test_a_torch_muon_state_is_refused_by_the_optax_muon():
    model = small_model()
    old = make_optimizer("muon", model, 0.01, muon_impl="torch")
    train(model, old, 1)
    with pytest.raises(ValueError, match="muon_impl='torch'"):
        make_optimizer("muon", model, 0.01).load_state_dict(old.state_dict())
    again = make_optimizer("muon", model, 0.01, muon_impl="torch")
    again.load_state_dict(copy.deepcopy(old.state_dict()))


@pytest.mark.parametrize("impl", ["optax", "torch"])
def test_state_lookups_reach_the_adam_part_without_adding_to_muons(impl):
    """optimizer.state.get(bias) is the Adam part's state (a plain ChainMap over
    the parts' defaultdicts made an empty entry in Muon's, and Muon's state_dict
    then failed): CBP's reset_optimizer_slices zeroes a bias's moments, and the
    state still saves."""
    model = small_model()
    optimizer = make_optimizer("muon", model, 0.01, muon_impl=impl)
    train(model, optimizer, 2)
    bias = model.head.bias
    assert optimizer.state.get(bias) is optimizer.adam.state[bias]
    assert optimizer.state.get(torch.zeros(1)) is None
    reset_optimizer_slices(optimizer, bias, torch.tensor([1]), 0)
    assert optimizer.adam.state[bias]["exp_avg"][1] == 0
    assert bias not in optimizer.muon.state
    optimizer.state_dict()


def test_a_matrix_moved_to_the_adam_part_is_stepped_by_adam():
    """The PPO agent moves its (1, act_dim) log-std from the Muon part's group to
    the Adam part's (clenv.ppo_args.make_agent_optimizer): OptaxAdamW takes it."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    log_std = nn.Parameter(torch.zeros(1, 2))
    model.register_parameter("log_std", log_std)
    optimizer = make_optimizer("muon", model, 0.01)
    for group in optimizer.muon.param_groups:
        group["params"] = [p for p in group["params"] if p is not log_std]
    optimizer.adam.param_groups[0]["params"].append(log_std)
    optimizer.zero_grad()
    (model(torch.ones(1, 3)).sum() + log_std.sum()).backward()
    optimizer.step()
    assert set(optimizer.adam.state[log_std]) == {"step", "exp_avg", "exp_avg_sq"}
    assert log_std not in optimizer.muon.state
    # Nesterov Adam's first step, g = 1: M = 0.9 * 0.1 / (1 - 0.9^2) + 1, V = 1.
    first = -0.01 * (0.9 * 0.1 / (1 - 0.9**2) + 1)
    torch.testing.assert_close(log_std.detach(), torch.full((1, 2), first))


# -- fast_calls ---------------------------------------------------------------------
def train_with(calls, model, steps=4, seed=1):
    """``steps`` batch-1 updates through ``calls`` = (zero_grad, step)."""
    zero_grad, step = calls
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(1, 12, generator=generator)
        labels = torch.randint(0, 4, (1,), generator=generator)
        zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        step()


def sgd_setups():
    """(name, build(model) -> optimizer) for SGDs fast_calls steps itself or not."""

    def with_l2_hooks(model):  # --reg l2 on a fused SGD: decay set in a pre-hook
        from clenv.methods import make_method

        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, fused=True)
        make_method("l2", model, optimizer, weight_decay=0.01)
        return optimizer

    def with_second_group(model):
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params[:2], lr=0.05, fused=True)
        optimizer.add_param_group({"params": params[2:], "lr": 0.01})
        return optimizer

    return {
        "fused": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, fused=True),
        "fused-decay": lambda m: torch.optim.SGD(
            m.parameters(), lr=0.05, weight_decay=0.1, fused=True
        ),
        "l2-hooks": with_l2_hooks,
        "two-groups": with_second_group,
        "momentum": lambda m: torch.optim.SGD(
            m.parameters(), lr=0.05, momentum=0.9, fused=True
        ),
        "not-fused": lambda m: torch.optim.SGD(m.parameters(), lr=0.05),
        "adam": lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
        "muon": lambda m: make_optimizer("muon", m, lr=0.01),
    }


@pytest.mark.parametrize("name", list(sgd_setups()))
def test_fast_calls_update_bit_for_bit_as_the_optimizer(name):
    """zero_grad and step of fast_calls leave the weights, gradients and state
    exactly as the optimizer's own methods, through a resume (load_state_dict
    replaces the groups) and a change of step size."""
    build = sgd_setups()[name]
    ours, theirs = small_model(), small_model()
    ours_opt, theirs_opt = build(ours), build(theirs)
    calls = fast_calls(ours_opt)
    train_with(calls, ours)
    train_with((theirs_opt.zero_grad, theirs_opt.step), theirs)
    ours_opt.load_state_dict(copy.deepcopy(ours_opt.state_dict()))
    for optimizer in (ours_opt, theirs_opt):
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] / 2
    train_with(calls, ours, seed=2)
    train_with((theirs_opt.zero_grad, theirs_opt.step), theirs, seed=2)
    for mine, other in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine, other)
        assert torch.equal(mine.grad, other.grad)
    assert str(ours_opt.state_dict()) == str(theirs_opt.state_dict())
    calls[0]()
    assert all(p.grad is None for p in ours.parameters())


def test_fast_calls_step_itself_only_where_it_is_sgds_fused_call():
    model = small_model()
    fused = torch.optim.SGD(model.parameters(), lr=0.05, fused=True)
    assert fast_calls(fused)[1] != fused.step
    for optimizer in (
        torch.optim.SGD(model.parameters(), lr=0.05),  # the step is the optimizer's
        torch.optim.Adam(model.parameters(), lr=0.01),
    ):
        assert fast_calls(optimizer)[1] == optimizer.step


def test_fast_calls_keep_the_step_on_a_torch_without_the_fused_call(monkeypatch):
    """A torch version without the private ``torch._fused_sgd_`` keeps SGD.step."""
    monkeypatch.delattr(torch, "_fused_sgd_")
    model = small_model()
    fused = torch.optim.SGD(model.parameters(), lr=0.05, fused=True)
    assert fast_calls(fused)[1] == fused.step


def test_fast_calls_respect_a_replaced_sgd_step(monkeypatch):
    """A replaced SGD.step (a test's NaN injection, a profiler) is what runs."""
    calls = []
    original = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, fused=True)
    train_with(fast_calls(optimizer), model, steps=3)
    assert len(calls) == 3


@pytest.mark.skipif(
    importlib.util.find_spec("trac_optimizer") is None,
    reason="trac-optimizer not installed (pip install clenv[trac])",
)
@pytest.mark.parametrize("base", ["adam", "sgd"])
def test_trac_steps_as_the_packages_own_optimizer(base):
    """make_optimizer's TRAC (its step without the package's log line, with the
    faster erfi, and foreach Adam) moves the weights exactly as the package's
    start_trac optimizer (torch's default CPU Adam, one op per tensor)."""
    import trac_optimizer

    ours, theirs = small_model(), small_model()
    ours_opt = make_optimizer("trac", ours, 1e-3, trac_base=base)
    base_class = torch.optim.Adam if base == "adam" else torch.optim.SGD
    theirs_opt = trac_optimizer.start_trac(os.devnull, base_class)(
        theirs.parameters(), lr=1e-3
    )
    if base == "adam":
        assert ours_opt.defaults["foreach"] and not theirs_opt.defaults["foreach"]
    train_with((ours_opt.zero_grad, ours_opt.step), ours, steps=60)
    train_with((theirs_opt.zero_grad, theirs_opt.step), theirs, steps=60)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(ours.parameters(), small_model().parameters(), strict=True)
    ]
    assert any(moved)
    for mine, other in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(mine, other)
    assert torch.equal(ours_opt.state["_trac"]["s"], theirs_opt.state["_trac"]["s"])


@pytest.mark.skipif(
    importlib.util.find_spec("trac_optimizer") is None,
    reason="trac-optimizer not installed (pip install clenv[trac])",
)
def test_trac_says_once_when_its_scale_falls_to_zero_and_the_package_freezes():
    # A linear loss +-<w, x>: the second step's gradient points against the first's,
    # so h = <displacement, gradient> > 0 and TRAC's scale S turns negative. The
    # package then keeps w at its reference for good, however consistent the
    # gradients that follow; the optimizer says so once.
    x = torch.linspace(-1.0, 1.0, 8)

    def run(signs):
        w = nn.Parameter(torch.zeros(8))
        optimizer = make_optimizer("trac", nn.ParameterList([w]), 1e-2)
        for sign in signs:
            optimizer.zero_grad()
            (sign * (w @ x)).backward()
            optimizer.step()
        return w.detach(), optimizer.state["_trac"]["s"].sum().item()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent gradients: S grows, no warning
        w, s = run([1.0] * 50)
    assert s > 0 and w.abs().max() > 0
    with pytest.warns(
        RuntimeWarning, match=r"TRAC's scale S fell to .* at step 2"
    ) as told:
        w, s = run([1.0, -1.0] + [1.0] * 50)
    assert len(told) == 1 and s <= 0
    assert torch.equal(w, torch.zeros(8))  # frozen at the reference


@pytest.mark.skipif(
    importlib.util.find_spec("trac_optimizer") is None,
    reason="trac-optimizer not installed (pip install clenv[trac])",
)
def test_faster_trac_erfi_is_the_packages_bit_for_bit_and_only_inside_a_step():
    from trac_optimizer import trac

    from clenv.optim import _faster_trac_erfi

    faster = _faster_trac_erfi(trac)
    package_erfi, package_polyval = trac.erfi, trac.polyval
    generator = torch.Generator().manual_seed(0)
    for trial in range(300):  # TRAC's inputs: 6 betas' sigma / sqrt(variance)
        scale = 10 ** (torch.rand(1, generator=generator).item() * 6 - 4)
        x = torch.randn(6, generator=generator) * scale
        x[trial % 6] = 0.0 if trial % 5 == 0 else x[trial % 6]
        expected = package_erfi(x)
        trac.polyval = faster["polyval"]
        try:
            got = faster["erfi"](x)
        finally:
            trac.polyval = package_polyval
        assert torch.equal(got, expected), (x, got, expected)
    constant = torch.tensor(1.0) / torch.sqrt(torch.tensor(2.0))
    first, second = faster["erfi"](constant), faster["erfi"](constant)
    assert torch.equal(first, package_erfi(constant)) and first is not second
    # A TRAC step puts the package's own functions back when it ends.
    model = small_model()
    optimizer = make_optimizer("trac", model, 1e-3)
    train_with((optimizer.zero_grad, optimizer.step), model, steps=1)
    assert (trac.erfi, trac.polyval) == (package_erfi, package_polyval)
    assert _faster_trac_erfi(object()) == {}  # a package without them: its own


def test_muon_step_evaluates_a_closure_with_grad_and_returns_its_loss():
    """step(closure), as torch's optimizers: the closure runs under grad mode (step
    itself under no_grad), its gradients are the ones applied, its loss returned."""
    torch.manual_seed(0)
    model = PermutedMNISTMLP(width=4)
    optimizer = make_optimizer("muon", model, 0.01)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(3, 784), torch.tensor([0, 1, 2])

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss is not None and loss.requires_grad
    moved = zip(before, model.parameters(), strict=True)
    assert all(not torch.equal(b, p) for b, p in moved)
    assert optimizer.step() is None


def load_muon_collapse():
    path = os.path.join(
        os.path.dirname(__file__), "..", "docs", "results", "muon_collapse.py"
    )
    spec = importlib.util.spec_from_file_location("muon_collapse", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("freeze_biases", [False, True])
def test_muon_collapse_script_freezes_only_the_biases(data_dir, capsys, freeze_biases):
    # docs/results/muon_collapse.py tells Muon's matrix steps from its Adam part's
    # bias steps; with --freeze-biases the biases must stay 0 while Muon moves the
    # weights (Kaiming-uniform init: |W| = sqrt(2 fan_out) for the hidden layers).
    script = load_muon_collapse()
    args = script.Args(tasks=2, examples_per_task=20, width=8, probe_examples=10,
                       freeze_biases=freeze_biases)  # fmt: skip
    rows = script.main(args)
    assert [row["task"] for row in rows] == [0, 1]
    assert all(
        0 <= row["accuracy"] <= 1 and 0 <= row["dead_units"] <= 24 for row in rows
    )
    assert all(
        abs(norm - 4.0) > 1e-3 for norm in rows[-1]["weight_norms"][:3]
    )  # moved from sqrt(2 * 8) = 4
    biases_moved = any(abs(b) > 0 for b in rows[-1]["hidden_bias_means"])
    assert biases_moved is not freeze_biases
    assert capsys.readouterr().out.count("online accuracy") == 2
