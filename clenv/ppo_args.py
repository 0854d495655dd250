"""The arguments of ``agents/ppo_l2er.py`` apart from PPO's own, and their resolution.

:class:`RunOptions` holds the flags every PPO run has besides the algorithm's
hyperparameters (seeding, run directory and resume, logging intervals, checkpoints,
divergence); the agent's ``Args`` adds PPO's. :func:`resolve_args` fills every
option left at None from ``--protocol`` (the rows of
:mod:`clenv.settings.slippery_ant`, docs/protocols.md), checks every value before
anything is built, with an error naming the flag, and computes the values of run
time (batch and minibatch sizes, iterations); :func:`env_kwargs_for` gives
``gym.make``'s arguments:

    args = resolve_args(tyro.cli(Args))  # Args(LearnerOptions, RunOptions)
    env_kwargs, continual = env_kwargs_for(args)
    optimizer = make_agent_optimizer(args, agent)

:class:`LearnerOptions` holds the flags of the networks and the optimizer (widths,
init, ``--norm``, ``--activation``, ``--optimizer``); :func:`make_agent_optimizer`
builds the optimizer with the protocol's optimizer rows (SC's ``bp_muon``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym

import clenv
import clenv.run
from clenv.cli_kwargs import parse_kwargs
from clenv.envs.slippery_ant import SlipperyAntEnv
from clenv.methods import split_name
from clenv.models.layers import norm_components
from clenv.optim import MuonWithAdam, make_optimizer
from clenv.settings import protocol_defaults

__all__ = ["BENCHMARK", "EnvOptions", "MAX_BATCH_SIZE", "METHOD_PRESETS", "VALUE_RANGES",
           "LearnerOptions", "RunOptions", "env_kwargs_for", "make_agent_optimizer",
           "resolve_args"]  # fmt: skip

# The clenv.settings module whose rows fill every option left at None.
BENCHMARK = "slippery_ant"
# The clenv.methods preset of each protocol.
METHOD_PRESETS = {"lop": "ant_lop", "sc": "ant"}
# The largest rollout the buffers and numpy's index arrays take (int32 indices).
MAX_BATCH_SIZE = 2**31 - 1
# The range of each value (clenv.run.check_ranges), checked before anything is built.
VALUE_RANGES = {
    "learning_rate": "> 0", "adam_eps": ">= 0", "weight_decay": ">= 0",
    "gamma": "[0, 1]", "gae_lambda": "[0, 1]", "clip_coef": "> 0",
    "ent_coef": "finite", "vf_coef": ">= 0", "log_std_init": "finite",
    "max_grad_norm": "> 0 (or unset: no clipping)",
    "target_kl": "> 0 (or unset: no early stop)",
    "curvature_epsilons": "> 0 (thresholds on |eigenvalue|)",
}  # fmt: skip
# What a --reg component needs of the network or optimizer flags: (flag, value).
METHOD_NEEDS = {"nap": ("norm", "layer"), "upgd": ("optimizer", "sgd")}


@dataclass
class EnvOptions:
    """The flags of the environment and the protocol (each docstring is its
    ``--help``)."""

    env_id: str = "clenv/SlipperyAnt-v0"
    """the id of the environment: any continuous-action Gymnasium env"""
    env_kwargs: list[str] = field(default_factory=list)
    """gym.make keyword arguments as key=value (Python literals), e.g. `switch_every=50000`"""
    protocol: Literal["lop", "sc"] = "lop"
    """paper whose settings fill every unset option (docs/protocols.md): lop (Dohare et al. 2024) or sc (Prakash et al. 2026)"""
    num_envs: int | None = None
    """the number of parallel environments (default: from --protocol; docs/protocols.md: lop 1, sc 1)"""
    async_envs: bool = False
    """step the envs in subprocesses (gym.vector.AsyncVectorEnv)"""
    clip_actions: bool | None = None
    """clip the actions the env receives, not the stored ones (default: from --protocol; docs/protocols.md: lop False, sc False)"""


@dataclass
class LearnerOptions:
    """The flags of the actor and critic networks, their optimizer and the
    plasticity method (each docstring is its ``--help``; docs/methods.md describes
    every choice)."""

    hidden_sizes: tuple[int, ...] | None = None
    """hidden widths of the separate actor and critic MLPs (default: from --protocol; docs/protocols.md: lop 256 256, sc 256)"""
    init: Literal["lecun_uniform", "orthogonal"] | None = None
    """weight init, biases 0: lecun_uniform or CleanRL's orthogonal (default: from --protocol; docs/protocols.md: lop lecun_uniform, sc lecun_uniform)"""
    log_std_init: float | None = None
    """initial state-independent log-std of the policy (default: from --protocol; docs/protocols.md: lop 0, sc 0)"""
    norm: Literal["none", "layer"] = "none"
    """none, or layer: a LayerNorm (eps 1e-6) before each hidden activation of actor and critic, as SC's layernorm runs; selects the protocol's values tuned with it (docs/methods.md)"""
    activation: Literal["relu", "crelu", "fourier"] = "relu"
    """hidden activation: relu, crelu (concatenated ReLU, Abbas et al. 2023) or fourier (sin/cos deep Fourier features, Lewandowski et al. 2025); the last two give two features per unit, so the next layer reads twice the width (halve --hidden-sizes for ReLU's feature count, as Chung et al.'s CReLU baseline does; docs/methods.md)"""

    # Optimizer
    learning_rate: float | None = None
    """the learning rate of the optimizer (default: from --protocol; docs/protocols.md: lop 1e-4, sc 1e-4)"""
    adam_betas: tuple[float, float] | None = None
    """Adam's betas (default: from --protocol; docs/protocols.md: lop 0.99 0.99, sc 0.99 0.99)"""
    adam_eps: float | None = None
    """Adam's epsilon (default: from --protocol; docs/protocols.md: lop 1e-8, sc 1e-8)"""
    weight_decay: float | None = None
    """Adam's coupled weight decay, apart from --reg l2 (default: from --protocol; docs/protocols.md: lop 0 and 1e-4 with cbp or redo, sc 0)"""
    anneal_lr: bool | None = None
    """anneal the learning rate (default: from --protocol; docs/protocols.md: lop False, sc False)"""
    optimizer: Literal["adam", "sgd", "muon", "trac"] = "adam"
    """adam (both papers), sgd, muon (torch's Muon on the 2-D weights, Adam on the rest, as SC's bp_muon, with the protocol's Muon rows) or trac (TRAC around Adam; pip install clenv[trac]); docs/methods.md"""

    # Plasticity method
    reg: str = "l2er"
    """plasticity method (docs/methods.md): bp, l2, er, l2er, cbp, snp, redo, l2init, spectral, parseval, upgd (needs --optimizer sgd), nap (needs --norm layer), cchain, layer_reset, inject (both at each task switch), head_reset, reset, or a combination such as cbp+l2"""
    method_preset: str | None = None
    """hyperparameter preset of the method (default: from --protocol: lop ant_lop, sc ant)"""
    method_kwargs: list[str] = field(default_factory=list)
    """method arguments as key=value over the preset, e.g. `er__ascent_lr=1e-6`"""

    @property
    def norm_or_none(self) -> str | None:
        """``--norm`` as :func:`clenv.models.layers.make_mlp` takes it."""
        return None if self.norm == "none" else self.norm


