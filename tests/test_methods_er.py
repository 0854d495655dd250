"""The ER ascent's closed-form gradient against autograd through the SVD.

Every comparison is in float64: the closed form (:func:`effective_rank_gradient`, the
manual backward of ReLU chains, the feature-gradient route for other models) must give
the gradient autograd gives on the same objective to 1e-10 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch
from methods_helpers import Agent, agent_forward, mlp
from torch import nn

from clenv.methods import EffectiveRankAscent, make_method
from clenv.methods.effective_rank import ascend_relu_chain, effective_rank_gradient
from clenv.metrics import effective_rank
from clenv.metrics.rank import effective_rank_from_singular_values

TOLERANCE = 1e-10


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative difference; against a zero gradient (erank at its maximum), the
    absolute one."""
    return ((actual - expected).norm() / max(expected.norm(), 1e-4)).item()


def autograd_gradient(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """erank and its gradient by autograd, as the ascent computed them before."""
    matrix = matrix.detach().clone().requires_grad_()
    tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.mT
    rank = effective_rank(tall)
    return rank.detach(), torch.autograd.grad(rank, matrix)[0]


def with_spectrum(rows, columns, sigma, seed=0):
    """A rows x columns float64 matrix with singular values ``sigma``."""
    g = torch.Generator().manual_seed(seed)
    k = len(sigma)
    left = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(columns, k, generator=g, dtype=torch.float64))
    return (left * torch.as_tensor(sigma, dtype=torch.float64)) @ right[0].T


def relu_features(rows, columns, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(
        torch.randn(rows, columns, generator=g, dtype=torch.float64) + 0.3
    )


CASES = {
    "tall, distinct": lambda: with_spectrum(30, 12, torch.linspace(5, 0.5, 12)),
    "wide, distinct": lambda: with_spectrum(10, 40, torch.linspace(3, 0.2, 10)),
    "square relu": lambda: relu_features(24, 24),
    "equal singular values": lambda: with_spectrum(20, 8, [3, 2, 2, 2, 2, 1, 1, 0.5]),
    "all equal (zero gradient)": lambda: with_spectrum(20, 8, [2.0] * 8),
    "near-equal singular values": lambda: with_spectrum(
        20, 8, [3.0, 2.0 + 1e-13, 2.0, 2.0 - 1e-13, 1.0, 1.0, 0.5, 0.25]
    ),
    "zero singular values": lambda: with_spectrum(20, 8, [3, 2, 1, 0.5, 0, 0, 0, 0]),
    "zero column": lambda: relu_features(20, 8) * (torch.arange(8) != 3),
    "zero matrix": lambda: torch.zeros(6, 4, dtype=torch.float64),
}


@pytest.mark.parametrize("case", CASES)
def test_svd_route_is_autograds_gradient_in_every_case(case):
    matrix = CASES[case]()
    rank, gradient = effective_rank_gradient(matrix, route="svd")
    expected_rank, expected = autograd_gradient(matrix)
    torch.testing.assert_close(rank, expected_rank, rtol=TOLERANCE, atol=0)
    assert relative(gradient, expected) <= TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_gram_route_is_autograds_gradient_where_it_is_unique(case):
    """Where the gradient is unique (no zero singular value) the Gram route gives
    it; with zero singular values (its U is LAPACK's choice) it takes the SVD route
    and gives autograd's, or, for ReLU features' zero lines, a gradient that only
    differs on entries the ReLU masks."""
    matrix = CASES[case]()
    expected_rank, expected = autograd_gradient(matrix)
    rank, gradient = effective_rank_gradient(matrix)
    torch.testing.assert_close(rank, expected_rank, rtol=TOLERANCE, atol=1e-15)
    assert relative(gradient, expected) <= TOLERANCE
    rank, gradient = effective_rank_gradient(matrix, relu_features=True)
    mask = matrix > 0
    torch.testing.assert_close(rank, expected_rank, rtol=TOLERANCE, atol=1e-15)
    if mask.any():
        assert relative(gradient * mask, expected * mask) <= TOLERANCE


@pytest.mark.parametrize("kappa", [1e1, 1e2, 1e3, 3e3, 1e5, 1e8])
def test_gram_route_matches_the_svd_route_to_1e_10(kappa):
    """Up to kappa ~3e3 the float64 Gram eigendecomposition itself is within 1e-10
    of the SVD route; beyond, it hands the matrix to the SVD route."""
    sigma = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), 40)
    for seed in range(3):
        matrix = with_spectrum(60, 40, sigma, seed)
        gram_rank, gram = effective_rank_gradient(matrix, route="gram")
        svd_rank, svd = effective_rank_gradient(matrix, route="svd")
        assert relative(gram, svd) <= TOLERANCE
        torch.testing.assert_close(gram_rank, svd_rank, rtol=TOLERANCE, atol=0)


