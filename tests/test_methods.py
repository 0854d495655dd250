"""clenv.methods: hooks, composition, L2, ER / L2-ER, presets and layer discovery."""

from __future__ import annotations

import copy

import pytest
import torch
from methods_helpers import Agent, agent_forward, batch, mlp, train_step
from torch import nn

from clenv.methods import (
    L2,
    PRESETS,
    Compose,
    EffectiveRankAscent,
    PlasticityMethod,
    find_hidden_layers,
    find_output_layers,
    make_method,
    method_names,
    split_name,
)
from clenv.metrics import effective_rank
from clenv.settings import rows as settings_rows

# --------------------------------------------------------------------------- layers


def test_discovers_hidden_layers_of_an_mlp():
    model = mlp()
    hidden = find_hidden_layers(model)
    assert [h.name for h in hidden] == ["1", "3"]
    assert hidden[0].layer is model[0] and hidden[0].next_layer is model[2]
    assert find_output_layers(model, hidden) == [model[4]]


def test_discovers_actor_and_critic_layers_of_a_ppo_agent():
    agent = Agent()
    names = [h.name for h in find_hidden_layers(agent)]
    assert names == ["critic.1", "actor_mean.1", "actor_mean.3"]
    outputs = find_output_layers(agent, find_hidden_layers(agent))
    assert outputs == [agent.critic[2], agent.actor_mean[4]]


def test_discovers_conv_layers_through_norm_pool_and_flatten():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 2 * 2, 7),
        nn.ReLU(),
        nn.Linear(7, 2),
    )
    hidden = find_hidden_layers(model)
    assert [h.name for h in hidden] == ["2", "5", "8"]
    assert hidden[0].norm is model[1]
    assert [h.outgoing_columns() for h in hidden] == [1, 4, 1]


def test_explicit_spec_and_clear_errors():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    with pytest.raises(ValueError, match="found no hidden layer"):
        find_hidden_layers(Custom())
    hidden = find_hidden_layers(Custom(), [("fc1", "act", "fc2")])
    assert hidden[0].num_units == 4
    with pytest.raises(ValueError, match="has no module 'fc3'"):
        find_hidden_layers(Custom(), [("fc1", "act", "fc3")])
    with pytest.raises(ValueError, match="normalisation layer"):
        find_hidden_layers(Custom(), [("fc1", "act", "act", "fc2")])


def test_explicit_spec_with_a_norm_layer_resets_its_entries_in_cbp():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.relu1, self.conv2 = nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)

        def forward(self, x):
            return self.conv2(self.relu1(self.bn1(self.conv1(x)))) + x

    block = Block().double()
    spec = [("conv1", "bn1", "relu1", "conv2")]
    (hidden,) = find_hidden_layers(block, spec)
    assert hidden.norm is block.bn1 and hidden.name == "relu1"
    method = make_method(
        "cbp",
        block,
        None,
        replacement_rate=0.5,
        maturity_threshold=0,
        hidden_layers=spec,
    )
    with torch.no_grad():
        block.bn1.weight.fill_(3.0)
    block(torch.rand(3, 2, 5, 5, dtype=torch.float64))
    method.after_step(None)
    units = method.last_replaced[0]
    assert units.numel() == 2
    assert torch.all(block.bn1.weight[units] == 1) and torch.all(
        block.bn1.running_var[units] == 1
    )


# --------------------------------------------------------------------------- registry


def test_names_and_composition_order():
    assert {"bp", "l2", "er", "l2er"} <= set(method_names())
    assert split_name("l2er") == ["l2", "er"]
    assert split_name("bp") == []
    with pytest.raises(ValueError, match="unknown method 'l3'"):
        split_name("l3")
    with pytest.raises(ValueError, match="twice"):
        split_name("l2+l2er")


