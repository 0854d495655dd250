"""Continual ImageNet: settings of `agents/supervised_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value, method_row

TITLE = "Continual ImageNet"
AGENT = "agents/supervised_l2er.py"
DEFAULT_PROTOCOL = "sc"

# Agent, env and model settings.
ROWS: list[Row] = [
    # Agent settings (kind="agent": fields of agents/supervised_l2er.py's Args).
    Row(
        name="learning_rate",
        what="SGD step size",
        lop=Value(
            0.01,
            "lop/imagenet/cfg/cbp.json:16; lop/imagenet/cfg/snp.json:16",
            "BP's sweep 0.01/0.001/0.0001: lop/imagenet/cfg/bp.json:16",
        ),
        sc=Value(
            1e-3,
            "imagenet/scripts/hyperparams/bp.py:5; imagenet/scripts/hyperparams/hessian/l2_er_hessian.py:5",
            "the middle of SC's sweep 1e-2/1e-3/1e-4 (bp.py, l2.py, er.py, cbp.py line 5), the step size of its L2-ER spectrum runs",
        ),
        option="--learning-rate",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="learning_rate",
        what="SGD step size with L2",
        lop=Value(0.03, "lop/imagenet/cfg/l2.json:16"),
        sc=None,
        option="--learning-rate",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
        when="l2",
    ),
    Row(
        name="learning_rate",
        what="SGD step size of L2-ER",
        lop=None,
        sc=Value(
            1e-4,
            "imagenet/scripts/hyperparams/l2_er.py:5; imagenet/scripts/runs/runs_l2_er.txt:1",
            "the accuracy runs: both the L2-ER grid and the launched commands fix 1e-4 (the commands' --er_batch 100 fails the assert at imagenet/train_imagenet.py:238, so they predate the grid's er_batch 12; the step size agrees). The Hessian-spectrum runs used 1e-3 (imagenet/scripts/hyperparams/hessian/l2_er_hessian.py:5): pass --learning-rate 1e-3 to reproduce that figure",
        ),
        option="--learning-rate",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
        when="l2+er",
    ),
    Row(
        name="momentum",
        what="SGD momentum",
        lop=Value(0.9, "lop/imagenet/cfg/bp.json:17"),
        sc=Value(0.9, "imagenet/config.py:28"),
        option="--momentum",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="batch_size",
        what="minibatch size",
        lop=Value(100, "lop/imagenet/cfg/bp.json:11"),
        sc=Value(100, "imagenet/config.py:23"),
        option="--batch-size",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="num_tasks",
        what="binary tasks",
        lop=Value(
            2000,
            "lop/imagenet/cfg/bp.json:6",
            "L2 ran 5000 (lop/imagenet/cfg/l2.json:6)",
        ),
        sc=Value(2000, "imagenet/config.py:26"),
        option="--num-tasks",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="epochs_per_task",
        what="epochs per task",
        lop=Value(250, "lop/imagenet/cfg/bp.json:9"),
        sc=Value(20, "imagenet/config.py:27"),
        option="--epochs-per-task",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="zero_head_on_switch",
        what="zero the output layer at every task start (momentum kept)",
        lop=Value(
            True,
            "lop/imagenet/single_expr.py:58; lop/imagenet/single_expr.py:141-143",
            "weights and bias multiplied by 0; the optimizer's momentum is left as it is",
        ),
        sc=Value(
            False, "imagenet/train_imagenet.py:328-361", "the task loop resets nothing"
        ),
        option="--zero-head-on-switch",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_every_tasks",
        what="Hessian spectrum every k-th task (start and end)",
        lop=None,
        sc=Value(10, "imagenet/scripts/hyperparams/hessian/l2_er_hessian.py:23"),
        option="--curvature-every-tasks",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_order",
        what="Lanczos iterations of the spectral density",
        lop=None,
        sc=Value(100, "imagenet/train_imagenet.py:340"),
        option="--curvature-order",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="metric_samples",
        what="samples of the task the curvature is computed on",
        lop=None,
        sc=Value(2000, "imagenet/config.py:52"),
        option="--metric-samples",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    # Env settings (kind="env": gym.make keywords of clenv/ContinualImageNet-v0).
    Row(
        name="pixel_scale",
        what="observation values: the stored pixels as float ('raw', 0..255) or / 255",
        lop=Value(
            "raw",
            "lop/imagenet/single_expr.py:25; lop/imagenet/single_expr.py:136",
            "np.load, then cast to float; never divided",
        ),
        sc=Value(
            "raw",
            "imagenet/train_imagenet.py:179; imagenet/train_imagenet.py:184",
            "np.load, then jnp.array(dtype=float32); never divided",
        ),
        option="--env-kwargs pixel_scale=...",
        test="tests/test_supervised_envs.py::test_env_rows_build_each_papers_env",
        kind="env",
    ),
    Row(
        name="train_images_per_class",
        what="leading images of each class file used for training",
        lop=Value(600, "lop/imagenet/single_expr.py:16"),
        sc=Value(600, "imagenet/train_imagenet.py:167"),
        option="--env-kwargs train_images_per_class=...",
        test="tests/test_supervised_envs.py::test_env_rows_build_each_papers_env",
        kind="env",
    ),
    Row(
        name="test_images_per_class",
        what="following images of each class file held out",
        lop=Value(100, "lop/imagenet/single_expr.py:17"),
        sc=Value(100, "imagenet/train_imagenet.py:168"),
        option="--env-kwargs test_images_per_class=...",
        test="tests/test_supervised_envs.py::test_env_rows_build_each_papers_env",
        kind="env",
    ),
    # Model settings (kind="model": keywords of clenv.models.ContinualImageNetConvNet).
    Row(
        name="padding",
        what="padding of the three convolutions (flattened features: 512 or 2048)",
        lop=Value(
            "valid",
            "lop/nets/conv_net.py:10-14",
            "nn.Conv2d's default padding 0; 2x2x128 = 512 features",
        ),
        sc=Value(
            "same",
            "imagenet/models.py:11; imagenet/models.py:28",
            "Flax nn.Conv's default padding 'SAME'; 4x4x128 = 2048 features",
        ),
        option="ContinualImageNetConvNet(padding=...)",
        test="tests/test_models.py::test_model_rows_build_each_papers_model",
        kind="model",
    ),
    Row(
        name="init",
        what="initialisation of every layer",
        lop=Value(
            "lop",
            "lop/nets/conv_net.py:10-17; lop/imagenet/single_expr.py:82",
            "no init code: PyTorch's defaults, weights and biases "
            "U(-1/sqrt(fan_in), 1/sqrt(fan_in))",
        ),
        sc=Value(
            "sc",
            "imagenet/models.py:11-45",
            "no kernel_init: Flax's defaults, LeCun-normal (truncated normal, "
            "variance 1 / fan_in) weights, zero biases",
        ),
        option="ContinualImageNetConvNet(init=...)",
        test="tests/test_models.py::test_model_rows_build_each_papers_model",
        kind="model",
    ),
    Row(
        name="norm",
        what="LayerNorm before each hidden activation (SC's laynorm_l2 runs)",
        lop=None,
        sc=Value(
            "layer",
            "imagenet/scripts/hyperparams/laynorm_l2.py:15; imagenet/models.py:12-37",
            "LayerNorm after the three convolutions (over channels, Flax's last axis) and the two FC layers",
        ),
        option="--norm layer (model norm=...)",
        test="tests/test_baselines_structure.py::test_layernorm_rows_select_scs_laynorm_l2",
        kind="model",
        when="layernorm",
    ),
]

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = [
    method_row(
        name="l2.weight_decay",
        what="L2 coefficient lambda",
        lop=Value(
            3e-06,
            "lop/imagenet/cfg/l2.json:18",
            "with LoP's L2 step size 0.03 (lop/imagenet/cfg/l2.json:16; an agent row)",
        ),
        sc=Value(0.001, "imagenet/config.py:20"),
    ),
    method_row(
        name="er.ascent_lr",
        what="ER-only ascent step eta_ER",
        lop=None,
        sc=Value(
            1e-05,
            "imagenet/scripts/hyperparams/er.py:6",
            "from SC's grid 1e-3/1e-4/1e-5; the value SC reports",
        ),
    ),
    method_row(
        name="er.ascent_lr",
        what="L2-ER ascent step eta_ER",
        lop=None,
        sc=Value(
            0.0001,
            "imagenet/scripts/hyperparams/l2_er.py:6",
            "from SC's grid 1e-3/1e-4/1e-5; the value SC reports",
        ),
        when="l2+er",
    ),
    method_row(
        name="er.interval",
        what="U: minibatches per ascent (the agent groups U minibatches)",
        lop=None,
        sc=Value(12, "imagenet/config.py:31; imagenet/scripts/hyperparams/l2_er.py:7"),
    ),
    method_row(
        name="er.schedule",
        what="one ascent per group of U minibatches",
        lop=None,
        sc=Value("epoch", "imagenet/train_imagenet.py:276-294"),
    ),
    method_row(
        name="er.timing",
        what="the ascent runs on the next U minibatches' inputs, before training on them",
        lop=None,
        sc=Value("before", "imagenet/train_imagenet.py:277-284"),
        test="tests/test_methods.py::test_er_before_timing_ascends_in_before_epoch_and_not_after_epoch",
    ),
    method_row(
        name="er.last_layers",
        what="ranked layers: the last two (the FC layers)",
        lop=None,
        sc=Value(2, "imagenet/train_imagenet.py:56"),
    ),
    method_row(
        name="cbp.replacement_rate",
        what="units replaced per unit per step",
        lop=Value(0.0003, "lop/imagenet/cfg/cbp.json:19"),
        sc=Value(
            1e-05,
            "imagenet/scripts/hyperparams/cbp.py:6",
            "from SC's grid 1e-3/1e-4/1e-5; the value SC reports",
        ),
    ),
    method_row(
        name="cbp.maturity_threshold",
        what="steps before a unit can be replaced",
        lop=Value(100, "lop/imagenet/cfg/cbp.json:20"),
        sc=Value(100, "imagenet/config.py:59"),
    ),
    method_row(
        name="cbp.decay_rate",
        what="running-average decay of utility and mean activation",
        lop=Value(0.99, "lop/imagenet/cfg/cbp.json:21"),
        sc=Value(0.99, "imagenet/config.py:58"),
    ),
    method_row(
        name="cbp.utility",
        what="CBP's utility",
        lop=Value("adaptable_contribution", "lop/imagenet/cfg/cbp.json:18"),
        sc=Value("contribution", "imagenet/cbp.py:153"),
        test="tests/test_methods_units.py::test_cbp_adaptable_contribution_matches_its_formula",
    ),
    method_row(
        name="cbp.init_gain",
        what="gain g of the fresh weights' bound g*sqrt(3/fan_in)",
        lop=Value(
            0.5773502691896257,
            "lop/imagenet/single_expr.py:110; lop/utils/miscellaneous.py:128-133",
            "LoP's bound sqrt(1/fan_in) ('default' init; conv layers always)",
        ),
        sc=Value(1.4142135623730951, "imagenet/cbp.py:193"),
        test="tests/test_methods_units.py::test_cbp_can_keep_the_optimizer_state_and_draws_with_init_gain",
    ),
    method_row(
        name="cbp.replacement_count",
        what="what the rate multiplies: mature units or all units",
        lop=Value("all", "lop/algos/convGnT.py:73-75; lop/algos/convGnT.py:169"),
        sc=Value("eligible", "imagenet/cbp.py:160"),
        test="tests/test_methods_units.py::test_cbp_replacement_count_all_counts_every_unit_of_the_layer",
    ),
    method_row(
        name="cbp.score_after_pool",
        what="score conv units on their post-pool maps",
        lop=Value(True, "lop/nets/conv_net.py:36-44"),
        sc=None,
        test="tests/test_methods_units.py::test_cbp_scores_post_pool_maps_when_asked",
    ),
    method_row(
        name="cbp.reset_optimizer_state",
        what="zero the replaced units' optimizer state",
        lop=Value(
            False,
            "lop/algos/convGnT.py:203-207",
            "only LoP's AdamGnT state is reset; its ImageNet runs use SGD momentum (lop/imagenet/cfg/cbp.json:15-17)",
        ),
        sc=Value(
            False, "imagenet/cbp.py:254-256", "optax's SGD-momentum trace is kept"
        ),
        test="tests/test_methods_units.py::test_cbp_can_keep_the_optimizer_state_and_draws_with_init_gain",
    ),
    method_row(
        name="cbp.variant",
        what="CBP's definition",
        lop=Value("lop", "lop/algos/convGnT.py:144-201"),
        sc=Value(
            "lop",
            "imagenet/cbp.py:12-32",
            "the paper's CBP (LoP's definition); SC's own CBP code replaces the highest-utility units, re-draws outgoing weights and skips bias correction: pass --method-kwargs cbp__variant=sc_code to reproduce SC's CBP curves (docs/methods.md)",
        ),
        test="tests/test_methods_units.py::test_cbp_sc_code_variant_replaces_the_highest_utility_units",
    ),
    method_row(
        name="snp.weight_decay",
        what="S&P shrink (coupled weight decay)",
        lop=Value(1e-05, "lop/imagenet/cfg/snp.json:18"),
        sc=Value(
            0.0,
            "imagenet/scripts/hyperparams/snp.py:14",
            "SC's S&P only perturbs; its snp_l2 (imagenet/scripts/hyperparams/snp_l2.py) is --reg snp+l2. This script launches the Permuted MNIST trainer (imagenet/scripts/hyperparams/snp.py:10), so SC's ImageNet S&P runs are its snp_l2 runs",
        ),
    ),
    method_row(
        name="snp.noise_std",
        what="S&P noise sigma",
        lop=Value(1e-05, "lop/imagenet/cfg/snp.json:19"),
        sc=Value(1e-05, "imagenet/config.py:22"),
    ),
    method_row(
        name="head_reset.mode",
        what="LoP zeroes the output layer at every task",
        lop=Value("zero", "lop/imagenet/single_expr.py:141-143"),
        sc=None,
    ),
    method_row(
        name="head_reset.reset_optimizer_state",
        what="clear the head's optimizer state at a reset",
        lop=Value(
            False, "lop/imagenet/single_expr.py:141-143", "the SGD momentum is kept"
        ),
        sc=None,
        test="tests/test_methods_units.py::test_resets_keep_or_clear_the_optimizer_state",
    ),
    # Spectral regularisation: SC's spectral_reg baseline
    method_row(
        name="spectral.strength",
        what="spectral regulariser coefficient",
        lop=None,
        sc=Value(
            0.01,
            "imagenet/scripts/hyperparams/hessian/spectral_reg_hessian.py:6",
            "the run SC plots (analysis/fig3.py:144); its grid 1e-2/1e-3/1e-4 is imagenet/scripts/hyperparams/spectral_reg.py:6",
        ),
    ),
    method_row(
        name="spectral.k",
        what="exponent k of sigma_max in (sigma_max^k - target)^2",
        lop=None,
        sc=Value(2, "imagenet/config.py:43"),
    ),
    method_row(
        name="spectral.target",
        what="value sigma_max^k is pulled toward",
        lop=None,
        sc=Value(2.0, "imagenet/config.py:44"),
    ),
    method_row(
        name="spectral.power_iterations",
        what="power-iteration steps per update",
        lop=None,
        sc=Value(10, "imagenet/config.py:45"),
    ),
    method_row(
        name="l2.weight_decay",
        what="L2 coefficient lambda with LayerNorm (SC's LayerNorm-L2)",
        lop=None,
        sc=Value(
            1e-05,
            "imagenet/scripts/hyperparams/hessian/laynorm_l2_hessian.py:6",
            "from SC's grid 1e-3/1e-4/1e-5 (imagenet/scripts/hyperparams/laynorm_l2.py:6); the LayerNorm-L2 curve of SC's figures (analysis/fig3.py:143), at step size 1e-3 (line 5, the default)",
        ),
        when="l2+layernorm",
    ),
]
