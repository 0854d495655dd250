"""Plasticity metrics of training dynamics against closed forms and torch references:
active units, feature norms, gradient norms, weight change since the task start and
policy churn, and their opt-in keys in ``plasticity_report``."""

from __future__ import annotations

import doctest
import io
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

import clenv.metrics.churn
import clenv.metrics.units
import clenv.metrics.weights
from clenv.metrics import (
    PolicyChurnTracker,
    WeightChangeTracker,
    active_unit_fraction,
    active_unit_mask,
    dead_unit_mask,
    diagonal_gaussian_kl,
    feature_norm,
    gradient_norms,
    parameter_layers,
    plasticity_report,
    representation_metrics,
)


@pytest.mark.parametrize(
    "module", [clenv.metrics.units, clenv.metrics.weights, clenv.metrics.churn]
)
def test_docstring_examples(module):
    assert doctest.testmod(module, extraglobs={"torch": torch, "nn": nn}).failed == 0


def test_active_units_are_the_complement_of_dead_units():
    # columns 1 and 3 are zero on every sample; column 2 is active on one sample
    activation = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.5, 0.0], [0.1, 0.0, 0.0, 0.0]]
    )
    assert active_unit_mask(activation).tolist() == [True, False, True, False]
    assert active_unit_fraction(activation) == 0.5
    # a conv channel is active when nonzero at any position of any sample
    conv = torch.zeros(2, 3, 2, 2)
    conv[1, 0, 1, 1] = 1.0
    assert active_unit_fraction(conv) == pytest.approx(1 / 3)
    assert (active_unit_mask(conv) == ~dead_unit_mask(conv)).all()

    default = representation_metrics({"a": activation, "b": conv})
    report = representation_metrics({"a": activation, "b": conv}, active_units=True)
    assert report["a/active_unit_fraction"] == 0.5
    assert report["b/active_unit_fraction"] == pytest.approx(1 / 3)
    # unit-weighted over layers: 3 active of 7 units
    assert report["active_unit_fraction"] == pytest.approx(3 / 7)
    assert report["active_unit_fraction"] == pytest.approx(
        1 - report["dead_unit_fraction"]
    )
    assert {k: report[k] for k in default} == default  # opt-in only adds keys


def test_feature_norm_is_the_mean_row_norm():
    features = torch.tensor([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    assert feature_norm(features) == pytest.approx((5.0 + 3.0 + 0.0) / 3)
    generator = torch.Generator().manual_seed(0)
    conv = torch.randn(4, 2, 3, 3, generator=generator, dtype=torch.float64)
    by_hand = sum(math.sqrt(float((sample**2).sum())) for sample in conv) / 4
    assert feature_norm(conv) == pytest.approx(by_hand, rel=1e-12)
    report = representation_metrics({"a": features, "b": conv}, feature_norms=True)
    assert report["a/feature_norm"] == pytest.approx(8 / 3)
    assert report["mean_feature_norm"] == pytest.approx((8 / 3 + by_hand) / 2)
    with pytest.raises(ValueError, match="at least one sample"):
        feature_norm(torch.zeros(0, 3))


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)
    ).double()


def test_gradient_norms_per_layer_and_total():
    net = _mlp()
    with pytest.raises(ValueError, match="after loss.backward"):
        gradient_norms(net)
    x = torch.randn(16, 3, dtype=torch.float64)
    net(x).pow(2).mean().backward()
    norms = gradient_norms(net)
    assert list(parameter_layers(net)) == ["0", "2", "4"]
    for layer in ("0", "2", "4"):
        module = net[int(layer)]
        by_hand = math.sqrt(
            float(module.weight.grad.pow(2).sum() + module.bias.grad.pow(2).sum())
        )
        assert norms[f"{layer}/grad_norm"] == pytest.approx(by_hand, rel=1e-12)
    # the total is the norm gradient clipping measures
    total = nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    assert norms["grad_norm"] == pytest.approx(float(total), rel=1e-12)
    # closed form for a linear model: grad of (w.x)^2 / 2 is (w.x) x
    linear = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0]]))
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    (0.5 * linear(x).pow(2)).sum().backward()
    assert gradient_norms(linear)["grad_norm"] == pytest.approx(11.0 * 5.0)
    # a parameter without a gradient counts as zero
    net[4].bias.grad = None
    assert gradient_norms(net)["4/grad_norm"] == pytest.approx(
        float(net[4].weight.grad.norm())
    )


