"""docs/examples run: SB3 PPO, a CleanRL-style loop and TorchRL on clenv/SlipperyAnt-v0.

Each example must see the task switches exactly where the schedule puts them, with the
friction the env itself reports for that task.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import pytest

import clenv

gym.register_envs(clenv)
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", EXAMPLES / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def friction_of(task_id: int, task_seed: int) -> float:
    env = gym.make("clenv/SlipperyAnt-v0", task_seed=task_seed)
    try:
        return env.unwrapped.task_params(task_id)["friction"]
    finally:
        env.close()


def test_sb3_ppo_reads_task_switches_from_info() -> None:
    pytest.importorskip("stable_baselines3")
    example = load_example("sb3_ppo_slippery_ant")
    model, callback = example.main(
        total_timesteps=1536, switch_every=500, seed=3, n_steps=512
    )
    assert model.num_timesteps == 1536
    assert [e["timestep"] for e in callback.switches] == [500, 1000, 1500]
    assert [e["task_id"] for e in callback.switches] == [1, 2, 3]
    for event in callback.switches:
        assert event["task"]["friction"] == pytest.approx(
            friction_of(event["task_id"], 3)
        )


def test_cleanrl_style_loop_with_method_and_metrics(
    capsys: pytest.CaptureFixture,
) -> None:
    example = load_example("cleanrl_style_loop")
    args = example.Args(
        total_timesteps=2048, num_steps=256, num_envs=2, switch_every=256
    )
    result = example.main(args)
    tasks = [task_id for _, task_id, _ in result["switches"]]
    assert tasks[:3] == [1, 2, 3]  # task 4 begins at the very last step, or after it
    # 2 sub-envs: the first to take its 256th step in a task announces the next one at
    # vector step 256 k (global 512 k), later only if autoresets delayed both.
    for (global_step, task_id, task), expected in zip(
        result["switches"][:3], (512, 1024, 1536), strict=True
    ):
        assert expected <= global_step <= expected + 2 * 8
        assert task["friction"] == pytest.approx(friction_of(task_id, args.seed))
    out = capsys.readouterr().out
    assert "erank" in out and "dead" in out


def test_torchrl_gym_env_reads_task_switches() -> None:
    pytest.importorskip("torchrl")
    example = load_example("torchrl_slippery_ant")
    rollout = example.main(steps=300, switch_every=100, seed=0)
    switch_steps = rollout["next", "task_switch"].nonzero().flatten().tolist()
    assert switch_steps == [99, 199, 299]  # the info of the 100th step announces task 1
    task_ids = rollout["next", "task_id"]
    assert task_ids[98].item() == 0 and task_ids[99].item() == 1
    for index in switch_steps:
        task = task_ids[index].item()
        assert rollout["next", "task_friction"][index].item() == pytest.approx(
            friction_of(task, 0)
        )
