"""``gym.make_vec`` of a clenv id: one task clock for every sub-env (clenv.vector).

Each test checks the sub-envs themselves (their task, their physics), not only the
infos the vector env writes, against a reference clock that restates the documented
rule (docs/protocol.md, "Vector envs").
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import clenv
from clenv.protocol import task_ids, task_switches
from clenv.registration import MUJOCO_ENVS
from clenv.vector import ContinualVectorEnv

gym.register_envs(clenv)

NEXT, SAME = AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP
NUM_ENVS = 3
# Short episodes that end at different steps in different sub-envs where the env can
# terminate (Ant: a narrow healthy height; Walker2d: a narrow healthy angle).
MUJOCO_KWARGS = {
    "clenv/SlipperyAnt-v0": {"healthy_z_range": (0.3, 0.8)},
    "clenv/SlipperyWalker2d-v0": {
        "base_env_kwargs": {"healthy_angle_range": (-0.1, 0.1)}
    },
}
SUPERVISED_SMALL = {
    "clenv/PermutedMNIST-v0": {"examples_per_task": 12, "num_tasks": 6},
    "clenv/ContinualImageNet-v0": {
        "epochs_per_task": 1,
        "num_tasks": 3,
        "num_classes": 6,
        "train_images_per_class": 3,
        "test_images_per_class": 2,
    },
    "clenv/IncrementalCIFAR100-v0": {
        "epochs_per_task": 1,
        "num_tasks": 3,
        "train_images_per_class": 1,
    },
}


def make_mujoco_vec(env_id, autoreset_mode=NEXT, asynchronous=False, **kwargs):
    kwargs = {
        "switch_every": 10,
        "max_episode_steps": 9,
        **MUJOCO_KWARGS.get(env_id, {}),
        **kwargs,
    }
    return gym.make_vec(
        env_id,
        num_envs=NUM_ENVS,
        autoreset_mode=autoreset_mode,
        asynchronous=asynchronous,
        **kwargs,
    )


class ReferenceClock:
    """The documented rule, restated: count vector steps in which a sub-env acted;
    ``"step"``: switch after ``switch_every`` of them; ``"episode_end"``: once due,
    switch at the first vector step in which any sub-env starts an episode. A switch
    is announced until a sub-env acts (a reset before that announces it again)."""

    def __init__(self, switch_every, switch_at, autoreset_mode):
        self.switch_every, self.switch_at = switch_every, switch_at
        self.autoreset_mode = autoreset_mode
        self.task_id, self.task_step, self.pending, self.announce = 0, 0, False, True
        self.autoreset = np.zeros(NUM_ENVS, bool)

    def step(self, ended):
        if self.autoreset_mode == NEXT:
            acted, started = ~self.autoreset, self.autoreset
            self.autoreset = ended
        else:
            acted, started = np.ones(NUM_ENVS, bool), ended
        if acted.any():
            self.announce = False
            self.task_step += 1
            if self.task_step >= self.switch_every:
                if self.switch_at == "step":
                    self._switch()
                else:
                    self.pending = True
        if started.any() and self.pending:
            self._switch()
        return self.announce

    def reset_some(self, mask):
        self.autoreset[mask] = False
        if self.pending:
            self._switch()
        return self.announce

    def _switch(self):
        self.task_id, self.task_step, self.pending = self.task_id + 1, 0, False
        self.announce = True


def assert_one_task(envs, infos, clock):
    """Every sub-env (its own state, not only infos) is in the clock's task."""
    assert envs.get_attr("task_id") == (clock.task_id,) * NUM_ENVS
    assert task_ids(infos, NUM_ENVS).tolist() == [clock.task_id] * NUM_ENVS
    assert infos["task_step"].tolist() == [clock.task_step] * NUM_ENVS
    for values in (envs.get_attr("physics"), envs.get_attr("task")):
        assert all(value == values[0] for value in values), values
    (key,) = (k for k in infos["task"] if not k.startswith("_"))
    assert infos["task"][f"_{key}"].all()
    assert (infos["task"][key] == infos["task"][key][0]).all()


