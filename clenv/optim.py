"""``make_optimizer``: the optimizers of the continual-learning baselines, by name.

- ``"sgd"``: ``torch.optim.SGD`` (the supervised agent's optimizer);
- ``"adam"``: ``torch.optim.Adam`` (the PPO agent's);
- ``"muon"``: SC's ``bp_muon`` runs (Prakash et al. 2026, ``optax.contrib.muon`` at
  ``permuted_mnist/train_permuted_mnist.py:268-271`` and
  ``rlopt/ppo_nonstationary.py:395-399``): :class:`OptaxMuon` on the 2-D weight
  matrices and :class:`OptaxAdamW` on the rest, returned as one :class:`MuonWithAdam`;
  ``muon_impl="torch"`` builds ``torch.optim.Muon`` and ``torch.optim.Adam`` instead;
- ``"trac"``: TRAC (Muppidi, Zhang and Wang, *Fast TRAC: A Parameter-Free Optimizer
  for Lifelong Reinforcement Learning*, NeurIPS 2024) around Adam or SGD, through the
  authors' package ``trac-optimizer`` (``pip install clenv[trac]``).

Each call with the arguments an agent passes today builds the very optimizer the agent
builds by hand, so switching to it changes no number. Every optimizer here round-trips
through ``state_dict()`` / ``load_state_dict()`` for an exact resume.

Muon as SC ran it: SC's ``uv.lock`` pins optax 0.2.5 (``uv.lock:1589-1590``; its
``requirements.txt`` leaves optax unpinned), whose ``optax/contrib/_muon.py`` is
transcribed here line by line (cited as ``_muon.py:N`` of optax v0.2.5), with the
Nesterov Adam of ``optax/_src/transform.py:281-306`` for the other parameters.
torch's ``Muon`` differs from it in four ways, each of which :class:`OptaxMuon` follows
optax in:

1. optax iterates Newton-Schulz in the momentum's dtype (float32; ``_muon.py:81-82``),
   torch in bfloat16 (``torch/optim/_muon.py:55``), which is slow on a CPU;
2. optax bias-corrects its Nesterov mix, ``b m_t / (1 - b^(t+1)) + (1 - b) g_t /
   (1 - b^t)`` (``_muon.py:162-173``), torch takes ``(1 - b) g_t + b m_t``
   (``torch/optim/_muon.py:333-334``);
3. optax normalises by ``||X||_F + eps`` with eps 1e-8 (``_muon.py:81``), torch by
   ``max(||X||_F, eps)``;
4. optax's non-matrix parameters get AdamW with its ``nesterov=True``
   (``_muon.py:285-294``: Dozat's NAdam with optax's bias correction), not Adam.

They agree on the coefficients (3.4445, -4.7750, 2.0315), 5 steps, momentum 0.95,
the transpose to the wide orientation (``_muon.py:77-80``), the scale
``sqrt(max(1, fan_out / fan_in))`` (``_muon.py:187-190`` on Flax's ``(in, out)``
kernel; torch's ``adjust_lr_fn="original"`` on its ``(out, in)`` weight) and the
decoupled weight decay ``p -= lr (update + wd p)`` (``_muon.py:282-283``).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from clenv.checks import check_range

__all__ = [
    "MuonWithAdam",
    "OptaxAdamW",
    "OptaxMuon",
    "fast_calls",
    "make_optimizer",
    "newton_schulz",
    "set_learning_rate",
    "trac_optimizer_class",
]

OPTIMIZERS = ("sgd", "adam", "muon", "trac")
MUON_IMPLS = ("optax", "torch")

# optax.contrib.muon's defaults (SC calls it with learning_rate and weight_decay only;
# optax v0.2.5 optax/contrib/_muon.py:200-221): Nesterov momentum 0.95, 5
# Newton-Schulz steps with Keller Jordan's coefficients, eps 1e-8 (also the Adam
# part's), not adaptive; the non-matrix parameters get Nesterov AdamW(b1=0.9,
# b2=0.999, weight decay 0) at the same learning rate.
MUON_MOMENTUM = 0.95
MUON_NS_STEPS = 5
MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
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
    muon_impl: str = "optax",
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
        betas, eps: Adam's (also the Adam part of Muon, whose eps is also Muon's
            Newton-Schulz eps as in optax, and TRAC's Adam base).
        fused: passed to SGD / Adam when not None (the supervised agent's
            ``fused=`` choice).
        muon_momentum, muon_nesterov, muon_ns_steps: Muon's (optax's defaults, SC).
        muon_head: give the output layer's weight matrix to Muon too (``True``, as
            optax's muon and so SC: every 2-D parameter); ``False`` keeps it on Adam,
            as Muon's authors recommend for embeddings and heads. The head is the
            model's ``head`` attribute.
        muon_impl: ``"optax"`` (SC's optax 0.2.5 muon: :class:`OptaxMuon` and
            :class:`OptaxAdamW`, float32) or ``"torch"`` (``torch.optim.Muon``,
            bfloat16 Newton-Schulz and no bias correction, with ``torch.optim.Adam``;
            see :mod:`clenv.optim`).
        trac_base: the optimizer TRAC wraps, ``"adam"`` (the paper's) or ``"sgd"``.

    Raises:
        ValueError: for an unknown name, base or Muon implementation; ImportError for ``"trac"`` without
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
            impl=muon_impl,
        )
    if trac_base not in ("adam", "sgd"):
        raise ValueError(f"trac_base must be 'adam' or 'sgd', got {trac_base!r}")
    base = torch.optim.Adam if trac_base == "adam" else torch.optim.SGD
    arguments: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if trac_base == "adam":
        # foreach: one op per stage for all tensors; on CPU torch's default is one op
        # per tensor, with the same numbers (tests/test_optim.py compares them).
        arguments.update(betas=betas, eps=eps, foreach=True)
    else:
        arguments.update(momentum=momentum)
    return trac_optimizer_class(base)(model.parameters(), **arguments)


def is_muon_matrix(param: torch.Tensor, head: torch.Tensor | None = None) -> bool:
    """Whether Muon updates ``param``: a 2-D weight (optax's rule), not ``head``."""
    return param.dim() == 2 and param is not head


def _closure_loss(closure: Callable[[], Any] | None) -> Any:
    """The loss of a ``step(closure)`` call, as torch's optimizers evaluate it: the
    closure under grad mode (``step`` itself runs under ``no_grad``), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class MuonWithAdam:
    """Muon on the 2-D weight matrices, Adam on the rest (biases, norms, convolution
    kernels, a PPO agent's log-std), stepped as one optimizer: SC's
    ``optax.contrib.muon`` (:class:`OptaxMuon` and :class:`OptaxAdamW`; with
    ``impl="torch"``, ``torch.optim.Muon`` and ``torch.optim.Adam``; see
    :mod:`clenv.optim`).

    It offers what a training loop and the plasticity methods use of an optimizer:
    ``step``, ``zero_grad``, ``param_groups`` (Muon's first), ``state`` (both parts'
    per-parameter state, for :func:`clenv.methods.base.reset_optimizer_slices`),
    ``add_param_group`` (a 2-D weight goes to Muon), ``state_dict`` and
    ``load_state_dict``; its parts are ``muon`` and ``adam``.

    Args:
        model: the network.
        lr: step size of both parts.
        weight_decay: Muon's decoupled weight decay (Adam's part gets none, as
            optax's muon with its default ``adam_weight_decay=0``).
        momentum, nesterov, ns_steps: Muon's (``nesterov`` also the Adam part's
            under ``impl="optax"``, as optax's).
        betas, eps: the Adam part's (``eps`` also Muon's under ``impl="optax"``, as
            optax's; torch's Muon keeps eps 1e-8).
        muon_head: whether the model's ``head`` weight goes to Muon.
        impl: ``"optax"`` or ``"torch"``.
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
        eps: float = MUON_EPS,
        muon_head: bool = True,
        impl: str = "optax",
    ):
        if impl not in MUON_IMPLS:
            raise ValueError(
                f"unknown Muon implementation {impl!r}; choose one of "
                f"{list(MUON_IMPLS)} (optax: SC's; torch: torch.optim.Muon)"
            )
        self.impl = impl
        head = getattr(model, "head", None)
        self.excluded = None if muon_head or head is None else head.weight
        params = list(model.parameters())
        matrices = [p for p in params if is_muon_matrix(p, self.excluded)]
        others = [p for p in params if not is_muon_matrix(p, self.excluded)]
        if not matrices:
            raise ValueError(
                f"{type(model).__name__} has no 2-D weight for Muon; use adam or sgd"
            )
        # torch's Adam refuses an empty parameter list: keep one group to add to.
        others = others or [torch.zeros(0, requires_grad=True)]
        if impl == "optax":
            self.muon: torch.optim.Optimizer = OptaxMuon(
                matrices,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
                eps=eps,
            )
            self.adam: torch.optim.Optimizer = OptaxAdamW(
                others, lr=lr, betas=betas, eps=eps, nesterov=nesterov
            )
        else:
            self.muon = torch.optim.Muon(
                matrices,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
                eps=MUON_EPS,
            )
            self.adam = torch.optim.Adam(others, lr=lr, betas=betas, eps=eps)

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
        loss = _closure_loss(closure)
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
        saved, ours = _muon_impl(state["muon"]), _muon_impl(self.muon.state_dict())
        if saved != ours:
            raise ValueError(
                f"this optimizer state is the {saved} Muon's, this optimizer the "
                f"{ours} one (clenv's muon follows optax since its float32 rewrite); "
                f"resume with make_optimizer(..., muon_impl={saved!r}) or start the "
                "run afresh"
            )
        self.muon.load_state_dict(state["muon"])
        self.adam.load_state_dict(state["adam"])

    def __repr__(self) -> str:
        return f"MuonWithAdam(muon={self.muon!r}, adam={self.adam!r})"