def test_make_method_presets_and_overrides():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = make_method("l2er", model, opt, preset="pmnist")
    assert isinstance(method, Compose)
    assert method["l2"].weight_decay == 1e-3
    assert method["er"].ascent_lr == 1e-2 and method["er"].interval == 100
    er_only = make_method("er", model, opt, preset="pmnist")
    assert isinstance(er_only, EffectiveRankAscent) and er_only.ascent_lr == 1e-4
    assert make_method("l2", model, opt, preset="pmnist_lop").weight_decay == 1e-4
    with_head = make_method("l2er+head_reset", model, opt, preset="pmnist")
    assert with_head["er"].ascent_lr == 1e-2  # L2-ER's eta inside a larger method
    custom = make_method("l2er", model, opt, preset="pmnist", er__interval=7)
    assert custom["er"].interval == 7
    assert make_method("l2er", model, opt, weight_decay=0.5)["l2"].weight_decay == 0.5
    assert make_method("bp", model, opt).name == "bp"
    shared = {"seed": 3, "forward_fn": lambda m, x: m(x), "hidden_layers": None}
    assert make_method("l2", model, opt, **shared).weight_decay == 1e-3
    with pytest.raises(ValueError, match="no component"):
        make_method("l2", model, opt, interval=3)
    with pytest.raises(ValueError, match="unknown preset"):
        make_method("l2", model, opt, preset="mnist")
    assert set(PRESETS) >= {"pmnist", "imagenet", "cifar", "ant", "ant_lop"}


PRESET_OF = {
    ("permuted_mnist", "sc"): "pmnist",
    ("permuted_mnist", "lop"): "pmnist_lop",
    ("continual_imagenet", "sc"): "imagenet",
    ("continual_imagenet", "lop"): "imagenet_lop",
    ("incremental_cifar", "sc"): "cifar",
    ("incremental_cifar", "lop"): "cifar_lop",
    ("slippery_ant", "sc"): "ant",
    ("slippery_ant", "lop"): "ant_lop",
}


