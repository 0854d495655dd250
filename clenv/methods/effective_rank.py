"""Effective-rank ascent: the ER half of L2-ER (Prakash, He, Guo et al., "Spectral
Collapse Drives Loss of Plasticity in Deep Continual Learning", ICML 2026; "SC").

SC's L2-ER interleaves two updates instead of summing two losses:

1. every minibatch, the ordinary optimizer step on the task loss plus coupled L2
   (:class:`clenv.methods.L2`);
2. every ``interval`` (U) minibatches, ONE plain gradient-ascent step
   ``theta <- theta + ascent_lr * grad_theta mean_l erank(H_l)``, applied directly to
   the parameters: no optimizer, no momentum, no weight decay, ``.grad`` untouched.
   ``H_l`` is the (samples x units) post-activation matrix of hidden layer ``l`` on the
   buffer of the last U minibatches' inputs, recomputed with the current weights and
   not centred; ``erank`` is :func:`clenv.metrics.effective_rank`.

"ER only" is this class alone (lambda = 0). For PPO (Slippery Ant) the ascent runs once
per PPO epoch on the whole rollout: ``schedule="epoch"`` and ``after_epoch(rollout_obs)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod, trainable_parameters
from clenv.methods.layers import (
    HiddenLayer,
    capture_features,
    default_forward,
    find_hidden_layers,
    norm_statistics_preserved,
    resolve_modules,
)
from clenv.metrics import effective_rank
from clenv.metrics.activations import ForwardFn

SCHEDULES = ("step", "epoch")


class EffectiveRankAscent(PlasticityMethod):
    """One gradient-ascent step on the mean effective rank of hidden features.

    Args:
        model: the network.
        optimizer: unused (the ascent bypasses it); kept for a uniform signature.
        ascent_lr: eta_ER, the ascent step size (SC PMNIST: 1e-2 with L2, 1e-4 alone).
        interval: U, minibatches between ascents, and the buffer length
            (``schedule="step"``).
        schedule: ``"step"``: buffer each ``after_step(inputs)`` and ascend every
            ``interval`` steps on the buffer; ``"epoch"``: ascend once per
            ``after_epoch(inputs)`` on the inputs given (PPO's rollout).
        layers: names (``model.named_modules()``) of the modules whose outputs are
            ranked; default: the activation of every hidden layer found by
            :func:`clenv.methods.find_hidden_layers`.
        last_layers: keep only the last k of those (SC ImageNet: the last 2 FC).
        hidden_layers: explicit hidden-layer spec, for models that are not
            ``nn.Sequential`` (see :func:`clenv.methods.find_hidden_layers`).
        forward_fn: ``forward_fn(model, inputs)`` that runs every ranked layer (PPO's
            agent: actor and critic); default ``model(inputs)``.
    """

    name = "er"
    order = 60

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        ascent_lr: float = 1e-4,
        interval: int = 100,
        schedule: Literal["step", "epoch"] = "step",
        layers: Sequence[str] | None = None,
        last_layers: int | None = None,
        hidden_layers: Sequence[HiddenLayer | tuple[str, str, str]] | None = None,
        forward_fn: ForwardFn | None = None,
    ):
        if ascent_lr < 0:
            raise ValueError(f"ascent_lr must be >= 0, got {ascent_lr}")
        if interval < 1:
            raise ValueError(
                f"interval must be a positive number of steps, got {interval}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.model = model
        self.ascent_lr = float(ascent_lr)
        self.interval = int(interval)
        self.schedule = schedule
        self.forward_fn = forward_fn or default_forward
        if layers is None:
            found = find_hidden_layers(model, hidden_layers)
            self.layer_names = [h.name for h in found]
            self.feature_modules = [h.activation for h in found]
        else:
            self.layer_names = list(layers)
            self.feature_modules = resolve_modules(model, self.layer_names)
        if last_layers is not None:
            if not 1 <= last_layers <= len(self.feature_modules):
                raise ValueError(
                    f"last_layers must be in 1..{len(self.feature_modules)} (the "
                    f"layers found: {self.layer_names}), got {last_layers}"
                )
            self.layer_names = self.layer_names[-last_layers:]
            self.feature_modules = self.feature_modules[-last_layers:]
        self.params = trainable_parameters(model)
        # to be filled in runtime
        self.num_steps = 0
        self.num_ascents = 0
        self.buffer: list[torch.Tensor] = []

    def after_step(self, inputs: Any = None) -> None:
        if self.schedule != "step":
            return
        if not torch.is_tensor(inputs):
            raise ValueError(
                "ER needs the minibatch inputs: call method.after_step(inputs) with "
                f"the tensor the model was trained on (got {type(inputs).__name__})"
            )
        self.buffer.append(inputs.detach().clone())
        self.num_steps += 1
        if self.num_steps % self.interval == 0:
            self.ascend(torch.cat(self.buffer))
            self.buffer.clear()

    def after_epoch(self, inputs: Any = None) -> None:
        if self.schedule == "epoch":
            if not torch.is_tensor(inputs):
                raise ValueError(
                    "ER with schedule='epoch' needs method.after_epoch(inputs) with the "
                    "epoch's inputs (PPO: the rollout's observations)"
                )
            self.ascend(inputs)

    def features(self, inputs: Any) -> list[torch.Tensor]:
        """The ranked layers' features on ``inputs``, with their graph."""
        with capture_features(self.feature_modules) as features:
            self.forward_fn(self.model, inputs)
        return features

    def objective(self, inputs: Any) -> torch.Tensor:
        """mean_l erank(H_l) on ``inputs`` (differentiable)."""
        ranks = []
        for feature in self.features(inputs):
            matrix = feature.reshape(feature.shape[0], -1)
            # H and H^T have the same singular values; LAPACK is ~3x faster on the
            # tall one (the buffer usually holds fewer samples than units).
            tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.mT
            ranks.append(effective_rank(tall))
        return torch.stack(ranks).mean()

    def ascend(self, inputs: Any) -> torch.Tensor:
        """One ascent step ``theta += ascent_lr * grad mean_l erank(H_l)``.

        Returns:
            The objective before the step (detached), e.g. for logging.
        """
        # BatchNorm running statistics are restored after the backward (which may
        # still need them), so the ascent's forward leaves no trace but the step.
        with torch.enable_grad(), norm_statistics_preserved(self.model):
            objective = self.objective(inputs)
            grads = torch.autograd.grad(objective, self.params, allow_unused=True)
        used = [
            (p, g) for p, g in zip(self.params, grads, strict=True) if g is not None
        ]
        if used and self.ascent_lr > 0:
            with torch.no_grad():
                torch._foreach_add_(
                    [p for p, _ in used], [g for _, g in used], alpha=self.ascent_lr
                )
        self.num_ascents += 1
        return objective.detach()

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "ascent_lr": self.ascent_lr,
            "interval": self.interval,
            "schedule": self.schedule,
            "layers": list(self.layer_names),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps,
            "num_ascents": self.num_ascents,
            "buffer": [x.clone() for x in self.buffer],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
        self.num_ascents = int(state["num_ascents"])
        device = self.params[0].device
        self.buffer = [x.to(device) for x in state["buffer"]]