def test_weight_change_tracker_measures_from_the_task_start_and_resumes():
    actor, critic = _mlp(1), _mlp(2)
    nets = {"actor": actor, "critic": critic}
    tracker = WeightChangeTracker(nets)
    with pytest.raises(ValueError, match="on_task_start"):
        tracker.metrics()
    tracker.on_task_start()
    assert all(value == 0.0 for value in tracker.metrics().values())
    with torch.no_grad():
        actor[0].weight[0, :] += torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
        actor[0].bias[1] -= 4.0  # layer 0 moved by sqrt(9 + 16) = 5
        critic[4].weight.fill_(0.0)
    expected_critic = math.sqrt(float((tracker.snapshot["critic/4.weight"] ** 2).sum()))
    metrics = tracker.metrics()
    assert metrics["actor/0/weight_change"] == pytest.approx(5.0)
    assert metrics["actor/2/weight_change"] == 0.0
    assert metrics["actor/weight_change"] == pytest.approx(5.0)
    assert metrics["critic/4/weight_change"] == pytest.approx(expected_critic)
    assert metrics["critic/weight_change"] == pytest.approx(expected_critic)

    # resume: a fresh tracker loaded from a saved state measures the same
    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    resumed = WeightChangeTracker(nets)
    resumed.load_state_dict(torch.load(buffer))
    assert resumed.metrics() == metrics
    with pytest.raises(ValueError, match="does not match"):
        WeightChangeTracker({"actor": actor}).load_state_dict(tracker.state_dict())
    # a new task starts from zero; the snapshot is a copy, not a view
    tracker.on_task_start()
    assert tracker.metrics()["actor/weight_change"] == 0.0
    with torch.no_grad():
        actor[2].bias += 1.0
    assert tracker.metrics()["actor/2/weight_change"] == pytest.approx(2.0)


def test_diagonal_gaussian_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(3)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    mean_p, mean_q = draw(10, 4), draw(10, 4)
    std_p, std_q = draw(10, 4).exp(), draw(1, 4).exp()  # q's std broadcasts
    reference = kl_divergence(
        Independent(Normal(mean_p, std_p), 1),
        Independent(Normal(mean_q, std_q.expand_as(mean_q)), 1),
    )
    torch.testing.assert_close(
        diagonal_gaussian_kl(mean_p, std_p, mean_q, std_q),
        reference,
        rtol=1e-12,
        atol=1e-12,
    )
    assert diagonal_gaussian_kl(mean_p, std_p, mean_p, std_p).abs().max() < 1e-12
    with pytest.raises(ValueError, match="positive"):
        diagonal_gaussian_kl(mean_p, -std_p, mean_q, std_q)


class _Actor(nn.Module):
    def __init__(self):
        super().__init__()
        self.actor_mean = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        self.actor_logstd = nn.Parameter(torch.zeros(1, 2))

    def distribution(self, obs):
        return self.actor_mean(obs), self.actor_logstd.exp()


def test_policy_churn_is_the_mean_kl_between_consecutive_policies():
    torch.manual_seed(0)
    agent = _Actor().double()
    probe = torch.randn(32, 4, dtype=torch.float64)
    tracker = PolicyChurnTracker(probe, agent.distribution)
    assert tracker.update() is None
    assert tracker.update() == 0.0  # no update in between: no churn
    with torch.no_grad():
        old = Normal(agent.actor_mean(probe), agent.actor_logstd.exp())
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.1)
    agent.actor_mean(torch.randn(8, 4, dtype=torch.float64)).sum().backward()
    agent.actor_logstd.grad = torch.full((1, 2), 0.5, dtype=torch.float64)
    optimizer.step()
    with torch.no_grad():
        new = Normal(agent.actor_mean(probe), agent.actor_logstd.exp())
    expected = float(kl_divergence(old, new).sum(-1).mean())
    state = tracker.state_dict()  # saved before the measurement
    churn = tracker.update()
    assert churn == pytest.approx(expected, rel=1e-10) and churn > 0
    # resume: a tracker loaded from the saved state gives the same churn
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = PolicyChurnTracker(torch.zeros(1, 4), agent.distribution)
    resumed.load_state_dict(torch.load(buffer))
    assert torch.equal(resumed.probe_obs, probe)
    assert resumed.update() == churn


def test_plasticity_report_opt_ins_add_keys_and_leave_the_default_alone():
    actor, critic = _mlp(3), _mlp(4)
    nets = {"actor": actor, "critic": critic}
    obs = torch.randn(50, 3, dtype=torch.float64)
    tracker = WeightChangeTracker(nets)
    tracker.on_task_start()
    churn = PolicyChurnTracker(obs[:10], lambda o: (actor(o), torch.ones(1, 2)))
    (actor(obs).pow(2).mean() + critic(obs).mean()).backward()
    default = plasticity_report(nets, obs)
    report = plasticity_report(
        nets,
        obs,
        active_units=True,
        feature_norms=True,
        gradient_norm=True,
        weight_change=tracker,
        policy_churn=churn,
    )
    assert {key: report[key] for key in default} == default
    added = set(report) - set(default)
    for net in ("actor", "critic"):
        assert {
            f"{net}/layer0/active_unit_fraction",
            f"{net}/layer1/active_unit_fraction",
            f"{net}/active_unit_fraction",
            f"{net}/layer0/feature_norm",
            f"{net}/mean_feature_norm",
            f"{net}/0/grad_norm",
            f"{net}/4/grad_norm",
            f"{net}/grad_norm",
            f"{net}/0/weight_change",
            f"{net}/weight_change",
        } <= added
        assert report[f"{net}/grad_norm"] == gradient_norms(nets[net])["grad_norm"]
        assert report[f"{net}/active_unit_fraction"] == pytest.approx(
            1 - report[f"{net}/dead_unit_fraction"]
        )
    assert "policy_churn" not in report  # the first measurement has no predecessor
    with torch.no_grad():
        actor[4].bias += 1.0  # every mean moves by 1 (std 1): KL = 2 * 1/2
    again = plasticity_report({"actor": actor}, obs, policy_churn=churn)
    assert again["policy_churn"] == pytest.approx(1.0)