@pytest.mark.parametrize("benchmark, paper", sorted(PRESET_OF))
def test_every_method_row_resolves_in_its_preset(benchmark, paper):
    """Each kind="method" row of clenv.settings is the argument make_method gives."""
    model = mlp((6, 8, 8, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    checked = 0
    for row in settings_rows(benchmark):
        value = row.value(paper)
        if row.kind != "method" or value is None:
            continue
        component, argument = row.name.split(".", 1)
        name = row.when or component
        method = make_method(name, model, opt, preset=PRESET_OF[benchmark, paper])
        built = method[component] if isinstance(method, Compose) else method
        assert getattr(built, argument) == value.value, (row.name, row.when)
        checked += 1
    assert checked >= 5


def test_every_preset_builds_every_method():
    model = mlp((6, 8, 8, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for preset in PRESETS:
        for name in method_names():
            assert isinstance(
                make_method(name, model, opt, preset=preset), PlasticityMethod
            )


def test_compose_calls_hooks_in_list_order_and_checks_state():
    calls = []

    class Spy(PlasticityMethod):
        def __init__(self, name):
            self.name = name

        def after_backward(self):
            calls.append((self.name, "after_backward"))

        def after_step(self, inputs=None):
            calls.append((self.name, "after_step"))

        def after_epoch(self, inputs=None):
            calls.append((self.name, "after_epoch"))

        def on_task_switch(self, task_id):
            calls.append((self.name, "on_task_switch"))

    both = Compose([Spy("a"), Spy("b")])
    both.after_backward()
    both.after_step(None)
    both.after_epoch(None)
    both.on_task_switch(1)
    hooks = ["after_backward", "after_step", "after_epoch", "on_task_switch"]
    assert calls == [(n, h) for h in hooks for n in "ab"]
    with pytest.raises(ValueError, match="build the same --reg"):
        Compose([Spy("b"), Spy("a")]).load_state_dict(both.state_dict())


# --------------------------------------------------------------------------- L2


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [
        (torch.optim.SGD, {"lr": 0.1}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
        (torch.optim.Adam, {"lr": 0.01, "betas": (0.99, 0.99)}),
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "fused": True}),
        (torch.optim.Adam, {"lr": 0.01, "betas": (0.99, 0.99), "fused": True}),
    ],
)
@pytest.mark.parametrize("in_backward", [False, True])
def test_l2_step_equals_the_optimizers_coupled_weight_decay(
    optimizer_cls, kwargs, in_backward
):
    x, y = batch()
    ours, reference = mlp(), mlp()
    opt = optimizer_cls(ours.parameters(), **kwargs)
    ref_opt = optimizer_cls(reference.parameters(), weight_decay=0.05, **kwargs)
    method = L2(ours, opt, weight_decay=0.05, in_backward=in_backward)
    for _ in range(3):
        train_step(ours, opt, method, x, y)
        train_step(reference, ref_opt, PlasticityMethod(), x, y)
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def test_l2_in_backward_adds_at_every_backward_and_can_be_removed():
    model = mlp()
    method = L2(model, weight_decay=0.3, in_backward=True)
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    task = [p.grad.clone() for p in model.parameters()]
    method.after_backward()  # a no-op: the term is already in .grad
    plain = mlp()
    nn.functional.cross_entropy(plain(x), y).backward()
    for p, q, g in zip(model.parameters(), plain.parameters(), task, strict=True):
        torch.testing.assert_close(g, q.grad + 0.3 * p)
    method.remove()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for p, q in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_l2_rides_in_a_fused_update_leaving_grad_and_checkpoints_alone():
    x, y = batch()
    ours, reference, plain = mlp(), mlp(), mlp()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, fused=True)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    method = L2(ours, opt, weight_decay=0.05)
    assert method.fused and method.hyperparameters()["fused"]
    ref_method = L2(reference, ref_opt, weight_decay=0.05)
    assert not ref_method.fused  # foreach SGD: the after_backward pass
    train_step(ours, opt, method, x, y)
    train_step(reference, ref_opt, ref_method, x, y)
    # .grad is the task gradient only; the optimizer's own weight_decay stays 0.
    nn.functional.cross_entropy(plain(x), y).backward()
    for p, q in zip(ours.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    assert opt.state_dict()["param_groups"][0]["weight_decay"] == 0
    # A checkpoint from any run loads; the decay is still applied after it.
    opt.load_state_dict(torch.optim.SGD(ours.parameters(), lr=0.1).state_dict())
    train_step(ours, opt, method, x, y)
    train_step(reference, ref_opt, ref_method, x, y)
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    method.remove()
    before = [p.detach().clone() for p in ours.parameters()]
    for p in ours.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # no hook left: a zero gradient moves nothing
    for p, q in zip(ours.parameters(), before, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make_optimizer, problem",
    [
        (lambda ps: torch.optim.AdamW(ps, fused=True), "decoupled"),
        (lambda ps: torch.optim.RMSprop(ps), "not SGD or Adam"),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, fused=True, maximize=True), "maxim"),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=1e-3, fused=True), "own"),
        (lambda ps: torch.optim.SGD(list(ps)[:-1], lr=0.1, fused=True), "exactly"),
    ],
)
def test_l2_fuses_only_when_exact_and_says_why_not(make_optimizer, problem):
    model = mlp()
    opt = make_optimizer(model.parameters())
    assert not L2(model, opt, weight_decay=0.1).fused  # falls back to after_backward
    with pytest.raises(ValueError, match=problem):
        L2(model, opt, weight_decay=0.1, fuse=True)
    assert not L2(model, None).fused
    fused_sgd = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    assert not L2(model, fused_sgd, fuse=False).fused
    assert not L2(model, fused_sgd, in_backward=True).fused