def _muon_impl(state: dict[str, Any]) -> str:
    """Which Muon saved ``state``: ``"torch"`` (its groups have ``adjust_lr_fn``)
    or ``"optax"``."""
    return "torch" if "adjust_lr_fn" in state["param_groups"][0] else "optax"


class _JointState(collections.ChainMap):
    """Both parts' per-parameter state as one mapping: lookups search both, and
    ``pop``, ``del`` and ``clear`` act on whichever part holds the parameter (a
    plain ChainMap changes only the first), as the resets and CBP expect. A lookup
    never creates an entry: the parts' states are defaultdicts, and a plain
    ChainMap's ``state.get(adam_param)`` would return an empty dict made in Muon's
    part (whose ``state_dict`` then fails on the stranger)."""

    def __getitem__(self, key: Any) -> Any:
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        raise KeyError(key)

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


def newton_schulz(
    matrix: torch.Tensor,
    coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
    steps: int = MUON_NS_STEPS,
    eps: float = MUON_EPS,
) -> torch.Tensor:
    """optax's ``orthogonalize_via_newton_schulz`` (v0.2.5 ``_muon.py:38-93``) of a
    torch ``(out, in)`` weight-shaped matrix, in its own dtype.

    optax iterates on Flax's ``(in, out)`` kernel ``K = W^T``, transposed to ``(out, in)``
    when ``in > out``, so on ``W`` when ``in > out`` and on ``W^T`` otherwise (a
    square one too): the same matrix here, the result returned as ``W``'s shape.
    Then ``X /= ||X||_F + eps`` and ``steps`` times ``A = X X^T``,
    ``X = a X + (b A + c A A) X``.

    A matrix whose long side is at least twice its short side (the first layer of
    an MLP: 100 x 784) is iterated in the short side's space, the same products
    associated differently: each step is ``X = P X`` with ``P = a I + b A + c A A``,
    so ``X_k = Q_k X_0`` with ``Q_{k+1} = P_k Q_k`` and ``A_k = Q_k A_0 Q_k^T``;
    only ``A_0 = X_0 X_0^T`` and the final ``Q X_0`` touch the long side (2 of the
    10 long products), and every 3 steps ``X`` is formed and ``A_0`` taken afresh
    (float32 rounding in ``Q`` would otherwise grow on a nearly low-rank momentum).
    Equal in exact arithmetic; in float32 as close to optax's float64 result as the
    direct iteration (tests/test_optim.py), ~2.5x fewer multiplications at 100 x 784.

    Example:
        >>> matrix = torch.randn(3, 5, dtype=torch.float64)
        >>> ortho = newton_schulz(matrix, steps=20)
        >>> bool((torch.linalg.svdvals(ortho) - 1).abs().max() < 0.35)
        True
    """
    a, b, c = coefficients
    transposed = matrix.shape[0] >= matrix.shape[1]
    x = matrix.T if transposed else matrix
    x = x / (torch.linalg.vector_norm(x) + eps)
    if x.shape[1] >= 2 * x.shape[0]:
        x = _newton_schulz_short_side(x, coefficients, steps)
    else:
        for _ in range(steps):
            gram = x @ x.T
            polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, polynomial, x, beta=a)
    return x.T if transposed else x


