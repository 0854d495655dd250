"""PPO for continual RL with plasticity methods and plasticity/curvature logging.

CleanRL's ``ppo_continuous_action.py`` in structure (``Args``, ``make_env``, the
networks, the loss, then the loop), with the Slippery Ant settings of Dohare et al.,
*Loss of plasticity in deep continual learning* (Nature 2024, "LoP") by default and
those of Prakash et al., *Spectral Collapse Drives Loss of Plasticity in Deep
Continual Learning* (ICML 2026, "SC") behind ``--protocol sc`` (every value, with its
source in each paper's code: docs/protocols.md). A plasticity method from
:mod:`clenv.methods` (``--reg``: bp, l2, er, l2er, cbp, snp, redo, spectral,
cchain, inject, ..., or ``cbp+l2``), on networks and an optimizer chosen by
``--norm``, ``--activation`` and ``--optimizer`` (docs/methods.md), is
driven through its hooks; every series goes to TensorBoard and to ``metrics.h5``;
``--resume runs/<run>`` continues a killed run exactly (:mod:`clenv.run`).
docs/agents/ppo.md has the flags, the logged series and the paper commands.

    python agents/ppo_l2er.py --reg l2er
    python agents/ppo_l2er.py --reg bp --env-kwargs switch_every=50000 \\
        --total-timesteps 200000
    python agents/ppo_l2er.py --resume runs/clenv_SlipperyAnt-v0__ppo_l2er__1__1700000000
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions.normal import Normal
from tqdm import tqdm

import clenv
import clenv.run
from clenv.checkpoint import RestorableEnv
from clenv.cli_kwargs import parse_kwargs
from clenv.curvature_logging import log_curvature
from clenv.divergence import guard_run
from clenv.methods import make_method
from clenv.models.layers import make_mlp
from clenv.optim import set_learning_rate
from clenv.plasticity_logging import PlasticityTrackers
from clenv.ppo_args import (
    EnvOptions,
    LearnerOptions,
    RunOptions,
    env_kwargs_for,
    make_agent_optimizer,
    resolve_args,
)
from clenv.protocol import (
    TaskTracker,
    end_task,
    log_episodes,
    task_due,
    task_ids,
    task_params,
    task_switches,
)
from clenv.rollout import generalized_advantages, normalize_advantages, step_envs

gym.register_envs(clenv)


@dataclass
class Args(EnvOptions, LearnerOptions, RunOptions):  # the rest: clenv.ppo_args
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run directory's name)"""

    # Algorithm specific arguments (env, networks, optimizer, method: clenv.ppo_args)
    total_timesteps: int | None = None
    """total timesteps of the experiment (default: from --protocol; docs/protocols.md: lop 20M, sc 10M)"""
    num_steps: int | None = None
    """steps per environment per rollout (default: from --protocol; docs/protocols.md: lop 2048, sc 2048)"""
    gamma: float | None = None
    """the discount factor gamma (default: from --protocol; docs/protocols.md: lop 0.99, sc 0.99)"""
    gae_lambda: float | None = None
    """the lambda of GAE (default: from --protocol; docs/protocols.md: lop 0.95, sc 0.95)"""
    num_minibatches: int | None = None
    """the number of mini-batches (default: from --protocol; docs/protocols.md: lop 16, sc 128)"""
    update_epochs: int | None = None
    """the K epochs to update the policy (default: from --protocol; docs/protocols.md: lop 10, sc 10)"""
    norm_adv: Literal["batch", "minibatch", "none"] | None = None
    """advantage normalisation per rollout, per minibatch or none (default: from --protocol; docs/protocols.md: lop batch, sc minibatch)"""
    clip_coef: float | None = None
    """the surrogate clipping coefficient (default: from --protocol; docs/protocols.md: lop 0.2, sc 0.2)"""
    clip_vloss: bool | None = None
    """clip the value loss around the rollout's values (default: from --protocol; docs/protocols.md: lop False, sc True)"""
    ent_coef: float | None = None
    """coefficient of the entropy (default: from --protocol; docs/protocols.md: lop 0, sc 0.01)"""
    vf_coef: float | None = None
    """coefficient of the value loss, an MSE without 1/2 (CleanRL's: 0.5) (default: from --protocol; docs/protocols.md: lop 1, sc 1)"""
    max_grad_norm: float | None = None
    """the maximum norm for the gradient clipping (default: from --protocol; docs/protocols.md: lop None, sc None: no clipping)"""
    target_kl: float | None = None
    """the target KL divergence threshold"""
    bootstrap_truncated: bool | None = None
    """add gamma * V(final obs) to a truncation's reward instead of ending it (default: from --protocol; docs/protocols.md: lop False, sc False)"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line, or with ``--resume`` the run's saved arguments (an explicit
    ``--total-timesteps`` extends it; the display flags and ``--on-divergence``
    apply), resolved."""
    overrides = ("total_timesteps", "progress", "plot", "on_divergence")
    return resolve_args(clenv.run.parse_args(Args, overrides=overrides, argv=argv))


