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

"ER only" is this class alone (lambda = 0).

When the ascent runs: ``schedule="step"`` buffers each ``after_step(inputs)`` and
ascends after every U-th step on the buffer (SC's Permuted MNIST,
permuted_mnist/train_permuted_mnist.py:323-337: the U minibatches, then the ascent).
``schedule="epoch"`` ascends once per epoch on the inputs the loop hands over: with
``timing="before"`` in ``before_epoch(inputs)`` on the inputs about to be trained on
(SC's Slippery Ant, rlopt/ppo_nonstationary.py:513-520: the ascent, then the epoch's
minibatches; SC's ImageNet, imagenet/train_imagenet.py:281-284, and CIFAR,
incremental_cifar/train_incremental_cifar.py:294-302: the ascent on the next U
minibatches, then training on them), with ``timing="after"`` in ``after_epoch(inputs)``.

What is ascended: ``layer_groups="all"`` takes the mean effective rank over every ranked
layer; ``layer_groups="by_network"`` sums, over the model's top-level submodules (a PPO
agent's ``actor_mean`` and ``critic``), the mean effective rank of each one's ranked
layers: SC's RL objective mean(actor layers) + mean(critic layers)
(rlopt/ppo_nonstationary.py:87-93).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod
from clenv.methods.layers import (
    HiddenLayer,
    capture_features,
    find_hidden_layers,
)
from clenv.metrics import effective_rank
from clenv.metrics.activations import (
    ForwardFn,
    default_forward,
    preserved_training_state,
    resolve_layers,
)
from clenv.metrics.hessian import trainable_parameters

SCHEDULES = ("step", "epoch")
TIMINGS = ("after", "before")
LAYER_GROUPS = ("all", "by_network")


