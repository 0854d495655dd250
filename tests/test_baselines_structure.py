"""The structural baselines: LayerNorm + L2 settings, the optimizers (SGD, Adam,
Muon, TRAC), the losses, plasticity injection and C-CHAIN."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from clenv.losses import make_loss, one_hot_mse
from clenv.methods import CChain, PlasticityInjection, make_method
from clenv.models import PermutedMNISTMLP
from clenv.optim import MuonWithAdam, OptaxAdamW, OptaxMuon, make_optimizer
from clenv.settings import protocol_defaults, rows
from tests.methods_helpers import Agent

HAS_TRAC = importlib.util.find_spec("trac_optimizer") is not None


def small_mlp(seed=0, **kwargs):
    torch.manual_seed(seed)
    return PermutedMNISTMLP(input_dim=12, width=16, depth=2, num_classes=4, **kwargs)


def data(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(4, (n,), generator=g)


def sgd_step(model, optimizer, x, y, method=None):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    if method is not None:
        method.after_backward()
    optimizer.step()
    if method is not None:
        method.after_step(x)


# -- LayerNorm + L2 (SC's laynorm_l2) ----------------------------------------------
@pytest.mark.parametrize(
    "benchmark,preset,weight_decay",
    [
        ("permuted_mnist", "pmnist", 1e-5),
        ("continual_imagenet", "imagenet", 1e-5),
        ("incremental_cifar", "cifar", 1e-4),
    ],
)
def test_layernorm_rows_select_scs_laynorm_l2(benchmark, preset, weight_decay):
    """--norm layer --reg l2 is SC's LayerNorm-L2: the model rows give norm="layer"
    with the "layernorm" tag, and make_method(model_norm="layer") takes the L2 value
    of SC's laynorm_l2 runs instead of its plain L2's."""
    from clenv.models import norm_components

    components = ["l2", *norm_components("layer")]
    assert protocol_defaults(benchmark, "sc", "model", components)["norm"] == "layer"
    assert "norm" not in protocol_defaults(benchmark, "sc", "model", ["l2"])
    model = small_mlp(norm="layer")
    tuned = make_method("l2", model, preset=preset, model_norm="layer")
    plain = make_method("l2", model, preset=preset)
    assert tuned.weight_decay == weight_decay
    assert plain.weight_decay != weight_decay
    assert make_method("l2+layernorm", model, preset=preset).weight_decay == (
        weight_decay
    )


# -- optimizers ---------------------------------------------------------------------
def test_sgd_and_adam_are_the_agents_own_optimizers():
    """make_optimizer with the agents' arguments trains bit for bit as the
    optimizers the agents build by hand."""
    x, y = data()
    for name, by_hand in (
        ("sgd", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=1e-4)),
        (
            "adam",
            lambda p: torch.optim.Adam(
                p, lr=1e-3, betas=(0.99, 0.99), eps=1e-8, weight_decay=0.0
            ),
        ),
    ):
        a, b = small_mlp(), small_mlp()
        if name == "sgd":
            ours = make_optimizer(name, a, 0.01, momentum=0.9, weight_decay=1e-4)
        else:
            ours = make_optimizer(name, a, 1e-3, betas=(0.99, 0.99), eps=1e-8)
        theirs = by_hand(b.parameters())
        assert type(ours) is type(theirs)
        for _ in range(3):
            sgd_step(a, ours, x, y)
            sgd_step(b, theirs, x, y)
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)


@pytest.mark.parametrize("impl", ["optax", "torch"])
def test_muon_updates_matrices_with_muon_and_the_rest_with_adam(impl):
    """SC's optax.contrib.muon: every 2-D weight to Muon (Nesterov 0.95, 5 NS
    steps), the biases to Adam(0.9, 0.999) at the same step size: clenv's optax
    transcription (Nesterov AdamW; tests/test_optim.py checks both against optax's
    update), or torch's Muon and Adam with muon_impl="torch"."""
    x, y = data()
    a, b = small_mlp(norm="layer"), small_mlp(norm="layer")
    ours = make_optimizer("muon", a, 0.02, muon_impl=impl)
    assert isinstance(ours, MuonWithAdam)
    matrices = [p for p in b.parameters() if p.dim() == 2]
    others = [p for p in b.parameters() if p.dim() != 2]
    assert len(matrices) == 3 and len(others) == 3 + 4  # biases, LayerNorm scale/bias
    if impl == "optax":
        muon = OptaxMuon(matrices, lr=0.02)
        adam = OptaxAdamW(others, lr=0.02, nesterov=True)
    else:
        muon = torch.optim.Muon(matrices, lr=0.02, weight_decay=0.0, eps=1e-8)
        adam = torch.optim.Adam(others, lr=0.02)
    assert muon.defaults["momentum"] == 0.95 and muon.defaults["nesterov"]
    assert muon.defaults["ns_steps"] == 5
    for _ in range(3):
        sgd_step(a, ours, x, y)
        muon.zero_grad()
        adam.zero_grad()
        F.cross_entropy(b(x), y).backward()
        muon.step()
        adam.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    kept = make_optimizer("muon", small_mlp(), 0.02, muon_head=False)
    head = kept.muon.param_groups[0]["params"]
    assert all(p is not kept.excluded for p in head) and len(head) == 2


