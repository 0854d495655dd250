"""``make_optimizer``: the optimizers of the continual-learning baselines, by name.

- ``"sgd"``: ``torch.optim.SGD`` (the supervised agent's optimizer);
- ``"adam"``: ``torch.optim.Adam`` (the PPO agent's);
- ``"muon"``: ``torch.optim.Muon`` on the 2-D weight matrices, Adam on the rest, as
  SC's ``bp_muon`` runs (Prakash et al. 2026, ``optax.contrib.muon`` at
  ``permuted_mnist/train_permuted_mnist.py:268-271`` and
  ``rlopt/ppo_nonstationary.py:395-399``), returned as one :class:`MuonWithAdam`;
- ``"trac"``: TRAC (Muppidi, Zhang and Wang, *Fast TRAC: A Parameter-Free Optimizer
  for Lifelong Reinforcement Learning*, NeurIPS 2024) around Adam or SGD, through the
  authors' package ``trac-optimizer`` (``pip install clenv[trac]``).

Each call with the arguments an agent passes today builds the very optimizer the agent
builds by hand, so switching to it changes no number. Every optimizer here round-trips
through ``state_dict()`` / ``load_state_dict()`` for an exact resume.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam", "muon", "trac")

# optax.contrib.muon's defaults (SC calls it with learning_rate and weight_decay only):
# Nesterov momentum 0.95, 5 Newton-Schulz steps with Keller Jordan's coefficients,
# eps 1e-8; the non-matrix parameters get Adam(b1=0.9, b2=0.999, eps=1e-8) at the same
# learning rate; the update of a (fan_out, fan_in) matrix is scaled by
# sqrt(max(1, fan_out / fan_in)), torch's adjust_lr_fn="original".
MUON_MOMENTUM = 0.95
MUON_NS_STEPS = 5
MUON_EPS = 1e-8


def make_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    *,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
    muon_momentum: float = MUON_MOMENTUM,
    muon_nesterov: bool = True,
    muon_ns_steps: int = MUON_NS_STEPS,
    muon_head: bool = True,
    trac_base: str = "adam",
) -> torch.optim.Optimizer | MuonWithAdam:
    """The optimizer ``name`` over ``model``'s parameters.

    Args:
        name: ``"sgd"``, ``"adam"``, ``"muon"`` or ``"trac"``.
        model: the network (its ``parameters()`` in order; Muon sorts them by shape).
        lr: the step size (Muon: of both the Muon and the Adam part, as optax's).
        momentum: SGD's momentum.
        weight_decay: coupled weight decay of SGD and Adam (``torch.optim``'s); Muon's
            decoupled weight decay on its matrices (SC's ``bp_muon``: 0).
        betas, eps: Adam's (also the Adam part of Muon, and TRAC's Adam base).
        fused: passed to SGD / Adam when not None (the supervised agent's
            ``fused=`` choice).
        muon_momentum, muon_nesterov, muon_ns_steps: Muon's (optax's defaults, SC).
        muon_head: give the output layer's weight matrix to Muon too (``True``, as
            optax's muon and so SC: every 2-D parameter); ``False`` keeps it on Adam,
            as Muon's authors recommend for embeddings and heads. The head is the
            model's ``head`` attribute.
        trac_base: the optimizer TRAC wraps, ``"adam"`` (the paper's) or ``"sgd"``.

    Raises:
        ValueError: for an unknown name or base; ImportError for ``"trac"`` without
            the ``trac-optimizer`` package (its message names the install command).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> type(make_optimizer("muon", model, lr=0.01)).__name__
        'MuonWithAdam'
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}"
        )
    if lr <= 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    extra = {} if fused is None else {"fused": fused}
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            **extra,
        )
    if name == "adam":
        return torch.optim.Adam(
            model.parameters(),
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            **extra,
        )
    if name == "muon":
        return MuonWithAdam(
            model,
            lr,
            weight_decay=weight_decay,
            momentum=muon_momentum,
            nesterov=muon_nesterov,
            ns_steps=muon_ns_steps,
            betas=betas,
            eps=eps,
            muon_head=muon_head,
        )
    if trac_base not in ("adam", "sgd"):
        raise ValueError(f"trac_base must be 'adam' or 'sgd', got {trac_base!r}")
    base = torch.optim.Adam if trac_base == "adam" else torch.optim.SGD
    arguments: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if trac_base == "adam":
        arguments.update(betas=betas, eps=eps)
    else:
        arguments.update(momentum=momentum)
    return trac_optimizer_class(base)(model.parameters(), **arguments)


def is_muon_matrix(param: torch.Tensor, head: torch.Tensor | None = None) -> bool:
    """Whether Muon updates ``param``: a 2-D weight (optax's rule), not ``head``."""
    return param.dim() == 2 and param is not head