def test_a_batch_of_matrices_is_each_matrix_alone():
    matrices = torch.stack(
        [relu_features(16, 12, seed) for seed in range(3)]
        + [with_spectrum(16, 12, [1.0] * 6 + [0.0] * 6)]  # takes the SVD route
    )
    ranks, gradients = effective_rank_gradient(matrices)
    for index, matrix in enumerate(matrices):
        rank, gradient = effective_rank_gradient(matrix)
        torch.testing.assert_close(ranks[index], rank, rtol=1e-13, atol=0)
        assert relative(gradients[index], gradient) <= 1e-13
    with pytest.raises(ValueError, match="route"):
        effective_rank_gradient(matrices, route="qr")
    with pytest.raises(ValueError, match="samples, units"):
        effective_rank_gradient(torch.zeros(5))


@pytest.mark.parametrize("route", ["gram", "svd"])
def test_gradient_scale_multiplies_each_gradient_not_the_rank(route):
    matrices = torch.stack(
        [relu_features(16, 12, seed) for seed in range(2)]
        + [with_spectrum(16, 12, [1.0] * 6 + [0.0] * 6)]  # the SVD fallback
    )
    scale = [0.5, -2.0, 3.0]
    ranks, gradients = effective_rank_gradient(matrices, route=route)
    scaled_ranks, scaled = effective_rank_gradient(
        matrices, route=route, gradient_scale=scale
    )
    torch.testing.assert_close(scaled_ranks, ranks, rtol=1e-13, atol=0)
    for index, factor in enumerate(scale):
        assert relative(scaled[index], factor * gradients[index]) <= 1e-13
    with pytest.raises(ValueError, match="one factor per matrix"):
        effective_rank_gradient(matrices, gradient_scale=[1.0, 2.0])


def ascent_steps(model, inputs, forward_fn=None, runs_as_chain=False, **kwargs):
    """The parameter change of one ascent (lr 1) by the closed form and by autograd
    (``runs_as_chain``: passed to the closed form's ascend)."""
    steps = {}
    for gradient in ("closed_form", "autograd"):
        copied = copy.deepcopy(model)
        before = [p.detach().clone() for p in copied.parameters()]
        er = EffectiveRankAscent(
            copied, ascent_lr=1.0, gradient=gradient, forward_fn=forward_fn, **kwargs
        )
        if gradient == "closed_form" and runs_as_chain:
            objective = er.ascend(inputs, runs_as_chain=True)
        else:
            objective = er.ascend(inputs)
        changes = [
            p.detach() - b for p, b in zip(copied.parameters(), before, strict=True)
        ]
        steps[gradient] = (objective, changes, er)
    return steps


def assert_same_step(steps):
    (objective, changes, _), (expected_objective, expected, _) = (
        steps["closed_form"],
        steps["autograd"],
    )
    torch.testing.assert_close(objective, expected_objective, rtol=1e-12, atol=0)
    for change, reference in zip(changes, expected, strict=True):
        if reference.norm() == 0:
            assert change.norm() == 0  # the output layer: no ER gradient
        else:
            assert relative(change, reference) <= TOLERANCE


