"""clenv.methods: CBP, ReDo, Shrink & Perturb, resets, and resume for every method."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from methods_helpers import Agent, agent_forward, batch, mlp, train_step
from torch import nn

from clenv.methods import (
    ContinualBackprop,
    FullReset,
    HeadReset,
    ReDo,
    ShrinkPerturb,
    make_method,
    split_name,
)
from clenv.metrics import dormant_unit_mask


def tanh_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    ).double()


# --------------------------------------------------------------------------- CBP


def test_cbp_replaces_the_expected_number_of_the_lowest_utility_units():
    """Against a direct transcription of LoP's gnt.py utility and replacement count."""
    model = tanh_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    cbp = ContinualBackprop(model, opt, replacement_rate=0.15, maturity_threshold=4)
    decay = 0.99
    ages = [torch.zeros(w, dtype=torch.float64) for w in (16, 12)]
    util = [torch.zeros(w, dtype=torch.float64) for w in (16, 12)]
    accumulated = [0.0, 0.0]
    total = 0
    for step in range(14):
        x, y = batch(n=8, seed=step)
        with torch.no_grad():  # the features of the training forward
            h1 = torch.tanh(model[0](x))
            h2 = torch.tanh(model[2](h1))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        out_mags = [model[2].weight.abs().mean(0), model[4].weight.abs().mean(0)]
        cbp.after_step(x)
        for i, h in enumerate((h1, h2)):
            ages[i] += 1
            util[i] = decay * util[i] + (1 - decay) * out_mags[i] * h.abs().mean(0)
            eligible = torch.nonzero(ages[i] > 4).reshape(-1)
            accumulated[i] += 0.15 * eligible.numel()
            count = int(accumulated[i])
            accumulated[i] -= count
            corrected = util[i][eligible] / (1 - decay ** ages[i][eligible])
            assert corrected.unique().numel() == corrected.numel()  # no ties
            expected = set(eligible[torch.argsort(corrected)[:count]].tolist())
            assert set(cbp.last_replaced[i].tolist()) == expected, (step, i)
            replaced = cbp.last_replaced[i]
            ages[i][replaced] = 0
            util[i][replaced] = 0
            total += count
    assert sum(cbp.num_replaced) == total > 10


@pytest.mark.parametrize("architecture", ["mlp", "conv_conv", "conv_linear"])
def test_cbp_output_unchanged_at_replacement_of_a_constant_unit(architecture):
    """The next bias absorbs w_out * (running mean): exact when the replaced unit's
    activation equals its mean, here a unit with zero incoming weights and bias 0.7."""
    torch.manual_seed(0)
    if architecture == "mlp":
        model = nn.Sequential(
            nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)
        )
        spec, inputs = [("0", "1", "2")], (16, 5)
    elif architecture == "conv_conv":
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.ReLU(),
            nn.Conv2d(4, 3, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 2 * 2, 2),
        )
        spec, inputs = [("0", "1", "2")], (16, 2, 6, 6)
    else:
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
        )
        spec, inputs = [("0", "1", "3")], (16, 2, 6, 6)
    model = model.double()
    first, after = model[0], model.get_submodule(spec[0][2])
    with torch.no_grad():
        first.bias.add_(5.0)  # every other unit strictly active: none is a tie at 0
        first.weight[3] = 0.0
        first.bias[3] = 0.7
        after.weight.reshape(after.weight.shape[0], 4, -1)[:, 3] *= 1e-3
    cbp = ContinualBackprop(
        model, replacement_rate=1 / 4, maturity_threshold=5, hidden_layers=spec
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        model(torch.rand(*inputs, generator=g, dtype=torch.float64))
        cbp.after_step()
    probe = torch.rand(*inputs, generator=g, dtype=torch.float64)
    with torch.no_grad():
        before = model(probe)
    model(torch.rand(*inputs, generator=g, dtype=torch.float64))
    cbp.after_step()
    assert cbp.last_replaced[0].tolist() == [3]
    assert not torch.equal(first.weight[3], torch.zeros_like(first.weight[3]))
    with torch.no_grad():
        torch.testing.assert_close(model(probe), before, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "optimizer_cls, kwargs, moments",
    [
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, ["momentum_buffer"]),
        (torch.optim.Adam, {"lr": 0.01}, ["exp_avg", "exp_avg_sq"]),
    ],
)
def test_cbp_resets_the_replaced_units_optimizer_moments(
    optimizer_cls, kwargs, moments
):
    def run(rate):
        model = mlp()
        opt = optimizer_cls(model.parameters(), **kwargs)
        cbp = ContinualBackprop(model, opt, replacement_rate=0.0, maturity_threshold=0)
        for s in range(3):
            train_step(model, opt, cbp, *batch(seed=s))
        cbp.replacement_rate = rate
        train_step(model, opt, cbp, *batch(seed=9))
        return model, opt, cbp

    model, opt, cbp = run(0.2)
    twin, twin_opt, _ = run(0.0)  # the same history without the replacement
    units = [u for u in cbp.last_replaced]
    assert [u.numel() for u in units] == [3, 3]  # int(0.2 * 16) per layer
    resets = {  # parameter -> the slices CBP must have zeroed
        "0.weight": [(0, units[0])],
        "0.bias": [(0, units[0])],
        "2.weight": [(1, units[0]), (0, units[1])],
        "2.bias": [(0, units[1])],
        "4.weight": [(1, units[1])],
        "4.bias": [],
    }
    params, twin_params = dict(model.named_parameters()), dict(twin.named_parameters())
    for name in moments:
        for key, slices in resets.items():
            expected = twin_opt.state[twin_params[key]][name].clone()
            for dim, index in slices:
                assert torch.any(expected.index_select(dim, index) != 0)
                expected.index_fill_(dim, index, 0)
            assert torch.equal(opt.state[params[key]][name], expected), (name, key)
    if "exp_avg" in moments:  # the scalar step is kept (see docs/methods.md)
        assert torch.equal(
            opt.state[model[0].weight]["step"], twin_opt.state[twin[0].weight]["step"]
        )