@dataclass
class RunOptions(clenv.run.RunFlags):  # + torch_deterministic, cuda, runs_dir, ...
    """The flags of a PPO run apart from the algorithm's: seeding and devices, the
    run directory and resume, display, what is logged, checkpoints and divergence
    handling (the base of the agent's ``Args``; each docstring is its ``--help``)."""

    seed: int = 1
    """seed of the experiment (also the env's task_seed unless --env-kwargs sets one)"""
    num_threads: int = 1
    """torch CPU threads: 1 is the fastest per CPU second and the same numbers on any machine; more can shorten the update's wall time but change the last bits of the SVD-based steps (--reg l2er's ascent, rank diagnostics) and need OMP_WAIT_POLICY=PASSIVE on a shared machine (docs/agents/ppo.md#speed)"""
    resume: str | None = None
    """continue runs/<run> from its latest checkpoint with its saved arguments (an explicit --total-timesteps extends it; --[no-]progress, --[no-]plot apply)"""
    progress: bool = True
    """show a progress bar (step, task, SPS, recent return)"""
    plot: bool = True
    """draw plots.png in the run directory at the end (clenv.plotting)"""
    check_args: bool = False
    """check the arguments and the env's, print them resolved and exit (clenv sweep runs it for every trial)"""

    # Logging
    plasticity_every: int = 10
    """log plasticity/* every this many updates, on the rollout's observations (policy_churn: the latest update's); 0: never"""
    churn_probe_size: int = 256
    """observations of the first rollout (evenly spaced) on which plasticity/policy_churn, the mean KL between consecutive policies, is measured"""
    curvature_every_tasks: int = 1
    """log curvature/* at the start and end of every k-th task (SC: 1); 0: never"""
    curvature_order: int = 100
    """Lanczos iterations of the spectral density (SC: 100)"""
    curvature_trace_matvecs: int = 30
    """Hutch++ Hessian-vector products of the trace estimate (0: no trace)"""
    curvature_samples: int = 2048
    """rollout samples the Hessian is taken over (SC: 2000)"""
    curvature_epsilons: tuple[float, ...] = (0.01, 0.03, 0.1)
    """thresholds of the epsilon-rank (share of spectral mass with |lambda| > eps)"""
    partial_spectra: bool = False
    """also log each layer's own Hessian spectrum (SC's partial_hessian) at task boundaries: curvature/<when>/partial/<layer>/* (costs --curvature-order products per layer)"""

    # Checkpoints
    checkpoint_every: int = 100_000
    """checkpoint after the update crossing each multiple of this many steps, and at the end; 0: only at the end"""

    # Divergence (clenv.divergence)
    on_divergence: Literal["fail", "stop"] = "fail"
    """a non-finite loss, gradient or parameter: fail (exit 1 naming the step, task and tensor) or stop (end the run cleanly, exit 0); either way charts/diverged and args.json record it and no checkpoint is written after it"""
    divergence_check_every: int = 100
    """check the gradients and parameters for nan/inf every this many optimizer steps (the loss: every step; parameters also before each checkpoint); 0: only before checkpoints"""


