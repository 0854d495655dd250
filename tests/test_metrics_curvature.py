"""Curvature metrics against the dense ``torch.func.hessian`` on tiny float64 models.

Tolerances are stated where they are used. Statistical estimators (SLQ, Hutchinson,
Hutch++) are checked for convergence and against the exact spectrum with many probes.
"""

from __future__ import annotations

import doctest
import functools
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import clenv.metrics.hessian
import clenv.metrics.losses
import clenv.metrics.spectral
from clenv.metrics import (
    DENSITY_GRID,
    HessianOperator,
    cross_entropy_loss,
    curvature_report,
    dead_unit_rank_bound,
    density_from_ritz,
    density_on_grid,
    epsilon_rank,
    epsilon_rank_trapezoid,
    hessian_eigenvalues,
    hessian_matrix,
    hessian_second_moment,
    hessian_spectral_density,
    hessian_trace,
    hessian_variance,
    hessian_variance_trapezoid,
    kfac_rank,
    lanczos,
    parameter_layers,
    partial_hessian_spectra,
    plasticity_report,
    rebin_density,
    representation_metrics,
    ritz_pairs,
    sampled_cross_entropy_loss,
    smoothing_variance,
    split_batch,
    top_eigenvalues,
    trapezoid_weights,
    weight_metrics,
)

# torch's forward-mode AD (torch.func.hessian, jvp) scripts its decompositions on
# first use and warns that torch.jit.script is deprecated: torch's business, not ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _Closure(nn.Module):
    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def exact_hessian(model, loss_fn, batches, batch_sizes):
    """Reference: torch.func.hessian of the sample-weighted loss of a flat theta."""
    closure = _Closure(model, loss_fn)
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    total = sum(batch_sizes)

    def loss_of(theta):
        params = {
            n: t.view(s)
            for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)
        }
        return sum(
            size / total * functional_call(closure, params, (batch,))
            for batch, size in zip(batches, batch_sizes, strict=True)
        )

    return hessian(loss_of)(flat)


def mlp(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)
        )
        .double()
        .to(device)
    )


def classification_data(n=40, device="cpu", seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=generator)
    return [
        (x[:25].to(device), y[:25].to(device)),
        (x[25:].to(device), y[25:].to(device)),
    ]


@pytest.fixture(scope="module")
def ce_setup():
    model = mlp()
    data = classification_data()
    reference = exact_hessian(model, cross_entropy_loss, data, [25, 15])
    return model, data, reference, torch.linalg.eigvalsh(reference)


# ---------------------------------------------------------------- PPO loss


class Agent(nn.Module):
    """CleanRL-style continuous-action agent: separate actor and critic, log-std."""

    def __init__(self, obs_dim=4, act_dim=2, hidden=6):
        super().__init__()
        self.critic = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        self.actor_mean = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, act_dim)
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))


def ppo_loss(agent, batch, clip=0.2, vf_coef=1.0, ent_coef=0.01):
    """PPO clipped surrogate + value loss - entropy bonus, as a loss closure."""
    mean = agent.actor_mean(batch["obs"])
    dist = torch.distributions.Normal(mean, agent.actor_logstd.expand_as(mean).exp())
    logprob = dist.log_prob(batch["actions"]).sum(-1)
    ratio = (logprob - batch["old_logprobs"]).exp()
    advantages = batch["advantages"]
    policy_loss = torch.max(
        -advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)
    ).mean()
    value = agent.critic(batch["obs"]).squeeze(-1)
    value_loss = 0.5 * ((value - batch["returns"]) ** 2).mean()
    return policy_loss + vf_coef * value_loss - ent_coef * dist.entropy().sum(-1).mean()


def ppo_rollout(agent, n=64, seed=2):
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        mean = agent.actor_mean(obs)
        actions = mean + torch.randn(
            mean.shape, generator=generator, dtype=torch.float64
        )
        # old policy slightly different, so some ratios are clipped
        old_mean = mean + 0.3 * torch.randn(
            mean.shape, generator=generator, dtype=mean.dtype
        )
        old_logprobs = (
            torch.distributions.Normal(old_mean, 1.0).log_prob(actions).sum(-1)
        )
    return {
        "obs": obs,
        "actions": actions,
        "old_logprobs": old_logprobs,
        "advantages": torch.randn(n, generator=generator, dtype=torch.float64),
        "returns": torch.randn(n, generator=generator, dtype=torch.float64),
    }


@pytest.mark.parametrize(
    "module", [clenv.metrics.losses, clenv.metrics.hessian, clenv.metrics.spectral]
)
def test_docstring_examples(module):
    globs = {"torch": torch, "nn": nn, "np": np}
    assert doctest.testmod(module, extraglobs=globs).failed == 0


# ---------------------------------------------------------------- dense Hessian