def test_cbp_sc_code_variant_replaces_the_highest_utility_units():
    """SC's code (imagenet/cbp.py:12-32,153-232): raw (not bias-corrected) utility
    |mean h| * mean|w_out|, the highest ones replaced, outgoing weights re-drawn,
    nothing absorbed into the next bias."""
    model = mlp()
    cbp = ContinualBackprop(
        model, None, replacement_rate=0.0, maturity_threshold=0, variant="sc_code"
    )
    for s in range(3):
        x, _ = batch(seed=s)
        model(x)
        cbp.after_step(x)
    utility = cbp.utilities[0].clone()
    x, _ = batch(seed=5)
    with torch.no_grad():
        h1 = torch.relu(model[0](x))
    new = model[2].weight.abs().mean(0) * h1.mean(0).abs()
    expected = 0.99 * utility + 0.01 * new  # no bias correction
    top = set(torch.topk(expected, 2).indices.tolist())
    bias_before = model[2].bias.clone()
    cbp.replacement_rate = 2 / 16 + 1e-9
    model(x)
    cbp.after_step(x)
    assert set(cbp.last_replaced[0].tolist()) == top  # the HIGHEST utilities
    units = cbp.last_replaced[0]
    assert torch.all(model[2].weight[:, units] != 0)  # outgoing weights re-drawn
    assert model[2].weight[:, units].abs().max() <= math.sqrt(2) * math.sqrt(3 / 16)
    expected_bias = bias_before.index_fill(0, cbp.last_replaced[1], 0)
    assert torch.equal(model[2].bias, expected_bias)  # nothing absorbed
    assert torch.all(cbp.ages[0][units] == 0)
    default = ContinualBackprop(mlp(), None)
    assert default.variant == "lop"
    with pytest.raises(ValueError, match="variant"):
        ContinualBackprop(mlp(), None, variant="sc")


def test_cbp_replacement_count_all_counts_every_unit_of_the_layer():
    """LoP's conv/ResNet CBP (convGnT.py:73-75,169; res_gnt.py:78,127): rr x #units."""
    model = mlp()
    for count, expected in (("eligible", 4 * 0.25), ("all", 16 * 0.25)):
        cbp = ContinualBackprop(
            model, None, replacement_rate=0.25, replacement_count=count
        )
        cbp.ages[0][:4] = 200  # 4 of the 16 units are mature
        cbp.count_due(0)
        assert cbp.accumulated[0] == expected
        assert cbp.select_units(0).numel() == min(int(expected), 4)


def test_cbp_without_accumulate_replaces_one_unit_by_chance():
    """LoP's gnt.py without accumulate (its PPO): r < 1 due units -> one with
    probability r, nothing carried over (lop/algos/gnt.py:151-158)."""
    cbp = ContinualBackprop(mlp(), None, replacement_rate=0.25 / 16, accumulate=False)
    cbp.ages[0][:] = 200  # all 16 mature: r = 0.25 per step
    counts = []
    for _ in range(400):
        cbp.count_due(0)
        counts.append(cbp.accumulated[0])
        cbp.select_units(0)
    assert set(counts) == {0.0, 1.0}
    assert abs(sum(counts) / 400 - 0.25) < 0.06
    cbp.replacement_rate = 2.5 / 16  # r >= 1: its whole part
    cbp.count_due(0)
    assert cbp.accumulated[0] == 2.0