@pytest.mark.parametrize(
    "name", ["sgd", "adam", "muon", pytest.param("trac", marks=pytest.mark.skipif(
        not HAS_TRAC, reason="trac-optimizer not installed (pip install clenv[trac])"
    ))],
)  # fmt: skip
def test_optimizer_state_round_trips_for_an_exact_resume(name):
    x, y = data()
    model = small_mlp()
    optimizer = make_optimizer(name, model, 0.01, momentum=0.9)
    for _ in range(3):
        sgd_step(model, optimizer, x, y)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = small_mlp(seed=5)
    resumed.load_state_dict(saved_model)
    fresh = make_optimizer(name, resumed, 0.01, momentum=0.9)
    fresh.load_state_dict(saved)
    for _ in range(3):
        sgd_step(model, optimizer, x, y)
        sgd_step(resumed, fresh, x, y)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.skipif(not HAS_TRAC, reason="trac-optimizer not installed")
def test_trac_wraps_adam_and_moves_the_weights():
    x, y = data()
    model = small_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer("trac", model, 1e-3)
    assert isinstance(optimizer, torch.optim.Adam)
    assert type(optimizer).__name__ == "TRACAdam"
    for _ in range(3):
        sgd_step(model, optimizer, x, y)
    assert "_trac" in optimizer.state
    assert any(
        not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)
    )


