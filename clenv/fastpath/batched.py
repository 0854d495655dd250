"""``BatchedMLPTrainer``: N independent batch-1 SGD runs of one MLP, in lockstep.

Several seeds of one configuration (same architecture, lr and method options, each
seed its own weights, input/label stream and CBP random generator) train together:
every step is one batched op per layer across seeds (``torch.baddbmm`` on stacked
``(N, out, in)`` weights), never a Python loop over seeds (on a CPU the default is the
native kernel per seed instead: see below). Seed ``i`` gets exactly the
run :class:`clenv.fastpath.FastMLPTrainer` (and the autograd loop it reproduces) gives
for that seed alone, up to float rounding (``tests/test_fastpath_batched.py`` checks
weights, predictions, losses and method state at float64 for bp, l2, er/l2er, cbp and
cbp+l2, against separate runs and against chunked/unchunked and static-program runs).

**Where the state lives.** The trainer stacks the seeds' parameters and points each
seed model's parameters at its slice (``param.data = stack[i]``: the same Parameter
objects, so optimizers and methods built on the model stay valid), and does the same
for the CBP component's ages, utilities and mean activations. So each seed's ``model``
and ``method`` are ordinary single-seed objects, always current between calls:
metrics, ``method.on_task_switch``, ``model.load_state_dict`` (in-place copies) and the
ER/CBP components' own ``state_dict`` work on them unchanged. ``model.state_dict()``
returns clones (a state-dict hook on every Linear), so a checkpoint holds that seed's
tensors only, exactly what a single run writes (``torch.save`` of a view would store
the whole stack). A tensor replaced wholesale between calls (``param.data = ...``) is
copied into the stack at the next call. :meth:`release` gives every model its own
tensors back.

**How an agent drives it** (``agents/supervised_l2er.py --num-seeds N``, one run
directory per seed). Per seed ``i``, build exactly what the single-seed agent builds
(its seeding block, model, optimizer, ``make_method(..., seed=seed_i)``, env reset with
``seed_i``, ``run_i = clenv.run.start(...)``); then::

    trainer = BatchedMLPTrainer(models, args.learning_rate, methods)
    seed_trainers = [trainer.seed(i) for i in range(N)]
    checkpointed_i = dict(model=models[i], optimizer=optimizers[i], method=methods[i],
                          envs=envs[i], stateful={"trainer": seed_trainers[i]})
    restored_i = run_i.restore(**checkpointed_i)   # after building the trainer: loads
                                                   # in place into the shared tensors
    while not finished:
        # per seed, as now: x_i (K, 784) from env i, the env action from
        # models[i](x_i).argmax(1) under no_grad, labels_i from env i's step
        predictions, losses = trainer.train(torch.stack(xs), torch.stack(labels))
        # per seed, with predictions[i], losses[i] (K each): the divergence guard on
        # models[i], stats and logs, task_end/task_start (metrics on models[i],
        # methods[i].on_task_switch, head zeroing in place), run_i.save(**checkpointed_i)

All seeds must take the same number of examples per call (lockstep: one chunk K for
all, equal task lengths) and resume from checkpoints of the same step (``train``
refuses otherwise). Seed i's run directory then holds what a separate run writes:
``models[i].state_dict()`` are copies, ``seed_trainers[i].state_dict()`` is
``FastMLPTrainer``'s ``{"num_steps": ...}``, the methods are the seed's own objects.
To drop a seed (e.g. it diverged), call :meth:`release` and build a new trainer on the
remaining seeds' models and methods (their state lives there). Whatever draws from
torch's global generator per seed (the ``reset``/``head_reset`` methods'
``reset_parameters``, any sampling in metrics) must see that seed's own global state,
as in its own process: keep one ``torch.get_rng_state()`` per seed and run that seed's
per-seed code under ``torch.random.fork_rng()`` with it set (and saved back after).

The chunk K may differ from call to call, and a seed's run is the same whatever the
chunking (tested).

**Segments and the schedule.** A call runs its K steps as segments that end exactly
where the single-seed path stops: after every U-th step (ER ascent) and after a step
that makes a CBP replacement due in any seed. Between segments the ER ascent runs
batched (all seeds share U, hence the same ascent steps) and the seeds with a due
replacement let their own CBP component replace units (same choice, same draws as
alone). The ascent is one batched forward of the seeds' (N, U, in) buffers and the
gradient as each seed's component computes it: with ``gradient="closed_form"`` (the
component's default where it has that option) the closed-form effective-rank gradient
and a manual backward through the ReLU chain (``effective_rank_gradient`` and
``ascend_relu_chain`` of :mod:`clenv.methods.effective_rank`, batched over seeds),
otherwise autograd through ``torch.linalg.svdvals``. When CBP replacements are due is known in advance: the accumulator adds
``rate * #(age > maturity)`` per step, and ages only grow between replacements, so
the trainer computes it on the host from the ages (one device read per segment).

**On a CPU** the default step backend is ``"native"``: each seed's chunk goes through
the C++ batch-1 kernel of :class:`~clenv.fastpath.FastMLPTrainer` (one call per seed
and chunk, on the same shared tensors), because on a CPU core that kernel (sparse first
layer, deferred updates) is several times faster than batched torch ops; the batched
steps (``backend="batched"``) are for CUDA and for testing the CUDA path's math.

**Static programs and CUDA graphs** (``graphs``). With graphs on, a segment of L steps
runs as replays of fixed-length programs of 2^j steps (L's binary digits, the longest
``max_graph_steps``), each reading its own static input/label buffers and writing
static prediction/loss buffers. On CUDA each program is a captured
``torch.cuda.CUDAGraph`` (forward, loss, backward, updates with L2, CBP statistics of
2^j batch-1 steps); on CPU the same programs run eagerly (``graphs="on"``) so that
the buffer handling and segmenting are tested where there is no GPU. The ER ascent and
CBP replacements run eagerly between replays. A program is captured at its first use;
the stacked tensors never move (replaced seed tensors are copied into them), so the
graphs stay valid for the trainer's life; the warm-up steps before a capture are undone
(the state is saved and restored). Untested on a GPU so far: ``python -m clenv.bench
gpu`` checks graphs against eager steps and batched against single-seed runs there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from clenv.fastpath.native import load_kernel
from clenv.fastpath.trainer import (
    SUPPORTED_COMPONENTS,
    FastMLPTrainer,
    _component_name,
    _components,
    _method_unsupported,
    mlp_linear_layers,
)
from clenv.losses import LOSSES
from clenv.metrics.rank import effective_rank_from_singular_values

# --reg components the lockstep trainer runs: the single-seed trainer's but L2 Init and
# NaP (the batched steps have no pull toward initial weights, no LayerNorm).
LOCKSTEP_COMPONENTS = SUPPORTED_COMPONENTS - {"l2init", "nap"}
GraphMode = Literal["auto", "on", "off"]
StepBackend = Literal["auto", "batched", "native"]


def _component(method: Any, name: str) -> Any:
    for component in _components(method):
        if _component_name(component) == name:
            return component
    return None


class SeedTrainer:
    """One seed of a :class:`BatchedMLPTrainer`, with the interface an agent keeps
    for a single :class:`~clenv.fastpath.FastMLPTrainer` (``state_dict``,
    ``load_state_dict``, ``num_steps``, ``backend``, ``cbp``, ``model``, ``method``)."""

    def __init__(self, batched: BatchedMLPTrainer, index: int):
        self.batched = batched
        self.index = index

    @property
    def model(self) -> nn.Module:
        return self.batched.models[self.index]

    @property
    def method(self) -> Any:
        return self.batched.methods[self.index]

    @property
    def cbp(self) -> Any:
        return self.batched.cbps[self.index]

    @property
    def backend(self) -> str:
        return self.batched.backend

    @property
    def num_steps(self) -> int:
        return self.batched.seed_num_steps[self.index]

    def state_dict(self) -> dict[str, Any]:
        """What ``FastMLPTrainer.state_dict`` holds for this seed."""
        return {"num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batched.seed_num_steps[self.index] = int(state["num_steps"])


class BatchedMLPTrainer:
    """Sequential batch-1 SGD (+ L2, ER, CBP) of N same-shaped MLPs, one per seed.

    Args:
        models: N Linear-ReLU-...-Linear MLPs of one architecture, dtype and device
            (each initialised as its seed's single run would be). Their parameters
            become views of the trainer's stacked tensors (see the module docstring).
        lr: SGD step size (no momentum), shared.
        methods: one :func:`clenv.methods.make_method` object per model, built on
            that model (``None`` entries or ``None``: backprop); same components and
            options in every seed (only the CBP generator's seed may differ).
        graphs: ``"auto"``: CUDA graphs on CUDA, eager steps elsewhere; ``"on"``:
            fixed-length static programs (CUDA graphs on CUDA, the same programs run
            eagerly on CPU); ``"off"``: eager steps.
        max_graph_steps: the longest program, in steps (a power of two).
        backend: ``"batched"``: the batched steps above (any device); ``"native"``
            (CPU): each seed's chunk through the C++ batch-1 kernel of
            :class:`~clenv.fastpath.FastMLPTrainer`, one call per seed and chunk, on
            the same shared tensors (on a CPU core the kernel, which skips the
            zero pixels and defers large updates, is several times faster than
            batched torch ops; see docs/results.md); ``"auto"``: native on CPU
            when the kernel builds for the dtype (and ``graphs`` is not ``"on"``),
            else batched.
        loss: ``"cross_entropy"`` or ``"mse"``, as :class:`FastMLPTrainer`'s.

    Example:
        >>> from clenv.models import PermutedMNISTMLP
        >>> models = [PermutedMNISTMLP(width=16) for _ in range(3)]
        >>> trainer = BatchedMLPTrainer(models, lr=0.01)
        >>> x, y = torch.rand(3, 8, 784), torch.randint(0, 10, (3, 8))
        >>> predictions, losses = trainer.train(x, y)
        >>> predictions.shape, losses.shape
        (torch.Size([3, 8]), torch.Size([3, 8]))
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        lr: float,
        methods: Sequence[Any] | None = None,
        graphs: GraphMode = "auto",
        max_graph_steps: int = 128,
        backend: StepBackend = "auto",
        loss: str = "cross_entropy",
    ):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not models:
            raise ValueError("models must hold at least one model (one per seed)")
        if graphs not in ("auto", "on", "off"):
            raise ValueError(f"graphs must be auto, on or off, got {graphs!r}")
        if backend not in ("auto", "batched", "native"):
            raise ValueError(
                f"backend must be auto, batched or native, got {backend!r}"
            )
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        if max_graph_steps < 1 or max_graph_steps & (max_graph_steps - 1):
            raise ValueError(
                f"max_graph_steps must be a power of two, got {max_graph_steps}"
            )
        methods = list(methods) if methods is not None else [None] * len(models)
        if len(methods) != len(models):
            raise ValueError(
                f"got {len(models)} models and {len(methods)} methods; pass one "
                "method per model (None for backprop)"
            )
        self.models = list(models)
        self.methods = methods
        self.num_seeds = len(models)
        self.lr = float(lr)
        self.loss = loss
        self.layers = [mlp_linear_layers(model) for model in self.models]
        reference = self.layers[0][0].weight
        self.device, self.dtype = reference.device, reference.dtype
        shapes = [[tuple(layer.weight.shape) for layer in ls] for ls in self.layers]
        for index, layers in enumerate(self.layers):
            if shapes[index] != shapes[0]:
                raise ValueError(
                    f"model {index} has layers {shapes[index]}, model 0 {shapes[0]}; "
                    "all seeds must share one architecture"
                )
            for layer in layers:
                for tensor in (layer.weight, layer.bias):
                    if tensor is None:
                        raise ValueError("the fast path needs Linear layers with bias")
                    if (tensor.device, tensor.dtype) != (self.device, self.dtype):
                        raise ValueError(
                            f"model {index} has a parameter on {tensor.device} "
                            f"{tensor.dtype}, model 0 on {self.device} {self.dtype}; "
                            "move every model to one device and dtype"
                        )
        for index, (model_layers, method) in enumerate(
            zip(self.layers, methods, strict=True)
        ):
            reason = _method_unsupported(method, model_layers)
            names = {_component_name(c) for c in _components(method)}
            if not reason and names - LOCKSTEP_COMPONENTS:
                reason = (
                    f"the lockstep trainer cannot run {sorted(names - LOCKSTEP_COMPONENTS)}"
                    f" (it runs {sorted(LOCKSTEP_COMPONENTS)}); train the seeds one by one"
                )
            if reason:
                raise ValueError(f"seed {index}: {reason}")
        self._read_method_options()
        self.graphs = (
            (self.device.type == "cuda") if graphs == "auto" else graphs == "on"
        )
        if self.graphs and self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"graphs='on' runs on CUDA or CPU, not {self.device}")
        self.max_graph_steps = int(max_graph_steps)
        kernel = load_kernel() if self.device.type == "cpu" else None
        native = kernel is not None and str(self.dtype).removeprefix("torch.") in kernel
        if backend == "native" and (not native or self.graphs):
            raise ValueError(
                "backend='native' needs float32/float64 CPU models, a C++ compiler "
                "(see clenv.fastpath.native) and graphs off; use backend='auto'"
            )
        if backend == "auto":
            backend = "native" if native and not self.graphs else "batched"
        self.backend = backend
        self.step_kind = (
            "native kernel per seed"
            if backend == "native"
            else "cuda graphs"
            if self.graphs and self.device.type == "cuda"
            else "static programs"
            if self.graphs
            else "batched torch"
        )
        # The stacked state; seeds' tensors become views of it.
        self.weights = [
            torch.stack([ls[k].weight.detach() for ls in self.layers])
            for k in range(len(shapes[0]))
        ]
        self.biases = [
            torch.stack([ls[k].bias.detach() for ls in self.layers])
            for k in range(len(shapes[0]))
        ]
        self._cbp_stats: dict[str, list[torch.Tensor]] = {}
        if self.cbps[0] is not None:
            for name in ("ages", "utilities", "mean_activations"):
                self._cbp_stats[name] = [
                    torch.stack([getattr(c, name)[k].detach() for c in self.cbps])
                    for k in range(len(shapes[0]) - 1)
                ]
        self._hooks = []
        for layers in self.layers:
            for layer in layers:
                self._hooks.append(layer.register_state_dict_post_hook(_clone_state))
        self._attach(copy_in=False)
        self._singles = []
        if self.backend == "native":  # on the models' (shared) tensors
            self._singles = [
                FastMLPTrainer(
                    model, self.lr, method=method, backend="native", loss=self.loss
                )
                for model, method in zip(self.models, self.methods, strict=True)
            ]
        # to be filled in runtime
        self.seed_num_steps = [0] * self.num_seeds
        self._programs: dict[int, _Program] = {}

    # -- setup -----------------------------------------------------------------------
    def _read_method_options(self) -> None:
        """Each seed's L2/ER/CBP components; the options every seed must share."""
        self.l2s = [_component(m, "l2") for m in self.methods]
        self.ers = [_component(m, "er") for m in self.methods]
        self.cbps = [_component(m, "cbp") for m in self.methods]

        def options(component: Any, keys: Sequence[str]) -> tuple | None:
            if component is None:
                return None
            return tuple(getattr(component, key, None) for key in keys)

        kinds = {
            "l2": (self.l2s, ("weight_decay",)),
            "er": (
                self.ers,
                ("ascent_lr", "interval", "layer_groups", "groups", "gradient"),
            ),
            "cbp": (
                self.cbps,
                ("replacement_rate", "maturity_threshold", "decay_rate", "utility"),
            ),  # fmt: skip
        }
        for name, (components, keys) in kinds.items():
            first = options(components[0], keys)
            for index, component in enumerate(components):
                if options(component, keys) != first:
                    raise ValueError(
                        f"seed {index}'s {name} options {options(component, keys)} "
                        f"differ from seed 0's {first}; a batched run trains seeds of "
                        "one configuration (run other settings separately)"
                    )
        self.weight_decay = float(self.l2s[0].weight_decay) if self.l2s[0] else 0.0
        er = self.ers[0]
        self.er_layers: list[int] = []
        if er is not None:
            for index, model in enumerate(self.models):
                relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
                ranked = [
                    next((k for k, r in enumerate(relus) if r is module), -1)
                    for module in self.ers[index].feature_modules
                ]
                if -1 in ranked:
                    raise ValueError(
                        "the batched ER ranks the MLP's ReLU outputs only; got layers "
                        f"{self.ers[index].layer_names}"
                    )
                if index == 0:
                    self.er_layers = ranked
                elif ranked != self.er_layers:
                    raise ValueError(f"seed {index} ranks other layers than seed 0")

    def _seed_tensors(
        self, index: int
    ) -> list[tuple[Callable, Callable, torch.Tensor]]:
        """(get, set, stacked slice) of every tensor seed ``index`` shares."""
        entries = []
        for k, layer in enumerate(self.layers[index]):
            for name, stack in (("weight", self.weights[k]), ("bias", self.biases[k])):
                parameter = getattr(layer, name)

                def get(parameter=parameter):
                    return parameter.data

                def put(value, parameter=parameter):
                    parameter.data = value

                entries.append((get, put, stack[index]))
        cbp = self.cbps[index]
        for name, stacks in self._cbp_stats.items():
            values = getattr(cbp, name)
            for k, stack in enumerate(stacks):

                def get(values=values, k=k):
                    return values[k]

                def put(value, values=values, k=k):
                    values[k] = value

                entries.append((get, put, stack[index]))
        return entries

    def _attach(self, copy_in: bool = True) -> bool:
        """Point every seed tensor at its stacked slice; a tensor replaced since
        (e.g. ``param.data = ...``) is copied into the stack first. Whether any was."""
        replaced = False
        for index in range(self.num_seeds):
            for get, put, view in self._seed_tensors(index):
                current = get()
                if (
                    current.data_ptr() == view.data_ptr()
                    and current.shape == view.shape
                ):
                    continue
                if copy_in:
                    if current.shape != view.shape:
                        raise ValueError(
                            f"seed {index}: a tensor of shape {tuple(current.shape)} "
                            f"replaced one of shape {tuple(view.shape)}; the batched "
                            "trainer keeps each seed's shapes"
                        )
                    view.copy_(current.detach())
                    replaced = True
                put(view)
        return replaced  # the stacks never move: captured graphs stay valid

    def release(self) -> None:
        """Give every model and CBP component its own tensors back (copies of the
        current values) and remove the state-dict hooks; the trainer is done."""
        self._attach()
        for index in range(self.num_seeds):
            for get, put, _ in self._seed_tensors(index):
                put(get().clone())
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._programs.clear()

    def seed(self, index: int) -> SeedTrainer:
        """Seed ``index``'s view: what an agent checkpoints as its ``trainer``."""
        if not 0 <= index < self.num_seeds:
            raise IndexError(
                f"seed index must be in [0, {self.num_seeds}), got {index}"
            )
        return SeedTrainer(self, index)

    @property
    def num_steps(self) -> int:
        return self.seed_num_steps[0]

    # -- the loop --------------------------------------------------------------------
    def train(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train seed i on ``inputs[i, k], labels[i, k]`` for k = 0..K-1, in lockstep.

        Args:
            inputs: (N, K, features) or (N, K, ...) inputs, flattened per example.
            labels: (N, K) integer class labels.

        Returns:
            ``(predictions, losses)``, each (N, K): the argmax prediction and loss
            (the trainer's ``loss``) of each example, computed before the update on
            it.
        """
        n = self.num_seeds
        if inputs.dim() < 2 or inputs.shape[0] != n:
            raise ValueError(
                f"inputs must be (num_seeds={n}, K, features), got {tuple(inputs.shape)}"
            )
        count = inputs.shape[1]
        inputs = inputs.reshape(n, count, -1)
        in_features = self.weights[0].shape[2]
        if inputs.shape[2] != in_features:
            raise ValueError(
                f"inputs have {inputs.shape[2]} features per example, the models take "
                f"{in_features}"
            )
        if labels.shape != (n, count):
            raise ValueError(
                f"labels must have shape ({n}, {count}), got {tuple(labels.shape)}"
            )
        num_classes = self.weights[-1].shape[1]
        if labels.numel() and (
            int(labels.min()) < 0 or int(labels.max()) >= num_classes
        ):
            raise ValueError(f"labels must be in [0, {num_classes}), got {labels}")
        if len(set(self.seed_num_steps)) > 1:
            raise ValueError(
                f"the seeds are at different steps {self.seed_num_steps}; a batched "
                "run resumes every seed from checkpoints of the same step"
            )
        if self.ers[0] is not None and len({e.num_steps for e in self.ers}) > 1:
            raise ValueError(
                "the seeds' ER components are at different steps "
                f"{[e.num_steps for e in self.ers]}; resume them from one step"
            )
        self._attach()
        if self._singles:
            outputs = [
                single.train(inputs[index], labels[index])
                for index, single in enumerate(self._singles)
            ]
            for index in range(n):
                self.seed_num_steps[index] += count
            return (torch.stack([p for p, _ in outputs]),
                    torch.stack([loss for _, loss in outputs]))  # fmt: skip
        inputs = inputs.to(self.device, self.dtype).contiguous()
        # Step-major copies: step k of every seed is one contiguous (N, features) row.
        step_inputs = inputs.transpose(0, 1).contiguous()
        step_labels = labels.to(self.device, torch.int64).transpose(0, 1).contiguous()
        predictions = torch.empty(count, n, dtype=torch.int64, device=self.device)
        losses = torch.empty(count, n, dtype=self.dtype, device=self.device)
        position = 0
        while position < count:
            stop = position + self._steps_until_event(count - position)
            self._run_segment(step_inputs, step_labels, predictions, losses,
                              position, stop)  # fmt: skip
            self._after_segment(inputs, position, stop)
            for index in range(n):
                self.seed_num_steps[index] += stop - position
            position = stop
        return predictions.t(), losses.t()

    def _steps_until_event(self, remaining: int) -> int:
        """Steps to run before the next ER ascent or CBP replacement (at most
        ``remaining``); sets the CBP accumulators' values after those steps."""
        steps = remaining
        if self.ers[0] is not None:
            steps = min(steps, self.ers[0].steps_until_ascent())
        if self.cbps[0] is None:
            return steps
        cbp = self.cbps[0]
        thresholds = cbp.maturity_threshold - np.arange(1, steps + 1)
        # eligible[t - 1, seed, layer]: units older than the maturity after t steps
        eligible = np.empty((steps, self.num_seeds, len(self.cbps[0].ages)), np.int64)
        for layer, ages in enumerate(self._cbp_stats["ages"]):  # (N, units)
            ages = np.sort(ages.cpu().numpy().astype(np.int64), axis=-1)
            for seed in range(self.num_seeds):
                younger = np.searchsorted(ages[seed], thresholds, side="right")
                eligible[:, seed, layer] = ages.shape[1] - younger
        due = cbp.replacement_rate * eligible.astype(np.float64)
        start = np.array([c.accumulated for c in self.cbps], dtype=np.float64)
        # Sequential float64 sums, as the kernel's and count_due's `acc += due`;
        # a layer with no eligible unit adds nothing (not even 0.0).
        added = np.where(eligible > 0, due, 0.0)
        trajectory = np.cumsum(np.concatenate([start[None], added]), axis=0)[1:]
        reached = ((trajectory >= 1.0) & (eligible > 0)).any(axis=(1, 2))
        if reached.any():
            steps = int(np.argmax(reached)) + 1
        self._cbp_accumulated_after = trajectory[steps - 1]
        return steps

    def _after_segment(self, inputs: torch.Tensor, start: int, stop: int) -> None:
        """ER bookkeeping and ascent, CBP accumulators and replacements, per seed."""
        if self.cbps[0] is not None:
            for index, cbp in enumerate(self.cbps):
                cbp.accumulated = [float(v) for v in self._cbp_accumulated_after[index]]
                cbp.replace_due_units()
        if self.ers[0] is not None:
            due = [
                er.record(inputs[index, start:stop], steps=stop - start)
                for index, er in enumerate(self.ers)
            ]
            if all(due):
                self._ascend()

    # -- the steps -------------------------------------------------------------------
    def _run_segment(self, inputs, labels, predictions, losses, start, stop) -> None:
        if not self.graphs:
            self._steps(inputs, labels, predictions, losses, start, stop)
            return
        position = start
        while position < stop:
            length = min(
                self.max_graph_steps, 1 << ((stop - position).bit_length() - 1)
            )
            program = self._programs.get(length)
            if program is None:
                program = self._programs[length] = _Program(self, length)
            program.run(inputs, labels, predictions, losses, position)
            position += length

    @torch.no_grad()
    def _steps(self, inputs, labels, predictions, losses, start, stop) -> None:
        """Batch-1 SGD steps ``start..stop-1`` of every seed: one batched op per
        layer and step. Writes ``predictions[k]`` and ``losses[k]`` (N each)."""
        weights, biases = self.weights, self.biases
        num_layers = len(weights)
        decay = 1.0 - self.lr * self.weight_decay
        lr = self.lr
        cbp = self.cbps[0]
        minus_one = torch.full((self.num_seeds, 1), -1.0, dtype=self.dtype,
                               device=self.device)  # fmt: skip
        for k in range(start, stop):
            y = labels[k].unsqueeze(1)
            activations = [inputs[k]]
            for index in range(num_layers):
                z = torch.baddbmm(
                    biases[index].unsqueeze(2),
                    weights[index],
                    activations[-1].unsqueeze(2),
                ).squeeze(2)
                if index + 1 < num_layers:
                    z.clamp_(min=0)
                activations.append(z)
            logits = activations[-1]
            predictions[k] = logits.argmax(1)
            if self.loss == "mse":  # SC's bp_mse: mean over classes of (z - one_hot)^2
                grad = logits.scatter_add(1, y, minus_one)
                losses[k] = grad.square().mean(1)
                grad.mul_(2 / logits.shape[1])
            else:
                losses[k] = -torch.log_softmax(logits, 1).gather(1, y).squeeze(1)
                grad = torch.softmax(logits, 1).scatter_add_(1, y, minus_one)
            for index in range(num_layers - 1, -1, -1):
                weight, bias, h = weights[index], biases[index], activations[index]
                back = None
                if index > 0:
                    back = torch.bmm(weight.transpose(1, 2), grad.unsqueeze(2))
                # W <- (1 - lr lambda) W - lr g h^T: L2 fused into the outer-product
                # update (one pass over W; the same value as decay, then update).
                weight.baddbmm_(
                    grad.unsqueeze(2), h.unsqueeze(1), beta=decay, alpha=-lr
                )
                if self.weight_decay:
                    bias.mul_(decay)
                bias.add_(grad, alpha=-lr)
                if back is not None:
                    grad = back.squeeze(2).mul_(h > 0)
            if cbp is not None:
                self._cbp_statistics(activations[1:-1])

    def _cbp_statistics(self, features: list[torch.Tensor]) -> None:
        """CBP's per-step ages, mean activations and utilities (the kernel's and
        :meth:`ContinualBackprop.update`'s), for every seed and hidden layer."""
        cbp = self.cbps[0]
        decay = cbp.decay_rate
        stats = self._cbp_stats
        for index, h in enumerate(features):
            age = stats["ages"][index].add_(1)
            mean = stats["mean_activations"][index]
            mean.mul_(decay).add_(h, alpha=1 - decay)
            outgoing = self.weights[index + 1]
            magnitude = outgoing.abs().sum(dim=1).div_(outgoing.shape[1])
            if cbp.utility == "contribution":
                new = magnitude.mul_(h.abs())
            else:
                incoming = self.weights[index]
                centred = h - mean / (1 - torch.pow(decay, age))
                new = magnitude.mul_(centred.abs()).div_(
                    incoming.abs().sum(dim=2).div_(incoming.shape[2])
                )
            stats["utilities"][index].mul_(decay).add_(new, alpha=1 - decay)

    def _ascend(self) -> None:
        """One ER ascent step for every seed, on each seed's own buffer: a batched
        forward of the (N, U, in) buffers, then the gradient as each seed's
        component computes it (``gradient="closed_form"``: the closed-form
        effective-rank gradient and a manual backward through the ReLU chain;
        otherwise autograd through ``torch.linalg.svdvals``), one step for all."""
        ers = self.ers
        buffer = torch.stack([torch.cat(er.buffer) for er in ers])  # (N, U, in)
        buffer = buffer.to(self.device, self.dtype)
        er = ers[0]
        closed_form = _closed_form_functions() if _uses_closed_form(er) else None
        if closed_form is not None:
            self._ascend_closed_form(buffer, *closed_form)
        else:
            self._ascend_autograd(buffer)
        for er in ers:
            er.buffer.clear()
            er.num_ascents += 1

    def _layer_weights(self) -> list[float]:
        """d objective / d erank of each ranked layer (1 / layers in its group)."""
        er = self.ers[0]
        groups = er.groups
        if er.layer_groups == "all":
            return [1.0 / len(groups)] * len(groups)
        return [1.0 / groups.count(group) for group in groups]

    @torch.no_grad()
    def _ascend_closed_form(self, buffer, effective_rank_gradient, ascend_chain):
        last = max(self.er_layers)
        layer_inputs, features = [], []
        h = buffer
        for index in range(last + 1):
            layer_inputs.append(h)
            h = torch.baddbmm(
                self.biases[index].unsqueeze(1), h, self.weights[index].transpose(1, 2)
            ).clamp_(min=0)
            features.append(h)
        gradients: list[torch.Tensor | None] = [None] * (last + 1)
        ranked = [features[index] for index in self.er_layers]
        if len({f.shape for f in ranked}) == 1:  # one batched eigh for all layers
            _, stacked = effective_rank_gradient(
                torch.stack(ranked), relu_features=True
            )
            ranked_gradients = list(stacked)
        else:
            ranked_gradients = [
                effective_rank_gradient(f, relu_features=True)[1] for f in ranked
            ]
        for index, weight, gradient in zip(
            self.er_layers, self._layer_weights(), ranked_gradients, strict=True
        ):
            gradients[index] = gradient.mul_(weight)
        ascend_chain(self.weights[: last + 1], self.biases[: last + 1], layer_inputs,
                     features, gradients, self.ers[0].ascent_lr)  # fmt: skip

    def _ascend_autograd(self, buffer: torch.Tensor) -> None:
        er = self.ers[0]
        last = max(self.er_layers)
        params = [w.detach().requires_grad_() for w in self.weights[: last + 1]]
        params += [b.detach().requires_grad_() for b in self.biases[: last + 1]]
        weights, biases = params[: last + 1], params[last + 1 :]
        with torch.enable_grad():
            h = buffer
            features = []
            for index in range(last + 1):
                h = torch.baddbmm(
                    biases[index].unsqueeze(1), h, weights[index].transpose(1, 2)
                ).clamp(min=0)
                features.append(h)
            objective = 0
            for index, weight in zip(self.er_layers, self._layer_weights(),
                                     strict=True):  # fmt: skip
                matrix = features[index]
                # H and H^T have the same singular values (the component's choice)
                tall = matrix if matrix.shape[1] >= matrix.shape[2] else matrix.mT
                rank = effective_rank_from_singular_values(torch.linalg.svdvals(tall))
                objective = objective + weight * rank  # (N,)
            grads = torch.autograd.grad(objective.sum(), params, allow_unused=True)
        with torch.no_grad():
            if er.ascent_lr > 0:
                stacked = self.weights[: last + 1] + self.biases[: last + 1]
                for tensor, grad in zip(stacked, grads, strict=True):
                    if grad is not None:
                        tensor.add_(grad, alpha=er.ascent_lr)


def _uses_closed_form(er: Any) -> bool:
    """Whether the ER component steps by the closed-form gradient (its option
    ``gradient``; components without it use autograd)."""
    return getattr(er, "gradient", "autograd") == "closed_form"


def _closed_form_functions() -> tuple[Callable, Callable] | None:
    """clenv.methods.effective_rank's ``effective_rank_gradient`` and
    ``ascend_relu_chain`` (None where that module has none)."""
    from clenv.methods import effective_rank

    functions = (
        getattr(effective_rank, "effective_rank_gradient", None),
        getattr(effective_rank, "ascend_relu_chain", None),
    )
    return None if None in functions else functions


def _clone_state(module: nn.Module, state: dict, prefix: str, metadata: Any) -> None:
    """State-dict post-hook: a seed's tensors as copies, not views of the stack."""
    for name in ("weight", "bias"):
        key = prefix + name
        if key in state:
            state[key] = state[key].clone()


class _Program:
    """``length`` batch-1 steps of every seed on static buffers: a CUDA graph on
    CUDA, the same steps run eagerly elsewhere."""

    def __init__(self, trainer: BatchedMLPTrainer, length: int):
        self.trainer = trainer
        self.length = length
        n, device, dtype = trainer.num_seeds, trainer.device, trainer.dtype
        features = trainer.weights[0].shape[2]
        self.inputs = torch.zeros(length, n, features, dtype=dtype, device=device)
        self.labels = torch.zeros(length, n, dtype=torch.int64, device=device)
        self.predictions = torch.zeros(length, n, dtype=torch.int64, device=device)
        self.losses = torch.zeros(length, n, dtype=dtype, device=device)
        self.graph = None
        if device.type == "cuda":
            self.graph = self._capture()

    def _body(self) -> None:
        self.trainer._steps(self.inputs, self.labels, self.predictions, self.losses,
                            0, self.length)  # fmt: skip

    def _capture(self) -> Any:
        trainer = self.trainer
        state = [*trainer.weights, *trainer.biases,
                 *(t for ts in trainer._cbp_stats.values() for t in ts)]  # fmt: skip
        saved = [t.clone() for t in state]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (cuBLAS handles, allocator)
            for _ in range(2):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        for tensor, value in zip(state, saved, strict=True):
            tensor.copy_(value)  # undo the warm-up steps
        return graph

    def run(self, inputs, labels, predictions, losses, start: int) -> None:
        stop = start + self.length
        self.inputs.copy_(inputs[start:stop])
        self.labels.copy_(labels[start:stop])
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        predictions[start:stop] = self.predictions
        losses[start:stop] = self.losses