@pytest.mark.parametrize("samples", [5, 16, 40])
@pytest.mark.parametrize("dead_units", [False, True])
def test_manual_backward_of_a_relu_mlp_is_autograds_step(samples, dead_units):
    model = mlp((6, 24, 24, 24, 3))
    if dead_units:
        with torch.no_grad():
            model[0].bias[:4] = -100.0  # inactive on every sample
            model[2].bias[5:7] = -100.0
    inputs = torch.randn(
        samples, 6, generator=torch.Generator().manual_seed(2)
    ).double()
    steps = ascent_steps(model, inputs)
    assert steps["closed_form"][2].relu_chains is not None  # the manual route ran
    assert_same_step(steps)
    # Only the last 2 layers ranked: the sweep still reaches the first Linear.
    steps = ascent_steps(model, inputs, last_layers=2)
    assert steps["closed_form"][2].relu_chains is not None
    assert_same_step(steps)


@pytest.mark.parametrize(
    "sizes, last_layers",
    [((6, 24, 24, 24, 3), None), ((6, 24, 24, 24, 3), 2), ((6, 24, 16, 3), None)],
)
@pytest.mark.parametrize("dead_units", [False, True])
def test_runs_as_chain_forward_is_autograds_step(sizes, last_layers, dead_units):
    """ascend(runs_as_chain=True) (the fast path's call: the forward computed by the
    ascent itself, equal widths stacked for one batched eigh) steps as autograd."""
    model = mlp(sizes)
    if dead_units:
        with torch.no_grad():
            model[0].bias[:4] = -100.0  # inactive on every sample
    inputs = torch.randn(30, 6, generator=torch.Generator().manual_seed(3)).double()
    steps = ascent_steps(model, inputs, runs_as_chain=True, last_layers=last_layers)
    assert_same_step(steps)


def test_ppo_agent_by_network_objective_through_features_is_autograds_step():
    """A Tanh critic is no ReLU chain: the closed-form feature gradients go through
    autograd's backward of the network (and SC's per-network objective)."""
    agent = Agent().double()
    obs = torch.randn(32, 5, generator=torch.Generator().manual_seed(3)).double()
    steps = ascent_steps(
        agent, obs, agent_forward, schedule="epoch", layer_groups="by_network"
    )
    assert steps["closed_form"][2].relu_chains is None
    assert_same_step(steps)


def test_relu_actor_and_critic_take_the_manual_route():
    agent = Agent().double()
    agent.critic[1] = nn.ReLU()
    obs = torch.randn(64, 5, generator=torch.Generator().manual_seed(4)).double()
    steps = ascent_steps(
        agent, obs, agent_forward, schedule="epoch", layer_groups="by_network"
    )
    assert len(steps["closed_form"][2].relu_chains) == 2
    assert_same_step(steps)


