"""The task-switch protocol on a minimal env, independent of MuJoCo and data."""

from __future__ import annotations

import pickle
import re

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from clenv.protocol import (
    INFO_KEYS,
    ContinualEnv,
    TaskSchedule,
    TaskTracker,
    end_task,
    log_episodes,
    task_due,
    task_ids,
    task_params,
    task_switches,
)


class ToyContinualEnv(ContinualEnv, gym.Env):
    """Observation = the task's offset; episodes end after ``episode_length`` steps."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, episode_length=7, **schedule):
        self.episode_length = episode_length
        self.applied = []
        self._init_schedule(**schedule)

    def _make_task(self, task_id, rng):
        return {"offset": float(rng.uniform(-1, 1))}

    def _apply_task(self, task):
        self.applied.append(task["offset"])

    def _obs(self):
        return np.array([self._task["offset"]], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), self._schedule_reset({}, seed)

    def step(self, action):
        self.t += 1
        info = self._schedule_step({})
        return self._obs(), 0.0, False, self.t >= self.episode_length, info


def run(env, steps):
    infos = [env.reset(seed=0)[1]]
    for _ in range(steps):
        _, _, term, trunc, info = env.step(0)
        infos.append(info)
        if term or trunc:
            infos.append(env.reset()[1])
    return infos


def test_first_reset_announces_task_zero():
    info = ToyContinualEnv(switch_every=5).reset(seed=0)[1]
    assert set(INFO_KEYS) <= set(info)
    assert info["task_id"] == 0 and info["task_switch"] and info["task_step"] == 0


def test_step_mode_switches_exactly_at_boundary_mid_episode():
    env = ToyContinualEnv(episode_length=100, switch_every=5)
    env.reset(seed=0)
    for step in range(1, 13):
        info = env.step(0)[4]
        assert info["task_id"] == step // 5
        assert info["task_switch"] == (step % 5 == 0)
        assert info["task_step"] == step % 5
    assert info["task"] == env.task_params(2)


def test_episode_end_mode_switches_at_first_reset_after_boundary():
    env = ToyContinualEnv(episode_length=7, switch_every=5, switch_at="episode_end")
    env.reset(seed=0)
    for _ in range(7):  # the boundary (step 5) falls inside this episode
        info = env.step(0)[4]
        assert info["task_id"] == 0 and not info["task_switch"]
    assert info["task_step"] == 7
    info = env.reset()[1]
    assert info["task_id"] == 1 and info["task_switch"] and info["task_step"] == 0


def test_switch_on_last_step_of_episode_is_announced_again_at_reset():
    env = ToyContinualEnv(episode_length=5, switch_every=5)
    env.reset(seed=0)
    for _ in range(5):
        _, _, _, truncated, info = env.step(0)
    assert truncated and info["task_switch"] and info["task_id"] == 1
    info = env.reset()[1]  # e.g. a vector env's autoreset: its info replaces the step's
    assert info["task_switch"] and info["task_id"] == 1 and info["task_step"] == 0
    assert not env.step(0)[4]["task_switch"]  # the agent has now acted in task 1


def test_vector_autoreset_does_not_hide_a_switch_on_an_episode_end():
    envs = gym.vector.SyncVectorEnv(
        [lambda: ToyContinualEnv(episode_length=5, switch_every=5)] * 2,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs.reset(seed=0)
    for step in range(1, 16):
        infos = envs.step(np.zeros(2, np.int64))[4]
        assert list(infos["task_switch"]) == [step % 5 == 0] * 2
        assert list(infos["task_id"]) == [step // 5] * 2


def test_reset_never_changes_task_before_boundary():
    env = ToyContinualEnv(episode_length=2, switch_every=100)
    infos = run(env, 50)
    assert {info["task_id"] for info in infos} == {0}
    assert sum(info["task_switch"] for info in infos) == 1  # only the first reset


def test_seeded_reset_restarts_stream_unseeded_reset_does_not():
    env = ToyContinualEnv(episode_length=1000, switch_every=3)
    first = run(env, 10)
    assert env.reset()[1]["task_id"] == 3
    assert run(env, 10) == first  # run() starts with reset(seed=0)


def test_task_sequence_depends_only_on_task_seed():
    a = ToyContinualEnv(switch_every=3, task_seed=4)
    b = ToyContinualEnv(switch_every=3, task_seed=4)
    c = ToyContinualEnv(switch_every=3, task_seed=5)
    assert [a.task_params(k) for k in range(5)] == [b.task_params(k) for k in range(5)]
    assert a.task_params(1) != c.task_params(1)
    assert len({a.task_params(k)["offset"] for k in range(5)}) == 5


def test_num_tasks_stays_on_last_task():
    env = ToyContinualEnv(episode_length=1000, switch_every=2, num_tasks=3)
    infos = run(env, 20)
    assert infos[-1]["task_id"] == 2 and env.num_tasks == 3
    with pytest.raises(ValueError, match="num_tasks=3"):
        env.set_task(3)


def test_set_task_pins_and_unpinning_resumes_schedule():
    env = ToyContinualEnv(episode_length=1000, switch_every=4)
    env.reset(seed=0)
    for _ in range(6):
        env.step(0)
    env.set_task(0)
    info = env.reset()[1]  # the usual evaluation pattern: pin, then start an episode
    assert (
        info["task_id"] == 0 and info["task_switch"] and env.task == env.task_params(0)
    )
    for _ in range(10):  # frozen: no switch while pinned
        info = env.step(0)[4]
    assert info["task_id"] == 0 and info["task_step"] == 10 and not info["task_switch"]
    env.set_task(None)
    info = env.reset()[1]
    assert info["task_id"] == 1 and info["task_switch"] and info["task_step"] == 2
    info = env.step(0)[4]
    assert info["task_id"] == 1 and not info["task_switch"] and info["task_step"] == 3
    env.set_task(2)  # pinned between two steps: the next step's info announces it
    assert env.step(0)[4]["task_switch"] and not env.step(0)[4]["task_switch"]


def test_schedule_state_round_trip_continues_identically():
    env = ToyContinualEnv(episode_length=5, switch_every=7, switch_at="episode_end")
    run(env, 23)
    state = env.get_schedule_state()
    expected = [run_step(env) for _ in range(30)]
    # A second env at the same point of its episode, restored from the saved state.
    env2 = ToyContinualEnv(episode_length=5, switch_every=7, switch_at="episode_end")
    run(env2, 23)
    env2.set_schedule_state(state)
    assert [run_step(env2) for _ in range(30)] == expected


def run_step(env):
    _, _, term, trunc, info = env.step(0)
    if term or trunc:
        info = {"reset": env.reset()[1]}
    return repr(info)


def test_schedule_state_attribute_gets_and_restores_the_state():
    env = ToyContinualEnv(episode_length=5, switch_every=7)
    run(env, 16)
    fresh = ToyContinualEnv(episode_length=5, switch_every=7)
    fresh.reset(seed=0)
    fresh.schedule_state = env.schedule_state  # e.g. vector.set_attr(...)
    assert fresh.get_schedule_state() == env.get_schedule_state()
    assert fresh.task_id == env.task_id == 2 and fresh.task == env.task


def test_follow_clock_moves_an_env_onto_another_clock():
    """The hook of clenv.vector's lockstep vector env: a tick within a task moves
    the counters only; crossing a boundary switches, announced in the next info."""
    leader, follower = (
        ToyContinualEnv(episode_length=100, switch_every=5) for _ in "ab"
    )
    leader.reset(seed=0)
    follower.reset(seed=0)
    for _ in range(4):
        leader.step(0)
        follower.step(0)
    assert follower._follow_clock(leader._clock_state()) is None  # already there
    leader.step(0)  # step 5: task 1; the follower stays at step 4 (e.g. it reset)
    applied = list(follower.applied)
    info = follower._follow_clock(leader._clock_state())
    assert info["task_id"] == 1 and info["task_switch"] and info["task_step"] == 0
    assert follower.applied == [*applied, follower.task_params(1)["offset"]]
    assert follower.get_schedule_state() == leader.get_schedule_state()
    assert not follower.step(0)[4]["task_switch"]  # announced once
    leader.step(0)
    leader.step(0)
    info = follower._follow_clock(leader._clock_state())  # a tick, no switch
    assert info["task_step"] == 2 and not info["task_switch"]
    assert follower.applied[-1] == follower.task_params(1)["offset"]
    leader.set_task(3)  # a pin and its steps move across too
    leader.step(0)
    info = follower._follow_clock(leader._clock_state())
    assert info["task_id"] == 3 and info["task_step"] == 1 and follower.task_id == 3


def test_state_from_other_schedule_is_refused():
    state = ToyContinualEnv(switch_every=7).get_schedule_state()
    with pytest.raises(ValueError, match="switch_every=7"):
        ToyContinualEnv(switch_every=8).set_schedule_state(state)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"task_id": -1}, "task_id=-1: expected >= 0"),
        ({"task_id": 2.7}, "task_id=2.7: expected an integer"),
        ({"task_id": "abc"}, "task_id='abc': expected an integer"),
        ({"task_id": 10**9}, "num_tasks=5"),
        ({"task_step": -5}, "task_step=-5: expected >= 0"),
        ({"total_steps": -3}, "total_steps=-3: expected >= 0"),
        ({"started": "no"}, "started='no': expected True or False"),
        ({"switch_pending": 1}, "switch_pending=1: expected True or False"),
    ],
)
def test_hand_edited_schedule_state_is_refused_and_changes_nothing(edit, message):
    env = ToyContinualEnv(switch_every=4, num_tasks=5)
    env.reset(seed=0)
    for _ in range(6):
        env.step(0)
    before = env.get_schedule_state()
    with pytest.raises(ValueError, match=re.escape(message)):
        env.set_schedule_state({**before, **edit})
    assert env.get_schedule_state() == before  # nothing half-applied


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"switch_every": 0}, "positive"),
        ({"switch_every": -3}, "positive"),
        ({"switch_every": 2.5}, "positive int"),
        ({"switch_every": 5, "switch_at": "sometimes"}, "'step', 'episode_end'"),
        ({"switch_every": 5, "num_tasks": 0}, "num_tasks"),
        ({"switch_every": 5, "task_seed": -1}, "task_seed"),
    ],
)
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSchedule(**kwargs)


def test_toy_env_passes_check_env_and_pickles():
    check_env(ToyContinualEnv(switch_every=3), skip_render_check=True)
    env = ToyContinualEnv(switch_every=3)
    env.reset(seed=0)
    for _ in range(4):
        env.step(0)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.step(0)[4] == env.step(0)[4]


def test_task_switches_and_ids_of_single_and_vector_infos():
    env = ToyContinualEnv(episode_length=100, switch_every=3)
    info = env.reset(seed=0)[1]
    assert task_switches(info).tolist() == [True]
    assert task_ids(info).dtype == np.int64 and task_ids(info).tolist() == [0]
    for _ in range(3):
        info = env.step(0)[4]
    assert task_switches(info).tolist() == [True] and task_ids(info).tolist() == [1]
    assert task_switches(env.step(0)[4]).tolist() == [False]
    # a vector env: arrays with a "_key" mask; the sub-envs switch at different steps
    envs = gym.vector.SyncVectorEnv(
        [
            lambda: ToyContinualEnv(episode_length=100, switch_every=2),
            lambda: ToyContinualEnv(episode_length=100, switch_every=3),
        ]
    )
    infos = envs.reset(seed=0)[1]
    assert task_switches(infos).tolist() == [True, True]
    seen = [task_switches(envs.step(np.zeros(2, np.int64))[4]).tolist()]
    for _ in range(5):
        infos = envs.step(np.zeros(2, np.int64))[4]
        seen.append(task_switches(infos, num_envs=2).tolist())
    assert [s[0] for s in seen] == [step % 2 == 0 for step in range(1, 7)]
    assert [s[1] for s in seen] == [step % 3 == 0 for step in range(1, 7)]
    assert task_ids(infos).tolist() == [3, 2]
    # the mask: a sub-env that did not report counts as no switch, task id -1
    masked = {
        "task_switch": np.array([True, True]),
        "_task_switch": np.array([False, True]),
        "task_id": np.array([4, 5]),
        "_task_id": np.array([False, True]),
    }
    assert task_switches(masked).tolist() == [False, True]
    assert task_ids(masked).tolist() == [-1, 5]
    # no key at all: an error that says why, or "none" for a known count
    with pytest.raises(KeyError, match="num_envs"):
        task_switches({})
    assert task_switches({}, num_envs=3).tolist() == [False] * 3
    assert task_ids({}, num_envs=2).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="num_envs=3"):
        task_switches(masked, num_envs=3)


class ListLogger:
    """The RunLogger calls a loop's task bookkeeping makes, recorded."""

    def __init__(self):
        self.task_id, self.calls = 0, []

    def log_scalar(self, tag, value, step, *, task_id=None):
        task = self.task_id if task_id is None else task_id
        self.calls.append((tag, float(value), step, task))

    def set_task(self, task_id):
        self.task_id = task_id