def test_trac_without_its_package_names_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_trac(name, *args, **kwargs):
        if name == "trac_optimizer":
            raise ImportError("No module named 'trac_optimizer'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trac)
    with pytest.raises(ImportError, match=r"pip install clenv\[trac\]"):
        make_optimizer("trac", small_mlp(), 1e-3)


def test_muon_rows_are_make_optimizers_settings():
    """SC's bp_muon settings (rows of kind "optimizer", when="muon") are what
    make_optimizer("muon") builds by default."""
    for benchmark in ("permuted_mnist", "slippery_ant"):
        settings = protocol_defaults(benchmark, "sc", "optimizer", ["muon"])
        assert settings["muon_momentum"] == 0.95 and settings["muon_ns_steps"] == 5
        optimizer = make_optimizer("muon", small_mlp(), 0.01, **settings)
        group = optimizer.muon.param_groups[0]
        assert group["momentum"] == 0.95 and group["nesterov"] is True
        assert group["ns_steps"] == 5 and group["weight_decay"] == 0.0
        assert group["ns_coefficients"] == (3.4445, -4.7750, 2.0315)
        assert group["eps"] == 1e-8 and group["adaptive"] is False
        assert optimizer.adam.param_groups[0]["betas"] == (0.9, 0.999)
        assert optimizer.adam.param_groups[0]["nesterov"] is True
        assert len(group["params"]) == 3  # every 2-D weight, the head's too
        assert protocol_defaults(benchmark, "sc", "optimizer", ["adam"]) == {}


def test_set_learning_rate_moves_every_group():
    from clenv.optim import set_learning_rate

    model = small_mlp()
    optimizer = make_optimizer("muon", model, 0.01)
    make_method("inject", model, optimizer)  # adds a group
    set_learning_rate(optimizer, 0.003)
    assert len(optimizer.param_groups) == 4  # inject: a Muon and an Adam group
    assert {g["lr"] for g in optimizer.param_groups} == {0.003}


def test_muon_state_pops_and_clears_both_parts():
    """The resets and inject drop a parameter's state with optimizer.state.pop and
    a full reset clears it: both reach the Adam part too."""
    x, y = data()
    model = small_mlp()
    optimizer = make_optimizer("muon", model, 0.01)
    sgd_step(model, optimizer, x, y)
    bias, weight = model.head.bias, model.head.weight
    assert bias in optimizer.adam.state and weight in optimizer.muon.state
    optimizer.state.pop(bias, None)
    optimizer.state.pop(weight, None)
    assert bias not in optimizer.adam.state and weight not in optimizer.muon.state
    optimizer.state.clear()
    assert not optimizer.muon.state and not optimizer.adam.state


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        make_optimizer("rmsprop", small_mlp(), 0.01)


# -- losses -------------------------------------------------------------------------
def test_loss_rows_build_the_loss():
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.randint(4, (6,))
    for paper in ("lop", "sc"):
        name = protocol_defaults("permuted_mnist", paper, "loss")["loss"]
        assert make_loss(name) is F.cross_entropy
    mse = make_loss("mse")(logits, labels)
    by_hand = ((logits - F.one_hot(labels, 4).float()) ** 2).sum() / (6 * 4)
    torch.testing.assert_close(mse, by_hand)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")


def test_mse_leaves_masked_classes_out():
    logits = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    active = torch.tensor([True, True, False])
    masked = logits.masked_fill(~active, float("-inf"))
    loss = one_hot_mse(masked, torch.tensor([0]))
    torch.testing.assert_close(loss, torch.tensor((0.25 + 1.0) / 2))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0


# -- plasticity injection -----------------------------------------------------------
def test_injection_leaves_the_output_unchanged_then_trains_only_the_new_head():
    x, y = data()
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = make_method("inject", model, optimizer)
    assert isinstance(method, PlasticityInjection)
    assert len(optimizer.param_groups) == 2  # the new head's group
    for _ in range(2):
        sgd_step(model, optimizer, x, y, method)
    with torch.no_grad():
        before = model(x)
    method.on_task_switch(1)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # exactly, at the moment of injection
    old_head = [p.detach().clone() for p in model.head.parameters()]
    frozen = [p.detach().clone() for p in method.frozen[0].parameters()]
    trained = [p.detach().clone() for p in method.trained[0].parameters()]
    encoder = model.layers[0].weight.detach().clone()
    for _ in range(3):
        sgd_step(model, optimizer, x, y, method)
    assert all(
        torch.equal(p, q)
        for p, q in zip(model.head.parameters(), old_head, strict=True)
    )
    assert all(
        torch.equal(p, q)
        for p, q in zip(method.frozen[0].parameters(), frozen, strict=True)
    )
    assert all(
        not torch.equal(p, q)
        for p, q in zip(method.trained[0].parameters(), trained, strict=True)
    )
    assert not torch.equal(model.layers[0].weight, encoder)  # the encoder learns
    with torch.no_grad():
        expected = model.layers[:-1](x)
        expected = (
            F.linear(expected, model.head.weight, model.head.bias)
            + method.trained[0](expected)
            - method.frozen[0](expected)
        )
        torch.testing.assert_close(model(x), expected)


def test_second_injection_folds_the_pair_into_the_frozen_head():
    x, y = data()
    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = make_method("inject", model, optimizer, inject__interval=2)
    for _ in range(5):  # injections after steps 2 and 4
        sgd_step(model, optimizer, x, y, method)
    assert method.num_injections == 2
    with torch.no_grad():
        before = model(x)
        method.inject()
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_injection_resumes_exactly():
    x, y = data()
    model = small_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    method = make_method("inject", model, optimizer)
    sgd_step(model, optimizer, x, y, method)
    method.on_task_switch(1)
    sgd_step(model, optimizer, x, y, method)
    states = [copy.deepcopy(o.state_dict()) for o in (model, optimizer, method)]
    twin = small_mlp(seed=9)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1e-3)
    twin_method = make_method("inject", twin, twin_optimizer)
    for target, state in zip((twin, twin_optimizer, twin_method), states, strict=True):
        target.load_state_dict(state)  # the order clenv.run.restore uses
    for _ in range(3):
        sgd_step(model, optimizer, x, y, method)
        sgd_step(twin, twin_optimizer, x, y, twin_method)
    assert torch.equal(model(x), twin(x))
    assert not twin.head.weight.requires_grad