def test_hessian_matrix_matches_torch_func_with_unequal_batches(ce_setup):
    model, data, reference, exact = ce_setup
    dense = hessian_matrix(model, cross_entropy_loss, data)
    torch.testing.assert_close(dense, reference, rtol=1e-9, atol=1e-12)
    eigenvalues = hessian_eigenvalues(model, cross_entropy_loss, data)
    torch.testing.assert_close(eigenvalues, exact, rtol=1e-9, atol=1e-12)


def test_ppo_loss_hessian_and_top_eigenvalue_match_torch_func():
    torch.manual_seed(3)
    agent = Agent().double()
    rollout = ppo_rollout(agent)
    ratio_clipped = True  # sanity: the rollout exercises the clip branch
    with torch.no_grad():
        mean = agent.actor_mean(rollout["obs"])
        logprob = (
            torch.distributions.Normal(mean, 1.0).log_prob(rollout["actions"]).sum(-1)
        )
        ratio = (logprob - rollout["old_logprobs"]).exp()
        ratio_clipped = bool(((ratio < 0.8) | (ratio > 1.2)).any())
    assert ratio_clipped
    batches = split_batch(rollout, 40)  # 40 + 24: the weighting must be by size
    reference = exact_hessian(agent, ppo_loss, batches, [40, 24])
    dense = hessian_matrix(agent, ppo_loss, batches)
    torch.testing.assert_close(dense, reference, rtol=1e-9, atol=1e-12)
    exact = torch.linalg.eigvalsh(reference)
    top = top_eigenvalues(agent, ppo_loss, batches, k=1)
    assert top[0].item() == pytest.approx(exact[-1].item(), rel=0.01)
    # the curvlinops backend (forward-over-reverse under vmap) agrees
    vector = torch.randn(reference.shape[0], dtype=torch.float64)
    for backend, reuse in (("curvlinops", False), ("autograd", True)):
        operator = HessianOperator(
            agent, ppo_loss, batches, backend=backend, reuse_graph=reuse
        )
        torch.testing.assert_close(operator @ vector, reference @ vector)
        torch.testing.assert_close(operator @ vector, reference @ vector)
    with pytest.raises(ValueError, match="backend"):
        HessianOperator(agent, ppo_loss, batches, backend="jax")
    with pytest.raises(ValueError, match="scalar"):
        hessian_matrix(agent, lambda model, batch: model.critic(batch["obs"]), batches)


def test_dense_hessian_refuses_large_models(ce_setup):
    model, data, _, _ = ce_setup
    with pytest.raises(ValueError, match="max_parameters"):
        hessian_matrix(model, cross_entropy_loss, data, max_parameters=10)


# ---------------------------------------------------------------- Lanczos


