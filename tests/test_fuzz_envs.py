"""Property-based tests (hypothesis) over every registered env: constructor arguments,
actions and hand-edited schedule states (issue 16 item 6; docs/reliability.md).

Every input either works or raises a *clear error*: an exception of an allowed type
(``ValueError``, ``TypeError``, Gymnasium's errors; ``FileNotFoundError`` naming the
dataset files an argument asks for beyond the fixture data) raised by clenv's own code (the
innermost traceback frame is in ``clenv/``, never numpy, MuJoCo, h5py or torch) whose
message names the argument. The one exception raised outside clenv is Python's own
``TypeError: ... unexpected keyword argument '<name>'`` for an unknown key, which names
it too.

The default profile keeps these tests to about half a minute; ``pytest -m slow
tests/test_fuzz_envs.py`` runs the deep profile (many more examples). Each test counts
the inputs it tried in ``TRIED`` (printed at the end of the session with ``-s``).
"""

from __future__ import annotations

import collections
import inspect
import math
import traceback
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import IMAGENET_CLASSES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clenv
from clenv.registration import ENV_IDS, MUJOCO_ENVS, SUPERVISED_ENVS

gym.register_envs(clenv)

CLENV_DIR = Path(clenv.__file__).resolve().parent
ALLOWED = (ValueError, TypeError, FileNotFoundError, gym.error.Error)
TRIED: collections.Counter[str] = collections.Counter()

# Quick by default (MuJoCo envs take ~0.1 s to build); `-m slow` runs the deep profile.
QUICK = dict(max_examples=15, deadline=None, derandomize=True, database=None)
DEEP = dict(max_examples=300, deadline=None, database=None)
FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# Settings that fit the fixture data of tests/conftest.py.
SMALL = {
    "clenv/PermutedMNIST-v0": {"examples_per_task": 20, "num_tasks": 3},
    "clenv/ContinualImageNet-v0": {
        "epochs_per_task": 1,
        "num_tasks": 3,
        "num_classes": IMAGENET_CLASSES,
        "train_images_per_class": 10,
        "test_images_per_class": 4,
    },
    "clenv/IncrementalCIFAR100-v0": {"epochs_per_task": 1, "train_images_per_class": 2},
}
# Arguments left alone: rendering, the data location, a base env object.
NOT_FUZZED = {
    "self",
    "render_mode",
    "width",
    "height",
    "camera_id",
    "camera_name",
    "default_camera_config",
    "base_env",
    "base_env_id",
    "base_env_kwargs",
    "data_dir",
    "download",
    "xml_file",
    "frame_skip",
}


def fuzzed_arguments(env_id: str) -> list[str]:
    """The constructor arguments of an id's class, less the ones left alone."""
    spec = gym.spec(env_id)
    module, name = spec.entry_point.split(":")
    cls = getattr(__import__(module, fromlist=[name]), name)
    return [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in NOT_FUZZED and p not in (spec.kwargs or {})
    ]


def hostile_values() -> st.SearchStrategy:
    """Right types with extreme or invalid values, and wrong types."""
    ints = st.one_of(
        st.integers(-3, 40),
        st.sampled_from([0, -1, 2**31, 2**63, 10**30, -(2**63)]),
    )
    floats = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.nan, math.inf]),
    )
    pairs = st.tuples(floats, floats) | st.tuples(ints, ints)
    return st.one_of(
        ints,
        floats,
        pairs,
        st.none(),
        st.booleans(),
        st.sampled_from(
            ["step", "episode_end", "abrupt", "gradual", "unit", "friction", ""]
        ),
        st.text(max_size=4),
        st.lists(ints, max_size=3),
        st.just(np.int64(3)),
        st.just(np.float32(0.5)),
        st.just(object()),
    )


def assert_clear_error(error: BaseException, names: list[str]) -> None:
    """``error`` is of an allowed type, raised by clenv (or Python's unknown-keyword
    TypeError), and names one of ``names``."""
    text = str(error)
    frames = traceback.extract_tb(error.__traceback__)
    where = Path(frames[-1].filename).resolve() if frames else None
    context = f"{type(error).__name__}: {text} (raised in {where})"
    assert isinstance(error, ALLOWED), context
    unknown_keyword = isinstance(error, TypeError) and "unexpected keyword" in text
    if not unknown_keyword:
        assert where is not None and where.is_relative_to(CLENV_DIR), context
    if isinstance(error, FileNotFoundError):
        return  # more data than the fixture holds: clenv names the missing files
    assert any(name in text for name in names), f"names none of {names}: {context}"


def make(env_id: str, kwargs: dict) -> gym.Env:
    return gym.make(
        env_id, disable_env_checker=True, **{**SMALL.get(env_id, {}), **kwargs}
    )


@st.composite
def constructor_kwargs(draw, env_id: str) -> dict:
    names = draw(
        st.lists(st.sampled_from(fuzzed_arguments(env_id)), min_size=1, max_size=3)
    )
    kwargs = {}
    for key in names:
        kwargs[key] = draw(hostile_values())
    if draw(st.integers(0, 9)) == 0:
        kwargs[draw(st.sampled_from(["swich_every", "numtasks", "lr"]))] = 1
    return kwargs