def test_injection_finds_every_head_of_a_ppo_agent():
    agent = Agent()
    method = make_method("inject", agent, torch.optim.Adam(agent.parameters()))
    assert {id(h) for h in method.heads} == {
        id(agent.actor_mean[-1]),
        id(agent.critic[-1]),
    }


# -- C-CHAIN ------------------------------------------------------------------------
def actor_and_critic(agent, obs):
    return agent.actor_mean(obs), agent.critic(obs)


def test_cchain_churn_loss_and_gradient_follow_the_definition():
    """L = mean (mu_theta(s) - mu_theta_prev(s))^2 over a reference batch, theta_prev
    the network before the latest step; .grad gains lambda * dL/dtheta."""
    torch.manual_seed(0)
    agent = Agent().double()
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.05)
    method = CChain(agent, optimizer, forward_fn=actor_and_critic, seed=3)
    rollout = torch.randn(32, 5, dtype=torch.float64)
    snapshots = []
    method.before_epoch(rollout)
    for step in range(3):
        obs = rollout[8 * step : 8 * step + 8]
        optimizer.zero_grad()
        agent.actor_mean(obs).square().mean().backward()
        task_grads = [
            None if p.grad is None else p.grad.clone() for p in agent.parameters()
        ]
        snapshots.append(copy.deepcopy(agent))
        method.after_backward()
        if step < 2:  # the term starts at the third update, as the official code
            assert all(
                (p.grad is None and g is None) or torch.equal(p.grad, g)
                for p, g in zip(agent.parameters(), task_grads, strict=True)
            )
        else:
            order = torch.randperm(32, generator=torch.Generator().manual_seed(3))
            reference_obs = rollout[order[:8]]
            previous = snapshots[1]  # the network before the latest step
            loss = (
                (agent.actor_mean(reference_obs) - previous.actor_mean(reference_obs))
                .square()
                .mean()
            )
            churn = torch.autograd.grad(
                loss, list(agent.parameters()), allow_unused=True
            )
            assert method.last_churn_loss == pytest.approx(loss.item())
            for p, g, c in zip(agent.parameters(), task_grads, churn, strict=True):
                if c is None:  # the critic and log-std: no churn term
                    assert p.grad is None and g is None
                else:
                    torch.testing.assert_close(p.grad, g + 100.0 * c)
        optimizer.step()
        method.after_step(obs)


