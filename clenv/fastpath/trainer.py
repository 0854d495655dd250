"""``FastMLPTrainer``: online batch-1 SGD of a ReLU MLP without autograd.

Batch-1 training is bound by per-call overhead, not arithmetic: autograd, the
optimizer and a dozen small torch calls cost more than the matrix-vector products of a
width-100 MLP. The trainer therefore runs a *chunk* of K examples per call, each one
a full sequential SGD step (predict, loss, backward, update) in a compiled kernel,
updating the model's own parameter tensors in place. The result is the same training
run as the autograd loop::

    for x, y in stream:               # batch 1
        logits = model(x); loss = loss_fn(logits, y)   # cross-entropy or MSE
        loss.backward(); method.after_backward(); optimizer.step()
        method.after_step(x)

with ``optimizer = SGD(lr)``, ``loss`` cross-entropy or SC's one-hot MSE
(``clenv.losses``), and ``method`` one of bp, l2, er, l2er, cbp, cbp+l2, l2init, nap
(and head_reset / reset / layer_reset, which act only on task switches, in place on
the same parameter tensors), on a Linear-ReLU MLP, one with a LayerNorm before each
hidden ReLU (``--norm layer``) or one with CReLU instead of ReLU. Equal up to float rounding
(a different summation order); ``tests/test_fastpath.py`` checks the weights after N
steps against that loop for every supported method.

How each method runs here:

* **L2**: fused into the update, ``W <- W - lr (g h^T + lambda W)`` (coupled, on biases
  too), with lambda read from the :class:`clenv.methods.L2` component.
* **ER / L2-ER**: the trainer stops the kernel exactly at every U-th step, hands the
  :class:`clenv.methods.EffectiveRankAscent` component the chunk's inputs
  (``record``) and, when due, lets it ascend on its buffer (``ascend_on_buffer``: the
  closed-form gradient and manual backward of :mod:`clenv.methods.effective_rank`, on
  the same parameter tensors; ``runs_as_chain=True``, since the kernel trains the
  model as its Linear-ReLU chain, so the ascent computes that forward itself, without
  forward hooks), so the ascent
  happens between the same two examples as in the autograd loop and the method's
  ``state_dict`` stays valid.
* **CBP**: the :class:`clenv.methods.ContinualBackprop` component's statistics (ages,
  utilities, mean activations, accumulators) are updated inside the kernel, in the
  component's own tensors; the kernel returns when a replacement is due and the
  component replaces the units itself (same choice, same random draws). The SGD
  optimizer has no state to reset. One difference with ``"adaptable_contribution"``:
  at a step where layer l replaces units, the component's autograd-path update computes
  layer l+1's utility with its incoming weights after that replacement (the replaced
  units' outgoing columns zeroed), the kernel with those before it (one term of a
  0.99-decayed average); the default ``"contribution"`` is exact.
* **L2 Init**: fused into the update too, ``W <- W - lr (g h^T + c (W - W_0))`` with
  ``c`` the :class:`clenv.methods.L2Init` component's coefficient and ``W_0`` its own
  stored initial tensors (so a resumed run pulls toward the first run's); no layer
  defers its updates then. Not with CBP or LayerNorm.
* **NaP** (Normalize-and-Project, with ``--norm layer``): after each example's update
  the kernel rescales each weight matrix the :class:`clenv.methods.NormalizeAndProject`
  component projects (and each LayerNorm's scale and shift, jointly) to the
  component's own initial norms; no layer defers its updates then. Not with ER
  (whose ascent, between kernel calls, NaP would have to follow).
* **CReLU** (``--activation crelu``, :class:`clenv.models.layers.CReLU`'s interleaved
  features): each hidden layer's two features per unit are formed in the kernel and
  its gradient read back from them; not with LayerNorm or CBP.
* **LayerNorm** (``--norm layer``): normalised in the kernel, its scale and shift
  trained by the same SGD (+ L2) update as the weights; with any method above but CBP
  (whose unit replacement would have to reset the norm's statistics too).
* Anything else (S&P, ReDo, Adam, momentum) needs the autograd path:
  :func:`fast_path_supports` says whether a run (batch size, model, optimizer, method)
  can use this one, and if not, why.

Predictions are made before the update on each example, and after the updates on the
examples before it in the chunk, so ``predictions == labels`` is the true sequential
online accuracy.
"""

