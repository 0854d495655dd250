"""Atomic checkpoints, retention, loading the latest, RNG state round trips."""

from __future__ import annotations

import errno
import os
import pickle
import random

import gymnasium as gym
import numpy as np
import pytest
import torch

import clenv
from clenv.checkpoint import (
    CheckpointError,
    RestorableEnv,
    capture_rng_state,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)

gym.register_envs(clenv)


def draws():
    return (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(1)),
        float(torch.randn(3).sum()),
    )


def test_save_and_load_latest_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, {"model": model.state_dict(), "note": "a"}, step=5)
    save_checkpoint(tmp_path, {"model": model.state_dict(), "note": "b"}, step=12)
    step, state = load_latest_checkpoint(tmp_path)
    assert step == 12 and state["global_step"] == 12 and state["note"] == "b"
    torch.testing.assert_close(state["model"]["weight"], model.weight)
    assert not list(tmp_path.glob(".ckpt_*")), "no temporary file left behind"


def test_keep_last_deletes_oldest(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, {}, step=step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, {}, step=6, keep_last=0)


def test_steps_sort_numerically_not_lexically(tmp_path):
    for step in (999, 1000, 20):
        save_checkpoint(tmp_path, {}, step=step, keep_last=5)
    assert load_latest_checkpoint(tmp_path)[0] == 1000


def test_missing_or_empty_directory_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path / "absent") is None
    assert load_latest_checkpoint(tmp_path) is None


def test_unreadable_latest_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, {"x": 1}, step=1)
    checkpoint_path(tmp_path, 2).write_bytes(b"truncated garbage")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        step, state = load_latest_checkpoint(tmp_path)
    assert step == 1 and state["x"] == 1


def test_failed_save_keeps_previous_checkpoint_and_no_temp_file(tmp_path):
    save_checkpoint(tmp_path, {"x": 1}, step=1)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint(tmp_path, {"x": Unpicklable()}, step=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not list(tmp_path.glob(".ckpt_*"))


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    draws()
    save_checkpoint(tmp_path, {"rng": capture_rng_state()}, step=1)
    expected = [draws() for _ in range(3)]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_latest_checkpoint(tmp_path)[1]["rng"])
    assert [draws() for _ in range(3)] == expected


def rollout(env, actions):
    out = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        out.append((obs.copy(), reward, terminated, truncated))
        if terminated or truncated:
            out.append(env.reset()[0].copy())
    return out


ENV_CASES = {
    "Ant-v5": {},
    "Pendulum-v1": {},
    # Friction switches every 20 steps, so the restore crosses a task switch.
    "clenv/SlipperyAnt-v0": {"switch_every": 20},
}


@pytest.mark.parametrize("env_id", list(ENV_CASES))
def test_restorable_env_continues_bit_identically_in_a_fresh_env(env_id):
    def make():
        env = gym.make(env_id, max_episode_steps=30, **ENV_CASES[env_id])
        return RestorableEnv(gym.wrappers.ClipAction(env))  # a wrapper with a lambda

    env = make()
    env.reset(seed=1)
    env.action_space.seed(1)
    for _ in range(17):
        env.step(env.action_space.sample())
    snapshot = pickle.loads(pickle.dumps(env.get_env_state()))  # as through a file
    actions = [env.action_space.sample() for _ in range(40)]  # crosses the time limit
    expected = rollout(env, actions)
    fresh = make()
    fresh.reset(seed=123)
    fresh.step(fresh.action_space.sample())
    fresh.set_env_state([snapshot])
    got = rollout(fresh, actions)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        if isinstance(a, tuple):
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1:] == b[1:]
        else:
            np.testing.assert_array_equal(a, b)  # same reset draw from np_random


def test_restorable_env_in_a_vector_env_restores_each_sub_env():
    def make(index):
        return lambda: RestorableEnv(gym.make("Pendulum-v1"), index=index)

    envs = gym.vector.SyncVectorEnv([make(0), make(1)])
    envs.reset(seed=0)
    states = envs.call("get_env_state")
    actions = np.zeros((2, 1), dtype=np.float32)
    expected = envs.step(actions)[0]
    assert not np.array_equal(expected[0], expected[1])
    envs.reset(seed=5)
    envs.call("set_env_state", states)
    np.testing.assert_array_equal(envs.step(actions)[0], expected)
    with pytest.raises(ValueError, match="num-envs"):
        envs.call("set_env_state", states[:1])