def test_l2_adds_lambda_theta_to_every_gradient_biases_included():
    model = mlp()
    method = L2(model, weight_decay=0.3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.after_backward()
    for p in model.parameters():
        torch.testing.assert_close(p.grad, 0.3 * p)


# --------------------------------------------------------------------------- ER


def mean_rank(model, x):
    with torch.no_grad():
        feats = EffectiveRankAscent(model).features(x)
        return torch.stack([effective_rank(f) for f in feats]).mean().item()


def test_er_ascent_step_raises_the_effective_rank_of_the_features():
    model = mlp((6, 32, 32, 3))
    x, _ = batch(n=64)
    before = mean_rank(model, x)
    EffectiveRankAscent(model, ascent_lr=0.05).ascend(x)
    assert mean_rank(model, x) > before + 1e-3


def test_er_ascent_is_theta_plus_eta_grad_of_mean_erank():
    model = mlp()
    reference = copy.deepcopy(model)
    x, _ = batch(n=20)
    EffectiveRankAscent(model, ascent_lr=0.1).ascend(x)
    # Dense reference: features by hand, autograd on the mean of both layers' ranks.
    h1 = torch.relu(reference[0](x))
    h2 = torch.relu(reference[2](h1))
    objective = (effective_rank(h1) + effective_rank(h2)) / 2
    names = [n for n, _ in reference.named_parameters()]
    grads = torch.autograd.grad(
        objective, list(reference.parameters()), allow_unused=True
    )
    for (name, p), q, g in zip(
        model.named_parameters(), reference.parameters(), grads, strict=True
    ):
        expected = q.detach() if g is None else q.detach() + 0.1 * g
        torch.testing.assert_close(p.detach(), expected, msg=name)
    assert names[-2:] == ["4.weight", "4.bias"]  # the output layer gets no ER gradient


@pytest.mark.parametrize(
    "optimizer_cls, kwargs",
    [
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
        (torch.optim.Adam, {"lr": 0.01}),
    ],
)
def test_l2er_schedule_is_exact_and_leaves_the_optimizer_alone(optimizer_cls, kwargs):
    model = mlp()
    opt = optimizer_cls(model.parameters(), **kwargs)
    method = make_method("l2er", model, opt, preset="pmnist", interval=3)
    er = method["er"]
    ascents, buffers = [], []
    real_ascend = er.ascend

    def spy(inputs):
        ascents.append(er.num_steps)
        buffers.append(inputs.clone())
        opt_state = copy.deepcopy(opt.state_dict())
        grads = [p.grad.clone() for p in model.parameters()]
        out = real_ascend(inputs)
        after = opt.state_dict()
        for key, value in opt_state["state"].items():
            for name, tensor in value.items():
                assert torch.equal(after["state"][key][name], tensor), name
        for p, g in zip(model.parameters(), grads, strict=True):
            assert torch.equal(p.grad, g)  # .grad untouched too
        return out

    er.ascend = spy
    inputs = [batch(n=4, seed=s) for s in range(8)]
    for x, y in inputs:
        train_step(model, opt, method, x, y)
    assert ascents == [3, 6]
    # The buffer is exactly the last U minibatches' inputs.
    torch.testing.assert_close(buffers[1], torch.cat([x for x, _ in inputs[3:6]]))
    assert len(er.buffer) == 2


def test_er_epoch_schedule_and_forward_fn_for_a_ppo_agent():
    agent = Agent().double()
    method = make_method("l2er", agent, None, preset="ant", forward_fn=agent_forward)
    er = method["er"]
    assert er.schedule == "epoch" and er.ascent_lr == 1e-6
    # SC ascends before each epoch (rlopt/ppo_nonstationary.py:513-520)
    assert er.timing == "before" and er.layer_groups == "by_network"
    assert er.layer_names == ["critic.1", "actor_mean.1", "actor_mean.3"]
    obs = torch.randn(32, 5, dtype=torch.float64)
    before = {n: p.clone() for n, p in agent.named_parameters()}
    method.after_step(obs)  # nothing buffered or ascended on steps
    assert er.num_ascents == 0 and not er.buffer
    er.ascent_lr = 1.0
    method.before_epoch(obs)
    assert er.num_ascents == 1
    changed = {n for n, p in agent.named_parameters() if not torch.equal(p, before[n])}
    # The hidden layers of critic and actor move; the actor's output layer cannot.
    assert {"critic.0.weight", "actor_mean.0.weight", "actor_mean.2.weight"} <= changed
    assert "actor_mean.4.weight" not in changed


def test_er_by_network_objective_is_mean_actor_rank_plus_mean_critic_rank():
    agent = Agent().double()
    obs = torch.randn(32, 5, dtype=torch.float64)
    er = EffectiveRankAscent(
        agent, schedule="epoch", layer_groups="by_network", forward_fn=agent_forward
    )
    assert er.groups == ["critic", "actor_mean", "actor_mean"]
    # By hand: SC's rlopt/ppo_nonstationary.py:87-93.
    critic = effective_rank(torch.tanh(agent.critic[0](obs)))
    a1 = torch.relu(agent.actor_mean[0](obs))
    a2 = torch.relu(agent.actor_mean[2](a1))
    actor = (effective_rank(a1) + effective_rank(a2)) / 2
    torch.testing.assert_close(er.objective(obs), actor + critic)
    flat = EffectiveRankAscent(agent, schedule="epoch", forward_fn=agent_forward)
    torch.testing.assert_close(
        flat.objective(obs), (effective_rank(a1) + effective_rank(a2) + critic) / 3
    )
    with pytest.raises(ValueError, match="layer_groups"):
        EffectiveRankAscent(agent, layer_groups="per_layer")


def test_er_before_timing_ascends_in_before_epoch_and_not_after_epoch():
    agent = Agent().double()
    obs = torch.randn(32, 5, dtype=torch.float64)
    method = make_method(
        "l2er",
        agent,
        None,
        forward_fn=agent_forward,
        er__schedule="epoch",
        er__timing="before",
        er__ascent_lr=1.0,
    )
    er = method["er"]
    before = copy.deepcopy(agent.state_dict())
    method.after_epoch(obs)
    assert er.num_ascents == 0
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in before.items())
    method.before_epoch(obs)
    assert er.num_ascents == 1
    assert not torch.equal(before["actor_mean.0.weight"], agent.actor_mean[0].weight)
    after = make_method("er", agent, None, forward_fn=agent_forward, schedule="epoch")
    after.before_epoch(obs)
    assert after.num_ascents == 0
    after.after_epoch(obs)
    assert after.num_ascents == 1
    with pytest.raises(ValueError, match="schedule='epoch'"):
        EffectiveRankAscent(agent, timing="before")
    with pytest.raises(ValueError, match="before_epoch\\(inputs\\)"):
        method.before_epoch(None)


