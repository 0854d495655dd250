"""The supervised streams (Permuted MNIST, Continual ImageNet, incremental CIFAR-100)
on small fixture datasets in the real formats, and Permuted MNIST on the real MNIST."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import (
    CIFAR_TRAIN_PER_CLASS,
    IMAGENET_CLASSES,
    MNIST_TEST,
    MNIST_TRAIN,
    REAL_DATA_DIR,
)
from gymnasium.utils.env_checker import check_env

import clenv
from clenv.data import load_mnist
from clenv.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from clenv.envs.permuted_mnist import pixel_permutation
from clenv.registration import SUPERVISED_ENVS

gym.register_envs(clenv)

# Small settings that fit the fixture data (see conftest.py).
SMALL = {
    "clenv/PermutedMNIST-v0": {"examples_per_task": 50, "num_tasks": 5},
    "clenv/ContinualImageNet-v0": {
        "epochs_per_task": 2,
        "num_tasks": 5,
        "num_classes": IMAGENET_CLASSES,
        "train_images_per_class": 10,
        "test_images_per_class": 4,
    },
    "clenv/IncrementalCIFAR100-v0": {
        "epochs_per_task": 1,
        "num_tasks": 4,
        "train_images_per_class": 4,
    },
}
ENV_IDS = list(SUPERVISED_ENVS)
KNOWN_WARNINGS = ()


def make(env_id, batch_size=3, **kwargs):
    return gym.make(env_id, batch_size=batch_size, **{**SMALL[env_id], **kwargs})


def rollout(env, steps, seed=0, action_seed=1):
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    trace = [(obs, info)]
    for _ in range(steps):
        action = rng.integers(0, env.unwrapped.n_classes, env.action_space.shape)
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info))
    return trace


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(data_dir, env_id, batch_size):
    env = make(env_id, batch_size=batch_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    unexpected = [w for w in caught if not str(w.message).startswith(KNOWN_WARNINGS)]
    assert not unexpected, [str(w.message) for w in unexpected]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spaces_and_reward_is_online_accuracy(data_dir, env_id):
    env = make(env_id, batch_size=5)
    obs, info = env.reset(seed=3)
    assert obs.shape == (5, *env.unwrapped._example_shape) and obs.dtype == np.float32
    assert env.observation_space.contains(obs)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.integers(0, env.unwrapped.n_classes, 5)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated
        assert info["label"].shape == (5,) and info["label"].dtype == np.int64
        assert reward == pytest.approx(np.mean(action == info["label"]))
    single = make(env_id, batch_size=1)
    obs, _ = single.reset(seed=0)
    assert obs.shape == single.unwrapped._example_shape
    assert isinstance(single.action_space, gym.spaces.Discrete)
    _, reward, _, _, info = single.step(3 % single.unwrapped.n_classes)
    assert isinstance(info["label"], int)
    assert reward == float(info["label"] == 3 % single.unwrapped.n_classes)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout_across_task_switches(data_dir, env_id):
    env = make(env_id)
    steps = sum(env.unwrapped.task_length(k) for k in range(3)) + 2
    first = rollout(env, steps, seed=7)
    assert first[-1][4]["task_id"] == 3
    assert_same(rollout(make(env_id), steps, seed=7), first)
    other = rollout(make(env_id), steps, seed=8)
    assert not np.array_equal(other[1][0], first[1][0])
    # The tasks themselves depend only on task_seed, not on the reset seed.
    assert [t[4]["task"] for t in other[1:]] == [t[4]["task"] for t in first[1:]]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_task_switch_truncates_at_task_end(data_dir, env_id):
    env = make(env_id, batch_size=4)
    unwrapped = env.unwrapped
    _, info = env.reset(seed=0)
    assert info["task_switch"] and info["task_id"] == 0
    for task_id in range(2):
        length = unwrapped.task_length(task_id)
        for step in range(1, length + 1):
            _, _, _, truncated, info = env.step(np.zeros(4, np.int64))
            assert truncated == (step == length)
            assert info["task_switch"] == (step == length)
        assert info["task_id"] == task_id + 1 and info["task_step"] == 0
        assert info["task"] == unwrapped.task_params(task_id + 1)
        assert info["epoch"] == 0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickle_keeps_state_but_not_the_dataset(data_dir, env_id):
    env = make(env_id)
    rollout(env, 7)
    held_out = env.unwrapped.task_data(0, "test")  # loads the test split too
    blob = pickle.dumps(env)
    clone = pickle.loads(blob)
    assert_same(clone.unwrapped.task_data(0, "test"), held_out)
    action = np.ones(3, np.int64)
    assert_same(clone.step(action), env.step(action))
    # The dataset is reloaded on unpickling, not pickled: none of its bytes are there.
    pool = env.unwrapped._pool_inputs
    for row in (pool[0], pool[-1]):
        assert row.tobytes()[:512] not in blob


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_vector_envs_switch_in_lockstep(data_dir, env_id):
    length = make(env_id).unwrapped.task_length(0)
    shape = make(env_id).unwrapped._example_shape
    for vector_class, kwargs in (
        (gym.vector.SyncVectorEnv, {}),
        (gym.vector.AsyncVectorEnv, {"context": "fork"}),
    ):
        vector = vector_class([lambda: make(env_id) for _ in range(2)], **kwargs)
        try:
            obs, infos = vector.reset(seed=0)
            assert obs.shape == (2, 3, *shape)
            actions = np.zeros((2, 3), np.int64)
            for step in range(1, length + 1):
                obs, _, _, truncated, infos = vector.step(actions)
                assert list(infos["task_id"]) == [step // length] * 2
                assert list(truncated) == [step == length] * 2
            # NEXT_STEP autoreset: the reset step returns the same pending batch, so
            # no example is skipped and both sub-envs stay in the new task.
            reset_obs, _, _, _, infos = vector.step(actions)
            np.testing.assert_array_equal(reset_obs, obs)
            assert list(infos["task_id"]) == [1, 1]
            assert list(infos["task_step"]) == [0, 0]
        finally:
            vector.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_unseeded_reset_returns_pending_batch(data_dir, env_id):
    env = make(env_id)
    env.reset(seed=0)
    obs, *_ = env.step(np.zeros(3, np.int64))
    again, info = env.reset()
    np.testing.assert_array_equal(again, obs)
    assert not info["task_switch"] and info["task_step"] == 1


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_schedule_and_stream_state_round_trip(data_dir, env_id):
    env = make(env_id)
    rollout(env, 9)
    state = env.unwrapped.get_schedule_state()
    expected = rollout_from(env, 12)
    restored = make(env_id)
    restored.reset(seed=123)
    restored.unwrapped.set_schedule_state(state)
    assert_same(rollout_from(restored, 12), expected)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_a_restored_state_and_the_infos_after_it_share_no_array(data_dir, env_id):
    """Restoring one saved state twice: the labels each step hands out are the env's
    own copies, so a caller that keeps (or edits) them touches neither the saved state
    nor another step's info (gymnasium's passive checker flags such sharing)."""
    env = make(env_id, batch_size=3)
    env.reset(seed=0)
    state = env.unwrapped.get_schedule_state()
    saved_labels = state["stream"]["pending_labels"].copy()
    infos = []
    for _ in range(2):
        env.unwrapped.set_schedule_state(state)
        infos.append(env.step(np.zeros(3, np.int64))[4])
    first, second = infos[0]["label"], infos[1]["label"]
    np.testing.assert_array_equal(first, second)  # the same batch, twice
    assert not np.shares_memory(first, second)
    assert not np.shares_memory(first, state["stream"]["pending_labels"])
    first[:] = -1
    np.testing.assert_array_equal(state["stream"]["pending_labels"], saved_labels)


def rollout_from(env, steps):
    obs, _ = env.reset()
    trace = [obs]
    for k in range(steps):
        trace.append(env.step(np.full(3, k % 2, np.int64)))
    return trace


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_bad_actions_raise_value_error(data_dir, env_id):
    env = make(env_id, batch_size=3)
    env.reset(seed=0)
    n = env.unwrapped.n_classes
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        env.step(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        env.step(np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match=rf"action\[1\] = {n} is outside \[0, {n}\)"):
        env.step(np.array([0, n, 0]))
    with pytest.raises(ValueError, match=r"action\[2\] = -1"):
        env.step(np.array([0, 0, -1]))
    with pytest.raises(ValueError, match="integer class indices"):
        env.step(np.zeros(3))
    single = make(env_id, batch_size=1)
    single.reset(seed=0)
    with pytest.raises(ValueError, match=rf"action {n} is outside \[0, {n}\)"):
        single.step(n)
    with pytest.raises(ValueError, match="one integer class index"):
        single.step(np.array([0, 1]))
    with pytest.raises(ValueError, match="one integer class index"):
        single.step(0.5)
    # A rejected action changes nothing: the stream goes on as if it was never sent.
    fresh = make(env_id, batch_size=1)
    fresh.reset(seed=0)
    assert_same(single.step(0), fresh.step(0))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_bad_arguments(data_dir, env_id):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make(env_id, batch_size=0)
    with pytest.raises(ValueError, match="switch_at must be 'step'"):
        make(env_id, switch_at="episode_end")
    with pytest.raises(ValueError, match="either switch_every"):
        make(env_id, switch_every=10)
    with pytest.raises(ValueError, match="num_tasks"):
        make(env_id, num_tasks=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make(env_id, batch_size="8")
    if env_id == "clenv/PermutedMNIST-v0":
        with pytest.raises(ValueError, match="examples_per_task must be a positive"):
            make(env_id, examples_per_task=0)
    else:
        with pytest.raises(ValueError, match="epochs_per_task must be a positive"):
            make(env_id, epochs_per_task=-1)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_switch_every_sets_the_task_length(data_dir, env_id):
    kwargs = {
        k: v
        for k, v in SMALL[env_id].items()
        if "epoch" not in k and "examples" not in k
    }
    env = gym.make(env_id, batch_size=2, switch_every=5, **kwargs)
    assert [env.unwrapped.task_length(k) for k in range(3)] == [5, 5, 5]
    env.reset(seed=0)
    infos = [env.step(np.zeros(2, np.int64))[4] for _ in range(10)]
    assert [i["task_id"] for i in infos] == [0] * 4 + [1] * 5 + [2]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_task_data_for_past_tasks_does_not_touch_the_stream(data_dir, env_id):
    env = make(env_id)
    unwrapped = env.unwrapped
    rollout(env, unwrapped.task_length(0) + 1)
    state = unwrapped.get_schedule_state()
    past_x, past_y = unwrapped.task_data(0, "test")
    now_x, now_y = unwrapped.task_data(None, "test")
    assert past_x.dtype == np.float32 and past_y.dtype == np.int64
    assert past_x.shape[1:] == unwrapped._example_shape and len(past_x) == len(past_y)
    assert not np.array_equal(past_x, now_x[: len(past_x)]) or env_id.endswith(
        "CIFAR100-v0"
    )
    x2, y2 = unwrapped.task_data(0, "test", max_examples=5)
    assert len(y2) == 5 and np.isin(y2, past_y).all()
    assert_same(unwrapped.task_data(0, "test", max_examples=5), (x2, y2))
    with pytest.raises(ValueError, match="split must be one of"):
        unwrapped.task_data(0, "nonsense")
    with pytest.raises(ValueError, match="num_tasks"):
        unwrapped.task_data(99)
    new = unwrapped.get_schedule_state()
    assert_same(new, state)


def test_set_task_pins_a_past_task_for_the_stream(data_dir):
    env = make("clenv/PermutedMNIST-v0", batch_size=2)
    unwrapped = env.unwrapped
    rollout(env, 2 * unwrapped.task_length(0) + 3)
    assert unwrapped.task_id == 2
    unwrapped.set_task(0)
    obs, info = env.reset()
    assert info["task_id"] == 0 and info["task_switch"]
    train_x, _ = unwrapped.task_data(0, "train")
    assert all((train_x == row).all(axis=1).any() for row in obs)  # task 0's images
    unwrapped.set_task(None)
    _, _, _, _, info = env.step(np.zeros(2, np.int64))
    assert info["task_id"] == 2 and info["task_switch"] and info["task_step"] == 4
    unwrapped.set_task(1)
    first, info = env.reset(seed=5)  # a seeded reset restarts the pinned task's stream
    assert info["task_id"] == 1
    env.step(np.zeros(2, np.int64))
    np.testing.assert_array_equal(env.reset(seed=5)[0], first)


def test_stable_baselines3_sees_one_episode_per_task(data_dir):
    sb3 = pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("clenv/PermutedMNIST-v0", examples_per_task=64)
    sb3_check_env(env)
    model = sb3.PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0)
    model.learn(256)
    episodes = list(model.ep_info_buffer)
    # SB3's Monitor sees 64-step episodes (tasks); the return is the number correct.
    assert len(episodes) >= 3 and {e["l"] for e in episodes} == {64}
    assert all(0 <= e["r"] <= 64 and float(e["r"]).is_integer() for e in episodes)


# -- Permuted MNIST ------------------------------------------------------------------
def test_permuted_mnist_tasks_permute_the_same_images(data_dir):
    env = gym.make("clenv/PermutedMNIST-v0", examples_per_task=MNIST_TRAIN, num_tasks=3)
    images, labels = load_mnist("train")
    seen = []
    for task_id in range(3):
        x, y = env.unwrapped.task_data(task_id, "train")
        permutation = pixel_permutation(env.unwrapped.task_params(task_id))
        np.testing.assert_array_equal(x, images[:, permutation] / np.float32(255))
        np.testing.assert_array_equal(y, labels)
        seen.append(permutation)
    assert not np.array_equal(seen[0], np.arange(784))  # task 0 is permuted (LoP)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    identity = gym.make("clenv/PermutedMNIST-v0", first_task_identity=True)
    np.testing.assert_array_equal(
        identity.unwrapped.task_data(0, "train")[0], images / np.float32(255)
    )
    assert len(env.unwrapped.task_data(1, "test")[1]) == MNIST_TEST


def test_permuted_mnist_shows_each_example_once_per_task(data_dir):
    batch = 8
    env = gym.make(
        "clenv/PermutedMNIST-v0", batch_size=batch, examples_per_task=MNIST_TRAIN
    )
    obs, info = env.reset(seed=0)
    x, _ = env.unwrapped.task_data(0, "train")
    steps = env.unwrapped.task_length(0)
    assert steps == -(-MNIST_TRAIN // batch)
    shown, labels = [], []
    for _ in range(steps):
        shown.append(obs)
        obs, _, _, _, info = env.step(np.zeros(batch, np.int64))
        labels.append(info["label"])
    shown = np.concatenate(shown)[:MNIST_TRAIN]  # the last batch spills into epoch 1
    order = np.lexsort(shown.T)
    np.testing.assert_array_equal(shown[order], x[np.lexsort(x.T)])
    assert info["task_id"] == 1


def test_permuted_mnist_epochs_beyond_the_training_set(data_dir):
    env = gym.make(
        "clenv/PermutedMNIST-v0", batch_size=40, examples_per_task=2 * MNIST_TRAIN + 40
    )
    env.reset(seed=0)
    epochs = [env.step(np.zeros(40, np.int64))[4]["epoch"] for _ in range(6)]
    assert epochs == [0, 0, 1, 1, 1, 2]


def test_missing_data_error_names_files_directory_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        gym.make("clenv/PermutedMNIST-v0", data_dir=tmp_path)
    message = str(error.value)
    assert (
        "train-images-idx3-ubyte.gz" in message and str(tmp_path / "mnist") in message
    )
    assert "download=True" in message


@pytest.mark.skipif(
    not (REAL_DATA_DIR / "mnist").is_dir(), reason="real MNIST not in REAL_DATA_DIR"
)
def test_permuted_mnist_on_the_real_mnist():
    env = gym.make("clenv/PermutedMNIST-v0", batch_size=256, data_dir=REAL_DATA_DIR)
    images, labels = load_mnist("train", REAL_DATA_DIR)  # md5-verified by the loader
    assert images.shape == (60000, 784) and images.dtype == np.uint8
    assert np.bincount(labels).tolist()[:3] == [5923, 6742, 5958]
    assert env.unwrapped.task_length(0) == 235  # ceil(60000 / 256)
    obs, info = env.reset(seed=0)
    first = env.unwrapped.task_params(0)
    second = env.unwrapped.task_params(1)
    p0, p1 = pixel_permutation(first), pixel_permutation(second)
    assert not np.array_equal(p0, p1)
    x0, y0 = env.unwrapped.task_data(0, "train", max_examples=500)
    x1, y1 = env.unwrapped.task_data(1, "train", max_examples=500)
    np.testing.assert_array_equal(y0, y1)
    # Same images, different pixel order: undo each permutation and compare.
    np.testing.assert_array_equal(x0[:, np.argsort(p0)], x1[:, np.argsort(p1)])
    rewards = [env.step(np.zeros(256, np.int64))[1] for _ in range(20)]
    assert 0.05 < np.mean(rewards) < 0.15  # always predicting 0: ~ its frequency


@pytest.mark.skipif(
    not (REAL_DATA_DIR / "mnist").is_dir(), reason="real MNIST not in REAL_DATA_DIR"
)
def test_real_permuted_mnist_task_shows_every_image_once():
    env = gym.make("clenv/PermutedMNIST-v0", batch_size=1000, data_dir=REAL_DATA_DIR)
    obs, info = env.reset(seed=0)
    projection = np.random.default_rng(0).standard_normal(784)
    shown, labels = [], []
    for _ in range(60):
        shown.append(obs @ projection)
        obs, _, _, truncated, info = env.step(np.zeros(1000, np.int64))
        labels.append(info["label"])
    assert truncated and info["task_id"] == 1
    x, y = env.unwrapped.task_data(0, "train")
    # The task's 60 batches hold each permuted training image exactly once.
    np.testing.assert_allclose(np.sort(np.concatenate(shown)), np.sort(x @ projection))
    assert np.bincount(np.concatenate(labels)).tolist() == np.bincount(y).tolist()


# -- Continual ImageNet --------------------------------------------------------------
def test_imagenet_pairs_follow_the_class_order(data_dir):
    env = make("clenv/ContinualImageNet-v0", num_tasks=6)
    unwrapped = env.unwrapped
    order = unwrapped.class_order
    assert sorted(order) == list(range(IMAGENET_CLASSES))
    pairs = [unwrapped.task_params(k)["classes"] for k in range(6)]
    assert pairs[:3] == [tuple(order[2 * k : 2 * k + 2]) for k in range(3)]
    assert pairs[3:] == pairs[:3]  # the order repeats once exhausted, as in LoP
    other = make("clenv/ContinualImageNet-v0", task_seed=1).unwrapped
    assert not np.array_equal(other.class_order, order)
    # Held-out images are the last ones of each class file.
    classes = np.load(data_dir / "imagenet32" / "classes" / f"{pairs[1][1]}.npy")
    x, y = unwrapped.task_data(1, "test")
    np.testing.assert_array_equal(x[4:], classes[10:14] / np.float32(255))
    assert y.tolist() == [0] * 4 + [1] * 4
    assert unwrapped.task_length(0) == 2 * 20 // 3 + 1  # ceil(2 epochs * 20 / 3)


def test_imagenet_epochs_in_info(data_dir):
    env = make("clenv/ContinualImageNet-v0", batch_size=5, epochs_per_task=3)
    env.reset(seed=0)
    epochs = [env.step(np.zeros(5, np.int64))[4]["epoch"] for _ in range(12)]
    assert epochs == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0]  # 4 steps/epoch, new task


def test_imagenet_feeds_raw_pixel_values_or_unit_scale(data_dir):
    raw = make("clenv/ContinualImageNet-v0", batch_size=6, pixel_scale="raw")
    unit = make("clenv/ContinualImageNet-v0", batch_size=6)
    # v0 as released divides by 255; "raw" is opt-in (the protocols pass it).
    assert unit.unwrapped.pixel_scale == "unit"
    x, _ = raw.reset(seed=0)
    z, _ = unit.reset(seed=0)
    # Both papers: the stored uint8 values as float32, not divided by 255.
    assert raw.unwrapped.pixel_scale == "raw"
    assert x.max() > 1 and np.array_equal(x, np.round(x))
    assert raw.observation_space.high.max() == 255 and raw.observation_space.contains(x)
    np.testing.assert_array_equal(z, x / np.float32(255))
    assert unit.observation_space.high.max() == 1 and unit.observation_space.contains(z)
    test_raw, _ = raw.unwrapped.task_data(0, "test")
    np.testing.assert_array_equal(
        unit.unwrapped.task_data(0, "test")[0], test_raw / np.float32(255)
    )
    with pytest.raises(ValueError, match="pixel_scale must be one of"):
        make("clenv/ContinualImageNet-v0", pixel_scale="0-1")


# -- Incremental CIFAR-100 -----------------------------------------------------------
def test_cifar_sc_trains_on_every_image_without_validation(data_dir):
    sc = make(
        "clenv/IncrementalCIFAR100-v0", train_images_per_class=CIFAR_TRAIN_PER_CLASS
    ).unwrapped
    _, train_y = sc.task_data(1, "train")
    active = sc.active_classes(1)
    counts = np.bincount(train_y, minlength=100)[active]
    assert counts.tolist() == [CIFAR_TRAIN_PER_CLASS] * 10
    assert sc.task_length(0) == int(np.ceil(5 * CIFAR_TRAIN_PER_CLASS / 3))
    with pytest.raises(ValueError, match="split must be one of"):
        sc.task_data(1, "validation")
    with pytest.raises(ValueError, match="must be <= 500"):
        make("clenv/IncrementalCIFAR100-v0", train_images_per_class=501)


@pytest.mark.parametrize("reshuffle", [True, False])
def test_cifar_reshuffle_each_epoch_or_keep_the_task_order(data_dir, reshuffle):
    env = make(
        "clenv/IncrementalCIFAR100-v0",
        batch_size=1,
        epochs_per_task=3,
        reshuffle_each_epoch=reshuffle,
    )
    shown = [env.reset(seed=0)[0].tobytes()]  # each step returns the next image
    per_epoch = env.unwrapped.task_length(0) // 3
    shown += [env.step(0)[0].tobytes() for _ in range(3 * per_epoch - 1)]
    epochs = [shown[k * per_epoch : (k + 1) * per_epoch] for k in range(3)]
    # Every epoch shows each training image of the task once ...
    assert all(sorted(epoch) == sorted(epochs[0]) for epoch in epochs)
    # ... in a new order (LoP) or in the order drawn at the task's start (SC).
    assert [epoch == epochs[0] for epoch in epochs[1:]] == [not reshuffle] * 2
    with pytest.raises(ValueError, match="reshuffle_each_epoch must be True or False"):
        make("clenv/IncrementalCIFAR100-v0", reshuffle_each_epoch="no")


PAPER_VARIANTS = {
    "imagenet-unit": ("clenv/ContinualImageNet-v0", {"pixel_scale": "unit"}),
    "cifar-sc": (
        "clenv/IncrementalCIFAR100-v0",
        {
            "train_images_per_class": CIFAR_TRAIN_PER_CLASS,
            "reshuffle_each_epoch": False,
        },
    ),
}


@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_paper_variants_check_env_determinism_and_pickle(data_dir, variant):
    env_id, kwargs = PAPER_VARIANTS[variant]
    env = make(env_id, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    assert not caught, [str(w.message) for w in caught]
    steps = sum(env.unwrapped.task_length(k) for k in range(2)) + 3
    first = rollout(make(env_id, **kwargs), steps, seed=5)
    assert first[-1][4]["task_id"] == 2
    assert_same(rollout(make(env_id, **kwargs), steps, seed=5), first)
    env = make(env_id, **kwargs)
    rollout(env, steps)
    clone = pickle.loads(pickle.dumps(env))
    action = np.ones(3, np.int64)
    assert_same(clone.step(action), env.step(action))


def test_cifar_classes_accumulate(data_dir):
    env = make("clenv/IncrementalCIFAR100-v0", batch_size=10)
    unwrapped = env.unwrapped
    order = unwrapped.class_order
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["active_classes"], order[:5])
    lengths = [unwrapped.task_length(k) for k in range(3)]
    assert lengths == [2, 4, 6]  # ceil(1 epoch * 4 images * 5 (k + 1) classes / 10)
    labels = []
    for _ in range(lengths[0] + lengths[1]):
        _, _, _, _, info = env.step(np.zeros(10, np.int64))
        labels.append((info["label"], info["active_classes"]))
    np.testing.assert_array_equal(info["active_classes"], order[:15])
    assert info["task"] == {"num_classes": 15, "new_classes": tuple(order[10:15])}
    # Labels are those of the batch just predicted; active_classes describe the next.
    for step, (batch_labels, active) in enumerate(labels[: lengths[0]], start=1):
        assert np.isin(batch_labels, order[:5]).all()
        np.testing.assert_array_equal(active, order[: 5 if step < lengths[0] else 10])
    assert set(np.concatenate([b for b, _ in labels[lengths[0] :]])) <= set(order[:10])


def test_cifar_splits_follow_lop(data_dir):
    env = make("clenv/IncrementalCIFAR100-v0")
    unwrapped = env.unwrapped
    train_x, train_y = unwrapped.task_data(1, "train")
    val_x, val_y = unwrapped.task_data(1, "validation")
    test_x, test_y = unwrapped.task_data(1, "test")
    active = unwrapped.active_classes(1)
    assert np.bincount(train_y, minlength=100)[active].tolist() == [4] * 10
    assert (
        np.bincount(val_y, minlength=100)[active].tolist()
        == [CIFAR_TRAIN_PER_CLASS - 4] * 10
    )
    assert np.isin(test_y, active).all() and len(test_y) == 20
    # Train and validation images are disjoint.
    assert not (train_x[:, None] == val_x[None]).all(axis=(2, 3, 4)).any()


def test_cifar_normalisation_and_augmentation(data_dir):
    plain = make("clenv/IncrementalCIFAR100-v0", batch_size=4)
    normed = make("clenv/IncrementalCIFAR100-v0", batch_size=4, normalize=True)
    x, _ = plain.reset(seed=0)
    z, _ = normed.reset(seed=0)
    mean = np.array(CIFAR100_MEAN, np.float32)[:, None, None]
    std = np.array(CIFAR100_STD, np.float32)[:, None, None]
    np.testing.assert_allclose(z, (x - mean) / std, rtol=1e-6, atol=1e-6)
    assert normed.observation_space.contains(z)
    augmented = make("clenv/IncrementalCIFAR100-v0", batch_size=4, augment=True)
    a, _ = augmented.reset(seed=0)
    assert a.shape == x.shape and augmented.observation_space.contains(a)
    assert not np.array_equal(a, x)
    # Evaluation data is never augmented.
    np.testing.assert_array_equal(
        augmented.unwrapped.task_data(0, "test")[0],
        plain.unwrapped.task_data(0, "test")[0],
    )


def test_cifar_num_tasks_bounded(data_dir):
    with pytest.raises(ValueError, match="num_tasks must be <= 20"):
        make("clenv/IncrementalCIFAR100-v0", num_tasks=21)


# -- each paper's env, as clenv.settings resolves it --------------------------------
ROW_ENVS = {
    "continual_imagenet": "clenv/ContinualImageNet-v0",
    "incremental_cifar": "clenv/IncrementalCIFAR100-v0",
    "permuted_mnist": "clenv/PermutedMNIST-v0",
}
# The papers' data sizes shrunk to the fixture data (same meaning, fewer images).
FIXTURE_SIZES = {
    "continual_imagenet": {"train_images_per_class": 10, "test_images_per_class": 4},
    "incremental_cifar": {
        "train_images_per_class": {"lop": 4, "sc": CIFAR_TRAIN_PER_CLASS}
    },
}


@pytest.mark.parametrize("paper", ["lop", "sc"])
@pytest.mark.parametrize("benchmark", ROW_ENVS)
def test_env_rows_build_each_papers_env(data_dir, benchmark, paper):
    from clenv.settings import protocol_defaults

    kwargs = protocol_defaults(benchmark, paper, kind="env")
    expected = {
        "continual_imagenet": {
            "pixel_scale": "raw",
            "train_images_per_class": 600,
            "test_images_per_class": 100,
        },
        "incremental_cifar": {
            "train_images_per_class": {"lop": 450, "sc": 500}[paper],
            "reshuffle_each_epoch": paper == "lop",
        },
        "permuted_mnist": {},
    }[benchmark]
    assert kwargs == expected
    env_id = ROW_ENVS[benchmark]
    for key, value in FIXTURE_SIZES.get(benchmark, {}).items():
        kwargs[key] = value[paper] if isinstance(value, dict) else value
    env = make(env_id, **kwargs).unwrapped
    if benchmark == "continual_imagenet":
        obs, _ = env.reset(seed=0)
        assert env.pixel_scale == "raw" and obs.max() > 1  # not divided by 255
    if benchmark == "incremental_cifar":
        assert env._reshuffle == (paper == "lop")
        # LoP keeps 2 of the fixture's 6 images per class apart; SC none.
        assert ("validation" in env._eval_splits) == (paper == "lop")


def test_permuted_mnist_normalize_gives_standardised_pixels(data_dir) -> None:
    """normalize=True (found by tests/test_fuzz_envs.py: it used to fail at reset with
    an IndexError on the flat 784-pixel examples)."""
    env = make("clenv/PermutedMNIST-v0", batch_size=4, normalize=True)
    obs, _ = env.reset(seed=0)
    low, high = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    assert obs.shape == (4, 784) and obs.dtype == np.float32
    assert low - 1e-5 <= obs.min() and obs.max() <= high + 1e-5
    assert obs.min() < 0 < obs.max()
    with pytest.raises(ValueError, match="normalize must be True or False, got 3"):
        make("clenv/PermutedMNIST-v0", normalize=3)
    with pytest.raises(ValueError, match="batch_size must be <= 1048576"):
        make("clenv/PermutedMNIST-v0", batch_size=2**63)