# -- integrity: checksums, fallbacks, pruning ------------------------------------------


def flip_tensor_byte(path, value):
    """Flip one bit of a stored float32 ``value`` in place: the file still loads."""
    raw = bytearray(path.read_bytes())
    at = bytes(raw).rindex(np.float32(value).tobytes())
    raw[at + 3] ^= 0x01
    path.write_bytes(bytes(raw))


def test_damaged_file_that_still_loads_is_caught_and_named(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.ones(3)}, step=1)
    save_checkpoint(tmp_path, {"w": torch.full((3,), 2.0)}, step=2)
    damaged = checkpoint_path(tmp_path, 2)
    flip_tensor_byte(damaged, 2.0)
    # torch.load alone returns the damaged value without complaint
    assert torch.load(damaged, weights_only=True)["w"][2] != 2.0
    assert verify_checkpoint(damaged).startswith("checksum mismatch in ")
    with pytest.raises(
        CheckpointError, match="is damaged: checksum mismatch"
    ) as caught:
        load_checkpoint(damaged)
    assert str(damaged) in str(caught.value)
    with pytest.warns(UserWarning, match=f"{damaged}.*checksum mismatch"):
        step, state = load_latest_checkpoint(tmp_path)
    assert step == 1 and state["w"].tolist() == [1.0, 1.0, 1.0]


def test_flipped_byte_anywhere_is_never_loaded_silently(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.arange(64.0)}, step=1)
    path = checkpoint_path(tmp_path, 1)
    clean = path.read_bytes()
    for offset in range(0, len(clean), max(1, len(clean) // 97)):
        damaged = bytearray(clean)
        damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            continue
        # zip padding and metadata outside the payload may change harmlessly
        assert state["w"].tolist() == list(range(64)), offset


def test_no_good_checkpoint_is_an_error_naming_every_file(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, {"x": torch.full((2,), float(step))}, step=step)
    checkpoint_path(tmp_path, 1).write_bytes(b"truncated")
    flip_tensor_byte(checkpoint_path(tmp_path, 2), 2.0)
    with pytest.raises(CheckpointError) as caught:
        load_latest_checkpoint(tmp_path)
    message = str(caught.value)
    assert f"{checkpoint_path(tmp_path, 1)}: unreadable" in message
    assert f"{checkpoint_path(tmp_path, 2)}: checksum mismatch" in message
    assert "without --resume" in message
    assert [path for path, _ in caught.value.problems] == [
        checkpoint_path(tmp_path, 2),
        checkpoint_path(tmp_path, 1),
    ]


def test_pruning_removes_damaged_checkpoints_before_good_ones(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"x": torch.full((2,), 3.0)}, step=step, keep_last=3)
    checkpoint_path(tmp_path, 2).write_bytes(b"")
    flip_tensor_byte(checkpoint_path(tmp_path, 3), 3.0)
    with pytest.warns(UserWarning, match="removing damaged checkpoint"):
        save_checkpoint(tmp_path, {"x": 4}, step=4, keep_last=2)
    # the damaged 2 and 3 are gone, the good 1 is kept as the second newest good
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 4]
    save_checkpoint(tmp_path, {"x": 5}, step=5, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]


def test_a_checkpoint_is_a_plain_torch_save_archive(tmp_path):
    path = save_checkpoint(tmp_path, {"x": 7}, step=3)  # users may torch.load it
    assert torch.load(path, weights_only=False) == {"x": 7, "global_step": 3}
    torch.save({"x": 8, "global_step": 4}, checkpoint_path(tmp_path, 4))
    assert verify_checkpoint(checkpoint_path(tmp_path, 4)) is None
    assert load_latest_checkpoint(tmp_path)[1]["x"] == 8


def test_full_disk_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"x": 1}, step=1)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as caught:
        save_checkpoint(tmp_path, {"x": 2}, step=2)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not list(tmp_path.glob(".ckpt_*"))
    assert load_latest_checkpoint(tmp_path)[1]["x"] == 1


def test_a_checkpoint_that_would_fill_the_disk_is_not_written(tmp_path):
    save_checkpoint(tmp_path, {"x": 1}, step=1)
    with pytest.raises(OSError, match="kept free") as caught:
        save_checkpoint(tmp_path, {"x": 2}, step=2, reserve_bytes=1 << 60)
    assert caught.value.errno == errno.ENOSPC
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not list(tmp_path.glob(".ckpt_*"))