def cchain_iteration(method, agent, optimizer, rollout, policy_losses, epochs=2):
    """One PPO iteration on ``rollout``: ``epochs`` passes of 2 minibatches, each
    reporting the next of ``policy_losses`` through ``after_loss``."""
    losses = iter(policy_losses)
    for _ in range(epochs):
        method.before_epoch(rollout)
        for start in range(0, 16, 8):
            obs = rollout[start : start + 8]
            optimizer.zero_grad()
            loss = -agent.actor_mean(obs).mean() + agent.critic(obs).square().mean()
            method.after_loss({"policy": next(losses), "value": 0.0})
            loss.backward()
            method.after_backward()
            optimizer.step()
            method.after_step(obs)
        method.after_epoch(rollout)


def test_cchain_coefficient_follows_the_official_formula_per_iteration():
    """lambda adapts once per iteration, from the iteration's last minibatch's policy
    and churn losses (crl_run_ppo_c_chain_dmc.py:360-366): from iteration
    ``warmup`` of a task on, 0.05 * mean|p| / (mean churn + 1e-8) over the last
    ``window`` iterations; a task switch starts afresh (lines 167-170)."""
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    method = make_method(
        "cchain",
        agent,
        optimizer,
        forward_fn=actor_and_critic,
        cchain__warmup_iterations=3,
        cchain__window_iterations=2,
    )
    # Four minibatch policy losses per iteration; the official code keeps the last.
    policy_sequence = [
        [9.0, 9.0, 9.0, -2.0],
        [9.0, 9.0, 9.0, 1.5],
        [9.0, 9.0, 9.0, -4.0],
        [9.0, 9.0, 9.0, 3.0],
        [9.0, 9.0, 9.0, -0.5],
    ]
    policy_list, churn_list, coefficients = [], [], []
    for losses in policy_sequence:
        # A new rollout each iteration (the loop's obs.reshape is a new tensor).
        cchain_iteration(method, agent, optimizer, torch.randn(16, 5), losses)
        churn_list.append(method.last_churn_loss)
        policy_list.append(losses[-1])
        coefficients.append(method.coefficient)  # lambda of this iteration's updates
    method.before_epoch(torch.randn(16, 5))  # the next iteration closes the last
    coefficients.append(method.coefficient)
    assert all(c > 0 for c in churn_list)  # the term is on from the third update
    # The official lines 361-366, iteration counting from 1.
    expected, coefficient = [100.0], 100.0
    for iteration in range(1, len(policy_list) + 1):
        if iteration >= 3:
            p = np.mean(np.abs(policy_list[:iteration][-2:]))
            r = np.mean(churn_list[:iteration][-2:])
            coefficient = 0.05 * p / (r + 1e-8)
        expected.append(coefficient)
    assert coefficients == pytest.approx(expected, rel=1e-12)
    assert coefficients[:3] == [100.0] * 3 and coefficients[3] != 100.0
    # By hand, iteration 3: 0.05 * (1.5 + 4) / 2 / ((c2 + c3) / 2 + 1e-8).
    assert coefficients[3] == pytest.approx(
        0.05 * 2.75 / ((churn_list[1] + churn_list[2]) / 2 + 1e-8)
    )

    method.on_task_switch(1)
    assert method.coefficient == 100.0 and not method.policy_losses
    rollout = torch.randn(16, 5)
    method.before_epoch(rollout)
    obs = rollout[:8]
    optimizer.zero_grad()
    agent.actor_mean(obs).sum().backward()
    method.after_backward()
    assert method.last_churn_loss == 0.0  # the new task's first update: no term


def test_cchain_coefficient_stays_without_after_loss():
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    method = CChain(agent, optimizer, forward_fn=actor_and_critic, warmup_iterations=1)
    for _ in range(3):
        rollout = torch.randn(16, 5)
        method.before_epoch(rollout)
        for start in range(0, 16, 8):
            obs = rollout[start : start + 8]
            optimizer.zero_grad()
            agent.actor_mean(obs).sum().backward()
            method.after_backward()
            optimizer.step()
            method.after_step(obs)
        method.after_epoch(rollout)
    method.before_epoch(torch.randn(16, 5))
    assert method.iterations == 3 and method.coefficient == 100.0