#: Steps of :func:`newton_schulz`'s short-side iteration between two fresh ``A_0``.
SHORT_SIDE_RESTART = 3


def _newton_schulz_short_side(
    x: torch.Tensor, coefficients: tuple[float, float, float], steps: int
) -> torch.Tensor:
    """The Newton-Schulz steps of a wide normalised ``x`` (rows <= columns / 2)
    through ``Q`` (:func:`newton_schulz`)."""
    a, b, c = coefficients
    for start in range(0, steps, SHORT_SIDE_RESTART):
        gram_0 = x @ x.T
        product = None  # Q; None for the identity
        for _ in range(min(SHORT_SIDE_RESTART, steps - start)):
            gram = gram_0 if product is None else product @ gram_0 @ product.T
            polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            polynomial.diagonal().add_(a)
            product = polynomial if product is None else polynomial @ product
        x = product @ x
    return x


class OptaxMuon(torch.optim.Optimizer):
    """The Muon part of ``optax.contrib.muon`` (v0.2.5, SC's), on 2-D torch weights
    in their own dtype (float32): ``scale_by_muon`` (``_muon.py:160-197``), the
    decoupled weight decay and the learning rate (``_muon.py:282-283``).

    Per step ``t`` (from 1) of a weight ``W`` with gradient ``g``:

    - ``m = b m + (1 - b) g`` (``_muon.py:162``);
    - Nesterov: ``M = b m / (1 - b^(t+1)) + (1 - b) g / (1 - b^t)``; otherwise
      ``M = m / (1 - b^t)`` (``_muon.py:164-173``);
    - ``O = newton_schulz(M)`` (:func:`newton_schulz`), times ``<M, O>`` if
      ``adaptive`` (``_muon.py:181-186``);
    - ``W -= lr (sqrt(max(1, out / in)) O + weight_decay W)`` (``_muon.py:187-190``
      on Flax's ``(in, out)`` kernel: ``shape[-1] / shape[-2]`` is ``out / in``).

    optax counts steps once for all its parameters; here each weight counts its
    own (the same while every weight gets a gradient at every step; a weight whose
    state a reset pops restarts at ``t = 1``). The state is ``step`` and
    ``momentum_buffer`` (``m``, zeroed by
    :func:`clenv.methods.base.reset_optimizer_slices`).

    Args:
        params: the 2-D weights.
        lr: the step size.
        weight_decay: decoupled, multiplied by ``lr`` as optax's.
        momentum: ``b`` (optax's ``beta``).
        nesterov, ns_steps, eps, adaptive: optax's.
        ns_coefficients: ``(a, b, c)`` of every Newton-Schulz step.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        *,
        weight_decay: float = 0.0,
        momentum: float = MUON_MOMENTUM,
        nesterov: bool = True,
        ns_steps: int = MUON_NS_STEPS,
        ns_coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
        eps: float = MUON_EPS,
        adaptive: bool = False,
    ):
        check_range("Muon's lr", lr, 0.0)
        check_range("Muon's weight_decay", weight_decay, 0.0)
        check_range("Muon's momentum", momentum, 0.0, 1.0)
        check_range("Muon's eps", eps, 0.0)
        if int(ns_steps) != ns_steps or ns_steps < 1:
            raise ValueError(f"Muon's ns_steps must be an integer >= 1, got {ns_steps}")
        if len(ns_coefficients) != 3:
            raise ValueError(
                f"ns_coefficients must be three numbers (a, b, c), got {ns_coefficients}"
            )
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=int(ns_steps),
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            adaptive=adaptive,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                if param.dim() != 2:
                    raise ValueError(
                        f"Muon takes 2-D weights only, got one of shape "
                        f"{tuple(param.shape)}; give it to the Adam part"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta = group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["momentum_buffer"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                momentum = state["momentum_buffer"]
                momentum.lerp_(grad, 1 - beta)
                if group["nesterov"]:
                    mixed = grad.mul((1 - beta) / (1 - beta**step))
                    mixed.add_(momentum, alpha=beta / (1 - beta ** (step + 1)))
                else:
                    mixed = momentum.div(1 - beta**step)
                update = newton_schulz(
                    mixed, group["ns_coefficients"], group["ns_steps"], group["eps"]
                )
                if group["adaptive"]:
                    update = update * torch.sum(mixed * update)
                scale = math.sqrt(max(1.0, param.shape[0] / param.shape[1]))
                if group["weight_decay"]:
                    param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-group["lr"] * scale)
        return loss


class OptaxAdamW(torch.optim.Optimizer):
    """optax's ``adamw`` as ``optax.contrib.muon`` builds it for the non-matrix
    parameters (v0.2.5 ``_muon.py:285-294``: ``nesterov`` as Muon's, True), from
    ``scale_by_adam`` (``optax/_src/transform.py:281-306``), the decoupled weight
    decay and the learning rate (``optax/_src/alias.py:717-728``).

    Per step ``t`` (from 1): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``;
    Nesterov: ``M = b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)``, otherwise
    ``M = m / (1 - b1^t)`` (torch's Adam); ``V = v / (1 - b2^t)``;
    ``p -= lr (M / (sqrt(V + eps_root) + eps) + weight_decay p)``. State: ``step``,
    ``exp_avg`` (``m``), ``exp_avg_sq`` (``v``), torch's Adam's names.

    Args:
        params: the parameters.
        lr: the step size.
        betas: ``(b1, b2)``.
        eps, eps_root: optax's.
        weight_decay: decoupled (optax muon's ``adam_weight_decay``: 0).
        nesterov: optax muon's (True).
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = MUON_EPS,
        eps_root: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = True,
    ):
        check_range("Adam's lr", lr, 0.0)
        check_range("Adam's beta1", betas[0], 0.0, 1.0)
        check_range("Adam's beta2", betas[1], 0.0, 1.0)
        check_range("Adam's eps", eps, 0.0)
        check_range("Adam's eps_root", eps_root, 0.0)
        check_range("Adam's weight_decay", weight_decay, 0.0)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            eps_root=eps_root,
            weight_decay=weight_decay,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            # The parameters at each step count, updated together with foreach ops.
            by_step: dict[int, list[list[torch.Tensor]]] = {}
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                lists = by_step.setdefault(state["step"], [[], [], [], []])
                for tensors, tensor in zip(
                    lists,
                    (param, param.grad, state["exp_avg"], state["exp_avg_sq"]),
                    strict=True,
                ):
                    tensors.append(tensor)
            for step, (params, grads, means, squares) in by_step.items():
                self._update(group, step, params, grads, means, squares)
        return loss

    @staticmethod
    def _update(group, step, params, grads, means, squares) -> None:
        beta1, beta2 = group["betas"]
        torch._foreach_lerp_(means, grads, 1 - beta1)
        torch._foreach_mul_(squares, beta2)
        torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
        if group["nesterov"]:
            updates = torch._foreach_mul(grads, (1 - beta1) / (1 - beta1**step))
            torch._foreach_add_(updates, means, alpha=beta1 / (1 - beta1 ** (step + 1)))
        else:
            updates = torch._foreach_div(means, 1 - beta1**step)
        denominators = torch._foreach_div(squares, 1 - beta2**step)
        if group["eps_root"]:
            torch._foreach_add_(denominators, group["eps_root"])
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_div_(updates, denominators)
        if group["weight_decay"]:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, updates, alpha=-group["lr"])


