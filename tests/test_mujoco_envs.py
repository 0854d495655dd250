"""The MuJoCo continual envs: PhysicsDriftEnv, SlipperyAntEnv and every registered id."""

from __future__ import annotations

import ctypes.util
import os
import pickle
import re
import subprocess
import sys
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import clenv
from clenv.envs.physics_drift import PhysicsDriftEnv
from clenv.envs.slippery_ant import SlipperyAntEnv
from clenv.protocol import INFO_KEYS
from clenv.registration import MUJOCO_ENVS

gym.register_envs(clenv)
ENV_IDS = list(MUJOCO_ENVS)
# check_env's generic advice for MuJoCo's unbounded observation boxes.
KNOWN_WARNINGS = re.compile(r"observation space (minimum|maximum) value is")


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
    env = gym.make(env_id, switch_every=7)
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
    env = gym.make(env_id, switch_every=5)
    _, info = env.reset(seed=0)
    assert set(INFO_KEYS) | {"physics"} <= set(info)
    assert info["task_id"] == 0 and info["task_switch"] and info["task_step"] == 0
    assert info["physics"] == info["task"] == env.unwrapped.task_params(0)
    info = env.step(env.action_space.sample())[4]
    assert set(INFO_KEYS) | {"physics"} <= set(info)


# -- determinism, switch timing -------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_gives_bit_identical_rollouts_across_switches(env_id):
    first = rollout(gym.make(env_id, switch_every=25), 110, seed=3)
    second = rollout(gym.make(env_id, switch_every=25), 110, seed=3)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert repr(a[1:]) == repr(b[1:])
    assert max(r[-1]["task_id"] for r in first) == 4  # 110 steps, 4 switches
    # A different seed gives a different rollout (the check above can fail).
    other = rollout(gym.make(env_id, switch_every=25), 110, seed=4)
    assert not np.array_equal(first[1][0], other[1][0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_mode_switches_exactly_every_switch_every_steps(env_id):
    env = gym.make(env_id, switch_every=30)
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
    env = gym.make(
        env_id, switch_every=20, switch_at="episode_end", max_episode_steps=12
    )
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
        # Also when a switching step ends an episode: the autoreset's info announces it.
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


# -- state, pickling ------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_schedule_state_round_trips_into_a_fresh_env(env_id):
    env = gym.make(env_id, switch_every=20).unwrapped
    rollout(env, 47)  # mid-task (and mid-drift for the gradual env)
    state = env.get_schedule_state()
    fresh = gym.make(env_id, switch_every=20).unwrapped
    fresh.reset(seed=123)
    fresh.set_schedule_state(state)
    assert fresh.task_id == env.task_id == 2 and fresh.physics == env.physics
    assert model_value(fresh) == model_value(env)
    # Same simulator state too: then the continuation is bit-identical.
    mujoco.mj_copyData(fresh.data, fresh.model, env.data)
    actions = np.random.default_rng(5).uniform(-1, 1, (40, *env.action_space.shape))
    for action in actions:
        a, b = env.step(action), fresh.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1] and task_fields(a[4]) == task_fields(b[4])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_round_trip_keeps_arguments_and_rollouts(env_id):
    env = gym.make(env_id, switch_every=17, task_seed=4)
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone.unwrapped) is type(env.unwrapped)
    assert clone.unwrapped.schedule.switch_every == 17
    assert clone.unwrapped.task_params(3) == env.unwrapped.task_params(3)
    first, second = rollout(env, 40, seed=2), rollout(clone, 40, seed=2)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert repr(a[1:]) == repr(b[1:])


# -- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"switch_every": 0}, "positive"),
        ({"switch_every": -5}, "positive"),
        ({"switch_at": "sometimes"}, "'step', 'episode_end'"),
        ({"drift": "wobbly"}, "'abrupt', 'gradual'"),
        ({"parameter": "viscosity"}, "'friction', 'gravity', 'body_mass'"),
        ({"value_range": (2.0, 0.1)}, r"low <= high.*\(0.1, 2.0\)"),
        ({"value_range": (0.0, 1.0)}, "log-uniformly.*positive"),
        ({"parameter": "body_mass", "value_range": (-1.0, 2.0)}, "positive"),
        ({"value_range": (0.1, float("inf"))}, "finite"),
        ({"value_range": 0.5}, r"pair \(low, high\)"),
        ({"drift": "gradual", "switch_every": 10, "drift_steps": 11}, "drift_steps"),
        ({"drift": "gradual", "drift_steps": 0}, "drift_steps"),
        ({"drift_steps": 100}, "only applies to drift='gradual'"),
        ({"base_env_id": "NoSuchEnv-v5"}, "Gymnasium MuJoCo id"),
        ({"base_env_id": "CartPole-v1"}, "MujocoEnv"),
        ({"base_env_id": None}, "base_env_id"),
        ({"base_env_kwargs": {"no_such_arg": 1}}, "not accepted"),
    ],
)
def test_bad_arguments_raise_value_error_saying_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhysicsDriftEnv(**kwargs)


