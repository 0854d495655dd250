"""Representation metrics against closed forms, and capture_activations' hygiene."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn

import clenv.metrics.activations
import clenv.metrics.rank
import clenv.metrics.units
import clenv.metrics.weights
from clenv.metrics import (
    approximate_rank,
    capture_activations,
    dead_unit_count,
    dormant_unit_count,
    dormant_unit_mask,
    effective_rank,
    lop_stable_rank,
    mean_abs_activation,
    numerical_rank,
    rank_metrics,
    representation_metrics,
    stable_rank,
    unit_mean_abs_activation,
    weight_metrics,
)
from clenv.metrics.activations import preserved_training_state


def _matrix_with_singular_values(sigma, rows=12, seed=0):
    """rows x len(sigma) matrix U diag(sigma) V^T with random orthogonal U, V."""
    generator = torch.Generator().manual_seed(seed)
    n = len(sigma)
    u, _ = torch.linalg.qr(
        torch.randn(rows, n, generator=generator, dtype=torch.float64)
    )
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize(
    "module",
    [
        clenv.metrics.rank,
        clenv.metrics.units,
        clenv.metrics.activations,
        clenv.metrics.weights,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
    assert result.failed == 0


@pytest.mark.parametrize("n", [1, 5, 37])
def test_effective_rank_of_identity_is_n(n):
    assert effective_rank(torch.eye(n)).item() == pytest.approx(n, rel=1e-5)


def test_effective_rank_of_rank_one_is_one():
    a = torch.randn(50, 1) @ torch.randn(1, 20)
    assert effective_rank(a).item() == pytest.approx(1.0, abs=1e-4)


def test_effective_rank_closed_form_and_gradient():
    sigma = [4.0, 2.0, 1.0, 1.0]
    a = _matrix_with_singular_values(sigma).requires_grad_(True)
    p = torch.tensor(sigma, dtype=torch.float64) / sum(sigma)
    expected = math.exp(-(p * torch.log(p)).sum().item())
    value = effective_rank(a)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(value, a)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rank_variants_against_closed_forms():
    sigma = [10.0, 5.0, 2.0, 0.5, 0.0]
    a = _matrix_with_singular_values(sigma)
    squares = [s**2 for s in sigma]  # 100, 25, 4, .25, 0; 0.99 * 129.25 = 127.96
    assert sum(squares[:2]) < 0.99 * sum(squares) <= sum(squares[:3])
    assert approximate_rank(a) == 3
    # sigma: 0.99 * 17.5 = 17.325 > 10 + 5 + 2 -> 4
    assert lop_stable_rank(a) == 4
    assert stable_rank(a) == pytest.approx(sum(squares) / 100.0, rel=1e-9)
    assert numerical_rank(a) == 4
    assert approximate_rank(a, fraction=0.5) == 1
    summary = rank_metrics(a)
    assert summary["approximate_rank"] == 3
    assert summary["lop_stable_rank"] == 4
    assert summary["numerical_rank"] == 4
    assert summary["stable_rank"] == pytest.approx(1.2925)
    assert summary["effective_rank"] == pytest.approx(effective_rank(a).item())


@pytest.mark.parametrize("n", [4, 100, 1000])
def test_rank_variants_of_identity(n):
    # boundary cases: k/n must not be lost to rounding in the cumulative sum
    eye = torch.eye(n)
    assert approximate_rank(eye) == math.ceil(0.99 * n - 1e-9)
    assert lop_stable_rank(eye) == math.ceil(0.99 * n - 1e-9)
    assert stable_rank(eye) == pytest.approx(n)
    assert numerical_rank(eye) == n


def test_rank_of_zero_matrix_and_bad_input():
    zero = torch.zeros(6, 3)
    assert approximate_rank(zero) == 0
    assert lop_stable_rank(zero) == 0
    assert stable_rank(zero) == 0.0
    assert numerical_rank(zero) == 0
    with pytest.raises(ValueError, match="samples, units"):
        effective_rank(torch.ones(3))
    with pytest.raises(ValueError, match="fraction"):
        approximate_rank(torch.eye(3), fraction=1.5)


def test_conv_map_is_flattened_for_rank_and_channels_are_units():
    act = torch.zeros(4, 3, 2, 2)
    act[:, 0] = torch.rand(4, 2, 2) + 0.1
    act[0, 1, 1, 1] = 1.0  # channel 1 active at one position of one sample only
    assert dead_unit_count(act) == 1  # channel 2
    assert unit_mean_abs_activation(act).shape == (3,)
    assert effective_rank(act).item() == pytest.approx(
        effective_rank(act.reshape(4, -1)).item()
    )


def test_dead_and_dormant_units_closed_form():
    # unit activities (mean |h|): 1, 1, 1, 0.06, 0 -> layer mean 0.612
    act = torch.tensor(
        [[1.0, -1.0, 2.0, 0.12, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    assert dead_unit_count(act) == 1
    mean = (1 + 1 + 1 + 0.06 + 0) / 5
    assert 0.06 / mean > 0.025  # so only the dead unit is dormant at tau=0.025
    assert dormant_unit_count(act, 0.025) == 1
    assert dormant_unit_count(act, 0.1) == 2  # 0.06 / 0.612 = 0.098 < 0.1
    assert dormant_unit_mask(act, 0.1).tolist() == [False, False, False, True, True]
    assert dormant_unit_count(torch.zeros(3, 4)) == 4
    assert mean_abs_activation(act) == pytest.approx(6.12 / 10)
    with pytest.raises(ValueError, match="tau"):
        dormant_unit_count(act, -1.0)


def test_representation_metrics_keys_and_aggregates():
    h1 = torch.cat([torch.eye(4), torch.zeros(4, 2)], dim=1)  # 2 dead of 6
    h2 = torch.ones(4, 3)  # rank one, none dead
    metrics = representation_metrics({"layer0": h1, "layer1": h2})
    assert metrics["layer0/effective_rank"] == pytest.approx(4.0, rel=1e-5)
    assert metrics["layer1/effective_rank"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["layer0/dead_units"] == 2
    assert metrics["layer0/dead_unit_fraction"] == pytest.approx(2 / 6)
    assert metrics["layer1/numerical_rank"] == 1
    assert metrics["dead_units"] == 2 and metrics["units"] == 9
    assert metrics["dormant_units"] == 2
    assert metrics["mean_effective_rank"] == pytest.approx(2.5, rel=1e-5)
    assert metrics["mean_abs_activation"] == pytest.approx((4 * 0.25 + 3 * 1) / 9)
    assert all(isinstance(v, float) for v in metrics.values())
    with pytest.raises(ValueError, match="no activations"):
        representation_metrics({})


class _BatchNormDropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(5, 8),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(8, 8),
            nn.GELU(),
        )
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("train_mode", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_capture_leaves_batchnorm_mode_rng_untouched(training, train_mode):
    torch.manual_seed(0)
    net = _BatchNormDropoutNet().train(training)
    net(torch.randn(16, 5) * 3 + 1)  # non-trivial running statistics
    net.train(training)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 5)
    rng = torch.get_rng_state()
    acts = capture_activations(net, x, train_mode=train_mode)
    assert list(acts) == ["body.2", "body.5"]
    assert acts["body.2"].shape == (16, 8) and not acts["body.2"].requires_grad
    assert all(m.training == training for m in net.modules())
    after = net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(torch.get_rng_state(), rng)


def test_preserved_state_can_keep_modes_and_leave_the_rng_to_training():
    """What a plasticity method's own forward uses (ER's ascent): buffers restored,
    each module's mode kept, the RNG streams consumed as training would."""
    torch.manual_seed(0)
    net = _BatchNormDropoutNet().train()
    net.body[1].eval()  # a mixed-mode model keeps its modes
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    rng = torch.get_rng_state()
    with preserved_training_state(net, None, fork_rng=False):
        assert net.training and not net.body[1].training
        net(torch.randn(16, 5) * 3 + 1)
    assert all(torch.equal(buffers[k], v) for k, v in net.named_buffers())
    assert not net.body[1].training and net.training
    assert not torch.equal(torch.get_rng_state(), rng)  # randn and dropout drew