def run_lockstep(envs, switch_at, autoreset_mode, steps=60, partial_reset_at=23):
    """Random actions over several switches; a partial reset of sub-env 0 midway
    (so that even envs whose episodes all end together start one apart)."""
    clock = ReferenceClock(10, switch_at, autoreset_mode)
    infos = envs.reset(seed=0)[1]
    envs.action_space.seed(0)
    assert infos["task_switch"].all() and infos["task_id"].tolist() == [0] * NUM_ENVS
    uneven_ends, first_task = 0, clock.task_id
    for step in range(1, steps + 1):
        if step == partial_reset_at:
            mask = np.array([True] + [False] * (NUM_ENVS - 1))
            infos = envs.reset(options={"reset_mask": mask})[1]
            announced = clock.reset_some(mask)
            assert task_switches(infos, NUM_ENVS).tolist() == [announced] * NUM_ENVS
            assert_one_task(envs, infos, clock)
        _, _, terminated, truncated, infos = envs.step(envs.action_space.sample())
        ended = terminated | truncated
        uneven_ends += ended.any() and not ended.all()
        announced = clock.step(ended)
        # A switch is announced for every sub-env at once.
        assert task_switches(infos, NUM_ENVS).tolist() == [announced] * NUM_ENVS
        assert_one_task(envs, infos, clock)
    assert clock.task_id - first_task >= steps // 15  # several switches
    return uneven_ends


@pytest.mark.parametrize("switch_at", ["step", "episode_end"])
@pytest.mark.parametrize("autoreset_mode", [NEXT, SAME], ids=["next", "same"])
@pytest.mark.parametrize("env_id", list(MUJOCO_ENVS))
def test_mujoco_sub_envs_share_one_task(env_id, autoreset_mode, switch_at):
    envs = make_mujoco_vec(env_id, autoreset_mode, switch_at=switch_at)
    assert isinstance(envs, ContinualVectorEnv)
    assert envs.metadata["autoreset_mode"] == autoreset_mode
    uneven_ends = run_lockstep(envs, switch_at, autoreset_mode)
    if env_id in MUJOCO_KWARGS:  # episodes that end apart: the case at stake
        assert uneven_ends >= 5
    for sub_env in envs.envs:  # the sub-envs still pickle (EzPickle)
        clone = pickle.loads(pickle.dumps(sub_env.unwrapped))
        assert clone.task_params(3) == sub_env.unwrapped.task_params(3)
        clone.close()
    envs.close()


@pytest.mark.parametrize("switch_at", ["step", "episode_end"])
@pytest.mark.parametrize("autoreset_mode", [NEXT, SAME], ids=["next", "same"])
def test_async_sub_envs_share_one_task(autoreset_mode, switch_at):
    envs = make_mujoco_vec(
        "clenv/SlipperyAnt-v0", autoreset_mode, asynchronous=True, switch_at=switch_at
    )
    try:
        assert run_lockstep(envs, switch_at, autoreset_mode, steps=40) >= 3
        with pytest.raises(AttributeError, match="other processes"):
            _ = envs.envs
    finally:
        envs.close()


def test_default_make_vec_is_the_lockstep_vector_env():
    """The issue's call, with no other argument: NEXT_STEP autoreset, one clock."""
    envs = gym.make_vec("clenv/SlipperyAnt-v0", num_envs=2, switch_every=200)
    assert isinstance(envs, ContinualVectorEnv)
    assert envs.metadata["autoreset_mode"] == NEXT
    assert envs.spec.kwargs["switch_every"] == 200
    envs.close()
    # Gymnasium's generic vector envs are still there, on request.
    generic = gym.make_vec("clenv/SlipperyAnt-v0", 2, vectorization_mode="sync")
    assert isinstance(generic, gym.vector.SyncVectorEnv)
    generic.close()