class EffectiveRankAscent(PlasticityMethod):
    """One gradient-ascent step on the effective rank of hidden features.

    Args:
        model: the network.
        optimizer: unused (the ascent bypasses it); kept for a uniform signature.
        ascent_lr: eta_ER, the ascent step size (SC PMNIST: 1e-2 with L2, 1e-4 alone).
        interval: U, minibatches between ascents, and the buffer length
            (``schedule="step"``).
        schedule: ``"step"``: buffer each ``after_step(inputs)`` and ascend every
            ``interval`` steps on the buffer; ``"epoch"``: ascend once per epoch on
            the inputs given to the epoch hook that ``timing`` names (PPO's rollout;
            SC's supervised loops: the U minibatches of a group).
        timing: with ``schedule="epoch"``: ``"after"`` ascends in
            ``after_epoch(inputs)``, ``"before"`` in ``before_epoch(inputs)`` (SC's
            RL, ImageNet and CIFAR code). ``schedule="step"`` takes only ``"after"``.
        layer_groups: ``"all"``: the objective is the mean effective rank over every
            ranked layer; ``"by_network"``: the sum over the model's top-level
            submodules of the mean over each one's ranked layers (SC's RL objective,
            mean over actor layers + mean over critic layers). A ranked layer that is
            itself a direct child of the model counts to the model's own group.
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
        timing: Literal["after", "before"] = "after",
        layer_groups: Literal["all", "by_network"] = "all",
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
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        if timing == "before" and schedule != "epoch":
            raise ValueError(
                "timing='before' ascends in before_epoch(inputs), which only "
                "schedule='epoch' uses; pass schedule='epoch' (or timing='after')"
            )
        if layer_groups not in LAYER_GROUPS:
            raise ValueError(
                f"layer_groups must be one of {LAYER_GROUPS}, got {layer_groups!r}"
            )
        self.model = model
        self.ascent_lr = float(ascent_lr)
        self.interval = int(interval)
        self.schedule = schedule
        self.timing = timing
        self.last_layers = last_layers
        self.layer_groups = layer_groups
        self.forward_fn = forward_fn or default_forward
        if layers is None:
            found = find_hidden_layers(model, hidden_layers)
            self.layer_names = [h.name for h in found]
            self.feature_modules = [h.activation for h in found]
        else:
            self.layer_names = list(layers)
            self.feature_modules = list(
                resolve_layers(model, self.layer_names).values()
            )
        if last_layers is not None:
            if not 1 <= last_layers <= len(self.feature_modules):
                raise ValueError(
                    f"last_layers must be in 1..{len(self.feature_modules)} (the "
                    f"layers found: {self.layer_names}), got {last_layers}"
                )
            self.layer_names = self.layer_names[-last_layers:]
            self.feature_modules = self.feature_modules[-last_layers:]
        # The group of each ranked layer: the top-level submodule that holds it.
        self.groups = [
            name.split(".", 1)[0] if "." in name else "" for name in self.layer_names
        ]
        self.params = trainable_parameters(model)
        # to be filled in runtime
        self.num_steps = 0
        self.num_ascents = 0
        self.buffer: list[torch.Tensor] = []

    def record(self, inputs: torch.Tensor, steps: int = 1) -> bool:
        """Buffer the inputs of ``steps`` training steps (``schedule="step"``).

        Args:
            inputs: the steps' inputs, concatenated along the batch dim.
            steps: how many optimizer steps they stand for (a fast path that runs
                several batch-1 steps at once passes their count).

        Returns:
            Whether an ascent is due now (every ``interval`` steps): then call
            :meth:`ascend_on_buffer`.
        """
        if not torch.is_tensor(inputs):
            raise ValueError(
                "ER needs the minibatch inputs: call method.after_step(inputs) with "
                f"the tensor the model was trained on (got {type(inputs).__name__})"
            )
        if steps > self.steps_until_ascent():
            raise ValueError(
                f"record(steps={steps}) runs past the next ascent, due in "
                f"{self.steps_until_ascent()} steps; record at most that many at once"
            )
        self.buffer.append(inputs.detach().clone())
        self.num_steps += steps
        return self.num_steps % self.interval == 0

    def steps_until_ascent(self) -> int:
        """Steps left until the next ascent (``schedule="step"``): 1..interval."""
        return self.interval - self.num_steps % self.interval

    def ascend_on_buffer(self) -> torch.Tensor:
        """Ascend on the buffered inputs and empty the buffer."""
        objective = self.ascend(torch.cat(self.buffer))
        self.buffer.clear()
        return objective

    def after_step(self, inputs: Any = None) -> None:
        if self.schedule == "step" and self.record(inputs):
            self.ascend_on_buffer()

    @property
    def ascent_group_size(self) -> int | None:
        """U (``interval``) with ``schedule="epoch"`` and ``timing="before"``: the
        ascent on the next U minibatches, then training on them (SC's ImageNet and
        CIFAR); else None."""
        if self.schedule == "epoch" and self.timing == "before":
            return self.interval
        return None

    def before_epoch(self, inputs: Any = None) -> None:
        if self.schedule == "epoch" and self.timing == "before":
            self.ascend(self._epoch_inputs(inputs, "before_epoch"))

    def after_epoch(self, inputs: Any = None) -> None:
        if self.schedule == "epoch" and self.timing == "after":
            self.ascend(self._epoch_inputs(inputs, "after_epoch"))

    @staticmethod
    def _epoch_inputs(inputs: Any, hook: str) -> torch.Tensor:
        if not torch.is_tensor(inputs):
            raise ValueError(
                f"ER with schedule='epoch' needs method.{hook}(inputs) with the "
                "epoch's inputs (PPO: the rollout's observations; supervised: the "
                f"group's minibatch inputs), got {type(inputs).__name__}"
            )
        return inputs

    def features(self, inputs: Any) -> list[torch.Tensor]:
        """The ranked layers' features on ``inputs``, with their graph."""
        with capture_features(self.feature_modules) as features:
            self.forward_fn(self.model, inputs)
        return features

    def objective(self, inputs: Any) -> torch.Tensor:
        """The ascended objective on ``inputs`` (differentiable): mean_l erank(H_l),
        or with ``layer_groups="by_network"`` the sum over groups of that mean."""
        ranks = []
        for feature in self.features(inputs):
            matrix = feature.reshape(feature.shape[0], -1)
            # H and H^T have the same singular values; LAPACK is ~3x faster on the
            # tall one (the buffer usually holds fewer samples than units).
            tall = matrix if matrix.shape[0] >= matrix.shape[1] else matrix.mT
            ranks.append(effective_rank(tall))
        if self.layer_groups == "all":
            return torch.stack(ranks).mean()
        by_group: dict[str, list[torch.Tensor]] = {}
        for group, rank in zip(self.groups, ranks, strict=True):
            by_group.setdefault(group, []).append(rank)
        return torch.stack([torch.stack(g).mean() for g in by_group.values()]).sum()

    def ascend(self, inputs: Any) -> torch.Tensor:
        """One ascent step ``theta += ascent_lr * grad objective(inputs)``.

        Returns:
            The objective before the step (detached), e.g. for logging.
        """
        # Buffers (BatchNorm running statistics) are restored after the backward
        # (which may still need them), so the ascent's forward leaves no trace but
        # the step; the modes stay the model's own.
        with (
            torch.enable_grad(),
            preserved_training_state(self.model, None, fork_rng=False),
        ):
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
            "timing": self.timing,
            "layer_groups": self.layer_groups,
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