TRAC_MISSING = (
    "--optimizer trac needs the TRAC authors' package: pip install clenv[trac] "
    "(or pip install trac-optimizer)"
)


TRAC_FROZEN = (
    "TRAC's scale S fell to {s:.3g} <= 0 at step {step}: the trac-optimizer package "
    "then sets every weight to its reference and recovers the base optimizer's "
    "displacement from the weights, as 0, so S and the weights stay frozen for the "
    "rest of the run (seen at batch 1, where one step's gradient can point against "
    "the last one's; docs/methods.md, --optimizer trac)"
)


def _import_trac():
    try:
        import trac_optimizer
    except ImportError as error:
        raise ImportError(TRAC_MISSING) from error
    return trac_optimizer


def trac_optimizer_class(base: type[torch.optim.Optimizer]) -> type:
    """``trac_optimizer.start_trac`` around ``base`` (the package's defaults: betas
    0.9 ... 0.999999, s_prev 1e-8, eps 1e-8), with a ``state_dict`` that survives a
    resume, and without the package's per-step log line.

    The package keeps its state under ``optimizer.state["_trac"]``, keyed by the
    parameter tensors themselves, which ``torch.optim``'s ``load_state_dict`` cannot
    map back; this class stores it by parameter index and rebuilds it on load.
    The package's ``step`` is its update (``trac_optimizer.trac._step``) followed by
    opening its log file to append a line; ``step`` here is the same update, at the
    package's own default settings, without the file (~0.05 ms a step), and with the
    package's ``erfi`` at about a third of its cost, bit for bit the same
    (:func:`_faster_trac_erfi`: 2 of the ~4.7 ms of a width-100 MLP's step).

    Raises:
        ImportError: without ``trac-optimizer`` (the message says how to install it).
    """
    package = _import_trac()
    wrapped = package.start_trac(os.devnull, base)
    defaults = inspect.signature(package.start_trac).parameters
    settings = [defaults[name].default for name in ("betas", "s_prev", "eps")]
    # The package's private update; a version without it keeps its own step.
    module = getattr(package, "trac", None)
    update = getattr(module, "_step", None)
    faster = _faster_trac_erfi(module) if update is not None else {}

    class TRAC(wrapped):
        _frozen_told = False

        def step(self):
            if update is None:
                return super().step()
            # The faster pieces stand in for the module's own only during this step.
            originals = {name: getattr(module, name) for name in faster}
            for name, function in faster.items():
                setattr(module, name, function)
            try:
                result, log = update(self, super(wrapped, self).step, *settings)
            finally:
                for name, function in originals.items():
                    setattr(module, name, function)
            if log["s"] <= 0 and not self._frozen_told:
                self._frozen_told = True
                warnings.warn(TRAC_FROZEN.format(s=log["s"], step=log["iter_count"]),
                              RuntimeWarning, stacklevel=2)  # fmt: skip
            return result

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