def test_ascent_group_size_is_u_only_for_er_ascending_before_each_group():
    """The grouped ascent a supervised loop must drive (SC's ImageNet and CIFAR: ER
    with timing="before" on the next U minibatches) is asked of the method, whatever
    components it is composed of."""
    model = mlp()
    assert make_method("bp", model, None).ascent_group_size is None
    assert make_method("cbp+l2", model, None).ascent_group_size is None
    assert make_method("l2er", model, None, preset="pmnist").ascent_group_size is None
    for preset, interval in (("imagenet", 12), ("cifar", 5)):
        method = make_method("l2er", model, None, preset=preset)
        assert method["er"].interval == interval
        assert method.ascent_group_size == interval
    grouped = make_method(
        "er", model, None, schedule="epoch", timing="before", interval=7
    )
    assert grouped.ascent_group_size == 7
    after = EffectiveRankAscent(model, schedule="epoch", interval=7)
    assert after.ascent_group_size is None  # ascends after the loop's own epochs
    assert Compose([grouped, after]).ascent_group_size == 7
    other = EffectiveRankAscent(model, schedule="epoch", timing="before", interval=3)
    with pytest.raises(ValueError, match="different ascent groups"):
        _ = Compose([grouped, other]).ascent_group_size


def test_make_method_takes_forward_fn_and_hidden_layers_for_every_name():
    agent = Agent().double()
    spec = [("actor_mean.0", "actor_mean.1", "actor_mean.2")]
    for name in method_names():
        method = make_method(
            name, agent, None, forward_fn=agent_forward, hidden_layers=spec, seed=3
        )
        assert isinstance(method, PlasticityMethod), name
    er = make_method("er", agent, None, forward_fn=agent_forward, hidden_layers=spec)
    assert er.layer_names == ["actor_mean.1"] and er.forward_fn is agent_forward
    cbp = make_method("cbp", agent, None, hidden_layers=spec)
    assert [h.name for h in cbp.hidden] == ["actor_mean.1"]


