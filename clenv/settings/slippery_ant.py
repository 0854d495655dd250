"""Slippery Ant (PPO): settings of `agents/ppo_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value, method_row

TITLE = "Slippery Ant (PPO)"
AGENT = "agents/ppo_l2er.py"
DEFAULT_PROTOCOL = "lop"

T = "tests/test_ppo_agent.py::"
RESOLVES = T + "test_protocol_rows_fill_unset_options"
ENV_ROWS = T + "test_protocol_env_rows_reach_gym_make"

# Agent, env and model settings.
ROWS: list[Row] = [
    Row(
        name="total_timesteps",
        what="environment steps of the run",
        lop=Value(20_000_000, "lop/rl/cfg/sant/std.yml:3", "10 tasks of 2M"),
        sc=Value(
            10_000_000,
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:19",
            "5 tasks of 2M (SC's cbp.py alone runs 20M)",
        ),
        option="--total-timesteps",
        test=RESOLVES,
    ),
    Row(
        name="num_envs",
        what="parallel environments",
        lop=Value(1, "lop/rl/run_ppo.py:135", "one gym env, stepped in a loop"),
        sc=Value(1, "rlopt/scripts/hyperparams/nonstationary/l2_er.py:20"),
        option="--num-envs",
        test=RESOLVES,
    ),
    Row(
        name="num_steps",
        what="rollout length per update (per env)",
        lop=Value(2048, "lop/rl/cfg/sant/std.yml:8"),
        sc=Value(2048, "rlopt/scripts/hyperparams/nonstationary/l2_er.py:22"),
        option="--num-steps",
        test=RESOLVES,
    ),
    Row(
        name="update_epochs",
        what="epochs over each rollout",
        lop=Value(10, "lop/rl/cfg/sant/std.yml:9"),
        sc=Value(10, "rlopt/scripts/hyperparams/nonstationary/l2_er.py:23"),
        option="--update-epochs",
        test=RESOLVES,
    ),
    Row(
        name="num_minibatches",
        what="minibatches per epoch",
        lop=Value(16, "lop/rl/cfg/sant/std.yml:10", "16 of 128"),
        sc=Value(
            128,
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:21",
            "128 of 16 (SC's cbp.py alone: 16)",
        ),
        option="--num-minibatches",
        test=RESOLVES,
    ),
    Row(
        name="learning_rate",
        what="Adam step size (constant)",
        lop=Value(1e-4, "lop/rl/cfg/sant/std.yml:11"),
        sc=Value(
            1e-4,
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:5",
            "bp, l2 and cbp swept {1e-2, 1e-3, 1e-4}",
        ),
        option="--learning-rate",
        test=RESOLVES,
    ),
    Row(
        name="anneal_lr",
        what="linear learning-rate annealing",
        lop=Value(False, "lop/algos/rl/ppo.py:46", "one Adam, lr never changed"),
        sc=Value(False, "rlopt/config.py:66"),
        option="--anneal-lr",
        test=RESOLVES,
    ),
    Row(
        name="adam_betas",
        what="Adam's betas",
        lop=Value(
            (0.99, 0.99),
            "lop/rl/cfg/sant/ns.yml:17-18",
            'LoP\'s "proper Adam" (also l2.yml, cbp.yml); its "Standard PPO" '
            "std.yml keeps torch's (0.9, 0.999) (run_ppo.py:95-96): "
            "`--adam-betas 0.9 0.999`",
        ),
        sc=Value(
            (0.99, 0.99),
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:31-32",
            "SC's bp.py sets none, so its BP ran optax's (0.9, 0.999) "
            "(rlopt/config.py:33-34): `--adam-betas 0.9 0.999`",
        ),
        option="--adam-betas",
        test=RESOLVES,
    ),
    Row(
        name="adam_eps",
        what="Adam's epsilon",
        lop=Value(1e-8, "lop/rl/run_ppo.py:97"),
        sc=Value(1e-8, "rlopt/utils/optimizer.py:109"),
        option="--adam-eps",
        test=RESOLVES,
    ),
    Row(
        name="weight_decay",
        what="Adam's own (coupled) weight decay, apart from the L2 method",
        lop=Value(0.0, "lop/rl/cfg/sant/std.yml:17"),
        sc=Value(
            0.0,
            "rlopt/scripts/hyperparams/nonstationary/cbp.py:24",
            "SC's weight decay is the L2 method's (optax.add_decayed_weights "
            "before Adam, ppo_nonstationary.py:403)",
        ),
        option="--weight-decay",
        test=T + "test_weight_decay_is_adams_coupled_decay_with_cbp",
    ),
    Row(
        name="weight_decay",
        what="Adam's weight decay in LoP's CBP",
        lop=Value(
            1e-4,
            "lop/rl/cfg/sant/cbp.yml:23; lop/algos/rl/ppo.py:46",
            "torch Adam(weight_decay=1e-4): coupled, on every parameter",
        ),
        sc=None,
        option="--weight-decay",
        test=T + "test_weight_decay_is_adams_coupled_decay_with_cbp",
        when="cbp",
    ),
    Row(
        name="weight_decay",
        what="Adam's weight decay in LoP's ReDo",
        lop=Value(
            1e-4,
            "lop/rl/cfg/ant/redo.yml:21; lop/algos/rl/ppo.py:46",
            "LoP ran ReDo on stationary Ant only (cfg/ant, no sant/redo.yml); its "
            "Adam weight decay carried over to Slippery Ant",
        ),
        sc=None,
        option="--weight-decay",
        test=T + "test_weight_decay_is_adams_coupled_decay_with_cbp",
        when="redo",
    ),
    Row(
        name="gamma",
        what="discount factor",
        lop=Value(0.99, "lop/rl/cfg/sant/std.yml:5"),
        sc=Value(0.99, "rlopt/config.py:21"),
        option="--gamma",
        test=RESOLVES,
    ),
    Row(
        name="gae_lambda",
        what="GAE lambda",
        lop=Value(0.95, "lop/rl/cfg/sant/std.yml:6"),
        sc=Value(0.95, "rlopt/scripts/hyperparams/nonstationary/l2_er.py:6"),
        option="--gae-lambda",
        test=RESOLVES,
    ),
    Row(
        name="bootstrap_truncated",
        what="bootstrap the 1000-step time limit with gamma V(final obs)",
        lop=Value(
            False,
            "lop/rl/run_ppo.py:232; lop/algos/rl/ppo.py:98",
            "gym's TimeLimit sets done, which GAE treats as terminal",
        ),
        sc=Value(
            False,
            "rlopt/envs/wrappers.py:175; rlopt/ppo_nonstationary.py:245",
            "Brax's EpisodeWrapper sets done at 1000 steps; GAE treats it as terminal",
        ),
        option="--bootstrap-truncated",
        test=T + "test_truncation_is_terminal_unless_bootstrapped",
    ),
    Row(
        name="clip_actions",
        what="clip actions to the action space before env.step",
        lop=Value(
            False,
            "lop/rl/run_ppo.py:232",
            "the raw Gaussian sample reaches env.step (and the control cost)",
        ),
        sc=Value(
            False,
            "rlopt/envs/__init__.py:45; rlopt/ppo_nonstationary.py:232",
            "ClipAction commented out",
        ),
        option="--clip-actions",
        test=T + "test_unclipped_action_reaches_env_step",
    ),
    Row(
        name="norm_adv",
        what="advantage normalisation",
        lop=Value(
            "batch",
            "lop/algos/rl/ppo.py:102-104",
            "over the whole rollout, before the epochs; LoP divides by the std "
            "without the 1e-8 clenv adds",
        ),
        sc=Value("minibatch", "rlopt/ppo_nonstationary.py:114"),
        option="--norm-adv",
        test=T + "test_advantage_normalisation_batch_minibatch_none",
    ),
    Row(
        name="clip_coef",
        what="surrogate clipping epsilon",
        lop=Value(0.2, "lop/rl/cfg/sant/std.yml:14"),
        sc=Value(0.2, "rlopt/config.py:64"),
        option="--clip-coef",
        test=RESOLVES,
    ),
    Row(
        name="clip_vloss",
        what="clipped value loss (clipped by --clip-coef around the rollout's values)",
        lop=Value(False, "lop/algos/rl/ppo.py:140"),
        sc=Value(True, "rlopt/ppo_nonstationary.py:103-110"),
        option="--clip-vloss",
        test=T + "test_value_loss_is_mean_squared_error_without_half",
    ),
    Row(
        name="vf_coef",
        what="value-loss coefficient (the value loss is the MSE, no 1/2)",
        lop=Value(1.0, "lop/algos/rl/ppo.py:140-142", "p_loss += MSE, no weight"),
        sc=Value(
            1.0,
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:7; "
            "rlopt/ppo_nonstationary.py:108-110",
            "no 1/2 in the loss SC ran (rlopt/agents/ppo.py has one, unused)",
        ),
        option="--vf-coef",
        test=T + "test_value_loss_is_mean_squared_error_without_half",
    ),
    Row(
        name="ent_coef",
        what="entropy bonus coefficient",
        lop=Value(0.0, "lop/algos/rl/ppo.py:142", "no entropy term"),
        sc=Value(0.01, "rlopt/config.py:63"),
        option="--ent-coef",
        test=RESOLVES,
    ),
    Row(
        name="max_grad_norm",
        what="gradient-norm clipping (None: none)",
        lop=Value(None, "lop/rl/run_ppo.py:101", "1e9: never binds"),
        sc=Value(None, "rlopt/config.py:65", "1e9: never binds"),
        option="--max-grad-norm",
        test=RESOLVES,
    ),
    Row(
        name="hidden_sizes",
        what="hidden widths of the separate actor and critic ReLU MLPs",
        lop=Value((256, 256), "lop/rl/cfg/sant/std.yml:12"),
        sc=Value((256,), "rlopt/models.py:20-30; rlopt/config.py:61"),
        option="--hidden-sizes",
        test=RESOLVES,
    ),
    Row(
        name="init",
        what="weight initialisation of every layer (outputs too), biases 0",
        lop=Value(
            "lecun_uniform",
            "lop/rl/run_ppo.py:93; lop/utils/miscellaneous.py:87-97",
            "U(+-sqrt(3/fan_in)) on hidden and output layers",
        ),
        sc=Value(
            "lecun_uniform",
            "rlopt/models.py:20; rlopt/models.py:30; "
            "rlopt/models.py:50; rlopt/models.py:59",
        ),
        option="--init",
        test=T + "test_init_lecun_uniform_bounds_and_zero_bias",
    ),
    Row(
        name="log_std_init",
        what="initial state-independent log-std of the policy",
        lop=Value(0.0, "lop/nets/policies.py:36; lop/nets/policies.py:59"),
        sc=Value(0.0, "rlopt/models.py:33"),
        option="--log-std-init",
        test=T + "test_init_lecun_uniform_bounds_and_zero_bias",
    ),
    # gym.make keywords of clenv/SlipperyAnt-v0.
    Row(
        name="switch_every",
        what="steps per task",
        lop=Value(2_000_000, "lop/rl/cfg/sant/std.yml:4"),
        sc=Value(2_000_000, "rlopt/scripts/hyperparams/nonstationary/l2_er.py:26"),
        option="--env-kwargs switch_every=N",
        test=ENV_ROWS,
        kind="env",
    ),
    Row(
        name="switch_at",
        what="when a due switch happens",
        lop=Value(
            "episode_end",
            "lop/rl/run_ppo.py:264",
            "first episode end after more than 2M steps in the task",
        ),
        sc=Value("step", "rlopt/envs/wrappers.py:195-197", "mid-episode"),
        option="--env-kwargs switch_at=...",
        test=ENV_ROWS,
        kind="env",
    ),
    Row(
        name="use_contact_forces",
        what="contact forces in the observation and the contact cost in the reward",
        lop=Value(
            True,
            "lop/envs/slippery_ant.py:41",
            "gym Ant-v3 (111 dims, cost 5e-4); with mujoco-py 2 its contact "
            "forces likely read 0 (docs/envs/slippery_ant.md)",
        ),
        sc=Value(
            False,
            "rlopt/envs/wrappers.py:173",
            "Brax's ant: 27 dims, no contact cost (docs/envs/slippery_ant.md)",
        ),
        option="--env-kwargs use_contact_forces=...",
        test=ENV_ROWS,
        kind="env",
    ),
    Row(
        name="healthy_z_range",
        what="torso heights outside which the episode terminates",
        lop=Value((0.2, 1.0), "lop/envs/slippery_ant.py:44"),
        sc=Value((0.2, 1.0), "rlopt/envs/wrappers.py:173", "Brax ant's default"),
        option="--env-kwargs healthy_z_range=(lo,hi)",
        test=ENV_ROWS,
        kind="env",
    ),
    Row(
        name="ctrl_cost_weight",
        what="weight of the control cost 0.5 ||a||^2",
        lop=Value(0.5, "lop/envs/slippery_ant.py:40"),
        sc=Value(0.5, "rlopt/envs/wrappers.py:173", "Brax ant's default"),
        option="--env-kwargs ctrl_cost_weight=...",
        test=ENV_ROWS,
        kind="env",
    ),
    Row(
        name="healthy_reward",
        what="reward per healthy step",
        lop=Value(1.0, "lop/envs/slippery_ant.py:42"),
        sc=Value(1.0, "rlopt/envs/wrappers.py:173", "Brax ant's default"),
        option="--env-kwargs healthy_reward=...",
        test=ENV_ROWS,
        kind="env",
    ),
    Row(
        name="muon_momentum",
        what="Muon's momentum (optax.contrib.muon beta)",
        lop=None,
        sc=Value(
            0.95,
            "rlopt/scripts/hyperparams/nonstationary/bp_muon.py:19; rlopt/ppo_nonstationary.py:395-399",
            "optax's default (optax 0.2.5, pinned by SC's uv.lock:1589-1590; clenv.optim.OptaxMuon transcribes its muon in float32); SC passes the learning rate, adam_b1, adam_b2 and weight decay (0 in bp_muon)",
        ),
        option="--optimizer muon (clenv.optim.make_optimizer muon_momentum=...)",
        test="tests/test_baselines_structure.py::test_muon_rows_are_make_optimizers_settings",
        kind="optimizer",
        when="muon",
    ),
    Row(
        name="muon_nesterov",
        what="Muon's Nesterov momentum",
        lop=None,
        sc=Value(
            True,
            "rlopt/scripts/hyperparams/nonstationary/bp_muon.py:19; rlopt/ppo_nonstationary.py:395-399",
            "optax's default; its Adam part is Nesterov too (optax.adamw(nesterov=True), clenv.optim.OptaxAdamW)",
        ),
        option="--optimizer muon (clenv.optim.make_optimizer muon_nesterov=...)",
        test="tests/test_baselines_structure.py::test_muon_rows_are_make_optimizers_settings",
        kind="optimizer",
        when="muon",
    ),
    Row(
        name="muon_ns_steps",
        what="Newton-Schulz steps of Muon",
        lop=None,
        sc=Value(
            5,
            "rlopt/scripts/hyperparams/nonstationary/bp_muon.py:19; rlopt/ppo_nonstationary.py:395-399",
            "optax's default",
        ),
        option="--optimizer muon (clenv.optim.make_optimizer muon_ns_steps=...)",
        test="tests/test_baselines_structure.py::test_muon_rows_are_make_optimizers_settings",
        kind="optimizer",
        when="muon",
    ),
    Row(
        name="muon_head",
        what="Muon on every 2-D weight, the output layer's too",
        lop=None,
        sc=Value(
            True,
            "rlopt/scripts/hyperparams/nonstationary/bp_muon.py:19; rlopt/ppo_nonstationary.py:395-399",
            "optax's muon labels every 2-D parameter 'muon', the rest 'adam'",
        ),
        option="--optimizer muon (clenv.optim.make_optimizer muon_head=...)",
        test="tests/test_baselines_structure.py::test_muon_rows_are_make_optimizers_settings",
        kind="optimizer",
        when="muon",
    ),
    Row(
        name="betas",
        what="Adam betas of the non-matrix parameters",
        lop=None,
        sc=Value(
            (0.9, 0.999),
            "rlopt/scripts/hyperparams/nonstationary/bp_muon.py:19; rlopt/ppo_nonstationary.py:395-399",
            "bp_muon sets no beta_1/beta_2, so rlopt/config.py:33-34's defaults, not the 0.99 of SC's Adam runs",
        ),
        option="--optimizer muon (clenv.optim.make_optimizer betas=...)",
        test="tests/test_baselines_structure.py::test_muon_rows_are_make_optimizers_settings",
        kind="optimizer",
        when="muon",
    ),
]

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = [
    method_row(
        name="l2.weight_decay",
        what="L2 coefficient lambda (coupled: Adam's weight_decay in LoP)",
        lop=Value(0.001, "lop/rl/cfg/sant/l2.yml:19; lop/algos/rl/ppo.py:46"),
        sc=Value(
            0.001,
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:10",
            "from SC's grid 1e-3/1e-4/1e-5; the value SC reports",
        ),
    ),
    method_row(
        name="er.ascent_lr",
        what="ER-only ascent step eta_ER",
        lop=None,
        sc=Value(
            1e-07,
            "rlopt/scripts/hyperparams/nonstationary/er.py:8",
            "from SC's grid 1e-6/1e-7/1e-5; the value SC reports",
        ),
    ),
    method_row(
        name="er.ascent_lr",
        what="L2-ER ascent step eta_ER",
        lop=None,
        sc=Value(
            1e-06,
            "rlopt/scripts/hyperparams/nonstationary/l2_er.py:8",
            "from SC's grid 1e-6/1e-7/1e-5; the value SC reports",
        ),
        when="l2+er",
    ),
    method_row(
        name="er.schedule",
        what="one ascent per PPO epoch on the whole rollout (er_batch = num_minibatches = 128)",
        lop=None,
        sc=Value(
            "epoch",
            "rlopt/ppo_nonstationary.py:503-520; rlopt/scripts/hyperparams/nonstationary/er.py:9",
        ),
    ),
    method_row(
        name="er.timing",
        what="the ascent runs before each epoch's minibatches",
        lop=None,
        sc=Value("before", "rlopt/ppo_nonstationary.py:513-520"),
        test="tests/test_methods.py::test_er_before_timing_ascends_in_before_epoch_and_not_after_epoch",
    ),
    method_row(
        name="er.layer_groups",
        what="objective mean(actor layers) + mean(critic layers)",
        lop=None,
        sc=Value("by_network", "rlopt/ppo_nonstationary.py:87-93"),
        test="tests/test_methods.py::test_er_by_network_objective_is_mean_actor_rank_plus_mean_critic_rank",
    ),
    method_row(
        name="cbp.replacement_rate",
        what="units replaced per eligible unit per step",
        lop=Value(0.0001, "lop/rl/cfg/sant/cbp.yml:17"),
        sc=Value(
            0.0001,
            "rlopt/scripts/hyperparams/nonstationary/cbp.py:8",
            "from SC's grid 1e-4/1e-5/1e-6; the value SC reports",
        ),
    ),
    method_row(
        name="cbp.replacement_rate",
        what="CBP+L2's replacement rate",
        lop=None,
        sc=Value(
            1e-07,
            "rlopt/scripts/hyperparams/nonstationary/cbp_l2.py:8",
            "from SC's grid 1e-5/1e-6/1e-7; the value SC reports",
        ),
        when="cbp+l2",
    ),
    method_row(
        name="cbp.maturity_threshold",
        what="steps before a unit can be replaced",
        lop=Value(10000, "lop/rl/cfg/sant/cbp.yml:18"),
        sc=Value(10000, "rlopt/scripts/hyperparams/nonstationary/cbp.py:23"),
    ),
    method_row(
        name="cbp.decay_rate",
        what="running-average decay of utility and mean activation",
        lop=Value(0.99, "lop/rl/run_ppo.py:111"),
        sc=Value(0.99, "rlopt/config.py:39"),
    ),
    method_row(
        name="cbp.utility",
        what="CBP's utility (actor and critic)",
        lop=Value("contribution", "lop/rl/cfg/sant/cbp.yml:19-20"),
        sc=Value("contribution", "rlopt/cbp.py:136"),
        test="tests/test_methods_units.py::test_cbp_adaptable_contribution_matches_its_formula",
    ),
    method_row(
        name="cbp.init_gain",
        what="gain g of the fresh weights' bound g*sqrt(3/fan_in)",
        lop=Value(
            1.0,
            "lop/rl/run_ppo.py:93; lop/algos/gnt.py:71-72",
            "LoP's 'lecun' bound sqrt(3/fan_in)",
        ),
        sc=Value(1.4142135623730951, "rlopt/cbp.py:176"),
        test="tests/test_methods_units.py::test_cbp_can_keep_the_optimizer_state_and_draws_with_init_gain",
    ),
    method_row(
        name="cbp.reset_optimizer_state",
        what="zero the replaced units' optimizer state",
        lop=Value(
            False,
            "lop/algos/gnt.py:207-211; lop/rl/run_ppo.py:149",
            "LoP resets only its AdamGnT's state; its PPO uses torch's Adam. LoP's CBP run also has Adam weight decay 1e-4 (lop/rl/cfg/sant/cbp.yml:23), an agent setting",
        ),
        sc=Value(
            True,
            "rlopt/cbp.py:223-230",
            "Adam's moments of the replaced units are zeroed",
        ),
        test="tests/test_methods_units.py::test_cbp_can_keep_the_optimizer_state_and_draws_with_init_gain",
    ),
    method_row(
        name="cbp.accumulate",
        what="carry fractions of a unit across steps (else: one unit with probability r)",
        lop=Value(
            False,
            "lop/algos/rl/ppo.py:65-71; lop/algos/gnt.py:151-158",
            "LoP's PPO builds GnT without accumulate",
        ),
        sc=Value(True, "rlopt/cbp.py:143-153"),
        test="tests/test_methods_units.py::test_cbp_without_accumulate_replaces_one_unit_by_chance",
    ),
    method_row(
        name="cbp.variant",
        what="CBP's definition",
        lop=Value("lop", "lop/algos/gnt.py:166-203"),
        sc=Value(
            "lop",
            "rlopt/cbp.py:11-31",
            "the paper's CBP (LoP's definition); SC's own CBP code replaces the highest-utility units, re-draws outgoing weights and skips bias correction: pass --method-kwargs cbp__variant=sc_code to reproduce SC's CBP curves (docs/methods.md)",
        ),
        test="tests/test_methods_units.py::test_cbp_sc_code_variant_replaces_the_highest_utility_units",
    ),
    method_row(
        name="redo.threshold",
        what="ReDo's dormancy threshold tau",
        lop=Value(
            0.1,
            "lop/rl/cfg/ant/redo.yml:17",
            "LoP ran ReDo on stationary Ant only (cfg/ant; cfg/sant has no ReDo)",
        ),
        sc=None,
    ),
    method_row(
        name="redo.interval",
        what="steps between ReDo resets",
        lop=Value(
            100,
            "lop/rl/cfg/ant/redo.yml:18",
            "LoP ran ReDo on stationary Ant only (cfg/ant; cfg/sant has no ReDo)",
        ),
        sc=None,
    ),
    # Spectral regularisation: SC's spectral_reg baseline
    method_row(
        name="spectral.k",
        what="exponent k of sigma_max in (sigma_max^k - target)^2",
        lop=None,
        sc=Value(2, "rlopt/config.py:51"),
    ),
    method_row(
        name="spectral.target",
        what="value sigma_max^k is pulled toward",
        lop=None,
        sc=Value(2.0, "rlopt/config.py:52"),
    ),
    method_row(
        name="spectral.power_iterations",
        what="power-iteration steps per update",
        lop=None,
        sc=Value(10, "rlopt/config.py:53"),
    ),
]