def resolve_args(args: Any) -> Any:
    """Fill every unset option from the protocol, check the arguments and compute
    ``batch_size``, ``minibatch_size`` and ``num_iterations``; returns ``args``.

    Raises:
        ValueError: The first value out of range, naming its flag.
    """
    components = [*split_name(args.reg), *norm_components(args.norm_or_none)]
    defaults = protocol_defaults(BENCHMARK, args.protocol, components=components)
    clenv.run.fill_unset(args, defaults)
    for component in components:
        flag, value = METHOD_NEEDS.get(component, (None, None))
        if flag is not None and getattr(args, flag) != value:
            raise ValueError(
                f"--reg {args.reg}: {component} needs --{flag} {value}, got "
                f"--{flag} {getattr(args, flag)} (docs/methods.md)"
            )
    if args.method_preset is None:
        args.method_preset = METHOD_PRESETS[args.protocol]
    clenv.run.check_counts(
        args,
        positive=("total_timesteps", "num_envs", "num_steps", "num_minibatches",
                  "update_epochs", "num_threads", "keep_checkpoints",
                  "churn_probe_size"),
        non_negative=("plasticity_every", "curvature_every_tasks", "checkpoint_every",
                      "divergence_check_every"),
    )  # fmt: skip
    clenv.run.check_ranges(args, VALUE_RANGES)
    if len(args.adam_betas) != 2 or not all(0 <= b < 1 for b in args.adam_betas):
        raise ValueError(
            f"--adam-betas takes two numbers in [0, 1), got {args.adam_betas}"
        )
    if not args.hidden_sizes or min(args.hidden_sizes) < 1:
        raise ValueError(
            f"--hidden-sizes needs positive widths, got {args.hidden_sizes}"
        )
    if args.curvature_every_tasks:
        if args.curvature_order < 2 or args.curvature_samples < 2:
            raise ValueError("--curvature-order and --curvature-samples must be >= 2")
        if 0 < args.curvature_trace_matvecs < 3:
            raise ValueError(
                "--curvature-trace-matvecs must be 0 (no trace) or >= 3 (Hutch++ "
                f"splits it in three), got {args.curvature_trace_matvecs}"
            )
    args.batch_size = int(args.num_envs * args.num_steps)
    if args.batch_size > MAX_BATCH_SIZE:
        raise ValueError(
            f"--num-envs {args.num_envs} x --num-steps {args.num_steps} = "
            f"{args.batch_size:,} samples per rollout; at most {MAX_BATCH_SIZE:,} fit "
            "the rollout buffers"
        )
    if args.batch_size % args.num_minibatches:
        raise ValueError(
            f"num_envs * num_steps = {args.batch_size} is not divisible by "
            f"--num-minibatches {args.num_minibatches}"
        )
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = max(1, math.ceil(args.total_timesteps / args.batch_size))
    return args