def test_lanczos_quadrature_is_exact_for_low_moments():
    """Gauss quadrature with m nodes integrates polynomials of degree <= 2m-1
    exactly: sum_j w_j theta_j^k = v^T A^k v / v^T v (Golub & Meurant)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    a = (a + a.T) / 2
    v = torch.randn(30, generator=generator, dtype=torch.float64)
    alpha, beta = lanczos(lambda x: a @ x, v, order=6)
    values, vectors = ritz_pairs(alpha, beta)
    weights = vectors[0] ** 2
    unit = v / v.norm()
    for power in range(12):  # 2m - 1 = 11
        exact = unit @ torch.linalg.matrix_power(a, power) @ unit
        assert (weights * values**power).sum().item() == pytest.approx(
            exact.item(), rel=1e-8, abs=1e-10
        )


def test_lanczos_full_order_recovers_the_spectrum_and_stops_at_dimension():
    generator = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(
        torch.randn(12, 12, generator=generator, dtype=torch.float64)
    )
    spectrum = torch.tensor(
        [-3.0, -1, 0, 0, 0, 1e-3, 0.5, 1, 2, 2, 5, 40], dtype=q.dtype
    )
    a = q @ torch.diag(spectrum) @ q.T
    start = torch.randn(12, generator=generator, dtype=torch.float64)
    alpha, beta = lanczos(lambda x: a @ x, start, order=100)
    values = ritz_pairs(alpha, beta)[0]
    # repeated eigenvalues are seen once: the Krylov space has one vector per
    # distinct eigenvalue, so Lanczos stops there (invariant subspace)
    distinct = torch.unique(spectrum)
    assert len(values) == len(distinct)
    torch.testing.assert_close(values, distinct, rtol=1e-8, atol=1e-9)
    # weights = squared projections of the unit start vector on each eigenspace
    weights = ritz_pairs(alpha, beta)[1][0] ** 2
    coordinates = (q.T @ (start / start.norm())) ** 2
    projections = torch.stack(
        [coordinates[spectrum == value].sum() for value in distinct]
    )
    torch.testing.assert_close(weights, projections, rtol=1e-7, atol=1e-12)


# ---------------------------------------------------------------- top eigenvalues


def test_top_and_bottom_eigenvalues_within_one_percent(ce_setup):
    model, data, _, exact = ce_setup
    top = top_eigenvalues(model, cross_entropy_loss, data, k=3)
    torch.testing.assert_close(top, exact.flip(0)[:3], rtol=0.01, atol=0)
    bottom = top_eigenvalues(model, cross_entropy_loss, data, k=1, which="smallest")
    assert bottom[0].item() == pytest.approx(exact[0].item(), rel=0.01)
    with pytest.raises(ValueError, match="which"):
        top_eigenvalues(model, cross_entropy_loss, data, which="biggest")


# ---------------------------------------------------------------- trace


def test_trace_estimators_converge(ce_setup):
    model, data, reference, _ = ce_setup
    exact = reference.trace().item()
    num_params = reference.shape[0]

    @functools.cache
    def mean_error(method, matvecs):
        estimates = [
            hessian_trace(
                model,
                cross_entropy_loss,
                data,
                matvecs,
                method,
                seed=seed,
                reuse_graph=True,
            )
            for seed in range(4)
        ]
        return sum(abs(estimate - exact) for estimate in estimates) / 4

    for method in ("hutchinson", "hutch++"):
        assert mean_error(method, 90) < mean_error(method, 6)
    # Hutch++ with a sketch as large as the space is exact
    full = hessian_trace(
        model, cross_entropy_loss, data, 3 * num_params, "hutch++", reuse_graph=True
    )
    assert full == pytest.approx(exact, rel=1e-8)
    # Hutch++ beats Hutchinson at equal budget on a decaying spectrum
    assert mean_error("hutch++", 60) < mean_error("hutchinson", 60)


# ---------------------------------------------------------------- SLQ density


def _rademacher_std(matrix, num_probes):
    """Std of the Rademacher Hutchinson estimate of tr(matrix)/P with num_probes
    probes: Var(v^T A v) = 2 sum_{i != j} A_ij^2 (A symmetric)."""
    off_diagonal = (matrix**2).sum() - (torch.diagonal(matrix) ** 2).sum()
    return (2 * off_diagonal / num_probes).sqrt().item() / matrix.shape[0]


def test_slq_density_moments_and_epsilon_rank_match_exact_spectrum(ce_setup):
    model, data, reference, exact = ce_setup
    num_params, num_probes = exact.numel(), 30
    density = hessian_spectral_density(
        model, cross_entropy_loss, data, order=20, num_probes=num_probes, seed=0
    )
    assert density.num_parameters == num_params
    assert density.ritz_weights.sum().item() == pytest.approx(1.0, abs=1e-10)
    # Gauss quadrature with 20 nodes is exact per probe for degree <= 39, so the
    # k-th moment is a Rademacher Hutchinson estimate of tr(H^k)/P: tolerance 4 std
    for power in (1, 2, 3):
        power_matrix = torch.linalg.matrix_power(reference, power)
        tolerance = 4 * _rademacher_std(power_matrix, num_probes)
        assert density.moment(power) == pytest.approx(
            (exact**power).mean().item(), abs=tolerance
        )
    # the smoothed density integrates to one on its default grid
    step = (density.grid[1] - density.grid[0]).item()
    assert (density.density.sum() * step).item() == pytest.approx(1.0, abs=1e-3)
    # epsilon-rank at thresholds with no exact eigenvalue within 3 smoothing std of
    # +-eps: a Hutchinson estimate of tr(1{|H| > eps})/P, tolerance 4 std
    magnitudes = torch.sort(exact.abs()).values
    gaps = magnitudes[1:] - magnitudes[:-1]
    widest = torch.argsort(gaps, descending=True)[:3]
    assert (gaps[widest] > 6 * density.variance**0.5).all()
    eps = [((magnitudes[i] + magnitudes[i + 1]) / 2).item() for i in widest]
    shares = epsilon_rank(density, eps)
    eigenvalues, vectors = torch.linalg.eigh(reference)
    for threshold in eps:
        outside = vectors[:, eigenvalues.abs() > threshold]
        tolerance = 4 * _rademacher_std(outside @ outside.T, num_probes)
        truth = (exact.abs() > threshold).double().mean().item()
        assert shares[threshold] == pytest.approx(truth, abs=tolerance)
    # more probes -> closer to the exact share (averaged over thresholds)
    few = hessian_spectral_density(
        model, cross_entropy_loss, data, order=20, num_probes=2, seed=0
    )
    truths = [(exact.abs() > t).double().mean().item() for t in eps]
    error_few = sum(
        abs(epsilon_rank(few, t) - x) for t, x in zip(eps, truths, strict=True)
    )
    error_many = sum(abs(shares[t] - x) for t, x in zip(eps, truths, strict=True))
    assert error_many < error_few
    # unsmoothed variant and a scalar eps
    assert 0 <= epsilon_rank(density, 0.01, smoothed=False) <= 1
    assert isinstance(epsilon_rank(density, 0.01), float)


def test_slq_settings_grid_and_width_scaling():
    values = torch.tensor([-1.0, 0.0, 99.0], dtype=torch.float64)
    weights = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    grid, density, variance = density_from_ritz(values, weights, sigma_squared=1e-5)
    # Ghorbani et al.'s convention: variance scales with the width (100.02)
    assert variance == pytest.approx(1e-5 * 100.02)
    assert grid[0].item() == pytest.approx(-1.01) and grid[-1].item() == pytest.approx(
        99.01
    )
    fixed = torch.linspace(-0.05, 0.05, 2001, dtype=torch.float64)
    _, narrow, absolute = density_from_ritz(
        values, weights, sigma_squared=1e-4, scale_by_width=False, grid=fixed
    )
    assert absolute == 1e-4
    # only the node at 0 (weight 0.5) lies on this grid: its bump holds mass 0.5
    assert (narrow.sum() * (fixed[1] - fixed[0])).item() == pytest.approx(0.5, rel=1e-3)


def _normal_cdf(x, mean, std):
    return 0.5 * (1 + np.vectorize(math.erf)((x - mean) / (std * math.sqrt(2))))


def test_density_grid_is_log_spaced_both_signs_and_zero():
    positive = DENSITY_GRID[DENSITY_GRID > 0]
    assert DENSITY_GRID.size == 2 * 551 + 1 and np.count_nonzero(DENSITY_GRID == 0) == 1
    np.testing.assert_allclose(DENSITY_GRID[DENSITY_GRID < 0], -positive[::-1])
    assert positive[0] == pytest.approx(1e-5) and positive[-1] == pytest.approx(1e6)
    # 50 points per decade: each point is 10^(1/50) times the previous
    np.testing.assert_allclose(positive[1:] / positive[:-1], 10 ** (1 / 50))
    assert not DENSITY_GRID.flags.writeable


def test_density_on_grid_is_the_gaussians_cdf_differences():
    # one Ritz value: the binned mass of each grid point is the normal CDF difference
    # between the midpoints to its neighbours (tails in the outer points)
    mean, variance = 0.37, 1e-5
    density = density_on_grid([mean], [1.0], variance)
    mass = density * trapezoid_weights(DENSITY_GRID)
    edges = np.concatenate(
        [[-np.inf], (DENSITY_GRID[1:] + DENSITY_GRID[:-1]) / 2, [np.inf]]
    )
    expected = np.diff(_normal_cdf(edges, mean, math.sqrt(variance)))
    np.testing.assert_allclose(mass, expected, atol=1e-12)
    assert mass.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.trapezoid(density, DENSITY_GRID) == pytest.approx(1.0, abs=1e-12)
    # a peak narrower than a bin keeps its mass: sampling the smooth density at the
    # grid points would miss it (std 3e-5 at 12.3, where the spacing is ~0.57)
    narrow = density_on_grid([12.3, -4.0], [3.0, 1.0], 1e-9)
    weights = trapezoid_weights(DENSITY_GRID)
    assert (narrow * weights)[DENSITY_GRID > 0].sum() == pytest.approx(0.75)
    assert np.trapezoid(narrow, DENSITY_GRID) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="variance"):
        density_on_grid([0.0], [1.0], 0.0)


def test_rebin_density_conserves_mass_exactly():
    # a density on a fine linear grid -> the log grid: the trapezoid mass is equal
    fine = np.linspace(-3.0, 50.0, 20_001)
    source = np.exp(-((fine - 20.0) ** 2) / 2e-2) + 0.3 * np.exp(-(fine**2) / 1e-4)
    moved = rebin_density(fine, source)
    assert np.trapezoid(moved, DENSITY_GRID) == pytest.approx(
        np.trapezoid(source, fine), rel=1e-12
    )
    # the two peaks stay where they were: all mass near 0 stays within +-0.05
    weights = trapezoid_weights(DENSITY_GRID)
    near_zero = np.abs(DENSITY_GRID) < 0.05
    assert (moved * weights)[near_zero].sum() == pytest.approx(
        0.3 * math.sqrt(math.pi * 1e-4), rel=1e-3
    )
    # a linear density keeps its values at the inner points of the same grid
    line = 2.0 + fine
    np.testing.assert_allclose(rebin_density(fine, line, fine)[1:-1], line[1:-1])
    with pytest.raises(ValueError, match="grid"):
        rebin_density(fine, source[:-1])
    with pytest.raises(ValueError, match="increasing"):
        rebin_density(fine[::-1], source)


def test_smoothing_variance_is_scs_range_scaled_formula():
    # SC's eigv_to_density: sigma^2 * max(1, mean(max) + 0.01 - (mean(min) - 0.01))
    probes = [torch.tensor([-2.0, 5.0]), torch.tensor([0.0, 9.0])]
    assert smoothing_variance(probes, 1e-5) == pytest.approx(1e-5 * (7 - -1 + 0.02))
    assert smoothing_variance(torch.tensor([0.1, 0.2]), 1e-5) == 1e-5  # width < 1
    values = torch.tensor([-1.0, 3.0], dtype=torch.float64)
    _, _, variance = density_from_ritz(values, torch.full((2,), 0.5).double())
    assert variance == pytest.approx(smoothing_variance(values))


def test_epsilon_rank_variants_against_hand_computations():
    # exact share: two nodes, weights 0.25 at 0 and 0.75 at 1, std 0.1
    nodes = torch.tensor([0.0, 1.0], dtype=torch.float64)
    weights = torch.tensor([0.25, 0.75], dtype=torch.float64)
    grid, density, variance = density_from_ritz(
        nodes, weights, 1e-2, scale_by_width=False, num_points=4001, margin=1.0
    )
    spectral = clenv.metrics.SpectralDensity(
        grid, density, nodes, weights, variance, 2, 1, 2
    )
    eps = 0.15
    inside = lambda mean: _normal_cdf(eps, mean, 0.1) - _normal_cdf(-eps, mean, 0.1)  # noqa: E731
    expected = 0.25 * (1 - inside(0.0)) + 0.75 * (1 - inside(1.0))
    assert epsilon_rank(spectral, eps) == pytest.approx(float(expected), abs=1e-12)
    # SC's trapezoid: 100 * trapz(density[|g| > eps], g[|g| > eps]) / trapz(density)
    grid = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    values = np.array([0.0, 1.0, 4.0, 1.0, 2.0, 0.0])
    # total: 0.25 + 1.25 + 1.25 + 0.75 + 0.5 = 4; outside |g| > 0.2 the points
    # -1, -0.5, 0.5, 1, 1.5: 0.25 + (1 + 1) / 2 * 1.0 + 0.75 + 0.5 = 2.5
    assert epsilon_rank_trapezoid(grid, values, 0.2) == pytest.approx(62.5)
    assert epsilon_rank_trapezoid(grid, values, [0.2, 2.0]) == {0.2: 62.5, 2.0: 0.0}
    with pytest.raises(ValueError, match="eps"):
        epsilon_rank_trapezoid(grid, values, -1.0)


def test_spectral_density_is_seeded_and_leaves_rng_and_mode_alone(ce_setup):
    model, data, _, _ = ce_setup
    model.train()
    rng = torch.get_rng_state()
    first = hessian_spectral_density(model, cross_entropy_loss, data, order=10, seed=5)
    second = hessian_spectral_density(model, cross_entropy_loss, data, order=10, seed=5)
    torch.testing.assert_close(first.ritz_values, second.ritz_values)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- dead-unit bound


def _kill_units(layer, units):
    with torch.no_grad():
        layer.weight[units] = 0.0
        layer.bias[units] = -1.0  # ReLU(-1) = 0 on every input


def test_dead_unit_bound_holds_with_overlapping_dead_units():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)
    ).double()
    _kill_units(model[0], [0, 1])
    _kill_units(model[2], [2])  # its incoming weights overlap unit 0/1's outgoing
    x = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    result = dead_unit_rank_bound(model, x)
    assert result.dead_units_per_layer == {"1": 2, "3": 1}
    num_params = sum(p.numel() for p in model.parameters())
    # SC's formula: k (I + O + 1) per layer = 2 (4 + 6 + 1) + 1 (7 + 3 + 1)
    assert result.sc_bound == num_params - 2 * 11 - 11
    # the union counts the two shared weights W2[2, 0], W2[2, 1] once
    assert result.bound == result.sc_bound + 2
    reference = exact_hessian(model, cross_entropy_loss, [(x, y)], [50])
    rank = torch.linalg.matrix_rank(reference).item()
    assert rank <= result.bound
    # and the rows the bound removes are exactly zero in the Hessian
    zero_rows = (reference.abs().sum(dim=1) == 0).sum().item()
    assert zero_rows >= num_params - result.bound


def test_dead_unit_bound_for_conv_channels_and_unsupported_layers():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)
    ).double()
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[0].bias[1] = -1.0
    x = torch.randn(10, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 2, (10,))
    result = dead_unit_rank_bound(model, x)
    assert result.dead_units == 1
    # channel 1: 9 filter weights + bias + 4 columns (2x2 positions) of 2 outputs
    assert result.bound == result.num_parameters - (9 + 1 + 8)
    reference = exact_hessian(model, cross_entropy_loss, [(x, y)], [10])
    assert torch.linalg.matrix_rank(reference).item() <= result.bound

    class FunctionalRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x) + 1.0))  # a functional op between

    skipped = dead_unit_rank_bound(FunctionalRelu(), torch.randn(5, 3))
    assert "act" in skipped.skipped_layers and skipped.bound == skipped.num_parameters


# ---------------------------------------------------------------- KFAC rank


def test_kfac_rank_against_closed_forms():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()
    _kill_units(model[2], [0, 1])  # 2 dead inputs of the last layer
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    x = torch.randn(60, 3, generator=generator, dtype=torch.float64) @ basis  # rank 3
    y = torch.randint(0, 3, (60,), generator=generator)
    data = split_batch((x, y), 25)
    ranks = kfac_rank(model, cross_entropy_loss, data)
    # A of layer 0: [x, 1] has rank 3 + 1
    assert ranks["0/input_rank"] == 4
    # A of the last layer: 5 features, 2 dead (zero columns), plus the bias column
    hidden = torch.relu(model[2](torch.relu(model[0](x))))
    expected = torch.linalg.matrix_rank(torch.cat([hidden, torch.ones(60, 1)], 1))
    assert ranks["4/input_rank"] == expected.item() == 4
    # G of the last layer: rows softmax - onehot sum to zero -> rank C - 1 = 2
    assert ranks["4/output_grad_rank"] == 2
    # dead units have zero output gradient -> G of layer 2 has rank <= 5 - 2
    assert ranks["2/output_grad_rank"] <= 3
    total = sum(
        ranks[f"{i}/input_rank"] * ranks[f"{i}/output_grad_rank"] for i in (0, 2, 4)
    )
    assert ranks["kfac_rank"] == total
    assert ranks["kfac_rank_max"] == sum(p.numel() for p in model.parameters())
    sampled = kfac_rank(model, sampled_cross_entropy_loss, data, seed=1)
    assert sampled["4/output_grad_rank"] == 2 and sampled["0/input_rank"] == 4


def test_kfac_rank_conv_and_inplace_relu():
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2),
    ).double()
    x = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (8,))
    ranks = kfac_rank(model, cross_entropy_loss, [(x, y)])
    # KFC rows: 8 samples x 16 locations of 2*3*3 + 1 patch entries -> full rank 19
    assert ranks["0/input_rank"] == 19
    # conv output gradients (pre-ReLU, unaffected by the in-place ReLU): rank <= 3
    assert 1 <= ranks["0/output_grad_rank"] <= 3
    assert ranks["3/output_grad_rank"] == 1  # two classes: rows are (p - 1, 1 - p)
    assert ranks["kfac_rank_max"] == sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- report


@pytest.mark.parametrize("device", DEVICES)
def test_curvature_report_follows_model_device(ce_setup, device):
    model, _, _, exact = ce_setup
    model = mlp(device=device)
    data = classification_data(device="cpu")  # moved to the model's device
    report = curvature_report(
        model, cross_entropy_loss, data, order=40, trace_matvecs=12, eps=(0.01, 0.1)
    )
    assert report["top_eigenvalue"] == pytest.approx(exact[-1].item(), rel=0.01)
    assert report["min_eigenvalue"] == pytest.approx(exact[0].item(), rel=0.01)
    assert 0 <= report["epsilon_rank/0.01"] <= 1
    assert report["epsilon_rank/0.1"] <= report["epsilon_rank/0.01"]
    assert report["num_parameters"] == exact.numel()
    rank = torch.linalg.matrix_rank(torch.diag(exact)).item()
    assert rank <= report["dead_unit_rank_bound"] <= exact.numel()
    assert report["kfac_rank"] <= report["kfac_rank_max"]
    np.testing.assert_array_equal(report["spectral_density_grid"], DENSITY_GRID)
    assert report["spectral_density"].shape == DENSITY_GRID.shape
    mass = np.trapezoid(report["spectral_density"], DENSITY_GRID)
    assert mass == pytest.approx(1.0, abs=1e-10)
    # the logged density is SC's smoothing of the Ritz values, binned exactly
    np.testing.assert_allclose(
        report["spectral_density"],
        density_on_grid(
            report["ritz_values"], report["ritz_weights"], report["smoothing_variance"]
        ),
    )
    # both epsilon-ranks, under their own names: a share and a percentage
    slq = hessian_spectral_density(model, cross_entropy_loss, data, order=40)
    for eps in (0.01, 0.1):
        percent = epsilon_rank_trapezoid(slq.grid, slq.density, eps)
        assert report[f"epsilon_rank_trapezoid/{eps}"] == pytest.approx(percent)
        assert report[f"epsilon_rank/{eps}"] == pytest.approx(epsilon_rank(slq, eps))
    assert isinstance(report["trace"], float)


def test_curvature_report_on_ppo_rollout():
    torch.manual_seed(8)
    agent = Agent().double()
    rollout = ppo_rollout(agent)
    with torch.no_grad():  # callers often log from inside no_grad
        report = curvature_report(
            agent,
            ppo_loss,
            split_batch(rollout, 32),
            order=20,
            trace_matvecs=9,
            dead_unit_inputs=rollout["obs"],
            forward_fn=lambda a, obs: (a.actor_mean(obs), a.critic(obs)),
            reuse_graph=True,
        )
    exact = torch.linalg.eigvalsh(hessian_matrix(agent, ppo_loss, [rollout]))
    assert report["top_eigenvalue"] == pytest.approx(exact[-1].item(), rel=0.01)
    assert report["dead_unit_rank_bound"] >= torch.linalg.matrix_rank(torch.diag(exact))
    with pytest.raises(ValueError, match="dead_unit_inputs"):
        curvature_report(agent, ppo_loss, [rollout], order=5, trace_matvecs=0)


def test_plasticity_report_is_each_nets_representation_and_weight_metrics():
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU())
    critic = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        actor[0].bias[:2] = -100.0  # two dead units in the actor's first layer
    obs = torch.randn(50, 4)
    report = plasticity_report({"actor": actor, "critic": critic}, obs)

    hidden = torch.relu(actor[0](obs))
    by_hand = {"layer0": hidden, "layer1": torch.relu(actor[2](hidden))}
    expected = representation_metrics(by_hand)
    for key, value in expected.items():
        assert report[f"actor/{key}"] == pytest.approx(value), key
    assert report["actor/layer0/dead_units"] == 2.0
    critic_expected = representation_metrics({"layer0": torch.relu(critic[0](obs))})
    assert report["critic/layer0/effective_rank"] == pytest.approx(
        critic_expected["layer0/effective_rank"]
    )
    assert "critic/layer1/units" not in report  # one ReLU: one layer
    for name, net in (("actor", actor), ("critic", critic)):
        weights = weight_metrics(net)
        for key in ("weight_magnitude", "parameter_norm"):
            assert report[f"{name}/{key}"] == pytest.approx(weights[key])

    # A net named "" gives plain keys; `layers` picks the captured modules.
    plain = plasticity_report({"": actor}, obs, layers={"": ["3"]})
    last = representation_metrics({"layer0": by_hand["layer1"]})
    assert plain["units"] == 5.0
    assert plain["mean_effective_rank"] == pytest.approx(last["mean_effective_rank"])


# ---------------------------------------------------------------- Hessian variance


def _probe(model, size, seed=0):
    """The Rademacher start vector SLQ draws with ``seed`` (one probe)."""
    with clenv.metrics.hessian.curvature_context(model, seed) as generator:
        return clenv.metrics.hessian.rademacher((size,), generator, torch.float64)


def test_hessian_variance_matches_the_dense_hessian(ce_setup):
    model, data, reference, exact = ce_setup
    num_params = exact.numel()
    # order >= P: Lanczos is exact, so the quadrature's moments are the probe's
    # v^T H^k v / v^T v; the variance is their second central moment
    full = hessian_spectral_density(
        model, cross_entropy_loss, data, order=num_params + 5, seed=0
    )
    unit = _probe(model, num_params) / math.sqrt(num_params)
    first = (unit @ reference @ unit).item()
    second = (unit @ reference @ reference @ unit).item()
    assert hessian_second_moment(full) == pytest.approx(second, rel=1e-8)
    assert hessian_variance(full) == pytest.approx(second - first**2, rel=1e-8)
    assert hessian_variance(full, smoothed=True) == pytest.approx(
        second - first**2 + full.variance, rel=1e-8
    )
    # many probes: the variance of the P exact eigenvalues, tr(H^2)/P - (tr H/P)^2,
    # within 4 standard errors of the two Hutchinson estimates it combines
    num_probes = 30
    density = hessian_spectral_density(
        model, cross_entropy_loss, data, order=20, num_probes=num_probes, seed=0
    )
    mean = exact.mean().item()
    truth = (exact**2).mean().item() - mean**2
    first_std = _rademacher_std(reference, num_probes)
    tolerance = 4 * _rademacher_std(reference @ reference, num_probes) + (
        2 * abs(mean) + 4 * first_std
    ) * (4 * first_std)
    assert hessian_variance(density) == pytest.approx(truth, abs=tolerance)


def test_hessian_variance_trapezoid_is_scs_grid_variance():
    values = torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mean = (weights * values).sum().item()
    spread = (weights * (values - mean) ** 2).sum().item()
    # on a grid wide enough for every tail it is the smoothed density's variance
    wide = torch.linspace(-4.0, 6.0, 200_001, dtype=torch.float64)
    grid, density, variance = density_from_ritz(
        values, weights, sigma_squared=0.05, scale_by_width=False, grid=wide
    )
    assert hessian_variance_trapezoid(grid, density) == pytest.approx(
        spread + variance, rel=1e-6
    )
    # SC's grid (the nodes' range +- 0.01) with SC's sigma^2 cuts the outer tails:
    # the variance of the mixture truncated to the grid, in closed form
    grid, density, variance = density_from_ritz(values, weights, sigma_squared=1e-5)
    low, high, std = grid[0].item(), grid[-1].item(), math.sqrt(variance)
    mass = first = second = 0.0
    for node, weight in zip(values.tolist(), weights.tolist(), strict=True):
        a, b = (low - node) / std, (high - node) / std
        pdf_a, pdf_b = (math.exp(-(t**2) / 2) / math.sqrt(2 * math.pi) for t in (a, b))
        inside = _normal_cdf(b, 0, 1) - _normal_cdf(a, 0, 1)
        mass += weight * inside
        first += weight * (node * inside + std * (pdf_a - pdf_b))
        second += weight * (
            (node**2 + variance) * inside
            + std * ((node + low) * pdf_a - (node + high) * pdf_b)
        )
    truncated = second / mass - (first / mass) ** 2
    sc = hessian_variance_trapezoid(grid, density)
    assert sc == pytest.approx(truncated, rel=1e-4)  # trapezoid error, 10000 points
    assert abs(sc - spread) > 0.01 * spread  # SC's grid is a few percent off here
    # wide bumps on SC's grid lose the outer halves of the extreme nodes' mass, so
    # the variance falls below even the unsmoothed one
    grid, density, variance = density_from_ritz(values, weights, sigma_squared=0.05)
    assert hessian_variance_trapezoid(grid, density) < spread
    # negative values are clipped, as SC do; no mass gives NaN
    assert hessian_variance_trapezoid(
        np.array([0.0, 1.0, 2.0]), np.array([1.0, -5.0, 1.0])
    ) == pytest.approx(1.0)
    assert math.isnan(hessian_variance_trapezoid(np.array([0.0, 1.0]), np.zeros(2)))


# ---------------------------------------------------------------- partial spectra


def test_partial_hessian_spectra_match_the_dense_blocks(ce_setup):
    model, data, reference, _ = ce_setup
    sizes = {
        name: sum(p.numel() for _, p in params)
        for name, params in parameter_layers(model).items()
    }
    assert list(sizes) == ["0", "2", "4"]
    offsets = np.cumsum([0, *sizes.values()])
    spectra = partial_hessian_spectra(
        model, cross_entropy_loss, data, order=100, seed=0
    )
    assert list(spectra) == ["0", "2", "4"]
    for (name, size), start in zip(sizes.items(), offsets, strict=False):
        block = reference[start : start + size, start : start + size]
        eigenvalues = torch.linalg.eigvalsh(block)
        density = spectra[name]
        assert density.num_parameters == size
        # order > block size: every Ritz value is an eigenvalue of the block ...
        distance = (density.ritz_values[:, None] - eigenvalues[None, :]).abs()
        scale = eigenvalues.abs().max().item()
        assert distance.min(dim=1).values.max().item() < 1e-8 * scale
        # ... the extreme ones included, and the weights are the probe's exact
        # projections: the moments are v^T B^k v / v^T v
        assert density.ritz_values.max().item() == pytest.approx(
            eigenvalues[-1].item(), rel=1e-8
        )
        unit = _probe(model, size) / math.sqrt(size)
        for power in (1, 2, 3):
            exact_moment = unit @ torch.linalg.matrix_power(block, power) @ unit
            assert density.moment(power) == pytest.approx(
                exact_moment.item(), rel=1e-8, abs=1e-12 * scale**power
            )
    # a chosen layer, and a clear error for an unknown one
    only = partial_hessian_spectra(
        model, cross_entropy_loss, data, layers=["4"], order=100, seed=0
    )
    torch.testing.assert_close(only["4"].ritz_values, spectra["4"].ritz_values)
    with pytest.raises(ValueError, match="layers with parameters"):
        partial_hessian_spectra(model, cross_entropy_loss, data, layers=["9"])


def test_curvature_report_opt_ins_add_keys_and_leave_the_default_alone(ce_setup):
    model, data, _, _ = ce_setup
    options = dict(order=30, trace_matvecs=6, eps=(0.01, 0.1))
    default = curvature_report(model, cross_entropy_loss, data, **options)
    report = curvature_report(
        model,
        cross_entropy_loss,
        data,
        variance=True,
        partial_spectra=["2", "4"],
        partial_order=15,
        **options,
    )
    for key, value in default.items():
        if key == "seconds":
            continue
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(report[key], value)
        else:
            assert report[key] == value, key
    slq = hessian_spectral_density(model, cross_entropy_loss, data, order=30)
    assert report["hessian_variance"] == pytest.approx(hessian_variance(slq))
    assert report["hessian_second_moment"] == pytest.approx(slq.moment(2))
    assert report["hessian_variance_trapezoid"] == pytest.approx(
        hessian_variance_trapezoid(slq.grid, slq.density)
    )
    block = partial_hessian_spectra(
        model, cross_entropy_loss, data, layers=["4"], order=15
    )["4"]
    assert report["partial/4/num_parameters"] == 6 * 3 + 3
    assert report["partial/4/top_eigenvalue"] == pytest.approx(
        block.ritz_values.max().item()
    )
    assert report["partial/4/epsilon_rank/0.01"] == pytest.approx(
        epsilon_rank(block, 0.01)
    )
    assert report["partial/4/hessian_variance"] == pytest.approx(
        hessian_variance(block)
    )
    assert report["partial/4/spectral_density"].shape == DENSITY_GRID.shape
    np.testing.assert_array_equal(report["partial/4/ritz_values"], block.ritz_values)
    assert (
        "partial/2/top_eigenvalue" in report
        and "partial/0/top_eigenvalue" not in report
    )
    one = curvature_report(
        model,
        cross_entropy_loss,
        data,
        order=15,
        trace_matvecs=0,
        kfac=False,
        dead_unit_bound=False,
        partial_spectra="4",
    )
    assert [key for key in one if key.endswith("top_eigenvalue")] == [
        "top_eigenvalue",
        "partial/4/top_eigenvalue",
    ]