def test_er_keeps_batchnorm_statistics_and_rejects_shared_activations():
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    ).double()
    stats = {k: v.clone() for k, v in model[1].named_buffers()}
    EffectiveRankAscent(model, ascent_lr=0.1).ascend(batch(n=16)[0])
    assert not torch.equal(model[1].weight, torch.ones(8, dtype=torch.float64))
    for key, value in stats.items():
        assert torch.equal(getattr(model[1], key), value), key

    class SharedRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Linear(6, 4), nn.Linear(4, 2), nn.ReLU()
            self.c = nn.Linear(2, 2)

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    shared = SharedRelu().double()
    er = EffectiveRankAscent(shared, layers=["relu"])
    with pytest.raises(ValueError, match="ran 2 times"):
        er.ascend(batch(n=4)[0])


def test_er_needs_inputs_and_valid_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="after_step\\(inputs\\)"):
        EffectiveRankAscent(model).after_step(None)
    with pytest.raises(ValueError, match="interval"):
        EffectiveRankAscent(model, interval=0)
    with pytest.raises(ValueError, match="last_layers"):
        EffectiveRankAscent(model, last_layers=5)
    assert EffectiveRankAscent(model, last_layers=1).layer_names == ["3"]


def test_er_record_counts_steps_for_a_loop_that_runs_several_at_once():
    model = mlp()
    er = EffectiveRankAscent(model, ascent_lr=0.1, interval=5)
    x, _ = batch(n=5)
    assert er.steps_until_ascent() == 5
    assert not er.record(x[:3], steps=3) and er.steps_until_ascent() == 2
    with pytest.raises(ValueError, match="past the next ascent"):
        er.record(x[3:], steps=3)
    assert er.record(x[3:], steps=2)  # due now
    before = model[0].weight.clone()
    er.ascend_on_buffer()
    assert er.num_ascents == 1 and not er.buffer
    assert not torch.equal(model[0].weight, before)
    assert er.steps_until_ascent() == 5


def test_l2er_state_round_trip_resumes_identically():
    inputs = [batch(n=4, seed=s) for s in range(10)]

    def build():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, make_method("l2er", model, opt, preset="pmnist", interval=4)

    model, opt, method = build()
    for x, y in inputs:
        train_step(model, opt, method, x, y)

    first, opt_a, method_a = build()
    for x, y in inputs[:6]:
        train_step(first, opt_a, method_a, x, y)
    saved = copy.deepcopy(
        (first.state_dict(), opt_a.state_dict(), method_a.state_dict())
    )
    resumed, opt_b, method_b = build()
    resumed.load_state_dict(saved[0])
    opt_b.load_state_dict(saved[1])
    method_b.load_state_dict(saved[2])
    for x, y in inputs[6:]:
        train_step(resumed, opt_b, method_b, x, y)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bench_methods_runs_every_method_and_reports_ratios_to_bp(capsys):
    from clenv.bench.methods import main

    threads = torch.get_num_threads()
    try:
        figures = main(
            "--width 8 --rounds 1 --batch-sizes 1,4 --intervals 10,3 --block-steps 10 "
            "--methods l2er,l2er:in_backward,cbp".split()
        )
    finally:
        torch.set_num_threads(threads)
    assert list(figures[4]) == ["bp", "l2er", "l2er:in_backward", "cbp"]
    assert figures[1]["bp"]["ratio"] == 1.0 and figures[4]["cbp"]["ms_per_step"] > 0
    assert "l2er at batch 1:" in capsys.readouterr().out


def test_add_to_grad_sets_adds_scales_and_copies_a_view_it_is_given():
    from clenv.methods.base import add_to_grad

    param = torch.nn.Parameter(torch.zeros(3))
    buffer = torch.arange(6.0)
    add_to_grad(param, buffer[:3], copy=True)  # set: its own tensor, not the buffer's
    buffer.zero_()
    assert param.grad.tolist() == [0.0, 1.0, 2.0]
    add_to_grad(param, torch.ones(3), alpha=0.5)  # add, scaled
    assert param.grad.tolist() == [0.5, 1.5, 2.5]
    other = torch.nn.Parameter(torch.zeros(2))
    grad = torch.tensor([1.0, -2.0])
    add_to_grad(other, grad, alpha=3.0)  # set, scaled: a new tensor
    assert other.grad.tolist() == [3.0, -6.0] and grad.tolist() == [1.0, -2.0]
    add_to_grad(other, grad)  # add in place
    assert other.grad.tolist() == [4.0, -8.0]