from __future__ import annotations

import ctypes
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from clenv.fastpath.native import load_kernel
from clenv.fastpath.reference import train_chunk_torch
from clenv.losses import LOSSES
from clenv.methods import ContinualBackprop
from clenv.models.layers import CReLU

# --reg components the fast path runs exactly (see the module docstring).
SUPPORTED_COMPONENTS = frozenset(
    {"l2", "l2init", "nap", "er", "cbp", "head_reset", "reset", "layer_reset"}
)
Backend = Literal["auto", "native", "torch"]


class FastPathSupport(NamedTuple):
    """Whether the fast path computes a run exactly; ``reason`` says why not.

    True or false as ``supported`` is, and unpacks as ``supported, reason``.
    """

    supported: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.supported


def fast_path_supports(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    method: Any = None,
    *,
    batch_size: int = 1,
) -> FastPathSupport:
    """Whether :class:`FastMLPTrainer` computes the same run as the autograd loop.

    It does for batch-1 training of a Linear-ReLU-...-Linear MLP by plain SGD
    (momentum 0, no optimizer weight decay: L2 comes from the method) with a method
    made of :data:`SUPPORTED_COMPONENTS` in the option values the kernel implements
    (ER with ``schedule="step"``; CBP with ``variant="lop"``,
    ``replacement_count="eligible"``, ``accumulate=True``, on the model's layers).

    Args:
        model: the network to train.
        optimizer: the optimizer the autograd loop would step (``None``: plain SGD).
        method: a :func:`clenv.methods.make_method` object; ``None`` for backprop.
        batch_size: examples per update.

    Returns:
        ``FastPathSupport(True, "")``, or ``FastPathSupport(False, reason)`` naming
        the first condition that fails.

    Example:
        >>> from clenv.models import PermutedMNISTMLP
        >>> model = PermutedMNISTMLP(width=8)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        >>> fast_path_supports(model, optimizer)
        FastPathSupport(supported=False, reason='momentum 0.9 (plain SGD only)')
    """
    if batch_size != 1:
        return FastPathSupport(False, f"batch size {batch_size} (batch 1 only)")
    if optimizer is not None:
        reason = _optimizer_unsupported(optimizer)
        if reason:
            return FastPathSupport(False, reason)
    try:
        layers, norms, crelu = mlp_layers(model)
    except ValueError as error:
        return FastPathSupport(False, str(error))
    reason = _method_unsupported(method, layers, norms, crelu)
    return FastPathSupport(not reason, reason)


def _optimizer_unsupported(optimizer: torch.optim.Optimizer) -> str:
    if type(optimizer) is not torch.optim.SGD:
        return f"optimizer {type(optimizer).__name__} (plain SGD only)"
    for group in optimizer.param_groups:
        if group["momentum"]:
            return f"momentum {group['momentum']} (plain SGD only)"
        if group["weight_decay"]:
            return (
                f"optimizer weight decay {group['weight_decay']} (none; the L2 "
                "method's is fused into the update)"
            )
        if group.get("maximize"):
            return "a maximizing SGD (descent only)"
    return ""