def env_kwargs_for(args: Any) -> tuple[dict[str, Any], bool]:
    """gym.make keyword arguments, and whether the env follows clenv's task protocol.

    A clenv env gets ``task_seed=seed`` and the protocol's ``switch_at`` unless they
    are given; Slippery Ant gets every env row of the protocol (docs/protocols.md).

    Raises:
        ValueError: The env is unknown, rejects the arguments, or has no continuous
            (Box) action space.
    """
    kwargs = parse_kwargs(args.env_kwargs, "--env-kwargs")
    env = clenv.run.probe_env(args.env_id, kwargs)
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(
            f"{args.env_id} has action space {env.action_space}; this PPO needs a "
            "continuous (Box) action space"
        )
    continual = isinstance(env.unwrapped, clenv.ContinualEnv)
    if continual:
        names = None if isinstance(env.unwrapped, SlipperyAntEnv) else ["switch_at"]
        kwargs = clenv.run.protocol_env_kwargs(
            BENCHMARK, args.protocol, kwargs, seed=args.seed, names=names
        )
    return kwargs, continual


def make_agent_optimizer(args: Any, model: Any, vectors: Sequence[Any] = ()) -> Any:
    """``--optimizer`` over ``model`` (:func:`clenv.optim.make_optimizer`): Adam's
    ``--adam-betas``, ``--adam-eps`` and ``--weight-decay``, overridden by the
    protocol's optimizer rows for it (SC's ``bp_muon``: Muon's settings, Adam betas
    0.9, 0.999; docs/protocols.md). ``adam`` is the optimizer both papers use.

    ``vectors``: parameters that are vectors kept 2-D for broadcasting (the policy's
    ``(1, act_dim)`` log-std); Muon leaves them to its Adam part, as optax's muon
    does SC's 1-D ``log_std`` (``rlopt/models.py:33``).

    Raises:
        ImportError: ``trac`` without the ``trac-optimizer`` package.
    """
    options = dict(betas=tuple(args.adam_betas), eps=args.adam_eps,
                   weight_decay=args.weight_decay)  # fmt: skip
    options |= protocol_defaults(
        BENCHMARK, args.protocol, kind="optimizer", components=[args.optimizer]
    )
    optimizer = make_optimizer(args.optimizer, model, args.learning_rate, **options)
    if isinstance(optimizer, MuonWithAdam) and vectors:
        for group in optimizer.muon.param_groups:
            group["params"] = [
                p for p in group["params"] if all(p is not v for v in vectors)
            ]
        optimizer.adam.param_groups[0]["params"].extend(vectors)
    return optimizer