def test_capture_eval_mode_is_deterministic_and_matches_manual_forward():
    torch.manual_seed(1)
    net = _BatchNormDropoutNet().train()
    x = torch.randn(10, 5)
    first = capture_activations(net, x)
    second = capture_activations(net, x)
    net.eval()
    with torch.no_grad():
        manual = net.body[:3](x)
    net.train()
    assert torch.equal(first["body.2"], second["body.2"])
    assert torch.equal(first["body.2"], manual)


def test_capture_layers_forward_fn_repeated_calls_and_errors():
    class Agent(nn.Module):
        def __init__(self):
            super().__init__()
            self.actor = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
            self.critic = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))

        def forward(self, x):  # not a plain forward: PPO agents have none
            raise NotImplementedError

    agent = Agent()
    obs = torch.randn(7, 3)

    def both(model, x):
        return model.actor(x), model.critic(x)

    acts = capture_activations(agent, obs, forward_fn=both)
    assert list(acts) == ["actor.1", "critic.1"]
    only = capture_activations(agent, obs, layers=["critic.0"], forward_fn=both)
    assert torch.allclose(only["critic.0"], agent.critic[0](obs).detach())
    by_module = capture_activations(
        agent, obs, layers=[agent.actor[1]], forward_fn=both
    )
    assert list(by_module) == ["actor.1"]

    twice = capture_activations(
        agent,
        obs,
        layers=["actor.1"],
        forward_fn=lambda m, x: (m.actor(x), m.actor(2 * x)),
    )
    assert list(twice) == ["actor.1", "actor.1:1"]

    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        capture_activations(agent, obs, layers=["nope"], forward_fn=both)
    with pytest.raises(ValueError, match="none of the layers"):
        capture_activations(
            agent, obs, layers=["critic.1"], forward_fn=lambda m, x: m.actor(x)
        )
    with pytest.raises(ValueError, match="no activation modules"):
        capture_activations(nn.Linear(3, 2), obs)