def _method_unsupported(
    method: Any,
    layers: list[nn.Linear],
    norms: list[nn.LayerNorm] | None = None,
    crelu: bool = False,
) -> str:
    """Why the trainer cannot run ``method`` exactly on ``layers`` (and ``norms``, the
    MLP's LayerNorms) ("" if it can)."""
    names = {_component_name(c) for c in _components(method)}
    for component in _components(method):
        name = _component_name(component)
        if name not in SUPPORTED_COMPONENTS:
            return (
                f"the fast path cannot run {name!r} exactly (supported: "
                f"{sorted(SUPPORTED_COMPONENTS)}); use the autograd path"
            )
        if name == "cbp" and (norms or crelu):
            return (
                "the fast path runs CBP on ReLU MLPs without LayerNorm only; use the "
                "autograd path"
            )
        if name == "l2init":
            if norms or "cbp" in names:
                return (
                    "the fast path runs l2init without LayerNorm and CBP only; use "
                    "the autograd path"
                )
            anchored = {id(p) for p in component.params}
            if any(id(p) not in anchored for p in _linear_parameters(layers)):
                return (
                    "the l2init component does not hold the MLP's parameters; build "
                    "it on the same model"
                )
        if name == "nap":
            if "er" in names:
                return (
                    "the fast path runs nap without ER (NaP projects after ER's "
                    "ascent); use the autograd path"
                )
            targets = _projection_targets(component, layers, norms or [])
            if component.error or targets is None:
                return (
                    "the fast path runs nap on its MLP's LayerNorm layers (build the "
                    "model with --norm layer and the method on it); use the autograd path"
                )
        if name == "er" and component.schedule != "step":
            return "the fast path runs ER with schedule='step' only"
        if name == "cbp":
            if [h.layer for h in component.hidden] != layers[:-1]:
                return (
                    "the CBP component's hidden layers are not the MLP's; build it "
                    "on the same model"
                )
            options = (
                component.variant,
                component.replacement_count,
                component.accumulate,
            )
            if options != ("lop", "eligible", True):
                return (
                    "the fast path runs CBP with variant='lop', "
                    "replacement_count='eligible' and accumulate=True only; use "
                    "the autograd path"
                )
    return ""


class MLPLayers(NamedTuple):
    """What the fast path trains: the Linear layers (the head last), the LayerNorm of
    each hidden layer (empty without), and whether the activation is CReLU."""

    linears: list[nn.Linear]
    norms: list[nn.LayerNorm]
    crelu: bool


def mlp_layers(model: nn.Module) -> MLPLayers:
    """The layers of a Linear-[LayerNorm]-ReLU-...-Linear MLP (or Linear-CReLU-...),
    checked.

    Raises:
        ValueError: when the model is anything else (the fast path computes exactly
            this architecture; use the autograd path for others).
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    kinds = [type(m) for m in leaves if not isinstance(m, nn.Flatten | nn.Identity)]
    norms = [m for m in leaves if isinstance(m, nn.LayerNorm)]
    crelu = CReLU in kinds
    block = (
        (nn.Linear, CReLU) if crelu
        else (nn.Linear, nn.LayerNorm, nn.ReLU) if norms
        else (nn.Linear, nn.ReLU)
    )  # fmt: skip
    expected_pattern = all(
        kind is block[i % len(block)] for i, kind in enumerate(kinds)
    )
    if not kinds or not expected_pattern or kinds[-1] is not nn.Linear:
        raise ValueError(
            "the fast path trains Linear-ReLU-...-Linear MLPs, with or without a "
            "LayerNorm before each ReLU, or with CReLU instead of ReLU (no LayerNorm), "
            "only (e.g. clenv.models.PermutedMNISTMLP); got layers "
            f"{[k.__name__ for k in kinds]}. Use the autograd path for other "
            "architectures."
        )
    linears = [m for m in leaves if isinstance(m, nn.Linear)]
    for linear, norm in zip(linears, norms, strict=False):
        if (
            tuple(norm.normalized_shape) != (linear.out_features,)
            or norm.weight is None
            or norm.bias is None
            or norm.eps != norms[0].eps
        ):
            raise ValueError(
                "the fast path needs each LayerNorm over its layer's units with a "
                "scale and a shift (elementwise_affine=True, bias=True) and one eps "
                f"for all; got {norm}"
            )
    return MLPLayers(linears, norms, crelu)


def mlp_linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a Linear-ReLU-...-Linear MLP (no LayerNorm, no CReLU),
    checked.

    Raises:
        ValueError: when the model is anything else.
    """
    linears, norms, crelu = mlp_layers(model)
    if norms or crelu:
        raise ValueError(
            "this trainer runs ReLU MLPs without LayerNorm (FastMLPTrainer runs one "
            "seed with LayerNorm or CReLU); use the autograd path or one seed at a time"
        )
    return linears


