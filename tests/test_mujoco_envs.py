"""The MuJoCo continual envs: PhysicsDriftEnv, SlipperyAntEnv and every registered id."""

from __future__ import annotations

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import clenv
from clenv.protocol import INFO_KEYS
from clenv.registration import MUJOCO_ENVS

gym.register_envs(clenv)
ENV_IDS = list(MUJOCO_ENVS)
# check_env's generic advice for MuJoCo's unbounded observation boxes.
KNOWN_WARNINGS = re.compile(r"observation space (minimum|maximum) value is")


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, **kwargs)


def model_value(env: gym.Env) -> float:
    """The drifting parameter as read back from the live MuJoCo model."""
    model = env.unwrapped.model
    if env.unwrapped.parameter == "friction":
        frictions = model.geom_friction[:, 0]
        assert np.all(frictions == frictions[0]), "every geom gets the same friction"
        return float(frictions[0])
    assert env.unwrapped.parameter == "gravity"
    return float(model.opt.gravity[2])


def physics_value(info: dict) -> float:
    (value,) = info["physics"].values()
    return value


def rollout(env: gym.Env, steps: int, seed: int = 0, action_seed: int = 1):
    """(obs, reward, terminated, truncated, info) per step, resets in between."""
    rng = np.random.default_rng(action_seed)
    low, high = env.action_space.low, env.action_space.high
    records = [env.reset(seed=seed)]
    for _ in range(steps):
        record = env.step(rng.uniform(low, high).astype(np.float32))
        records.append(record)
        if record[2] or record[3]:
            records.append(env.reset())
    return records


def task_fields(info: dict) -> tuple:
    return tuple(repr(info[k]) for k in (*INFO_KEYS, "physics"))