def test_conv_net_takes_the_feature_route_with_autograds_step():
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(36, 10),
        nn.ReLU(),
        nn.Linear(10, 3),
    ).double()
    images = torch.randn(12, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    steps = ascent_steps(model, images.double())
    assert steps["closed_form"][2].relu_chains is None
    assert_same_step(steps)


def test_a_forward_that_transforms_the_inputs_falls_back_to_the_feature_route():
    """The manual route runs the chain on the ascent's inputs; a forward_fn that
    feeds the chain anything else is noticed at run time."""
    model = mlp((6, 16, 16, 3))
    inputs = torch.randn(20, 6, generator=torch.Generator().manual_seed(6)).double()

    def scaled(model, x):
        return model(2 * x)

    steps = ascent_steps(model, inputs, forward_fn=scaled)
    assert steps["closed_form"][2].relu_chains is None  # gave up on the manual route
    assert_same_step(steps)


def test_ascend_relu_chain_broadcasts_over_stacked_chains():
    """Stacked (seeds, ...) chains give each chain's own step."""
    models = [mlp((6, 8, 8, 3), seed=s) for s in range(2)]
    inputs = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(7)).double()
    weights = [torch.stack([m[i].weight.detach() for m in models]) for i in (0, 2)]
    biases = [torch.stack([m[i].bias.detach() for m in models]) for i in (0, 2)]
    h1 = torch.relu(torch.baddbmm(biases[0].unsqueeze(1), inputs, weights[0].mT))
    h2 = torch.relu(torch.baddbmm(biases[1].unsqueeze(1), h1, weights[1].mT))
    _, g1 = effective_rank_gradient(h1, relu_features=True)
    _, g2 = effective_rank_gradient(h2, relu_features=True)
    ascend_relu_chain(
        weights, biases, [inputs, h1], [h1, h2], [g1 / 2, g2 / 2], ascent_lr=1.0
    )
    for index, model in enumerate(models):
        steps = ascent_steps(model, inputs[index])
        change = steps["autograd"][1]
        expected = [p + d for p, d in zip(model.parameters(), change, strict=True)]
        torch.testing.assert_close(weights[0][index], expected[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(biases[1][index], expected[3], rtol=0, atol=1e-12)


def test_effective_rank_formula_batches_and_takes_numpy():
    """The one effective-rank formula (clenv.metrics.rank), which the closed form
    evaluates in numpy and the batched fast path on (..., k) tensors: each matrix's
    erank, as effective_rank computes it alone."""
    matrices = torch.stack([relu_features(12, 7, seed=s) for s in range(3)])
    sigma = torch.linalg.svdvals(matrices)
    batched = effective_rank_from_singular_values(sigma)
    assert batched.shape == (3,)
    alone = torch.stack([effective_rank(m) for m in matrices])
    torch.testing.assert_close(batched, alone, rtol=1e-14, atol=0)
    numpy_rank = effective_rank_from_singular_values(sigma.numpy())
    torch.testing.assert_close(torch.from_numpy(numpy_rank), alone, rtol=1e-14, atol=0)
    assert effective_rank_from_singular_values(torch.zeros(4)).item() == 1.0


def test_gradient_option_is_checked_and_logged():
    model = mlp()
    assert EffectiveRankAscent(model).hyperparameters()["gradient"] == "closed_form"
    method = make_method("l2er", model, None, preset="pmnist", er__gradient="autograd")
    assert method["er"].gradient == "autograd"
    with pytest.raises(ValueError, match="gradient"):
        EffectiveRankAscent(model, gradient="svd")


@pytest.mark.parametrize("kappa", [1e2, 1e4, 1e6])
def test_float32_features_are_as_accurate_as_the_float32_svd(kappa):
    """In float32 the Gram route (float64 spectrum, float32 products) is as close to
    the exact gradient (float64 SVD of the same float32 matrix) as autograd's float32
    SVD was."""
    sigma = torch.logspace(0, -torch.log10(torch.tensor(kappa)).item(), 50)
    for seed in range(3):
        matrix = with_spectrum(50, 50, sigma, seed).float()
        _, exact = effective_rank_gradient(matrix.double(), route="svd")
        _, gram = effective_rank_gradient(matrix)
        _, svd = effective_rank_gradient(matrix, route="svd")
        assert gram.dtype == torch.float32
        assert relative(gram.double(), exact) <= 3 * relative(svd.double(), exact)


def test_record_copies_the_inputs_unless_told_not_to():
    er = EffectiveRankAscent(mlp((6, 8, 3)), interval=4)
    inputs = torch.randn(2, 6)
    assert not er.record(inputs, steps=2)
    assert not er.record(inputs, steps=1, copy=False)
    assert er.buffer[0].data_ptr() != inputs.data_ptr()
    assert er.buffer[1].data_ptr() == inputs.data_ptr()
    assert er.record(inputs[:1], steps=1)