def _faster_trac_erfi(module: Any) -> dict[str, Callable]:
    """Stand-ins for ``trac_optimizer.trac``'s ``polyval`` and ``erfi`` with the same
    results, bit for bit, at about a third of the cost of a step's two ``erfi`` calls
    (a 128-term Horner loop of small torch ops each):

    - ``polyval``: the package's Horner loop with its coefficients split into 0-d
      tensors once and in-place ops, instead of indexing ``coeffs[i]`` and ``x[0]``
      and allocating at every term: the same additions and multiplications, in the
      same dtypes and order;
    - ``erfi``: the package's, except that a 0-d input (the step's constant
      ``erfi(1/sqrt(2))``) is computed once and then copied.

    Returns ``{}`` (the package's own functions stay) when the module lacks either.
    """
    polyval, erfi = getattr(module, "polyval", None), getattr(module, "erfi", None)
    if polyval is None or erfi is None:
        return {}
    split: list = []  # [(coefficients tensor, its terms)]: the package's one table

    def terms(coeffs: torch.Tensor) -> list[torch.Tensor]:
        for known, parts in split:
            if known is coeffs:
                return parts
        split.append((coeffs, list(coeffs.unbind())))
        return split[-1][1]

    def faster_polyval(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        parts, x0 = terms(coeffs), x[0]
        value = parts[0] * x0  # the package's (0 + coeffs[0]) * x[0]
        for coefficient in parts[1:-1]:
            value.add_(coefficient).mul_(x0)
        return value + parts[-1]

    constants: dict[tuple, torch.Tensor] = {}

    def faster_erfi(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 0:
            return erfi(x)
        key = (float(x), x.dtype, x.device)
        if key not in constants:
            constants[key] = erfi(x)
        return constants[key].clone()

    return {"polyval": faster_polyval, "erfi": faster_erfi}


def set_learning_rate(optimizer: Any, lr: float) -> None:
    """Set every parameter group's step size (an annealing schedule): Muon's and
    Adam's parts of :class:`MuonWithAdam`, and the group :mod:`clenv.methods.inject`
    adds, move together (CleanRL's ``param_groups[0]["lr"] = lr`` moves only the
    first)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def fast_calls(optimizer: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(zero_grad, step)``: ``optimizer.zero_grad()`` and ``optimizer.step()`` with
    the same effect and less Python per call, for a batch-1 loop where that Python
    is a sizeable part of each step (~0.15 ms of ~1 ms for the width-100 MLP).

    - ``zero_grad`` sets every gradient to None, as ``torch.optim``'s own
      ``zero_grad()`` does, without its profiler record; an optimizer with a
      ``zero_grad`` of its own keeps it (:class:`MuonWithAdam`'s parts have
      torch's).
    - ``step``, for a ``torch.optim.SGD`` with ``fused=True`` and no momentum whose
      ``step`` is torch's own: the step's pre-hooks (``--reg l2`` sets its weight
      decay in one), the same single ``torch._fused_sgd_`` call per parameter
      group with the group's options as ``SGD.step`` makes it, then the post-hooks;
      not the profiler record, ``_init_group`` and the device/dtype grouping around
      it. A group where that call would not be SGD's (momentum, sparse
      gradients, parameters of several devices or dtypes, a gradient scaler)
      takes ``optimizer.step()``; any other optimizer gets ``optimizer.step``.

    Either way the parameters, gradients and optimizer state after each call are
    bit for bit those of the optimizer's own methods.
    """
    zero_grad = optimizer.zero_grad
    if _is_torchs(type(optimizer).zero_grad, "torch.optim.optimizer", "Optimizer"):
        zero_grad = _set_gradients_to_none(optimizer)
    elif isinstance(optimizer, MuonWithAdam):
        parts = optimizer.optimizers
        if all(
            _is_torchs(type(o).zero_grad, "torch.optim.optimizer", "Optimizer")
            for o in parts
        ):
            zero_grad = _set_gradients_to_none(optimizer)
    step = optimizer.step
    if (
        _has_fused_sgd_internals()
        and type(optimizer) is torch.optim.SGD
        and _is_torchs(type(optimizer).step, "torch.optim.sgd", "SGD")
        and all(g["fused"] and g["momentum"] == 0 for g in optimizer.param_groups)
    ):
        step = _fused_sgd_step(optimizer)
    return zero_grad, step


def _has_fused_sgd_internals() -> bool:
    """Whether this torch has the private pieces :func:`_fused_sgd_step` calls
    (torch 2.x's ``torch._fused_sgd_`` and optimizer hook registries); another
    version keeps ``optimizer.step``."""
    try:
        from torch.optim.optimizer import (  # noqa: F401
            _global_optimizer_post_hooks,
            _global_optimizer_pre_hooks,
        )
    except ImportError:
        return False
    return callable(getattr(torch, "_fused_sgd_", None))


def _is_torchs(method: Any, module: str, owner: str) -> bool:
    """Whether ``method`` (under torch's profiling and grad-mode wrappers) is the
    ``owner`` class's own in ``module``, not a replacement."""
    function = inspect.unwrap(method)
    return (
        getattr(function, "__module__", None) == module
        and getattr(function, "__qualname__", "").split(".")[0] == owner
    )


def _set_gradients_to_none(optimizer: Any) -> Callable[[], None]:
    def zero_grad() -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    return zero_grad


def _fused_sgd_step(optimizer: torch.optim.SGD) -> Callable[[], None]:
    """``optimizer.step()`` of a fused SGD without momentum (:func:`fast_calls`),
    which makes that step itself whenever a group is not (or no longer) one. Its
    groups and hooks are read at every call (``load_state_dict`` replaces the
    groups)."""
    from torch.optim.optimizer import (
        _global_optimizer_post_hooks,
        _global_optimizer_pre_hooks,
    )

    arguments = (optimizer,)
    checked: list[Any] = [None]  # the groups last found of one device and dtype

    def plain(groups: list[dict[str, Any]]) -> bool:
        """Whether SGD.step would make exactly the one call below per group."""
        if groups is not checked[0]:
            kinds = [{(p.device, p.dtype) for p in g["params"]} for g in groups]
            if any(len(kind) > 1 for kind in kinds):  # SGD would split the call
                return False
            checked[0] = groups
        return (
            getattr(optimizer, "grad_scale", None) is None
            and getattr(optimizer, "found_inf", None) is None
            and all(
                g["fused"] and g["momentum"] == 0 and not g["differentiable"]
                for g in groups
            )
        )

    def step() -> None:
        groups = optimizer.param_groups
        if not plain(groups):
            optimizer.step()
            return
        for hook in itertools.chain(
            _global_optimizer_pre_hooks.values(),
            optimizer._optimizer_step_pre_hooks.values(),
        ):
            if hook(optimizer, arguments, {}) is not None:
                raise RuntimeError(
                    "an optimizer step pre-hook returned new arguments, which the "
                    "fast SGD step (clenv.optim.fast_calls) does not take; call "
                    "optimizer.step() instead"
                )
        with torch.no_grad():
            for group in groups:
                params = [p for p in group["params"] if p.grad is not None]
                if not params:
                    continue
                grads = [p.grad for p in params]
                if any(grad.is_sparse for grad in grads):
                    raise RuntimeError("`_fused_sgd` does not support sparse gradients")
                torch._fused_sgd_(
                    params,
                    grads,
                    [],
                    weight_decay=group["weight_decay"],
                    momentum=0.0,
                    lr=group["lr"],
                    dampening=group["dampening"],
                    nesterov=group["nesterov"],
                    maximize=group["maximize"],
                    is_first_step=False,
                    grad_scale=None,
                    found_inf=None,
                )
        for hook in itertools.chain(
            optimizer._optimizer_step_post_hooks.values(),
            _global_optimizer_post_hooks.values(),
        ):
            hook(optimizer, arguments, {})

    return step