def test_cchain_iteration_ends_on_a_new_or_rewritten_rollout():
    """Epochs on one rollout are one iteration; a new tensor, or the same buffer
    written in place (a loop that reuses its storage), starts the next."""
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.SGD(agent.parameters(), lr=1e-3)
    method = CChain(agent, optimizer, forward_fn=actor_and_critic)
    buffer = torch.randn(16, 5)
    cchain_iteration(method, agent, optimizer, buffer, [1.0] * 6, epochs=3)
    cchain_iteration(method, agent, optimizer, buffer, [1.0] * 4)  # unchanged
    assert method.iterations == 0
    buffer[0] = 0.0
    method.before_epoch(buffer)
    assert method.iterations == 1
    method.before_epoch(buffer.clone())  # no update since: nothing to close
    assert method.iterations == 1


def test_cchain_resumes_exactly():
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
    kwargs = dict(
        forward_fn=actor_and_critic,
        cchain__warmup_iterations=2,
        cchain__window_iterations=3,
    )
    method = make_method("cchain", agent, optimizer, **kwargs)
    rollouts = [torch.randn(16, 5) for _ in range(5)]
    for rollout in rollouts[:4]:
        cchain_iteration(method, agent, optimizer, rollout, [-1.0, 0.5, 2.0, -3.0])
    twin_agent = Agent()
    twin_optimizer = torch.optim.Adam(twin_agent.parameters(), lr=1e-3)
    twin = make_method("cchain", twin_agent, twin_optimizer, **kwargs)
    twin_agent.load_state_dict(agent.state_dict())
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.load_state_dict(copy.deepcopy(method.state_dict()))
    for m, a, o in ((method, agent, optimizer), (twin, twin_agent, twin_optimizer)):
        cchain_iteration(m, a, o, rollouts[4], [1.0, 1.0, 1.0, 1.0])
    assert method.coefficient != 100.0
    assert twin.coefficient == method.coefficient
    for p, q in zip(agent.parameters(), twin_agent.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cchain_needs_the_rollout():
    agent = Agent()
    method = CChain(agent, forward_fn=actor_and_critic)
    with pytest.raises(ValueError, match="before_epoch"):
        method.before_epoch(None)


def test_every_new_row_has_a_source():
    for benchmark in ("permuted_mnist", "slippery_ant"):
        kinds = {row.kind for row in rows(benchmark)}
        assert "optimizer" in kinds


def test_metrics_and_unit_methods_read_the_activation_after_the_norm():
    """With norm="layer" the spec names Linear -> LayerNorm -> ReLU: the dead-unit
    metric sees a unit the LayerNorm's bias kills, and CBP resets a replaced unit's
    LayerNorm scale and bias with its weights."""
    from clenv.methods import find_hidden_layers
    from clenv.metrics import capture_activations, dead_unit_mask

    model = small_mlp(norm="layer")
    hidden = find_hidden_layers(model, model.hidden_layer_spec())
    first = hidden[0]
    with torch.no_grad():
        first.norm.bias[3] = -100.0  # unit 3 can never be positive
        first.norm.weight[5] = 7.0
    x, y = data(64)
    features = capture_activations(model, x, [first.name])[first.name]
    assert dead_unit_mask(features)[3] and dead_unit_mask(features).sum() == 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method = make_method(
        "cbp",
        model,
        optimizer,
        hidden_layers=model.hidden_layer_spec(),
        cbp__replacement_rate=1.0,
        cbp__maturity_threshold=1,
    )
    for _ in range(3):
        sgd_step(model, optimizer, x, y, method)
    assert first.norm.bias[3] == 0.0 and first.norm.weight[5] == 1.0
