"""C-CHAIN: continual churn approximated reduction (Tang, Obando-Ceron, Castro,
Courville and Berseth, *Mitigating Plasticity Loss in Continual Reinforcement
Learning by Reducing Churn*, ICML 2025), for PPO.

Churn is the change an update makes to the network's outputs on states it was not
trained on. C-CHAIN adds to each minibatch's loss a churn-reduction term on a
*reference batch* ``B_ref`` drawn from the rollout, which pulls the policy's outputs
back toward those of the network before the previous update::

    L_churn(theta_k) = mean over s in B_ref, action dims of (mu_theta_k(s) - mu_theta_{k-1}(s))^2

(``mu``: the actor's mean action; the network ``theta_{k-1}`` is held fixed), scaled
by an adaptive coefficient ``lambda``. Following the authors' PPO code
(``github.com/bluecontra/C-CHAIN``, ``crl_dmc/crl_run_ppo_c_chain_dmc.py``):

- the reference batch is a minibatch of the rollout from an independent shuffle, as
  large as the training minibatch (lines 261-272, 316-319);
- the previous network is the one before the latest optimizer step; the term starts
  at the third minibatch update of the run (lines 312-319, 328-330);
- ``lambda`` starts at 100 (line 170) and, once warmed up, is set to
  ``target_relative_loss * mean|L_policy| / (mean L_churn + 1e-8)`` over a running
  window (lines 360-366; the code multiplies by the learning-rate annealing fraction,
  1 without annealing, which its continual runs use: line 57);
  ``target_relative_loss`` 0.05 (line 24).

``lambda`` adapts once per PPO iteration (one rollout's update epochs), as the
official code: after the iteration's last minibatch it appends that minibatch's policy
loss and churn loss (0 while the term is off) to the running lists (lines 361-362),
and from the 50th iteration of a task on (``iteration >= 50``, ``iteration`` counting
from 1: line 363) sets ``lambda`` from the last 100 entries (lines 364-366). The
policy loss reaches the method through :meth:`CChain.after_loss`, which the loop calls
once per minibatch; without it ``lambda`` stays at its initial value. An iteration
ends when :meth:`CChain.before_epoch` sees a new rollout (another tensor, or the same
buffer written since), so the adaptation for iteration ``k`` happens before the first
update of iteration ``k + 1``, where the official code's new ``lambda`` is first used.

Each task starts afresh, as the official code's task loop (lines 138, 167-170, 186):
:meth:`CChain.on_task_switch` puts ``lambda`` back to its initial value, empties the
running lists, restarts the warm-up, and the term waits again for the task's third
update (``restart_per_task=False`` keeps all of it across tasks).

The term is added to the gradients in ``after_backward`` (``.grad +=
lambda * grad L_churn``), so it is clipped with the task gradient when the loop clips
after that hook, as the official code clips the summed loss's gradient.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from clenv.methods.base import PlasticityMethod, SeededGenerator, add_to_grad
from clenv.methods.layers import recording_paused
from clenv.metrics.activations import ForwardFn, default_forward
from clenv.metrics.hessian import trainable_parameters

OUTPUTS = ("policy", "both")


class CChain(PlasticityMethod):
    """Churn reduction on a reference batch of the rollout, with an adaptive weight.

    Drive it with the PPO loop's hooks: ``before_epoch(rollout_obs)`` (draws the
    epoch's reference order), ``after_loss({"policy": pg_loss})`` after each
    minibatch's loss, ``after_backward()`` (adds the churn gradient),
    ``after_step(minibatch_obs)`` (the network before this step becomes the next
    reference), ``after_epoch()``; ``on_task_switch(task_id)`` restarts the
    adaptation. ``lambda`` adapts once per iteration (a new rollout in
    ``before_epoch``).

    Args:
        model: the agent.
        optimizer: unused (the term is added to ``.grad``); kept for a uniform
            signature.
        forward_fn: ``forward_fn(model, obs)`` returning ``(actor output, critic
            output)``; the actor output is the policy's mean action (PPO's
            ``actor_mean``). Default ``model(obs)`` (then a tensor: the policy).
        outputs: ``"policy"`` (the paper's PPO: the actor only) or ``"both"`` (the
            critic's values too, with the same weight).
        initial_coefficient: ``lambda`` before the warm-up ends (official 100).
        target_relative_loss: the churn loss's target share of the policy loss
            (official 0.05).
        warmup_iterations: ``lambda`` adapts from this iteration of a task on
            (official 50: ``iteration >= 50``, line 363).
        window_iterations: iterations the running means cover (official 100,
            lines 364-365).
        restart_per_task: on a task switch, reset ``lambda``, the running lists,
            the warm-up and the term's two-update delay (official: each task's loop
            starts afresh, lines 167-170).
        reference_size: states in the reference batch; default the training
            minibatch's size (seen in ``after_step``).
        seed: seed of the reference batches' shuffles.
    """

    name = "cchain"
    order = 65

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        forward_fn: ForwardFn | None = None,
        outputs: Literal["policy", "both"] = "policy",
        initial_coefficient: float = 100.0,
        target_relative_loss: float = 0.05,
        warmup_iterations: int = 50,
        window_iterations: int = 100,
        restart_per_task: bool = True,
        reference_size: int | None = None,
        seed: int = 0,
    ):
        if outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
        if initial_coefficient < 0 or target_relative_loss < 0:
            raise ValueError(
                "initial_coefficient and target_relative_loss must be >= 0, got "
                f"{initial_coefficient} and {target_relative_loss}"
            )
        if warmup_iterations < 1 or window_iterations < 1:
            raise ValueError(
                f"warmup_iterations and window_iterations must be >= 1, got "
                f"{warmup_iterations} and {window_iterations}"
            )
        if reference_size is not None and reference_size < 1:
            raise ValueError(f"reference_size must be >= 1, got {reference_size}")
        self.model = model
        self.forward_fn = forward_fn or default_forward
        self.outputs = outputs
        self.initial_coefficient = float(initial_coefficient)
        self.target_relative_loss = float(target_relative_loss)
        self.warmup_iterations = int(warmup_iterations)
        self.window_iterations = int(window_iterations)
        self.restart_per_task = bool(restart_per_task)
        self.reference_size = reference_size
        self.params = trainable_parameters(model)
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        # The network before the latest step, and the one being stepped now.
        self.reference_model = copy.deepcopy(model).requires_grad_(False)
        by_name = dict(self.reference_model.named_parameters())
        self.reference_params = [by_name[name] for name in names]
        self.pending = [p.detach().clone() for p in self.params]
        self.rng = SeededGenerator(self.params[0].device, seed)
        # to be filled in runtime
        self.coefficient = self.initial_coefficient
        self.updates = 0
        self.iterations = 0
        self.iteration_open = False
        self.minibatch_size: int | None = None
        self.rollout: torch.Tensor | None = None
        self.rollout_version = -1
        self.reference_order: torch.Tensor | None = None
        self.cursor = 0
        self.last_policy_loss: float | None = None
        self.last_churn_loss: float | None = None
        self.policy_losses: deque[float] = deque(maxlen=self.window_iterations)
        self.churn_losses: deque[float] = deque(maxlen=self.window_iterations)

    def before_epoch(self, inputs: Any = None) -> None:
        if inputs is None:
            raise ValueError(
                "cchain draws its reference batches from the rollout: call "
                "method.before_epoch(rollout_observations) before each epoch"
            )
        version = _version(inputs)
        if inputs is not self.rollout or version != self.rollout_version:
            self.end_iteration()  # a new rollout: the previous iteration is over
        self.rollout = inputs
        self.rollout_version = version
        self.reference_order = torch.randperm(
            inputs.shape[0], generator=self.rng.generator, device=self.rng_device
        ).to(inputs.device)
        self.cursor = 0

    @property
    def rng_device(self) -> torch.device:
        return self.rng.generator.device

    def after_loss(self, losses: Mapping[str, Any]) -> None:
        """Take the minibatch's policy loss (key ``"policy"``) for ``lambda``."""
        if "policy" in losses:
            self.last_policy_loss = float(losses["policy"])

    def end_iteration(self) -> None:
        """Close the PPO iteration whose updates have run: append its last
        minibatch's ``|policy loss|`` and churn loss, and past the warm-up set
        ``lambda = target * mean|L_policy| / (mean L_churn + 1e-8)`` over the
        window (official lines 361-366). Called by :meth:`before_epoch` on a new
        rollout; a no-op when no update ran since the last call."""
        if not self.iteration_open:
            return
        self.iteration_open = False
        self.iterations += 1
        if self.last_policy_loss is None:
            return  # the loop does not call after_loss: lambda stays
        self.policy_losses.append(abs(self.last_policy_loss))
        self.churn_losses.append(self.last_churn_loss or 0.0)
        if self.iterations >= self.warmup_iterations:
            policy = sum(self.policy_losses) / len(self.policy_losses)
            churn = sum(self.churn_losses) / len(self.churn_losses)
            self.coefficient = self.target_relative_loss * policy / (churn + 1e-8)

    def on_task_switch(self, task_id: int) -> None:
        self.end_iteration()
        if not self.restart_per_task:
            return
        self.coefficient = self.initial_coefficient
        self.updates = 0
        self.iterations = 0
        self.last_policy_loss = None
        self.last_churn_loss = None
        self.policy_losses.clear()
        self.churn_losses.clear()

    def _policy_and_values(self, model: nn.Module, obs: torch.Tensor):
        out = self.forward_fn(model, obs)
        if isinstance(out, tuple | list):
            return out[0], (out[1] if len(out) > 1 else None)
        return out, None

    def churn_loss(self, obs: torch.Tensor) -> torch.Tensor:
        """``mean (f_theta(obs) - f_reference(obs))^2`` with its graph (the policy's
        mean action; plus the values' with ``outputs="both"``)."""
        with recording_paused():
            policy, values = self._policy_and_values(self.model, obs)
            with torch.no_grad():
                ref_policy, ref_values = self._policy_and_values(
                    self.reference_model, obs
                )
        loss = (policy - ref_policy).square().mean()
        if self.outputs == "both":
            if values is None:
                raise ValueError(
                    "outputs='both' needs forward_fn to return (policy, values)"
                )
            loss = loss + (values - ref_values).square().mean()
        return loss

    def _reference_batch(self) -> torch.Tensor | None:
        size = self.reference_size or self.minibatch_size
        if self.rollout is None or size is None:
            return None
        if self.cursor >= self.reference_order.numel():
            self.cursor = 0
        index = self.reference_order[self.cursor : self.cursor + size]
        self.cursor += size
        return self.rollout[index]

    def after_backward(self) -> None:
        # The network being stepped now is the next step's reference.
        with torch.no_grad():
            torch._foreach_copy_(self.pending, [p.detach() for p in self.params])
        if self.updates < 2:
            self.last_churn_loss = 0.0  # the official reg_loss = 0 (line 313)
            return
        obs = self._reference_batch()
        if obs is None:
            self.last_churn_loss = 0.0
            return
        with torch.enable_grad():
            loss = self.churn_loss(obs)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.last_churn_loss = float(loss.detach())
        with torch.no_grad():
            for param, grad in zip(self.params, grads, strict=True):
                if grad is not None:
                    add_to_grad(param, grad, alpha=self.coefficient)

    def after_step(self, inputs: Any = None) -> None:
        if inputs is not None and hasattr(inputs, "shape"):
            self.minibatch_size = int(inputs.shape[0])
        with torch.no_grad():
            torch._foreach_copy_(self.reference_params, self.pending)
        self.updates += 1
        self.iteration_open = True

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "outputs": self.outputs,
            "initial_coefficient": self.initial_coefficient,
            "target_relative_loss": self.target_relative_loss,
            "warmup_iterations": self.warmup_iterations,
            "window_iterations": self.window_iterations,
            "restart_per_task": self.restart_per_task,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "coefficient": self.coefficient,
            "updates": self.updates,
            "iterations": self.iterations,
            "iteration_open": self.iteration_open,
            "minibatch_size": self.minibatch_size,
            "last_policy_loss": self.last_policy_loss,
            "last_churn_loss": self.last_churn_loss,
            "policy_losses": list(self.policy_losses),
            "churn_losses": list(self.churn_losses),
            "reference": [p.detach().clone() for p in self.reference_params],
            "rng": self.rng.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient = float(state["coefficient"])
        self.updates = int(state["updates"])
        self.iterations = int(state["iterations"])
        self.iteration_open = bool(state["iteration_open"])
        self.minibatch_size = state["minibatch_size"]
        self.last_policy_loss = state["last_policy_loss"]
        self.last_churn_loss = state["last_churn_loss"]
        self.policy_losses = deque(
            state["policy_losses"], maxlen=self.window_iterations
        )
        self.churn_losses = deque(state["churn_losses"], maxlen=self.window_iterations)
        with torch.no_grad():
            for param, value in zip(
                self.reference_params, state["reference"], strict=True
            ):
                param.copy_(value)
        self.rng.load(state["rng"])


def _version(tensor: torch.Tensor) -> int:
    """The tensor's in-place write counter (a rollout buffer written since bumps it);
    -1 for an inference-mode tensor, which keeps none (then identity alone counts)."""
    try:
        return tensor._version
    except RuntimeError:
        return -1