def test_capture_is_not_changed_by_later_inplace_ops():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            out = self.act(x)
            out += 100.0  # in place on the captured tensor
            return out

    x = torch.randn(4, 3)
    acts = capture_activations(Residual(), x)
    assert torch.equal(acts["act"], torch.relu(x))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_capture_follows_model_device_and_dtype(device):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5)).double().to(device)
    net.train()
    x = torch.randn(2, 3, dtype=torch.float64)  # on the CPU: moved to the model
    rng = torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()
    acts = capture_activations(net, x, train_mode=True)
    assert acts["1"].dtype == torch.float64
    assert acts["1"].device.type == device
    after = torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()
    assert torch.equal(rng, after)  # dropout's draws came from a forked stream
    metrics = representation_metrics(acts)
    assert metrics["1/units"] == 4


def test_weight_metrics_closed_form():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, -4.0], [0.0, 0.0]]))
        net[0].bias.fill_(1.0)
        net[2].weight.fill_(-2.0)
        net[2].bias.fill_(0.0)
    metrics = weight_metrics(net)
    assert metrics["0.weight/l2_norm"] == pytest.approx(5.0)
    assert metrics["0.weight/mean_abs"] == pytest.approx(7 / 4)
    assert metrics["2.weight/l2_norm"] == pytest.approx(8**0.5)
    assert metrics["weight_magnitude"] == pytest.approx((7 + 2 + 4 + 0) / 9)
    assert metrics["parameter_norm"] == pytest.approx((25 + 2 + 8) ** 0.5)