def check_args(argv: list[str] | None = None) -> Args:
    """The resolved arguments, checked without training: flags, values, the env's
    arguments (one ``gym.make``) and ``--method-kwargs``' syntax (``clenv sweep``
    calls it for every trial). Raises ValueError or FileNotFoundError naming the
    flag; a flag tyro does not know exits with its usage message."""
    args = parse_args(argv)
    env_kwargs_for(args)
    parse_kwargs(args.method_kwargs, "--method-kwargs")
    return args


def make_env(env_id, idx, env_kwargs, clip_actions):
    def thunk():
        env = gym.make(env_id, **env_kwargs)
        env = gym.wrappers.FlattenObservation(env)
        if clip_actions:
            env = gym.wrappers.ClipAction(env)
        # Outermost, so envs.call("get_env_state") reaches it (checkpoints, resume).
        env = RestorableEnv(env, index=idx)
        return env

    return thunk


def layer_init(layer, init="lecun_uniform", std=2**0.5, bias_const=0.0):
    """LeCun-uniform (both papers; every layer) or CleanRL's orthogonal with ``std``."""
    if init == "lecun_uniform":
        bound = math.sqrt(3 / layer.in_features)
        torch.nn.init.uniform_(layer.weight, -bound, bound)
    else:
        torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_features, hidden_sizes, out_features, init, out_std, **layers):
    """``Linear -> [LayerNorm] -> activation`` per hidden width, then the head
    (``layers``: ``norm``, ``activation``, :func:`clenv.models.layers.make_mlp`)."""
    return make_mlp((in_features, *hidden_sizes, out_features), **layers,
                    init=functools.partial(layer_init, init=init),
                    head_init=functools.partial(layer_init, init=init, std=out_std))  # fmt: skip