class MuonWithAdam:
    """``torch.optim.Muon`` on the 2-D weight matrices, ``torch.optim.Adam`` on the
    rest (biases, norms, convolution kernels, a PPO agent's log-std), stepped as one
    optimizer: SC's ``optax.contrib.muon`` (see :mod:`clenv.optim`).

    It offers what a training loop and the plasticity methods use of an optimizer:
    ``step``, ``zero_grad``, ``param_groups`` (Muon's first), ``state`` (both parts'
    per-parameter state, for :func:`clenv.methods.base.reset_optimizer_slices`),
    ``add_param_group`` (a 2-D weight goes to Muon), ``state_dict`` and
    ``load_state_dict``.

    Args:
        model: the network.
        lr: step size of both parts.
        weight_decay: Muon's decoupled weight decay (Adam's part gets none, as
            optax's muon with its default ``adam_weight_decay=0``).
        momentum, nesterov, ns_steps: Muon's.
        betas, eps: the Adam part's.
        muon_head: whether the model's ``head`` weight goes to Muon.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        weight_decay: float = 0.0,
        momentum: float = MUON_MOMENTUM,
        nesterov: bool = True,
        ns_steps: int = MUON_NS_STEPS,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        muon_head: bool = True,
    ):
        head = getattr(model, "head", None)
        self.excluded = None if muon_head or head is None else head.weight
        params = list(model.parameters())
        matrices = [p for p in params if is_muon_matrix(p, self.excluded)]
        others = [p for p in params if not is_muon_matrix(p, self.excluded)]
        if not matrices:
            raise ValueError(
                f"{type(model).__name__} has no 2-D weight for Muon; use adam or sgd"
            )
        self.muon = torch.optim.Muon(
            matrices,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            eps=MUON_EPS,
        )
        # torch's Adam refuses an empty parameter list: keep one group to add to.
        self.adam = torch.optim.Adam(
            others or [torch.zeros(0, requires_grad=True)], lr=lr, betas=betas, eps=eps
        )

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.muon, self.adam]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> _JointState:
        return _JointState(self.muon.state, self.adam.state)

    @property
    def defaults(self) -> dict[str, Any]:
        return self.adam.defaults

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add parameters: 2-D weights to Muon, the rest to Adam (at the group's
        options, else each part's defaults)."""
        params = group["params"]
        params = [params] if torch.is_tensor(params) else list(params)
        options = {k: v for k, v in group.items() if k != "params"}
        matrices = [p for p in params if is_muon_matrix(p)]
        others = [p for p in params if not is_muon_matrix(p)]
        if matrices:
            self.muon.add_param_group(
                {"params": matrices, **_known(self.muon, options)}
            )
        if others:
            self.adam.add_param_group({"params": others, **_known(self.adam, options)})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"muon", "adam"}:
            raise ValueError(
                "this optimizer state is not a MuonWithAdam's (keys muon, adam); "
                "resume with the --optimizer the run was started with"
            )
        self.muon.load_state_dict(state["muon"])
        self.adam.load_state_dict(state["adam"])

    def __repr__(self) -> str:
        return f"MuonWithAdam(muon={self.muon!r}, adam={self.adam!r})"


class _JointState(collections.ChainMap):
    """Both parts' per-parameter state as one mapping: lookups search both, and
    ``pop``, ``del`` and ``clear`` act on whichever part holds the parameter (a
    plain ChainMap changes only the first), as the resets and CBP expect."""

    def __delitem__(self, key: Any) -> None:
        for mapping in self.maps:
            if key in mapping:
                del mapping[key]
                return
        raise KeyError(key)

    def pop(self, key: Any, *default: Any) -> Any:
        for mapping in self.maps:
            if key in mapping:
                return mapping.pop(key)
        if default:
            return default[0]
        raise KeyError(key)

    def clear(self) -> None:
        for mapping in self.maps:
            mapping.clear()


def _known(optimizer: torch.optim.Optimizer, options: dict[str, Any]) -> dict:
    return {k: v for k, v in options.items() if k in optimizer.defaults}


TRAC_MISSING = (
    "--optimizer trac needs the TRAC authors' package: pip install clenv[trac] "
    "(or pip install trac-optimizer)"
)


def _import_trac():
    try:
        import trac_optimizer
    except ImportError as error:
        raise ImportError(TRAC_MISSING) from error
    return trac_optimizer


def trac_optimizer_class(base: type[torch.optim.Optimizer]) -> type:
    """``trac_optimizer.start_trac`` around ``base`` (the package's defaults: betas
    0.9 ... 0.999999, s_prev 1e-8, eps 1e-8; its per-step log goes to
    ``os.devnull``), with a ``state_dict`` that survives a resume.

    The package keeps its state under ``optimizer.state["_trac"]``, keyed by the
    parameter tensors themselves, which ``torch.optim``'s ``load_state_dict`` cannot
    map back; this class stores it by parameter index and rebuilds it on load.

    Raises:
        ImportError: without ``trac-optimizer`` (the message says how to install it).
    """
    wrapped = _import_trac().start_trac(os.devnull, base)

    class TRAC(wrapped):
        def _params(self) -> list[torch.Tensor]:
            return [p for group in self.param_groups for p in group["params"]]

        def state_dict(self) -> dict[str, Any]:
            trac = self.state.pop("_trac", None)
            try:
                state = super().state_dict()
            finally:
                if trac is not None:
                    self.state["_trac"] = trac
            if trac is not None:
                state["trac"] = {
                    "scalars": {k: v for k, v in trac.items() if isinstance(k, str)},
                    "references": [
                        trac[p]["ref"] if p in trac else None for p in self._params()
                    ],
                }
            return state

        def load_state_dict(self, state: dict[str, Any]) -> None:
            state = dict(state)
            trac = state.pop("trac", None)
            super().load_state_dict(state)
            self.state.pop("_trac", None)
            if trac is None:
                return
            restored: dict[Any, Any] = dict(trac["scalars"])
            for param, reference in zip(
                self._params(), trac["references"], strict=True
            ):
                if reference is not None:
                    restored[param] = {"ref": reference.to(param.device).clone()}
            self.state["_trac"] = restored

    TRAC.__name__ = f"TRAC{base.__name__}"
    TRAC.__qualname__ = TRAC.__name__
    return TRAC


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set every parameter group's step size (an annealing schedule): Muon's and
    Adam's parts of :class:`MuonWithAdam`, and the group :mod:`clenv.methods.inject`
    adds, move together (CleanRL's ``param_groups[0]["lr"] = lr`` moves only the
    first)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
