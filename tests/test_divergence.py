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