def test_cbp_scores_post_pool_maps_when_asked():
    """LoP's ConvNet hands CBP its pooled maps (lop/nets/conv_net.py:36-44)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5), nn.ReLU(), nn.Linear(5, 2),
    ).double()  # fmt: skip
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pooled = ContinualBackprop(model, None, score_after_pool=True)
    plain = ContinualBackprop(model, None)
    model(x)
    assert pooled.hidden[0].pool is model[2] and pooled.hidden[1].pool is None
    assert pooled.recorder.features[0].shape == (2, 4, 3, 3)  # after the pool
    assert plain.recorder.features[0].shape == (2, 4, 6, 6)
    pooled.after_step(x)
    with torch.no_grad():
        maps = model[2](torch.relu(model[0](x)))
    torch.testing.assert_close(
        pooled.mean_activations[0], 0.01 * maps.mean(dim=(0, 2, 3))
    )
    # An explicit spec (what clenv.models' hidden_layer_spec() gives) finds it too.
    spec = [("0", "1", "4"), ("4", "5", "6")]
    explicit = ContinualBackprop(model, None, score_after_pool=True, hidden_layers=spec)
    assert [h.pool for h in explicit.hidden] == [model[2], None]


def test_cbp_can_keep_the_optimizer_state_and_draws_with_init_gain():
    """LoP resets only its AdamGnT's state (gnt.py:211-225); its ImageNet bound is
    sqrt(1/fan_in) (miscellaneous.py:128-133): init_gain = sqrt(1/3)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cbp = ContinualBackprop(
        model,
        opt,
        replacement_rate=0.0,
        maturity_threshold=0,
        reset_optimizer_state=False,
        init_gain=math.sqrt(1 / 3),
    )
    for s in range(3):
        train_step(model, opt, cbp, *batch(seed=s))
    momentum = opt.state[model[0].weight]["momentum_buffer"].clone()
    cbp.replacement_rate = 0.5
    model(batch(seed=9)[0])
    cbp.after_step(None)
    units = cbp.last_replaced[0]
    assert units.numel() == 8
    assert torch.equal(opt.state[model[0].weight]["momentum_buffer"], momentum)
    assert model[0].weight[units].abs().max() <= math.sqrt(1 / 6)  # fan_in 6


def test_cbp_records_only_training_forwards_and_works_on_a_ppo_agent():
    agent = Agent().double()
    cbp = make_method("cbp", agent, None, replacement_rate=0.5, maturity_threshold=0)
    with pytest.raises(ValueError, match="no training forward"):
        cbp.after_step(None)
    obs = torch.randn(7, 5, dtype=torch.float64)
    agent_forward(agent, obs)
    with torch.no_grad():
        agent_forward(agent, torch.randn(3, 5, dtype=torch.float64))  # an evaluation
    assert [f.shape[0] for f in cbp.recorder.features] == [7, 7, 7]
    cbp.after_step(obs)
    assert [h.name for h in cbp.hidden] == ["critic.1", "actor_mean.1", "actor_mean.3"]
    assert cbp.num_replaced == [4, 4, 4]


def test_cbp_arguments_are_checked():
    with pytest.raises(ValueError, match="utility"):
        ContinualBackprop(mlp(), utility="weight")
    with pytest.raises(ValueError, match="replacement_rate"):
        ContinualBackprop(mlp(), replacement_rate=2)


def test_cbp_adaptable_contribution_matches_its_formula():
    model = tanh_mlp()
    cbp = ContinualBackprop(
        model, replacement_rate=0, utility="adaptable_contribution", decay_rate=0.9
    )
    x, _ = batch(n=8)
    with torch.no_grad():
        h1 = torch.tanh(model[0](x))
    model(x)
    cbp.after_step(x)
    mean = 0.1 * h1.mean(0) / (1 - 0.9)  # bias-corrected after one step
    expected = (
        0.1
        * model[2].weight.abs().mean(0)
        * (h1 - mean).abs().mean(0)
        / model[0].weight.abs().mean(1)
    )
    torch.testing.assert_close(cbp.utilities[0], expected)


# --------------------------------------------------------------------------- ReDo