def try_env(env_id: str, kwargs: dict, steps: int = 2) -> None:
    TRIED[f"constructor {env_id}"] += 1
    try:
        env = make(env_id, kwargs)
    except Exception as error:  # noqa: BLE001 (judged below)
        assert_clear_error(error, list(kwargs))
        return
    try:
        env.reset(seed=0)
        for _ in range(steps):
            env.step(env.action_space.sample())
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"{env_id}({kwargs}) was built but then failed: {error!r}")
    finally:
        env.close()


# -- constructor arguments -----------------------------------------------------------
def _constructor_test(env_id: str, profile: dict):
    @settings(**profile, suppress_health_check=FIXTURE_OK)
    @given(kwargs=constructor_kwargs(env_id))
    def run(data_dir, kwargs):
        try_env(env_id, kwargs)

    return run


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_constructor_arguments_work_or_fail_clearly(env_id, data_dir) -> None:
    _constructor_test(env_id, QUICK)(data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_constructor_arguments_deep(env_id, data_dir) -> None:
    _constructor_test(env_id, DEEP)(data_dir)


# -- actions -------------------------------------------------------------------------
def hostile_actions(env: gym.Env) -> st.SearchStrategy:
    space = env.action_space
    shape = space.shape
    good = st.just(space.sample())
    wrong_shapes = st.sampled_from(
        [(), (1,), (*shape, 2), (max(1, (shape or (2,))[0]) + 1,)]
    )
    float_values = st.floats(allow_nan=True, allow_infinity=True, width=32)
    arrays = st.builds(
        lambda s, v, dtype: (
            np.full(s, v).astype(dtype, copy=False)
            if dtype != "object"
            else np.full(s, v, dtype=object)
        ),
        st.one_of(st.just(shape), wrong_shapes),
        float_values | st.integers(-(2**40), 2**40),
        st.sampled_from(
            ["float64", "float32", "int64", "int8", "uint8", "bool", "object"]
        ),
    )
    return st.one_of(
        good,
        arrays,
        st.none(),
        st.text(max_size=3),
        st.lists(float_values, max_size=4),
        st.integers(-5, 5),
        float_values,
    )


def _action_test(env_id: str, profile: dict):
    env = make(env_id, {})
    env.reset(seed=0)
    strategy = hostile_actions(env)

    @settings(**profile, suppress_health_check=FIXTURE_OK)
    @given(action=strategy)
    def run(action):
        TRIED[f"action {env_id}"] += 1
        try:
            env.step(action)
        except Exception as error:  # noqa: BLE001
            assert_clear_error(error, ["action"])
            return
        finally:
            env.reset()

    return env, run


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_actions_work_or_fail_clearly(env_id, data_dir) -> None:
    env, run = _action_test(env_id, QUICK | {"max_examples": 40})
    try:
        run()
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_actions_deep(env_id, data_dir) -> None:
    env, run = _action_test(env_id, DEEP)
    try:
        run()
    finally:
        env.close()


# -- task and schedule state ---------------------------------------------------------
def edited_states(state: dict) -> st.SearchStrategy:
    """A saved schedule state with keys removed, added, or set to hostile values."""

    @st.composite
    def edit(draw):
        edited = dict(state)
        keys = st.lists(st.sampled_from(sorted(state)), max_size=3, unique=True)
        for key in draw(keys):
            if draw(st.booleans()):
                edited[key] = draw(hostile_values())
            else:
                edited.pop(key)
        if draw(st.integers(0, 4)) == 0:
            edited["extra_key"] = 1
        return edited

    return st.one_of(edit(), hostile_values())


def _schedule_test(env_id: str, profile: dict, vector: bool):
    if vector:
        env = gym.make_vec(env_id, num_envs=2, **SMALL.get(env_id, {}))
    else:
        env = make(env_id, {})
    env.reset(seed=0)
    target = env if vector else env.unwrapped
    saved = target.get_schedule_state()

    @settings(**profile, suppress_health_check=FIXTURE_OK)
    @given(state=edited_states(saved), task=hostile_values())
    def run(state, task):
        TRIED[f"schedule {'vector ' if vector else ''}{env_id}"] += 1
        names = ["schedule state", *(state if isinstance(state, dict) else [])]
        try:
            target.set_schedule_state(state)
        except Exception as error:  # noqa: BLE001
            assert_clear_error(error, names)
        else:
            env.step(env.action_space.sample())
        try:
            target.set_task(task)
        except Exception as error:  # noqa: BLE001
            assert_clear_error(error, ["task_id"])
        else:
            env.step(env.action_space.sample())
        target.set_schedule_state(saved)  # a saved state always loads

    return env, run


@pytest.mark.parametrize("vector", [False, True], ids=["env", "vector"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_schedule_state_and_set_task_work_or_fail_clearly(
    env_id, vector, data_dir
) -> None:
    env, run = _schedule_test(env_id, QUICK | {"max_examples": 25}, vector)
    try:
        run()
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("vector", [False, True], ids=["env", "vector"])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_schedule_state_deep(env_id, vector, data_dir) -> None:
    env, run = _schedule_test(env_id, DEEP, vector)
    try:
        run()
    finally:
        env.close()


def test_registry_is_covered() -> None:
    assert set(ENV_IDS) == set(MUJOCO_ENVS) | set(SUPERVISED_ENVS)
    assert {i for i in gym.registry if i.startswith("clenv/")} == set(ENV_IDS)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if TRIED:
        print("\ninputs tried:", dict(TRIED), "total", sum(TRIED.values()))