def test_task_bookkeeping_of_a_vector_loop():
    """A CleanRL-style loop over a vector toy env with episode statistics: returns
    belong to the task the action was taken in, the mean per task is logged at the
    switch with the ended task's id, whole rollouts are kept per task."""
    envs = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.vector.SyncVectorEnv(
            [lambda: ToyContinualEnv(episode_length=2, switch_every=4)] * 2,
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    )
    logger, tasks = ListLogger(), TaskTracker()
    infos = envs.reset(seed=0)[1]
    assert task_params(infos) == {"offset": pytest.approx(infos["task"]["offset"][0])}
    ended_tasks, rollout_starts = [], []
    for step in range(1, 13):  # rollouts of 2 steps; a task lasts 4 steps
        if step % 2 == 1:
            rollout_task = tasks.task_id
        infos = envs.step(np.zeros(2, np.int64))[4]
        for episodic_return in log_episodes(logger, infos, step):
            tasks.add_episode(episodic_return + step)  # tell the episodes apart
        if task_switches(infos, 2)[0]:
            ended, rollout = end_task(logger, tasks, int(task_ids(infos, 2)[0]), step)
            ended_tasks.append((ended, rollout))
        if step % 2 == 0 and rollout_task == tasks.task_id:
            rollout_starts.append(tasks.keep_rollout(f"rollout {step}"))
    # two sub-envs, episodes of 2 steps: two episodes end every other step
    episodic = [c for c in logger.calls if c[0] == "charts/episodic_return"]
    assert [c[2] for c in episodic] == [2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12]
    assert [c[3] for c in episodic] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    means = [c for c in logger.calls if c[0] == "cl/mean_return_per_task"]
    assert [(c[1], c[2], c[3]) for c in means] == [
        (3.0, 4, 0),
        (7.0, 8, 1),
        (11.0, 12, 2),
    ]
    assert logger.task_id == tasks.task_id == 3 and tasks.returns == []
    assert tasks.recent_returns == [2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 8.0, 8.0, 10.0,
                                    10.0, 12.0, 12.0]  # fmt: skip
    # the rollout of steps 3-4 ends in task 1 (the switch at step 4): not whole
    assert ended_tasks == [(0, "rollout 2"), (1, "rollout 6"), (2, "rollout 10")]
    assert rollout_starts == [True, True, True]
    # a task without a whole rollout has none to end with
    assert tasks.switch(4) == (3, []) and tasks.last_rollout_of(3) is None
    # the tracker's state round-trips through a checkpoint's plain dict
    assert TaskTracker(**vars(tasks)) == tasks
    envs.close()


def test_task_due_every_kth_task():
    assert [task_due(task, 3) for task in range(7)] == [1, 0, 0, 1, 0, 0, 1]
    assert not any(task_due(task, 0) for task in range(5))


def test_protocol_docstring_examples():
    import doctest

    import clenv.protocol

    assert doctest.testmod(clenv.protocol, extraglobs={"np": np}).failed == 0