class Agent(nn.Module):
    def __init__(self, envs, hidden_sizes, init="lecun_uniform", log_std_init=0.0,
                 norm=None, activation="relu"):  # fmt: skip
        super().__init__()
        obs_dim = int(np.array(envs.single_observation_space.shape).prod())
        act_dim = int(np.prod(envs.single_action_space.shape))
        layers = dict(norm=norm, activation=activation)
        self.critic = mlp(obs_dim, hidden_sizes, 1, init, out_std=1.0, **layers)
        self.actor_mean = mlp(obs_dim, hidden_sizes, act_dim, init, 0.01, **layers)
        # State-independent log-std.
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), float(log_std_init)))

    def distribution(self, x):
        """The policy's mean and std on ``x`` (the churn's probe)."""
        return self.actor_mean(x), self.actor_logstd.exp()

    def get_value(self, x):
        return self.critic(x)

    def rollout_std(self, num_envs):
        """The policy's std for ``num_envs`` rows, ``2 std^2`` and ``log std``: what
        :meth:`act` needs besides the observation, computed once per rollout (the
        parameters change in the update only)."""
        action_std = torch.exp(self.actor_logstd.expand(num_envs, -1))
        return action_std, 2 * action_std**2, action_std.log()

    def act(self, x, action_std, two_variance, log_std):
        """``(action, log-probability)`` of a sampled action on ``x`` (the std terms:
        :meth:`rollout_std`): what :meth:`get_action_and_value` computes for the
        rollout, in the same float operations (so the same numbers), without a
        ``Normal`` object, the entropy or the critic (the rollout's values come
        after it, in one batch): the rollout calls it once per step."""
        action_mean = self.actor_mean(x)
        action = torch.normal(action_mean, action_std)  # Normal.sample's draw
        log_prob = (  # Normal.log_prob's arithmetic
            -((action - action_mean) ** 2) / two_variance
            - log_std
            - math.log(math.sqrt(2 * math.pi))
        )
        return action, log_prob.sum(1)

    def get_action_and_value(self, x, action=None):
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        action_std = torch.exp(action_logstd)
        # No argument validation: it costs time every step and cannot be traced by
        # torch.func (the Hessian-vector products of the curvature metrics).
        probs = Normal(action_mean, action_std, validate_args=False)
        if action is None:
            action = probs.sample()
        return (
            action,
            probs.log_prob(action).sum(1),
            probs.entropy().sum(1),
            self.critic(x),
        )


def actor_and_critic(agent: Agent, obs: torch.Tensor):
    """Runs every hidden layer (the forward_fn that methods and metrics need)."""
    return agent.actor_mean(obs), agent.critic(obs)


def ppo_loss(agent: Agent, batch: dict[str, torch.Tensor], args: Args):
    """CleanRL's PPO loss of a (mini)batch; returns (loss, statistics).

    The value loss is the mean squared error without CleanRL's 1/2 (both papers).
    """
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(
        batch["obs"], batch["actions"]
    )
    logratio = newlogprob - batch["logprobs"]
    ratio = logratio.exp()
    advantages = batch["advantages"]
    if args.norm_adv == "minibatch":  # "batch": normalised once per rollout
        advantages = normalize_advantages(advantages)

    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    # Value loss
    newvalue = newvalue.view(-1)
    if args.clip_vloss:
        v_loss_unclipped = (newvalue - batch["returns"]) ** 2
        v_clipped = batch["values"] + torch.clamp(
            newvalue - batch["values"], -args.clip_coef, args.clip_coef
        )
        v_loss_clipped = (v_clipped - batch["returns"]) ** 2
        v_loss = torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        v_loss = ((newvalue - batch["returns"]) ** 2).mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef
    return loss, (pg_loss, v_loss, entropy_loss, logratio, ratio)


def log_ppo_curvature(logger, agent, batch, args, when: str, task: int, step: int):
    """curvature/<when>/*: the curvature of the PPO loss (clipped surrogate + value +
    entropy terms) over the first ``--curvature-samples`` samples of a rollout wholly
    in the task (None: none), for every ``--curvature-every-tasks``-th task."""
    if batch is None or not task_due(task, args.curvature_every_tasks):
        return
    size = min(args.curvature_samples, batch["obs"].shape[0])
    data = [{key: value[:size] for key, value in batch.items()}]
    log_curvature(
        logger, agent, lambda model, minibatch: ppo_loss(model, minibatch, args)[0],
        data, when=when, task_id=task, step=step, epsilons=args.curvature_epsilons,
        order=args.curvature_order, trace_matvecs=args.curvature_trace_matvecs,
        seed=args.seed, dead_unit_inputs=data[0]["obs"], forward_fn=actor_and_critic,
        variance=True, partial_spectra=args.partial_spectra,
    )  # fmt: skip