# -- checkers -------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_and_sb3_check_env(env_id):
    env = make(env_id, switch_every=7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    unexpected = [
        str(w.message) for w in caught if not KNOWN_WARNINGS.search(str(w.message))
    ]
    assert unexpected == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_info_has_protocol_keys_and_physics_at_reset_and_step(env_id):
    env = make(env_id, switch_every=5)
    _, info = env.reset(seed=0)
    assert set(INFO_KEYS) | {"physics"} <= set(info)
    assert info["task_id"] == 0 and info["task_switch"] and info["task_step"] == 0
    assert info["physics"] == info["task"] == env.unwrapped.task_params(0)
    info = env.step(env.action_space.sample())[4]
    assert set(INFO_KEYS) | {"physics"} <= set(info)


# -- determinism, switch timing -------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_gives_bit_identical_rollouts_across_switches(env_id):
    first = rollout(make(env_id, switch_every=25), 110, seed=3)
    second = rollout(make(env_id, switch_every=25), 110, seed=3)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert repr(a[1:]) == repr(b[1:])
    assert max(r[-1]["task_id"] for r in first) == 4  # 110 steps, 4 switches
    # A different seed gives a different rollout (the check above can fail).
    other = rollout(make(env_id, switch_every=25), 110, seed=4)
    assert not np.array_equal(first[1][0], other[1][0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_mode_switches_exactly_every_switch_every_steps(env_id):
    env = make(env_id, switch_every=30)
    _, info = env.reset(seed=0)
    targets = {0: repr(info["task"])}
    for step in range(1, 95):
        before = model_value(env)
        _, _, terminated, truncated, info = env.step(env.action_space.sample() * 0.3)
        assert info["task_id"] == step // 30
        assert info["task_switch"] == (step % 30 == 0)
        assert info["task_step"] == step % 30
        assert info["task"] == env.unwrapped.task_params(step // 30)
        assert model_value(env) == physics_value(info)
        targets[info["task_id"]] = repr(info["task"])
        if env.unwrapped._drift == "abrupt":
            assert info["physics"] == info["task"]
            # The model changes exactly with the switch, and only then.
            assert (model_value(env) != before) == info["task_switch"]
        if terminated or truncated:
            env.reset()
    assert len(set(targets.values())) == 4


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_episode_end_mode_switches_at_first_reset_after_boundary(env_id):
    # Short episodes (TimeLimit 12) so several boundaries fall inside episodes.
    env = make(env_id, switch_every=20, switch_at="episode_end", max_episode_steps=12)
    _, info = env.reset(seed=0)
    steps_in_task, task_id, switches = 0, 0, 0
    for _ in range(100):
        before = model_value(env)
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        steps_in_task += 1
        assert info["task_id"] == task_id and not info["task_switch"]
        assert model_value(env) == before or env.unwrapped._drift == "gradual"
        if terminated or truncated:
            due = steps_in_task >= 20
            _, info = env.reset()
            assert info["task_switch"] == due and info["task_id"] == task_id + due
            if due:
                task_id, steps_in_task, switches = task_id + 1, 0, switches + 1
                assert info["task"] == env.unwrapped.task_params(task_id)
    assert switches >= 3


def test_done_criterion_slippery_ant_friction_changes_after_1000_steps():
    env = gym.make("clenv/SlipperyAnt-v0", switch_every=1000)
    _, info = env.reset(seed=0)
    friction0 = info["task"]["friction"]
    model = env.unwrapped.model
    np.testing.assert_array_equal(model.geom_friction[:, 0], friction0)
    for step in range(1, 1001):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        if step < 1000:
            assert info["task"]["friction"] == friction0 and not info["task_switch"]
        if terminated or truncated:
            env.reset()
    friction1 = info["task"]["friction"]
    assert info["task_switch"] and info["task_id"] == 1 and friction1 != friction0
    assert info["physics"]["friction"] == friction1
    # Every geom, floor and ant: the in-place change is in the live model.
    assert model.ngeom == 14
    np.testing.assert_array_equal(model.geom_friction[:, 0], friction1)
    np.testing.assert_array_equal(model.geom_friction[:, 1:], 0.5)


def test_running_episode_continues_through_a_switch():
    env = gym.make("clenv/SlipperyAnt-v0", switch_every=10)
    env.reset(seed=0)
    data = env.unwrapped.data
    times = []
    for _ in range(25):
        _, _, terminated, truncated, info = env.step(np.zeros(8, np.float32))
        assert not (terminated or truncated)
        times.append(data.time)
    assert info["task_id"] == 2
    np.testing.assert_allclose(np.diff(times), env.unwrapped.dt)  # no reset happened


# -- vector envs ----------------------------------------------------------------------
def _vector_lockstep(envs, steps: int, switch_every: int) -> None:
    envs.reset(seed=[0, 1])
    for step in range(1, steps + 1):
        infos = envs.step(envs.action_space.sample())[4]
        np.testing.assert_array_equal(infos["task_id"], step // switch_every)
        np.testing.assert_array_equal(infos["task_switch"], step % switch_every == 0)
        for field in ("task", "physics"):
            (key,) = (k for k in infos[field] if not k.startswith("_"))  # "_k": mask
            np.testing.assert_array_equal(infos[field][key], infos[field][key][0])
    first, second = envs.get_attr("physics")
    assert first == second


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sync_vector_env_switches_in_lockstep(env_id):
    envs = gym.make_vec(
        env_id,
        num_envs=2,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        switch_every=15,
    )
    _vector_lockstep(envs, 50, 15)
    frictions = [e.unwrapped.model.geom_friction[:, 0] for e in envs.envs]
    np.testing.assert_array_equal(frictions[0], frictions[1])
    envs.close()


def test_async_vector_env_switches_in_lockstep():
    envs = gym.make_vec(
        "clenv/SlipperyAnt-v0",
        num_envs=2,
        vectorization_mode="async",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        switch_every=15,
    )
    _vector_lockstep(envs, 40, 15)
    assert envs.call("get_schedule_state")[0] == envs.call("get_schedule_state")[1]
    envs.close()
