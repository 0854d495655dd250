"""clenv.divergence: the guard names the first non-finite loss, gradient or
parameter, checks at its interval, and records the event in the run's logs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from clenv.divergence import (
    DivergenceError,
    DivergenceGuard,
    clear_divergence,
    end_diverged,
    first_nonfinite,
    record_divergence,
)
from clenv.logger import RunLogger, read_series


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_finite_loss_gradients_and_parameters_pass():
    model = small_model()
    model(torch.randn(5, 3)).square().mean().backward()
    guard = DivergenceGuard(model)
    guard.check_loss(torch.tensor(1e30), step=1)
    guard.check_loss(2.0, step=1)
    guard.check_gradients(step=1)
    guard.check_parameters(step=1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_loss_names_the_step_and_task(bad):
    guard = DivergenceGuard(small_model())
    with pytest.raises(DivergenceError) as error:
        guard.check_loss(torch.tensor(bad), step=512, task_id=3)
    assert error.value.event.kind == "loss" and error.value.event.step == 512
    assert str(error.value) == (
        f"training diverged: non-finite loss 'loss' ({bad}) at step 512, task 3"
    )


def test_per_example_losses_report_the_first_bad_example():
    guard = DivergenceGuard(small_model(), unit="example")
    losses = torch.tensor([0.1, 0.2, float("inf"), float("nan")])
    with pytest.raises(DivergenceError, match="at example 1,002, task 0") as error:
        guard.check_loss(losses, step=1000, task_id=0)
    assert error.value.event.value == float("inf")


def test_gradient_and_parameter_are_named():
    model = small_model()
    model(torch.randn(5, 3)).sum().backward()
    model[2].weight.grad[0, 1] = float("nan")
    guard = DivergenceGuard(model)
    with pytest.raises(DivergenceError, match="non-finite gradient '2.weight'"):
        guard.check_gradients(step=7)
    guard.check_parameters(step=7)  # the weights themselves are still finite
    with torch.no_grad():
        model[0].bias[2] = float("inf")
    with pytest.raises(
        DivergenceError, match="non-finite parameter '0.bias' \\(inf\\)"
    ):
        guard.check_parameters(step=8)


def test_a_dict_of_modules_prefixes_the_names():
    nets = {"actor": nn.Linear(2, 2), "critic": nn.Linear(2, 1)}
    with torch.no_grad():
        nets["critic"].weight.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="'critic.weight'"):
        DivergenceGuard(nets).check_parameters(step=0)


def test_checks_run_at_their_interval_unless_forced():
    model = small_model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    guard = DivergenceGuard(model, every=3)
    guard.check_parameters(step=1)
    guard.check_parameters(step=2)
    with pytest.raises(DivergenceError, match="at step 3"):
        guard.check_parameters(step=3)
    off = DivergenceGuard(model, every=0)
    off.check_parameters(step=1)
    with pytest.raises(DivergenceError):
        off.check_parameters(step=2, force=True)
    with pytest.raises(ValueError, match="every must be >= 0"):
        DivergenceGuard(model, every=-1)


def test_a_finite_tensor_whose_norm_overflows_is_not_reported():
    huge = torch.full((4,), 1e38)
    assert torch.isinf(torch.linalg.vector_norm(huge))
    assert first_nonfinite([("huge", huge)]) is None
    assert (
        first_nonfinite([("huge", huge), ("bad", torch.tensor([1.0, -torch.inf]))])[0]
        == "bad"
    )


def test_handler_gets_the_error_first():
    seen = []
    guard = DivergenceGuard(small_model(), handler=seen.append)
    with pytest.raises(DivergenceError):
        guard.check_loss(float("nan"), step=4)
    assert [error.event.step for error in seen] == [4]


def test_record_and_clear_divergence(tmp_path):
    logger = RunLogger.create(
        tmp_path, env_id="clenv/Toy-v0", exp_name="t", seed=1, agent="ppo",
        reg="bp", args={"learning_rate": 1e3}, tensorboard=False,
    )  # fmt: skip
    guard = DivergenceGuard(small_model())
    with pytest.raises(DivergenceError) as error:
        guard.check_loss(float("nan"), step=256, task_id=2)
    record_divergence(logger, error.value.event, "stop")
    saved = json.loads((logger.run_dir / "args.json").read_text())
    assert saved["learning_rate"] == 1e3
    assert saved["diverged"] == {
        "step": 256, "task_id": 2, "kind": "loss", "tensor": "loss", "value": "nan",
        "action": "stop",
    }  # fmt: skip
    series = read_series(logger.run_dir / "metrics.h5", "charts/diverged")
    assert series["step"].tolist() == [256] and series["task_id"].tolist() == [2]
    assert clear_divergence(logger) and not clear_divergence(logger)
    assert "diverged" not in json.loads((logger.run_dir / "args.json").read_text())
    logger.close()


def test_a_divergence_found_elsewhere_goes_through_the_handler():
    seen = []
    guard = DivergenceGuard(small_model(), handler=seen.append)
    with pytest.raises(DivergenceError, match="non-finite state 'optimizer/exp_avg'"):
        guard.diverged(9, 1, "state", "optimizer/exp_avg")
    assert seen[0].event.task_id == 1


class FakeRun:
    """What guard.save and end_diverged use of a clenv.run.Run."""

    def __init__(self, logger, refuse: str | None = None) -> None:
        self.logger, self.refuse, self.saved, self.closed = logger, refuse, [], False
        self.run_dir, self.checkpoint_dir = logger.run_dir, logger.run_dir / "ckpt"

    def save(self, step, **parts):
        from clenv.run import NonFiniteStateError

        if self.refuse:
            raise NonFiniteStateError(self.refuse, step, self.checkpoint_dir)
        self.saved.append((step, parts))

    def close(self):
        self.closed = True
        self.logger.close()

    def print_paths(self):
        print("paths")


class Closable:
    closed = False

    def close(self):
        self.closed = True


def test_guard_save_checks_the_weights_and_reports_a_refused_state(tmp_path):
    logger = RunLogger.create(
        tmp_path, env_id="clenv/Toy-v0", exp_name="t", seed=1, agent="ppo",
        reg="bp", args={}, tensorboard=False,
    )  # fmt: skip
    model = small_model()
    guard = DivergenceGuard(model, every=0)
    run = FakeRun(logger)
    guard.save(run, 64, 0, model=model, extra={"k": 1})
    assert [(step, parts["extra"]) for step, parts in run.saved] == [(64, {"k": 1})]
    with torch.no_grad():
        model[2].bias[0] = float("nan")
    with pytest.raises(DivergenceError, match="non-finite parameter '2.bias'"):
        guard.save(run, 128, 0, model=model)  # checked although every=0
    assert len(run.saved) == 1
    with torch.no_grad():
        model[2].bias[0] = 0.0
    refusing = FakeRun(logger, refuse="optimizer/state/0/exp_avg")
    with pytest.raises(DivergenceError) as caught:
        guard.save(refusing, 192, 1, model=model)
    event = caught.value.event
    assert (event.kind, event.tensor, event.step, event.task_id) == (
        "state", "optimizer/state/0/exp_avg", 192, 1
    )  # fmt: skip
    logger.close()


@pytest.mark.parametrize("action", ["fail", "stop"])
def test_end_diverged_records_closes_and_exits(tmp_path, capsys, action):
    logger = RunLogger.create(
        tmp_path, env_id="clenv/Toy-v0", exp_name="t", seed=1, agent="ppo",
        reg="bp", args={}, tensorboard=False,
    )  # fmt: skip
    run, progress = FakeRun(logger), Closable()
    guard = DivergenceGuard(small_model())
    with pytest.raises(DivergenceError) as error:
        guard.check_loss(float("nan"), step=256, task_id=2)
    with pytest.raises(SystemExit) as caught:
        end_diverged(error.value, run, action, close=[progress])
    assert run.closed and progress.closed
    saved = json.loads((run.run_dir / "args.json").read_text())
    assert saved["diverged"]["action"] == action and saved["diverged"]["step"] == 256
    message = "training diverged: non-finite loss 'loss' (nan) at step 256, task 2"
    if action == "fail":
        assert caught.value.code.startswith(f"error: {message}. No checkpoint")
        assert f"--resume {run.run_dir}" in caught.value.code
        assert str(run.checkpoint_dir) in caught.value.code
    else:
        assert caught.value.code == 0
        assert f"stopped (--on-divergence stop): {message}" in capsys.readouterr().out