def test_slippery_ant_bad_arguments_name_its_own_arguments():
    with pytest.raises(ValueError, match=r"friction_range must satisfy low <= high"):
        gym.make("clenv/SlipperyAnt-v0", friction_range=(2.0, 0.02))
    with pytest.raises(ValueError, match="'step', 'episode_end'"):
        gym.make("clenv/SlipperyAnt-v0", switch_at="end")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_bad_actions_raise_before_reaching_mujoco(env_id):
    env = gym.make(env_id, switch_every=5)
    env.reset(seed=0)
    shape = env.action_space.shape
    data = env.unwrapped.data
    time_before, qpos_before = data.time, data.qpos.copy()
    nan, inf = np.zeros(shape), np.zeros(shape)
    nan[0], inf[-1] = np.nan, -np.inf
    bad = [
        ("shape", np.zeros((shape[0] + 1,))),
        ("shape", np.zeros((1, *shape))),
        ("NaN", nan),
        ("inf", inf),
        ("numbers", np.array(["a"] * shape[0])),
    ]
    for expected, action in bad:
        with pytest.raises(ValueError, match=expected):
            env.step(action)
    assert data.time == time_before
    np.testing.assert_array_equal(data.qpos, qpos_before)
    # Huge but finite actions are legal (MuJoCo clamps them to the control range).
    with np.errstate(over="ignore"):
        env.step(np.full(shape, 1e30, np.float32))


# -- physics --------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reward_terms_add_up_to_the_reward(env_id):
    records = rollout(gym.make(env_id, switch_every=20), 60)
    for _, reward, *_, info in (r for r in records if len(r) == 5):
        terms = [v for k, v in info.items() if k.startswith("reward_")]
        assert len(terms) >= 2
        assert sum(terms) == pytest.approx(reward, abs=1e-6)


def test_gradual_drift_interpolates_linearly():
    env = PhysicsDriftEnv(
        base_env_id="HalfCheetah-v5",
        parameter="gravity",
        drift="gradual",
        switch_every=12,
        drift_steps=8,
    )
    _, info = env.reset(seed=0)
    v = [env.task_params(k)["gravity"] for k in range(4)]
    assert physics_value(info) == v[0] == env.model.opt.gravity[2]
    for step in range(1, 40):
        info = env.step(env.action_space.sample())[4]
        k, t = divmod(step, 12)
        expected = v[k] if k == 0 else v[k - 1] + min(t / 8, 1) * (v[k] - v[k - 1])
        assert physics_value(info) == pytest.approx(expected, rel=1e-12)
        assert env.model.opt.gravity[2] == physics_value(info)
        assert info["task"] == {"gravity": v[k]}
        if k > 0 and t >= 8:
            assert physics_value(info) == v[k]  # exactly the target once arrived
    # Pinning a task for evaluation uses its target value, without a drift.
    env.set_task(1)
    assert env.model.opt.gravity[2] == v[1]
    env.set_task(None)  # back to task 3, 3 steps in: mid-drift again
    assert env.model.opt.gravity[2] == pytest.approx(v[2] + 3 / 8 * (v[3] - v[2]))