def test_redo_resets_exactly_the_units_under_tau():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    redo = ReDo(model, opt, threshold=0.3, interval=3)
    for s in range(2):
        train_step(model, opt, redo, *batch(seed=s))
    g = torch.Generator().manual_seed(3)
    scale = torch.rand(16, generator=g, dtype=torch.float64)
    scale[:4] = torch.tensor([0.0, 0.01, 0.05, 0.2])
    features = [
        torch.rand(8, 16, generator=g, dtype=torch.float64) * scale for _ in range(3)
    ]
    before = copy.deepcopy(model.state_dict())
    redo.activity_sums[0].zero_()
    redo.num_steps = 0
    active = torch.ones(8, 16, dtype=torch.float64)  # layer 2: nothing dormant
    for f in features[:2]:
        redo.update([f, active])
    assert redo.num_reset == [0, 0]
    redo.update([features[2], active])
    assert redo.num_reset[1] == 0
    expected = dormant_unit_mask(torch.cat(features), threshold=0.3)
    assert 0 < expected.sum() < 16
    reset = torch.zeros(16, dtype=torch.bool)
    reset[redo.last_reset[0]] = True
    assert torch.equal(reset, expected)
    changed_rows = (model[0].weight != before["0.weight"]).any(dim=1)
    assert torch.equal(changed_rows, expected)
    assert torch.all(model[2].weight[:, expected] == 0)
    assert torch.equal(model[2].weight[:, ~expected], before["2.weight"][:, ~expected])
    assert torch.all(opt.state[model[0].weight]["exp_avg"][expected] == 0)


# --------------------------------------------------------------------------- S&P


def test_shrink_perturb_decays_and_adds_seeded_gaussian_noise():
    model = mlp((50, 200, 50, 3), dtype=torch.float64)
    snp = ShrinkPerturb(model, weight_decay=0.1, noise_std=0.01, seed=4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    snp.after_backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, 0.1 * p)
    before = [p.clone() for p in model.parameters()]
    snp.after_step(None)
    noise = torch.cat(
        [(p - q).reshape(-1) for p, q in zip(model.parameters(), before, strict=True)]
    )
    assert abs(noise.std().item() / 0.01 - 1) < 0.02 and abs(noise.mean().item()) < 1e-3
    again = mlp((50, 200, 50, 3), dtype=torch.float64)
    ShrinkPerturb(again, weight_decay=0.1, noise_std=0.01, seed=4).after_step(None)
    assert all(
        torch.equal(p, q)
        for p, q in zip(model.parameters(), again.parameters(), strict=True)
    )


# --------------------------------------------------------------------------- resets


def test_head_reset_reinitialises_only_the_output_layer_at_a_new_task():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    head = HeadReset(model, opt)
    train_step(model, opt, head, *batch())
    before = copy.deepcopy(model.state_dict())
    head.on_task_switch(0)  # the first task: nothing happens
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    head.on_task_switch(1)
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]) == (not key.startswith("4."))
    assert model[4].weight.abs().max() <= math.sqrt(3 / 16)
    assert torch.all(model[4].bias == 0)
    assert model[4].weight not in opt.state and model[0].weight in opt.state
    zero = HeadReset(model, opt, mode="zero")
    zero.on_task_switch(5)
    assert torch.all(model[4].weight == 0) and zero.num_resets == 1


def test_full_reset_reinitialises_everything_and_clears_the_optimizer():
    agent = Agent().double()
    opt = torch.optim.Adam(agent.parameters(), lr=0.1)
    reset = FullReset(agent, opt)
    mean, value = agent_forward(agent, torch.randn(4, 5, dtype=torch.float64))
    (mean.sum() + value.sum()).backward()
    opt.step()
    before = copy.deepcopy(agent.state_dict())
    reset.on_task_switch(3)
    assert not opt.state
    assert torch.all(agent.actor_logstd == 0)  # back to its initial value
    for key, value in before.items():
        if key.endswith("weight"):
            assert not torch.equal(value, agent.state_dict()[key]), key
        elif key.endswith("bias"):
            assert torch.all(agent.state_dict()[key] == 0), key