if __name__ == "__main__":
    with clenv.run.exit_on_error(ValueError, FileNotFoundError):
        args = parse_args()
        env_kwargs, continual = env_kwargs_for(args)
        method_kwargs = parse_kwargs(args.method_kwargs, "--method-kwargs")
    if args.check_args:
        print(f"arguments ok: {args.env_id} {env_kwargs}, --reg {args.reg}")
        sys.exit(0)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.num_threads)
    if args.num_threads > 1 and "OMP_WAIT_POLICY" not in os.environ:
        print("note: with --num-threads > 1 on a machine shared with other jobs, set "
              "OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads stall each other "
              "(docs/agents/ppo.md#speed)")  # fmt: skip

    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup, in SAME_STEP autoreset mode (clenv.run.vector_env): every vector step
    # is an interaction, and final_obs is at hand for --bootstrap-truncated.
    envs = clenv.run.vector_env(
        [make_env(args.env_id, i, env_kwargs, args.clip_actions)
         for i in range(args.num_envs)], asynchronous=args.async_envs,
    )  # fmt: skip

    agent = Agent(envs, args.hidden_sizes, args.init, args.log_std_init,
                  args.norm_or_none, args.activation).to(device)  # fmt: skip
    with clenv.run.exit_on_error(ImportError):  # --optimizer trac without its package
        optimizer = make_agent_optimizer(args, agent, vectors=[agent.actor_logstd])
    try:
        method = make_method(args.reg, agent, optimizer, preset=args.method_preset,
                             forward_fn=actor_and_critic, model_norm=args.norm_or_none,
                             seed=args.seed, **method_kwargs)  # fmt: skip
    except ValueError as error:
        sys.exit(f"error: --reg {args.reg} / --method-kwargs: {error}")
    # plasticity/*: weight change since the task start, churn between updates.
    nets = {"actor": agent.actor_mean, "critic": agent.critic}
    trackers = PlasticityTrackers(nets, agent.distribution, args.churn_probe_size)
    # What a checkpoint holds besides the RNGs and the loop's own state.
    checkpointed = dict(model=agent, optimizer=optimizer, method=method, envs=envs)

    # ALGO Logic: Storage setup. float32 numpy arrays on the host, where the envs
    # step: a write there costs a fraction of a tensor write, and the rollout goes to
    # the device in one copy after it (on CPU, tensors sharing the arrays' memory).
    shape = (args.num_steps, args.num_envs)
    obs = np.zeros(shape + envs.single_observation_space.shape, dtype=np.float32)
    actions = np.zeros(shape + envs.single_action_space.shape, dtype=np.float32)
    logprobs, rewards, dones = (np.zeros(shape, dtype=np.float32) for _ in "123")

    # TRY NOT TO MODIFY: start the game (or resume it where the checkpoint left it)
    with clenv.run.exit_on_error():  # every checkpoint damaged, a full disk
        run = clenv.run.start(
            args, agent="ppo", map_location=device,
            extra_args={"env_kwargs_resolved": env_kwargs, "method": repr(method)},
        )  # fmt: skip
    logger = run.logger
    state = run.restore(**checkpointed)
    if state is None:  # a fresh run
        next_obs, _ = envs.reset(seed=args.seed)
        state = dict(next_obs=torch.Tensor(next_obs), iteration=0, tasks={},
                     next_done=torch.zeros(args.num_envs))  # fmt: skip
    global_step = run.global_step
    next_obs = state["next_obs"].numpy()
    next_done = state["next_done"].numpy()
    tasks = TaskTracker(**state["tasks"])
    if "trackers" in state:
        trackers.load_state_dict(state["trackers"])
    logger.set_task(tasks.task_id)

    start_time = time.time()
    start_step = global_step
    progress = tqdm(total=args.num_iterations * args.batch_size, initial=global_step,
                    unit="step", disable=not args.progress, dynamic_ncols=True)  # fmt: skip
    # --on-divergence: record it, close the run without a checkpoint, exit 1 or 0.
    guard = guard_run(run, agent, args, close=(progress, envs))
    for iteration in range(state["iteration"] + 1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            set_learning_rate(optimizer, frac * args.learning_rate)

        rollout_task = tasks.task_id
        switched_tasks: list[int] = []
        with torch.inference_mode():
            rollout_std = agent.rollout_std(args.num_envs)
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = next_obs
            dones[step] = next_done

            # ALGO LOGIC: action logic (inference mode: no autograd bookkeeping; the
            # values come after the rollout, in one batch)
            with torch.inference_mode():
                x = torch.from_numpy(obs[step]).to(device)
                action, logprob = agent.act(x, *rollout_std)
                action = action.cpu().numpy()
                actions[step] = action
                logprobs[step] = logprob.cpu().numpy()

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, reward, next_done, infos = step_envs(
                envs, action, value_fn=agent.get_value, device=device,
                gamma=args.gamma, bootstrap_truncated=args.bootstrap_truncated,
            )  # fmt: skip
            rewards[step] = reward

            # Episodes that ended here were played in the task the action was taken in.
            for episodic_return in log_episodes(logger, infos, global_step):
                tasks.add_episode(episodic_return)

            # The info now describes the task of the next action (docs/protocol.md);
            # the agent follows sub-env 0's. curvature/task_end: the ended task's last
            # rollout wholly in it.
            if task_switches(infos, args.num_envs)[0]:
                new_task = int(task_ids(infos, args.num_envs)[0])
                ended, last_batch = end_task(logger, tasks, new_task, global_step)
                guard.check_parameters(global_step, ended, force=True)
                log_ppo_curvature(logger, agent, last_batch, args, "task_end", ended,
                                  global_step)  # fmt: skip
                switched_tasks.append(new_task)

        # The rollout to the device (flattened but for GAE's rewards and dones) and its
        # values in one batch, by the critic that acted in it: before a task switch's
        # method reacts (the numbers of a value per step up to float round-off).
        b_obs, b_actions, b_logprobs = (
            torch.from_numpy(buffer.reshape((-1,) + buffer.shape[2:])).to(device)
            for buffer in (obs, actions, logprobs)
        )
        b_rewards, b_dones = (torch.from_numpy(a).to(device) for a in (rewards, dones))
        with torch.no_grad():
            values = agent.get_value(b_obs).view(shape)

        # A task switch during the rollout: the method reacts before the next update.
        for new_task in switched_tasks:
            method.on_task_switch(new_task)
            trackers.on_task_start()

        # bootstrap value if not done
        last_obs, last_done = (
            torch.as_tensor(a, dtype=torch.float32, device=device)
            for a in (next_obs, next_done)
        )
        with torch.no_grad():
            next_value = agent.get_value(last_obs).reshape(1, -1)
            advantages = generalized_advantages(b_rewards, values, b_dones, next_value,
                                                last_done, args.gamma, args.gae_lambda)  # fmt: skip
            returns = advantages + values

        # flatten the batch
        b_advantages = advantages.reshape(-1)
        if args.norm_adv == "batch":
            b_advantages = normalize_advantages(b_advantages)
        batch = {
            "obs": b_obs,
            "actions": b_actions,
            "logprobs": b_logprobs,
            "advantages": b_advantages,
            "returns": returns.reshape(-1),
            "values": values.reshape(-1),
        }
        # Curvature is taken on rollouts wholly in one task (task_start: the first).
        if not switched_tasks and rollout_task == tasks.task_id:
            if tasks.keep_rollout({key: v.clone() for key, v in batch.items()}):
                guard.check_parameters(global_step, tasks.task_id, force=True)
                log_ppo_curvature(
                    logger, agent, batch, args, "task_start", tasks.task_id, global_step
                )

        # Optimizing the policy and value network
        trackers.before_update(b_obs)
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for _epoch in range(args.update_epochs):
            method.before_epoch(b_obs)
            np.random.shuffle(b_inds)
            # The minibatches: consecutive slices of the shuffled batch (the rows of
            # CleanRL's b_inds[start:end], gathered once per epoch).
            shuffled = {key: value[b_inds] for key, value in batch.items()}
            for start in range(0, args.batch_size, args.minibatch_size):
                end = start + args.minibatch_size
                minibatch = {key: value[start:end] for key, value in shuffled.items()}
                loss, (pg_loss, v_loss, entropy_loss, logratio, ratio) = ppo_loss(
                    agent, minibatch, args
                )
                guard.check_loss(loss, global_step, tasks.task_id)

                with torch.no_grad():
                    # calculate approx_kl http://joschu.net/blog/kl-approx.html
                    old_approx_kl = (-logratio).mean()
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [
                        ((ratio - 1.0).abs() > args.clip_coef).float().mean().item()
                    ]

                method.after_loss({"policy": pg_loss.item(), "value": v_loss.item(),
                                   "entropy": entropy_loss.item()})  # fmt: skip
                optimizer.zero_grad()
                loss.backward()
                method.after_backward()
                guard.check_gradients(global_step, tasks.task_id)
                if args.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()
                method.after_step(minibatch["obs"])
                guard.check_parameters(global_step, tasks.task_id)
            method.after_epoch(b_obs)

            if args.target_kl is not None and approx_kl > args.target_kl:
                break
        trackers.after_update()

        y_pred, y_true = batch["values"].cpu().numpy(), batch["returns"].cpu().numpy()
        var_y = np.var(y_true)
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # TRY NOT TO MODIFY: record rewards for plotting purposes
        sps = int((global_step - start_step) / (time.time() - start_time))
        logger.log_scalars(
            {
                "charts/learning_rate": optimizer.param_groups[0]["lr"],
                "losses/value_loss": v_loss.item(),
                "losses/policy_loss": pg_loss.item(),
                "losses/entropy": entropy_loss.item(),
                "losses/old_approx_kl": old_approx_kl.item(),
                "losses/approx_kl": approx_kl.item(),
                "losses/clipfrac": np.mean(clipfracs),
                "losses/explained_variance": explained_var,
                "charts/SPS": sps,
                "cl/task_id": tasks.task_id,
            },
            global_step,
        )
        if continual:
            logger.log_scalars(task_params(infos), global_step, prefix="cl/")
        if args.plasticity_every and iteration % args.plasticity_every == 0:
            guard.check_parameters(global_step, tasks.task_id, force=True)
            log_std = {"actor/log_std_mean": float(agent.actor_logstd.detach().mean())}
            metrics = log_std | trackers.report(b_obs)
            logger.log_scalars(metrics, global_step, prefix="plasticity/")

        # A checkpoint after the update that crosses a multiple of --checkpoint-every.
        last_iteration = iteration == args.num_iterations
        if last_iteration or clenv.run.crossed_multiple(
            global_step, args.checkpoint_every, args.batch_size
        ):
            # Finite weights and state (Adam's moments too), or a divergence.
            with clenv.run.exit_on_error():  # a full disk: error: <message>
                extra = dict(next_obs=last_obs.cpu(), next_done=last_done.cpu(),
                             iteration=iteration, tasks=vars(tasks),
                             trackers=trackers.state_dict())  # fmt: skip
                guard.save(run, global_step, tasks.task_id, **checkpointed,
                           extra=extra, finished=last_iteration)  # fmt: skip

        progress.update(args.batch_size)
        ret = f"{np.mean(tasks.recent_returns):.1f}" if tasks.recent_returns else "-"
        progress.set_postfix(task=tasks.task_id, SPS=sps, ret=ret, refresh=False)

    progress.close()
    envs.close()
    run.close()
    print(f"done: {global_step:,} steps")
    run.print_paths()
    if args.plot:
        run.plot()
    print(f"compare runs: clenv plot {Path(args.runs_dir)}/<run>... --out fig.png")