def test_friction_one_reproduces_gymnasium_ant_v5_bit_for_bit():
    ant = gym.make("Ant-v5")
    slippery = gym.make("clenv/SlipperyAnt-v0", friction_range=(1.0, 1.0))
    for a, b in zip(rollout(ant, 150), rollout(slippery, 150), strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        if len(a) == 5:
            assert a[1:4] == b[1:4]


@pytest.mark.parametrize(
    "parameter, fields",
    [
        ("body_mass", ("body_mass", "body_inertia")),
        ("actuator_gear", ("actuator_gear",)),
    ],
)
def test_scale_parameters_scale_the_model_in_place(parameter, fields):
    base = gym.make("Hopper-v5").unwrapped
    original = {f: getattr(base.model, f).copy() for f in fields}
    env = PhysicsDriftEnv(base_env=base, parameter=parameter, switch_every=10)
    assert env.base_env is base and env.model is base.model  # in place, no copy
    env.reset(seed=0)
    for _ in range(10):
        qpos_before = env.data.qpos.copy()
        info = env.step(np.zeros(3))[4]
    assert info["task_switch"]
    scale = info["task"][f"{parameter}_scale"]
    for field in fields:
        np.testing.assert_allclose(getattr(env.model, field), original[field] * scale)
    # mj_setConst followed the masses, without touching the running state.
    if parameter == "body_mass":
        np.testing.assert_allclose(
            env.model.body_subtreemass[0], original["body_mass"].sum() * scale
        )
    assert not np.array_equal(env.data.qpos, qpos_before)  # the episode went on


def test_scale_one_reproduces_the_base_env():
    base = rollout(gym.make("Hopper-v5"), 120)
    for parameter in ("body_mass", "actuator_gear"):
        env = PhysicsDriftEnv(
            base_env_id="Hopper-v5", parameter=parameter, value_range=(1.0, 1.0)
        )
        for a, b in zip(base, rollout(env, 120), strict=True):
            np.testing.assert_array_equal(a[0], b[0])


def test_slippery_ant_defaults_follow_the_papers():
    env = gym.make("clenv/SlipperyAnt-v0")
    ant = env.unwrapped
    assert isinstance(ant, SlipperyAntEnv) and env.spec.max_episode_steps == 1000
    schedule = ant.schedule
    assert (schedule.switch_every, schedule.switch_at) == (2_000_000, "step")
    assert env.observation_space.shape == (105,)
    assert ant.parameter == "friction"
    frictions = [ant.task_params(k)["friction"] for k in range(2000)]
    assert 0.02 <= min(frictions) and max(frictions) <= 2.0
    # Log-uniform: log-friction is uniform on [log 0.02, log 2] (mean 0.5 of the way).
    u = (np.log(frictions) - np.log(0.02)) / (np.log(2.0) - np.log(0.02))
    assert abs(u.mean() - 0.5) < 0.03 and abs(np.median(frictions) - 0.2) < 0.03
    # LoP's inputs without contact forces: 27 dims (see the class docstring).
    lop_like = gym.make(
        "clenv/SlipperyAnt-v0",
        include_cfrc_ext_in_observation=False,
        contact_cost_weight=0.0,
    )
    assert lop_like.observation_space.shape == (27,)


@pytest.mark.parametrize("parameter", ["body_mass", "actuator_gear"])
def test_scale_parameters_pass_check_env_with_gradual_drift(parameter):
    env = PhysicsDriftEnv(
        base_env_id="Hopper-v5",
        parameter=parameter,
        drift="gradual",
        switch_every=6,
        drift_steps=3,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
        sb3_check_env(env)
    assert [
        str(w.message) for w in caught if not KNOWN_WARNINGS.search(str(w.message))
    ] == []


def test_set_task_pins_a_past_friction_and_unpinning_resumes():
    env = gym.make("clenv/SlipperyAnt-v0", switch_every=10)
    env.reset(seed=0)
    for _ in range(25):
        env.step(np.zeros(8, np.float32))
    base = env.unwrapped
    base.set_task(0)
    np.testing.assert_array_equal(
        base.model.geom_friction[:, 0], base.task_params(0)["friction"]
    )
    info = env.step(np.zeros(8, np.float32))[4]
    assert info["task_id"] == 0 and info["task_switch"]
    for _ in range(20):  # the schedule is frozen while pinned
        info = env.step(np.zeros(8, np.float32))[4]
    assert info["task_id"] == 0
    base.set_task(None)
    info = env.step(np.zeros(8, np.float32))[4]
    assert info["task_id"] == 2 and info["task_step"] == 6 and info["task_switch"]
    assert model_value(env) == base.task_params(2)["friction"]


# -- the scripts ----------------------------------------------------------------------
def test_demo_prints_every_switch_with_info_and_model_friction(capsys):
    from clenv import demo

    demo.main(["--steps", "250", "--switch-every", "100"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "->" in line]
    assert [line.split(":")[0].split()[1] for line in lines] == ["100", "200"]
    env = gym.make("clenv/SlipperyAnt-v0")
    for k, line in enumerate(lines, start=1):
        friction = f"{env.unwrapped.task_params(k)['friction']:.4f}"
        assert f"-> {friction} (info)  {friction} (model" in line


def test_env_benchmark_runs_and_compares_identical_trajectories(capsys):
    from clenv.bench import envs as bench

    figures = bench.main(
        ["--block-steps", "30", "--repeats", "2", "--stub-steps", "200"]
    )
    assert "bit-identical trajectories: True" in capsys.readouterr().out
    assert figures["layer_ratio_best"] > 0 and figures["ant_v5_us_per_step_best"] > 0


# MuJoCo picks its GL backend when first imported, so rendering runs in a fresh process.
RENDER_SCRIPT = """
import warnings
import gymnasium as gym, numpy as np
from gymnasium.utils.passive_env_checker import env_render_passive_checker
import clenv
gym.register_envs(clenv)
env = gym.make("clenv/SlipperyAnt-v0", render_mode="rgb_array", switch_every=20,
               width=96, height=64)
env.reset(seed=0)
env_render_passive_checker(env.unwrapped)  # check_env's; its "human" mode needs X11
first = env.render()
env.action_space.seed(0)
switched = False
for _ in range(30):
    *_, info = env.step(env.action_space.sample())
    switched |= bool(info["task_switch"])
later = env.render()
print(first.shape, first.dtype, int(first.std() > 5), int(np.abs(
    first.astype(int) - later.astype(int)).mean() > 0.1), int(switched))
"""


def run_render_script(backend: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY")}
    if backend is not None:
        env["MUJOCO_GL"] = backend
    return subprocess.run(
        [sys.executable, "-c", RENDER_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["egl", "osmesa"])
def test_slippery_ant_renders_frames_headless(backend):
    result = run_render_script(backend)
    if backend == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        assert "ImportError: import mujoco failed with MUJOCO_GL='osmesa'" in (
            result.stderr
        ), result.stderr[-2000:]
        assert "apt install libosmesa6" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-2000:]
    # frame size as asked, a non-blank image that moves, and a task switch on the way
    assert result.stdout.split("\n")[-2] == "(64, 96, 3) uint8 1 1 1", result.stdout


def test_render_without_a_gl_backend_says_which_to_set():
    result = run_render_script(None)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: MuJoCo could not render with MUJOCO_GL=None")
    assert "set MUJOCO_GL=egl" in last


def test_slippery_ant_without_contact_forces_is_brax_like_and_a_proper_env():
    """use_contact_forces=False (SC's Brax ant): 27 dims, no contact term anywhere."""
    make = lambda: gym.make(  # noqa: E731
        "clenv/SlipperyAnt-v0", use_contact_forces=False, switch_every=25
    )
    env = make()
    assert env.observation_space.shape == (27,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    assert [w for w in caught if not KNOWN_WARNINGS.search(str(w.message))] == []
    first, second = rollout(make(), 110, seed=3), rollout(make(), 110, seed=3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        assert repr(a[1:]) == repr(b[1:])
    assert max(r[-1]["task_id"] for r in first) == 4  # deterministic across switches
    steps = [r for r in first if len(r) == 5]
    for obs, reward, *_, info in steps:
        assert obs.shape == (27,) and "reward_contact" not in info
        terms = {k: v for k, v in info.items() if k.startswith("reward_")}
        assert set(terms) == {"reward_forward", "reward_survive", "reward_ctrl"}
        assert sum(terms.values()) == pytest.approx(reward, abs=1e-6)
    # The 27 dims are the first 27 of the default observation (no contact forces).
    full = rollout(gym.make("clenv/SlipperyAnt-v0", switch_every=25), 3, seed=3)
    np.testing.assert_array_equal(full[0][0][:27], first[0][0])
    clone = pickle.loads(pickle.dumps(make()))
    assert clone.observation_space.shape == (27,)
    pairs = zip(rollout(clone, 30, seed=2), rollout(make(), 30, seed=2), strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="use_contact_forces=False"):
        gym.make(
            "clenv/SlipperyAnt-v0", use_contact_forces=False, contact_cost_weight=1
        )