@pytest.mark.parametrize("autoreset_mode", [NEXT, SAME], ids=["next", "same"])
def test_one_sub_env_reports_what_the_single_env_reports(autoreset_mode):
    """num_envs=1: the vector env's clock is the env's own, in both modes."""
    kwargs = dict(switch_every=10, switch_at="episode_end", max_episode_steps=7)
    envs = gym.make_vec(
        "clenv/SlipperyWalker2d-v0", 1, autoreset_mode=autoreset_mode, **kwargs
    )
    env = gym.make("clenv/SlipperyWalker2d-v0", **kwargs)
    keys = ("task_id", "task_step", "task_switch")
    infos = envs.reset(seed=3)[1]
    info = env.reset(seed=3)[1]
    rng = np.random.default_rng(0)
    done = False
    for _ in range(60):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        infos = envs.step(action[None])[4]
        if done and autoreset_mode == NEXT:
            info, done = env.reset()[1], False
        else:
            *_, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if done and autoreset_mode == SAME:
                info, done = env.reset()[1], False
        assert [infos[key][0] for key in keys] == [info[key] for key in keys]
    assert info["task_id"] >= 3
    envs.close()
    env.close()


def test_same_step_step_mode_matches_gymnasiums_vector_env():
    """Where Gymnasium's vector env already kept sub-envs in lockstep (SAME_STEP,
    switch_at="step"), the clenv vector env gives the same rollout."""
    kwargs = dict(
        switch_every=10, max_episode_steps=9, **MUJOCO_KWARGS["clenv/SlipperyAnt-v0"]
    )
    ours = gym.make_vec("clenv/SlipperyAnt-v0", 3, autoreset_mode=SAME, **kwargs)
    generic = gym.make_vec(
        "clenv/SlipperyAnt-v0",
        3,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": SAME},
        **kwargs,
    )
    for envs in (ours, generic):
        envs.reset(seed=5)
        envs.action_space.seed(1)
    for _ in range(35):
        first, second = (
            ours.step(ours.action_space.sample()),
            generic.step(generic.action_space.sample()),
        )
        for a, b in zip(first[:4], second[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        for key in ("task_id", "task_step", "task_switch"):
            np.testing.assert_array_equal(first[4][key], second[4][key])
    ours.close()
    generic.close()


def test_seeded_vector_env_is_deterministic_across_switches():
    def rollout():
        envs = make_mujoco_vec("clenv/SlipperyWalker2d-v0", switch_at="episode_end")
        records = [envs.reset(seed=7)]
        envs.action_space.seed(2)
        for _ in range(45):
            records.append(envs.step(envs.action_space.sample()))
        records.append(envs.reset(seed=7))  # starts over: task 0, same first obs
        envs.close()
        return records

    first, second = rollout(), rollout()
    assert first[-2][4]["task_id"][0] >= 3
    assert first[-1][1]["task_id"].tolist() == [0] * NUM_ENVS
    np.testing.assert_array_equal(first[-1][0], first[0][0])
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a[:-1], b[:-1], strict=True):
            np.testing.assert_array_equal(x, y)
        for key in ("task_id", "task_step", "task_switch"):
            np.testing.assert_array_equal(a[-1][key], b[-1][key])


def test_set_task_pins_every_sub_env_and_unpins_to_the_schedule():
    envs = make_mujoco_vec("clenv/SlipperyHalfCheetah-v0", max_episode_steps=1000)
    envs.reset(seed=0)
    actions = np.zeros(envs.action_space.shape, np.float32)
    for _ in range(14):
        envs.step(actions)  # task 1, 4 steps in
    with pytest.raises(ValueError, match="task_id must be >= 0"):
        envs.set_task(-1)
    assert envs.get_attr("task_id") == (1,) * NUM_ENVS  # nothing changed
    envs.set_task(3)
    pinned = envs.envs[0].unwrapped.task_params(3)
    for step in range(1, 16):  # frozen: no switch although 10 steps pass
        infos = envs.step(actions)[4]
        assert infos["task_id"].tolist() == [3] * NUM_ENVS
        assert infos["task_step"].tolist() == [step] * NUM_ENVS
        assert infos["task_switch"].tolist() == [step == 1] * NUM_ENVS
    assert envs.get_attr("task") == (pinned,) * NUM_ENVS
    envs.call("set_task", None)  # through call(), the clock follows too
    assert envs.task_id == 1
    infos = envs.step(actions)[4]
    assert infos["task_id"].tolist() == [1] * NUM_ENVS and infos["task_switch"].all()
    assert infos["task_step"].tolist() == [5] * NUM_ENVS
    for _ in range(5):
        infos = envs.step(actions)[4]
    assert infos["task_id"].tolist() == [2] * NUM_ENVS and infos["task_switch"].all()
    envs.close()


def test_schedule_state_round_trips_through_the_vector_env():
    envs = make_mujoco_vec("clenv/SlipperyWalker2d-v0", switch_at="episode_end")
    envs.reset(seed=0)
    envs.action_space.seed(0)
    for _ in range(27):
        envs.step(envs.action_space.sample())
    envs.set_task(0)
    envs.step(envs.action_space.sample())
    state = envs.get_schedule_state()
    assert state["clock"]["pinned_task_id"] == 0 and len(state["sub_envs"]) == 3

    fresh = make_mujoco_vec("clenv/SlipperyWalker2d-v0", switch_at="episode_end")
    fresh.reset(seed=1)
    fresh.set_schedule_state(state)
    assert fresh.get_schedule_state() == state
    fresh.set_task(None)  # back to where the schedule was left, in both
    envs.set_task(None)
    assert fresh.get_schedule_state() == envs.get_schedule_state()
    assert fresh.task_id == envs.task_id == state["clock"]["task_id"]
    assert fresh.get_attr("physics") == envs.get_attr("physics")
    with pytest.raises(ValueError, match="num_envs=3"):
        fresh.set_schedule_state({**state, "sub_envs": state["sub_envs"][:2]})
    envs.close()
    fresh.close()


def test_bad_arguments_and_seeds_are_refused():
    with pytest.raises(ValueError, match="autoreset_mode must be one of"):
        gym.make_vec("clenv/SlipperyAnt-v0", 2, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="asynchronous=True"):
        gym.make_vec("clenv/SlipperyAnt-v0", 2, context="spawn")
    with pytest.raises(ValueError, match="not a clenv continual env"):
        ContinualVectorEnv("CartPole-v1", 2)
    envs = make_mujoco_vec("clenv/SlipperyAnt-v0")
    with pytest.raises(ValueError, match="give every sub-env a seed"):
        envs.reset(seed=[1, None, 2])
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(seed=1, options={"reset_mask": np.array([True, False, True])})
    envs.close()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("autoreset_mode", [NEXT, SAME], ids=["next", "same"])
@pytest.mark.parametrize("env_id", list(SUPERVISED_SMALL))
def test_supervised_sub_envs_share_one_task_and_resume(
    data_dir, env_id, autoreset_mode, asynchronous
):
    def make():
        extra = {"context": "fork"} if asynchronous else {}  # fork: the fixture data
        return gym.make_vec(
            env_id,
            NUM_ENVS,
            autoreset_mode=autoreset_mode,
            asynchronous=asynchronous,
            batch_size=2,
            **SUPERVISED_SMALL[env_id],
            **extra,
        )

    envs = make()
    lengths = [envs.call("task_length", task)[0] for task in range(3)]
    infos = envs.reset(seed=0)[1]
    rng = np.random.default_rng(0)
    actions = lambda: rng.integers(0, 2, envs.action_space.shape)  # noqa: E731
    task_id, task_step, all_reset = 0, 0, False
    while task_id < 2:
        obs, _, _, truncated, infos = envs.step(actions())
        if not all_reset:  # NEXT_STEP: a step in which every sub-env only resets
            task_step += 1  # (after a task's last step) is not counted
        all_reset = autoreset_mode == NEXT and truncated.all()
        if task_step == lengths[task_id]:  # tasks may differ in length (CIFAR)
            task_id, task_step = task_id + 1, 0
            assert truncated.all() and task_switches(infos, NUM_ENVS).all()
        assert envs.get_attr("task_id") == (task_id,) * NUM_ENVS
        assert infos["task_id"].tolist() == [task_id] * NUM_ENVS
        assert infos["task_step"].tolist() == [task_step] * NUM_ENVS
    envs.step(actions())
    state = envs.get_schedule_state()
    fresh = make()
    fresh.reset(seed=1)
    fresh.set_schedule_state(state)
    for _ in range(3):  # the same stream, batch for batch
        action = actions()
        first, second = envs.step(action), fresh.step(action)
        for a, b in zip(first[:4], second[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        assert first[4]["task_step"].tolist() == second[4]["task_step"].tolist()
    envs.close()
    fresh.close()