def _projection_targets(
    nap: Any, layers: list[nn.Linear], norms: list[nn.LayerNorm]
) -> tuple[list[float], list[float]] | None:
    """NaP's target norm for each Linear's weight and each LayerNorm's (scale, shift),
    0 where it projects none; ``None`` when a group is not one of those."""
    weights = [0.0] * len(layers)
    scales = [0.0] * len(norms)
    where = {id(layer.weight): (weights, i) for i, layer in enumerate(layers)}
    where |= {id(norm.weight): (scales, i) for i, norm in enumerate(norms)}
    for group, initial in zip(nap.groups, nap.initial_norms, strict=True):
        target, index = where.get(id(group[0]), (None, 0))
        expected = [group[0]] if target is weights else [norms[index].weight,
                                                         norms[index].bias]  # fmt: skip
        if target is None or [id(p) for p in group] != [id(p) for p in expected]:
            return None
        target[index] = float(initial)
    return weights, scales


def _linear_parameters(layers: list[nn.Linear]) -> list[nn.Parameter]:
    return [p for layer in layers for p in (layer.weight, layer.bias)]


def _pointer_array(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _component_name(component: Any) -> str:
    """A method component's ``--reg`` name (its class name if it has none)."""
    return getattr(component, "name", type(component).__name__)


def _components(method: Any) -> list[Any]:
    if method is None:
        return []
    return list(getattr(method, "methods", [method]))


class FastMLPTrainer:
    """Sequential batch-1 SGD (+ L2, ER, CBP) on a ReLU MLP, K examples per call.

    Args:
        model: a Linear-ReLU-...-Linear MLP (e.g. ``PermutedMNISTMLP``); its
            parameters are updated in place (no copies: metrics, checkpoints and the
            ER ascent see the current weights at any time between calls).
        lr: SGD step size (no momentum).
        method: a :func:`clenv.methods.make_method` object whose components are in
            :data:`SUPPORTED_COMPONENTS`; ``None`` for plain backprop.
        backend: ``"native"`` (the compiled kernel, CPU), ``"torch"`` (torch ops, any
            device) or ``"auto"`` (native on CPU when it builds, else torch).
        loss: ``"cross_entropy"`` or ``"mse"`` (:func:`clenv.losses.make_loss`'s
            names; ``mse`` is SC's ``bp_mse``, :func:`clenv.losses.one_hot_mse`).

    Example:
        >>> from clenv.models import PermutedMNISTMLP
        >>> model = PermutedMNISTMLP(width=32)
        >>> trainer = FastMLPTrainer(model, lr=0.01)
        >>> x, y = torch.rand(8, 784), torch.randint(0, 10, (8,))
        >>> predictions, losses = trainer.train(x, y)
        >>> predictions.shape, losses.shape
        (torch.Size([8]), torch.Size([8]))
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        method: Any = None,
        backend: Backend = "auto",
        loss: str = "cross_entropy",
    ):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if backend not in ("auto", "native", "torch"):
            raise ValueError(f"backend must be auto, native or torch, got {backend!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        self.model = model
        self.lr = float(lr)
        self.loss = loss
        self.layers, self.norms, self.crelu = mlp_layers(model)
        self.weight_decay = 0.0
        self.er = None
        self.cbp: ContinualBackprop | None = None
        self.l2init = None
        self.nap = None
        reason = _method_unsupported(method, self.layers, self.norms, self.crelu)
        if reason:
            raise ValueError(reason)
        for component in _components(method):
            name = _component_name(component)
            if name == "l2":
                self.weight_decay = float(component.weight_decay)
            elif name == "l2init":
                self.l2init = component
            elif name == "nap":
                self.nap = component
            elif name == "er":
                self.er = component
            elif name == "cbp":
                self.cbp = component
        # The kernel trains the model as its Linear-ReLU chain, so the ascent may
        # compute the forward of that chain itself (EffectiveRankAscent.ascend's
        # runs_as_chain) where its chain is the model's.
        chains = None if self.er is None else self.er.relu_chains
        self.er_runs_as_chain = (
            chains is not None
            and len(chains) == 1
            and [linear for linear, _ in chains[0]] == self.layers[: len(chains[0])]
        )
        reference = self.layers[0].weight
        self.method = method
        kernel = None
        if backend != "torch" and reference.device.type == "cpu":
            kernel = load_kernel()
            if (
                kernel is not None
                and str(reference.dtype).removeprefix("torch.") not in kernel
            ):
                kernel = None
        if backend == "native" and kernel is None:
            raise RuntimeError(
                "backend='native' needs float32/float64 CPU parameters and a C++ "
                "compiler (see clenv.fastpath.native); use backend='auto'"
            )
        self.kernel = kernel
        self.backend = "native" if kernel is not None else "torch"
        # to be filled in runtime
        self.num_steps = 0

    # -- the loop --------------------------------------------------------------------
    def train(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on ``inputs[k], labels[k]`` for k = 0..K-1, one example at a time.

        Args:
            inputs: (K, features) or (K, ...) inputs, flattened per example.
            labels: (K,) integer class labels.

        Returns:
            ``(predictions, losses)``: the argmax prediction and loss (the trainer's
            ``loss``) of each example, both computed before the update on that example.
        """
        reference = self.layers[0].weight
        inputs = inputs.reshape(inputs.shape[0], -1)
        if inputs.shape[1] != self.layers[0].in_features:
            raise ValueError(
                f"inputs have {inputs.shape[1]} features per example, the model takes "
                f"{self.layers[0].in_features}"
            )
        if labels.shape != (inputs.shape[0],):
            raise ValueError(
                f"labels must have shape ({inputs.shape[0]},), got {tuple(labels.shape)}"
            )
        inputs = inputs.to(device=reference.device, dtype=reference.dtype).contiguous()
        labels = labels.to(device=reference.device, dtype=torch.int64).contiguous()
        num_classes = self.layers[-1].out_features
        if labels.numel() and (
            int(labels.min()) < 0 or int(labels.max()) >= num_classes
        ):
            raise ValueError(
                f"labels must be in [0, {num_classes}), got {labels.tolist()}"
            )
        count = inputs.shape[0]
        predictions = torch.empty(count, dtype=torch.int64, device=reference.device)
        losses = torch.empty(count, dtype=reference.dtype, device=reference.device)
        position = 0
        while position < count:
            stop = count
            if self.er is not None:
                stop = min(stop, position + self.er.steps_until_ascent())
            done = self._run(inputs, labels, predictions, losses, position, stop)
            if self.er is not None:
                # The inputs stay unchanged during this call: a chunk whose ascent
                # follows at once need not be copied into the buffer.
                due = done - position == self.er.steps_until_ascent()
                if self.er.record(
                    inputs[position:done], steps=done - position, copy=not due
                ):
                    self.er.ascend_on_buffer(runs_as_chain=self.er_runs_as_chain)
            self.num_steps += done - position
            position = done
        return predictions, losses

    def _parameters(self) -> tuple[list[torch.Tensor], ...]:
        """Weights, biases, LayerNorm scales and shifts (empty without LayerNorm)."""
        # Fetched on every call: a reset method may have replaced a tensor.
        weights = [layer.weight.data for layer in self.layers]
        biases = [layer.bias.data for layer in self.layers]
        scales = [norm.weight.data for norm in self.norms]
        shifts = [norm.bias.data for norm in self.norms]
        for tensor in (*weights, *biases, *scales, *shifts):
            if not tensor.is_contiguous():
                raise ValueError("the fast path needs contiguous parameters")
        return weights, biases, scales, shifts

    def _anchors(self) -> tuple[list[torch.Tensor], list[torch.Tensor], float] | None:
        """L2 Init's stored initial weights and biases per layer, and its coefficient
        (``None`` without L2 Init)."""
        if self.l2init is None:
            return None
        initial = {
            id(p): p0 for p, p0 in zip(self.l2init.params, self.l2init.initial,
                                       strict=True)
        }  # fmt: skip
        return (
            [initial[id(layer.weight)] for layer in self.layers],
            [initial[id(layer.bias)] for layer in self.layers],
            self.l2init.coefficient,
        )

    def _run(self, inputs, labels, predictions, losses, start: int, stop: int) -> int:
        weights, biases, scales, shifts = self._parameters()
        eps = self.norms[0].eps if self.norms else 0.0
        anchors = self._anchors()
        # NaP's targets, read at each call (a resumed run's loaded initial norms).
        targets = (
            None
            if self.nap is None
            else _projection_targets(self.nap, self.layers, self.norms)
        )
        if self.kernel is None:
            return train_chunk_torch(
                weights, biases, inputs, labels, predictions, losses, start, stop,
                self.lr, self.weight_decay, self.cbp, self.loss,
                norms=(scales, shifts, eps) if scales else None, anchors=anchors,
                projection=targets, crelu=self.crelu,
            )  # fmt: skip
        return self._run_native(weights, biases, inputs, labels, predictions, losses,
                                start, stop, scales, shifts, eps, anchors,
                                targets)  # fmt: skip

    def _run_native(self, weights, biases, inputs, labels, predictions, losses,
                    start, stop, scales, shifts, eps, anchors,
                    targets) -> int:  # fmt: skip
        n = len(weights)
        widths = (ctypes.c_int64 * (n + 1))(
            weights[0].shape[1], *(w.shape[0] for w in weights)
        )
        cbp = self.cbp
        if cbp is not None:
            hidden = n - 1
            ages = _pointer_array(cbp.ages)
            utils = _pointer_array(cbp.utilities)
            means = _pointer_array(cbp.mean_activations)
            accumulated = (ctypes.c_double * hidden)(*cbp.accumulated)
            settings = (accumulated, cbp.decay_rate, cbp.maturity_threshold,
                        cbp.replacement_rate, int(cbp.utility != "contribution"))  # fmt: skip
        else:
            ages = utils = means = None
            settings = (None, 0.0, 0, 0.0, 0)
        function = self.kernel[str(weights[0].dtype).removeprefix("torch.")]
        done = function(
            n, widths,
            _pointer_array(weights), _pointer_array(biases),
            inputs.data_ptr(), labels.data_ptr(), predictions.data_ptr(),
            losses.data_ptr(), stop, start, self.lr, self.weight_decay,
            ages, utils, means, *settings, int(self.loss == "mse"),
            *(_pointer_array(t) if scales else None for t in (scales, shifts)), eps,
            *((_pointer_array(anchors[0]), _pointer_array(anchors[1]), anchors[2])
              if anchors else (None, None, 0.0)),
            *((ctypes.c_double * len(t))(*t) if targets else None
              for t in (targets or ((), ()))),
            int(self.crelu),
        )  # fmt: skip
        if cbp is not None:
            cbp.accumulated = list(settings[0])
            cbp.replace_due_units()
        return done

    # -- resume ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The step count (weights live in the model, method state in the method)."""
        return {"num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_steps = int(state["num_steps"])