class SelfInitialising(nn.Module):
    """A model that defines its own init (as every clenv.models network does)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
        self.inits = 0
        self.reset_parameters()

    def reset_parameters(self):
        self.inits += 1
        with torch.no_grad():
            for layer in (self.net[0], self.net[2]):
                layer.weight.copy_(
                    torch.linspace(-1, 1, layer.weight.numel()).view_as(layer.weight)
                )
                layer.bias.fill_(0.5)

    def reset_head_parameters(self):
        self.head_inits = getattr(self, "head_inits", 0) + 1
        with torch.no_grad():
            self.net[2].weight.fill_(0.125)
            self.net[2].bias.fill_(0.5)

    def forward(self, x):
        return self.net(x)


def test_head_reset_re_runs_the_models_own_head_init():
    model = SelfInitialising()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reset = HeadReset(model, opt)
    train_step(model, opt, reset, *batch())
    body = model.net[0].weight.clone()
    reset.on_task_switch(1)
    assert model.head_inits == 1
    assert torch.all(model.net[2].weight == 0.125)
    assert torch.equal(model.net[0].weight, body)
    assert model.net[2].weight not in opt.state and model.net[0].weight in opt.state
    # An explicit head or mode="zero" do not use the model's init.
    HeadReset(model, opt, mode="zero").on_task_switch(1)
    assert torch.all(model.net[2].weight == 0) and model.head_inits == 1
    HeadReset(model, opt, head="net.2").on_task_switch(1)
    assert model.head_inits == 1 and not torch.all(model.net[2].weight == 0)


def test_full_reset_re_runs_the_models_own_init():
    model = SelfInitialising()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reset = FullReset(model, opt)
    initial = copy.deepcopy(model.state_dict())
    train_step(model, opt, reset, *batch())
    assert not torch.equal(model.net[0].weight, initial["net.0.weight"])  # it trained
    reset.on_task_switch(1)
    assert model.inits == 2
    for key, value in initial.items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("reset_optimizer_state", [True, False])
def test_resets_keep_or_clear_the_optimizer_state(reset_optimizer_state):
    # LoP keeps the SGD momentum across its resets; SC builds a new optimizer state.
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = make_method(
        "reset+head_reset",
        model,
        opt,
        reset_optimizer_state=reset_optimizer_state,
    )
    train_step(model, opt, method, *batch())
    momentum = {p: opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    method["head_reset"].on_task_switch(1)
    assert (model[4].weight in opt.state) != reset_optimizer_state
    method["reset"].on_task_switch(1)
    assert (len(opt.state) == 0) == reset_optimizer_state
    if not reset_optimizer_state:
        for param, value in momentum.items():
            assert torch.equal(opt.state[param]["momentum_buffer"], value)


# --------------------------------------------------------------------------- composition


def test_composition_order_is_canonical():
    everything = "er+cbp+snp+l2+redo+head_reset+reset"
    assert split_name(everything) == [
        "reset",
        "head_reset",
        "l2",
        "snp",
        "cbp",
        "redo",
        "er",
    ]
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert (
        make_method("cbp+l2", model, opt).name == make_method("l2+cbp", model, opt).name
    )
    assert (
        make_method("cbp+l2", model, opt, preset="ant")["cbp"].replacement_rate == 1e-7
    )
    assert make_method("cbp", model, opt, preset="ant").replacement_rate == 1e-4


# --------------------------------------------------------------------------- resume

ACTIVE = {  # small settings under which each method acts within 12 steps
    "bp": {},
    "l2": {"weight_decay": 0.01},
    "er": {"interval": 3, "ascent_lr": 0.05},
    "l2er": {"interval": 3, "ascent_lr": 0.05},
    "cbp": {"replacement_rate": 0.05, "maturity_threshold": 2},
    "cbp+l2": {"replacement_rate": 0.05, "maturity_threshold": 2},
    "snp": {"noise_std": 1e-3},
    "snp+l2": {"noise_std": 1e-3},
    "redo": {"interval": 3, "threshold": 0.5},
    "head_reset": {},
    "reset": {},
}


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_state_round_trip_resumes_identically(name):
    steps = [batch(n=4, seed=s) for s in range(12)]
    tasks = [0] * 4 + [1] * 4 + [2] * 4

    def build():
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        return model, opt, make_method(name, model, opt, **ACTIVE[name])

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
    initial = mlp()
    assert any(
        not torch.equal(p, q)
        for p, q in zip(reference[0].parameters(), initial.parameters(), strict=True)
    )
    for p, q in zip(reference[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(p, q)


def test_cbp_on_a_convnet_resets_a_channels_flattened_columns():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    ).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cbp = ContinualBackprop(model, opt, replacement_rate=0.0, maturity_threshold=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(2, (5,), generator=g)
    for _ in range(2):
        train_step(model, opt, cbp, x, y)
    cbp.replacement_rate = 0.4  # int(0.4 * 3) = 1 channel
    train_step(model, opt, cbp, x, y)
    (channel,) = cbp.last_replaced[0].tolist()
    columns = torch.zeros(48, dtype=torch.bool)
    columns[channel * 16 : (channel + 1) * 16] = True
    momentum = opt.state[model[3].weight]["momentum_buffer"]
    assert torch.all(momentum[:, columns] == 0) and torch.any(
        momentum[:, ~columns] != 0
    )
    assert torch.all(model[3].weight[:, columns] == 0)
    assert torch.all(opt.state[model[0].weight]["momentum_buffer"][channel] == 0)


def test_remove_takes_every_hook_off_the_model():
    model, plain = mlp(), mlp()
    method = make_method("cbp+l2", model, None, l2__in_backward=True)
    method.remove()
    x, y = batch()
    for net in (model, plain):
        nn.functional.cross_entropy(net(x), y).backward()
    assert not method["cbp"].recorder.complete()
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


# ------------------------------------------ two features per unit (CReLU, Fourier)


def two_feature_model(kind, activation, norm):
    from clenv.models import ContinualImageNetConvNet, make_mlp

    torch.manual_seed(0)
    if kind == "mlp":
        return make_mlp((6, 8, 8, 3), norm=norm, activation=activation), (16, 6)
    net = ContinualImageNetConvNet(num_classes=3, norm=norm, activation=activation)
    return net, (4, 3, 32, 32)


def unit_columns(hidden, units):
    """Next-layer weight indices along dim 1 fed by ``units`` (k features each)."""
    fan = hidden.next_layer.weight.shape[1]
    per_unit = fan // hidden.num_units
    return (units[:, None] * per_unit + torch.arange(per_unit)).reshape(-1)


@pytest.mark.parametrize("kind", ["mlp", "convnet"])
@pytest.mark.parametrize("activation", ["crelu", "fourier"])
@pytest.mark.parametrize("norm", [None, "layer"])
@pytest.mark.parametrize("reg", ["cbp", "cbp_adaptable", "redo"])
def test_unit_methods_replace_two_feature_units(kind, activation, norm, reg):
    """A replaced unit gets fresh incoming weights, its outgoing columns (both of
    its features: columns 2i and 2i + 1, input channels 2i and 2i + 1 of a next
    conv, 2 * H * W columns of a flattened channel) zeroed with their Adam state,
    its LayerNorm scale 1 and bias 0; every other unit is untouched."""
    from clenv.methods import find_hidden_layers

    model, shape = two_feature_model(kind, activation, norm)
    hidden = find_hidden_layers(model, model_spec(model))
    assert len(hidden) == (2 if kind == "mlp" else 5)
    with torch.no_grad():  # LayerNorm entries away from their initial values
        for h in hidden:
            if h.norm is not None:
                h.norm.weight.fill_(2.0)
                h.norm.bias.fill_(0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)  # only the method moves
    kwargs = (
        {"cbp__replacement_rate": 0.25, "cbp__maturity_threshold": 1}
        if reg.startswith("cbp")
        else {"redo__interval": 1, "redo__threshold": 1.0}
    )
    if reg == "cbp_adaptable":
        reg, kwargs["cbp__utility"] = "cbp", "adaptable_contribution"
    method = make_method(
        reg, model, optimizer, hidden_layers=model_spec(model), **kwargs
    )
    replaced_attr = "last_replaced" if reg == "cbp" else "last_reset"
    checked = 0
    for step in range(3):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(step))
        before = copy.deepcopy(model.state_dict())
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        after_adam = {
            p: optimizer.state[p]["exp_avg"].clone() for p in model.parameters()
        }
        method.after_step(x)
        names = {id(m): n for n, m in model.named_modules()}
        replaced = [getattr(method, replaced_attr)[i] for i in range(len(hidden))]
        for i, h in enumerate(hidden):
            units = replaced[i].cpu()
            if units.numel() == 0 or units.numel() == h.num_units:
                continue
            kept = torch.tensor(
                [u for u in range(h.num_units) if u not in set(units.tolist())]
            )
            layer_name = names[id(h.layer)]
            w0 = before[f"{layer_name}.weight"]
            assert not torch.equal(h.layer.weight[units], w0[units])  # redrawn
            # Columns fed by the previous layer's replaced units were zeroed.
            inputs = torch.arange(w0.shape[1])
            if i > 0 and hidden[i - 1].next_layer is h.layer:
                zeroed = set(unit_columns(hidden[i - 1], replaced[i - 1]).tolist())
                inputs = torch.tensor([c for c in inputs.tolist() if c not in zeroed])
            assert torch.equal(h.layer.weight[kept][:, inputs], w0[kept][:, inputs])
            assert torch.all(h.layer.bias[units] == 0)
            assert torch.all(optimizer.state[h.layer.weight]["exp_avg"][units] == 0)
            next_weight = h.next_layer.weight
            columns = unit_columns(h, units)
            kept_columns = unit_columns(h, kept)
            assert (
                columns.numel() == units.numel() * next_weight.shape[1] // h.num_units
            )
            # Rows of the next layer that its own replacement redrew come after;
            # every other row has the replaced units' columns zero and keeps the
            # kept units'.
            rows = torch.arange(next_weight.shape[0])
            if i + 1 < len(hidden) and hidden[i + 1].layer is h.next_layer:
                rows = torch.tensor(
                    [r for r in rows.tolist() if r not in set(replaced[i + 1].tolist())]
                )
            assert torch.all(next_weight[rows][:, columns] == 0)
            assert torch.all(optimizer.state[next_weight]["exp_avg"][:, columns] == 0)
            w_next0 = before[f"{names[id(h.next_layer)]}.weight"]
            assert torch.equal(
                next_weight[rows][:, kept_columns], w_next0[rows][:, kept_columns]
            )
            assert torch.equal(
                optimizer.state[next_weight]["exp_avg"][rows][:, kept_columns],
                after_adam[next_weight][rows][:, kept_columns],
            )
            if activation == "crelu" and kind == "mlp":  # both columns, by hand
                assert torch.all(next_weight[rows][:, 2 * units] == 0)
                assert torch.all(next_weight[rows][:, 2 * units + 1] == 0)
            if h.norm is not None:
                assert torch.all(h.norm.weight[units] == 1.0)
                assert torch.all(h.norm.bias[units] == 0.0)
                norm_name = names[id(h.norm)]
                assert torch.equal(
                    h.norm.weight[kept], before[f"{norm_name}.weight"][kept]
                )
                assert torch.equal(h.norm.bias[kept], before[f"{norm_name}.bias"][kept])
            checked += 1
    assert checked >= len(hidden)


def model_spec(model):
    return model.hidden_layer_spec() if hasattr(model, "hidden_layer_spec") else None


def test_redo_scores_a_crelu_unit_on_both_of_its_features():
    """Unit 3 with zero incoming weights: both of its CReLU features (2 * 3, 2 * 3 + 1)
    are 0, so ReDo finds it dormant and resets it, and only it."""
    from clenv.models import make_mlp

    torch.manual_seed(0)
    model = make_mlp((6, 8, 3), activation="crelu")
    with torch.no_grad():
        model[0].weight[3] = 0.0
        model[0].bias[3] = 0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    redo = ReDo(model, optimizer, threshold=0.05, interval=1)
    x = torch.randn(32, 6)
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()
    redo.after_step(x)
    assert redo.last_reset[0].tolist() == [3]
    assert (
        torch.all(model[2].weight[:, 6:8] == 0) and model[0].weight[3].abs().sum() > 0
    )


def test_two_feature_activations_are_found_and_counted_per_feature_or_unit():
    """find_hidden_layers sees CReLU / FourierFeatures in a plain Sequential and in a
    PPO actor-critic built with make_mlp; the unit metrics count features by
    default and units with features_per_unit=2 (dead: both features zero)."""
    from clenv.methods import find_hidden_layers
    from clenv.metrics import (
        ACTIVATION_TYPES,
        active_unit_fraction,
        capture_activations,
        dead_unit_mask,
        dormant_unit_mask,
    )
    from clenv.models import CReLU, FourierFeatures, make_mlp

    assert CReLU in ACTIVATION_TYPES and FourierFeatures in ACTIVATION_TYPES

    class CReLUAgent(nn.Module):
        def __init__(self):
            super().__init__()
            self.critic = make_mlp((5, 8, 8, 1), activation="crelu")
            self.actor_mean = make_mlp((5, 8, 8, 2), activation="fourier")

    agent = CReLUAgent()
    found = find_hidden_layers(agent)
    assert [h.name for h in found] == [
        "critic.1",
        "critic.3",
        "actor_mean.1",
        "actor_mean.3",
    ]
    assert [type(h.activation) for h in found] == [CReLU] * 2 + [FourierFeatures] * 2
    plain = nn.Sequential(nn.Linear(3, 4), CReLU(), nn.Linear(8, 2))
    assert [h.name for h in find_hidden_layers(plain)] == ["1"]
    with torch.no_grad():
        plain[0].weight.zero_()
        plain[0].bias.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    features = capture_activations(plain, torch.randn(10, 3))["1"]
    assert features.shape == (10, 8)
    # Unit 0: pre-activation 0, both features dead; units 1-3: one feature dead each.
    assert dead_unit_mask(features).tolist() == [
        True, True, False, True, True, False, False, True
    ]  # fmt: skip
    assert dead_unit_mask(features, features_per_unit=2).tolist() == [
        True, False, False, False
    ]  # fmt: skip
    assert active_unit_fraction(features) == 3 / 8
    assert active_unit_fraction(features, features_per_unit=2) == 3 / 4
    # Unit scores pool their two features: unit 3's is (2 + 0) / 2 = 1.
    assert dormant_unit_mask(features, 0.5, features_per_unit=2).tolist() == [
        True, False, False, False
    ]  # fmt: skip
    fourier = nn.Sequential(nn.Linear(3, 4), FourierFeatures(), nn.Linear(8, 2))
    with torch.no_grad():
        fourier[0].weight.zero_()
        fourier[0].bias.zero_()
    features = capture_activations(fourier, torch.randn(10, 3))["1"]
    assert dead_unit_mask(features).sum() == 4  # the sin features, cos(0) = 1
    assert dead_unit_mask(features, features_per_unit=2).sum() == 0
    with pytest.raises(ValueError, match="features_per_unit"):
        dead_unit_mask(features, features_per_unit=3)


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_unit_methods_and_unit_metrics_group_two_features_alike(conv):
    """CBP's and ReDo's unit_features and the unit metrics' features_per_unit=2 share
    one grouping: unit i owns features (or channels) 2i and 2i + 1."""
    from clenv.methods import find_hidden_layers
    from clenv.methods.units import unit_features
    from clenv.metrics import capture_activations, unit_mean_abs_activation
    from clenv.metrics.units import group_by_unit
    from clenv.models import CReLU

    torch.manual_seed(0)
    if conv:
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3), CReLU(), nn.Flatten(), nn.Linear(6 * 2 * 2, 2)
        )
        x = torch.randn(5, 1, 4, 4)
    else:
        model = nn.Sequential(nn.Linear(4, 3), CReLU(), nn.Linear(6, 2))
        x = torch.randn(5, 4)
    hidden = find_hidden_layers(model)[0]
    features = capture_activations(model, x)["1"]  # (5, 6, ...)
    grouped = unit_features(hidden, features)
    assert grouped.shape == (5, 3, 2, *features.shape[2:])
    torch.testing.assert_close(grouped, group_by_unit(features, 2))
    for unit in range(3):
        for k in range(2):
            torch.testing.assert_close(grouped[:, unit, k], features[:, 2 * unit + k])
        torch.testing.assert_close(
            unit_mean_abs_activation(features, features_per_unit=2)[unit],
            features[:, 2 * unit : 2 * unit + 2].abs().mean(),
        )
    one_per_unit = features[:, :3]  # as many features as units: k = 1, unchanged
    assert unit_features(hidden, one_per_unit) is one_per_unit
    with pytest.raises(ValueError, match="features_per_unit must be >= 1"):
        group_by_unit(features, 4)
    with pytest.raises(ValueError, match="needs \\(samples, features"):
        group_by_unit(features[0, 0].reshape(-1), 2)


def test_importing_metrics_first_has_no_cycle():
    """clenv.metrics.activations imports clenv.models.layers (CReLU, Fourier
    features); a fresh interpreter imports the metrics first, then the rest."""
    import subprocess
    import sys

    code = "import clenv.metrics.activations, clenv.models, clenv.methods"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cbp_keeps_one_mean_per_feature_and_the_bias_absorbs_each():
    """With CReLU, CBP's running mean is per feature, (units, 2), and a replaced
    unit's contribution W[:, 2i] m_2i + W[:, 2i+1] m_2i+1 moves into the next bias."""
    from clenv.methods import find_hidden_layers
    from clenv.methods.units import reinitialize_units
    from clenv.models import make_mlp

    torch.manual_seed(0)
    model = make_mlp((6, 8, 3), activation="crelu").double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    cbp = ContinualBackprop(model, optimizer, maturity_threshold=100)
    x = torch.randn(32, 6, dtype=torch.float64)
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()
    cbp.after_step(x)
    with torch.no_grad():
        pre = model[0](x)
        features = torch.stack((pre.relu(), (-pre).relu()), dim=2)  # (32, 8, 2)
    assert cbp.mean_activations[0].shape == (8, 2)
    torch.testing.assert_close(cbp.mean_activations[0], 0.01 * features.mean(0))

    hidden = find_hidden_layers(model)[0]
    units = torch.tensor([1, 5])
    mean = torch.tensor([[0.5, 2.0], [-1.0, 3.0]], dtype=torch.float64)
    weight, bias = model[2].weight.detach().clone(), model[2].bias.detach().clone()
    reinitialize_units(hidden, units, 0.1, torch.Generator().manual_seed(0), None, mean)
    expected = bias.clone()
    for r, unit in enumerate(units.tolist()):
        expected += (
            weight[:, 2 * unit] * mean[r, 0] + weight[:, 2 * unit + 1] * mean[r, 1]
        )
    torch.testing.assert_close(model[2].bias, expected)
