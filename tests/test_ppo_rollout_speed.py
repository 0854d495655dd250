"""The PPO rollout's cheaper paths compute the same numbers: ``Agent.act`` (with
the std terms of ``Agent.rollout_std``) against ``get_action_and_value`` (the Normal
distribution), bit for bit; the rollout's values, taken in one batch after it, against
a value per step, up to float round-off; ``generalized_advantages``' numpy loop on
CPU against CleanRL's torch loop, bit for bit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from clenv.rollout import generalized_advantages

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def agent_module():
    spec = importlib.util.spec_from_file_location(
        "ppo_l2er_speed", ROOT / "agents" / "ppo_l2er.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Spaces:
    single_observation_space = gym.spaces.Box(-1.0, 1.0, (105,))
    single_action_space = gym.spaces.Box(-1.0, 1.0, (8,))


@pytest.mark.parametrize("batch", [1, 3])
def test_act_samples_what_get_action_and_value_samples(agent_module, batch):
    torch.manual_seed(0)
    agent = agent_module.Agent(Spaces, (32, 32), log_std_init=-0.3)
    obs = torch.randn(batch, 105)
    torch.manual_seed(7)
    with torch.no_grad():
        action, logprob, _, _ = agent.get_action_and_value(obs)
    torch.manual_seed(7)
    with torch.inference_mode():
        fast = agent.act(obs, *agent.rollout_std(batch))
    assert len(fast) == 2
    assert all(torch.equal(a, b) for a, b in zip((action, logprob), fast, strict=True))
    # The log-probability depends on the draw: a different seed, other numbers.
    with torch.inference_mode():
        assert not torch.equal(agent.act(obs, *agent.rollout_std(batch))[1], logprob)


def test_rollout_std_follows_the_log_std(agent_module):
    agent = agent_module.Agent(Spaces, (8,), log_std_init=-0.3)
    with torch.no_grad():
        agent.actor_logstd.copy_(torch.linspace(-1.0, 1.0, 8))
    std, two_variance, log_std = agent.rollout_std(3)
    expected = agent.actor_logstd.exp().expand(3, -1)
    assert std.shape == (3, 8) and torch.equal(std, expected)
    assert torch.equal(two_variance, 2 * expected**2)
    assert torch.allclose(log_std, agent.actor_logstd.expand(3, -1), atol=1e-6)


def test_values_in_one_batch_match_values_per_step(agent_module):
    """The rollout's values come from one forward pass after it: the numbers of
    a forward pass per step up to float round-off (not bit for bit)."""
    torch.manual_seed(0)
    agent = agent_module.Agent(Spaces, (256, 256))
    obs = torch.randn(512, 105)
    with torch.no_grad():
        batched = agent.get_value(obs).view(-1)
        per_step = torch.cat([agent.get_value(row[None]).view(-1) for row in obs])
    torch.testing.assert_close(batched, per_step, rtol=1e-5, atol=1e-5)


def torch_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """CleanRL's loop, on torch tensors."""
    advantages, lastgaelam = torch.zeros_like(rewards), 0
    for t in reversed(range(rewards.shape[0])):
        if t == rewards.shape[0] - 1:
            nextnonterminal, nextvalues = 1.0 - next_done, next_value
        else:
            nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        advantages[t] = lastgaelam = (
            delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        )
    return advantages


@pytest.mark.parametrize("num_envs", [1, 3])
def test_gae_on_cpu_equals_cleanrls_torch_loop(num_envs):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        steps = 300
        rollout = (
            torch.randn(steps, num_envs, generator=g) * 3,  # rewards
            torch.randn(steps, num_envs, generator=g) * 10,  # values
            (torch.rand(steps, num_envs, generator=g) < 0.05).float(),  # dones
            torch.randn(1, num_envs, generator=g),  # next_value
            (torch.rand(num_envs, generator=g) < 0.5).float(),  # next_done
        )
        expected = torch_gae(*rollout, 0.99, 0.95)
        got = generalized_advantages(*rollout, 0.99, 0.95)
        assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_rollout_values_come_from_the_critic_that_acted(tmp_path, monkeypatch):
    """A method reacting to a task switch (a reset) changes the critic after the
    rollout: the rollout's values, taken in one batch, must come before that, as a
    value per step did; the bootstrap value after it."""
    import runpy

    from clenv.methods import registry
    from clenv.methods.base import PlasticityMethod

    events: list[tuple[str, int]] = []

    class SwitchProbe(PlasticityMethod):
        name = "switchprobe"
        order = 99

        def __init__(self, model, optimizer=None):
            critic = model.critic
            forward = critic.forward

            def recorded(x):
                events.append(("value", x.shape[0]))
                return forward(x)

            critic.forward = recorded

        def on_task_switch(self, task_id=None):
            events.append(("switch", -1))

    monkeypatch.setitem(registry.METHODS, SwitchProbe.name, SwitchProbe)
    num_steps = 64
    monkeypatch.setattr(sys, "argv", [
        "ppo_l2er.py", "--reg", "switchprobe", "--total-timesteps", "192",
        "--num-steps", str(num_steps), "--num-minibatches", "2", "--update-epochs", "1",
        "--hidden-sizes", "8", "--env-kwargs", "switch_every=100", "switch_at=step",
        "--curvature-every-tasks", "0", "--no-progress", "--no-plot",
        "--runs-dir", str(tmp_path),
    ])  # fmt: skip
    runpy.run_path(str(ROOT / "agents" / "ppo_l2er.py"), run_name="__main__")
    switch = events.index(("switch", -1))  # the switch at step 100: the 2nd rollout
    batched = [i for i, event in enumerate(events) if event == ("value", num_steps)]
    assert len(batched) == 3  # one batch of values per rollout
    assert batched[0] < batched[1] < switch < batched[2]
    # The bootstrap value of the switching rollout comes after the method reacted.
    assert events[switch + 1] == ("value", 1)
