"""Permuted MNIST: settings of `agents/supervised_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value, method_row

TITLE = "Permuted MNIST"
AGENT = "agents/supervised_l2er.py"
DEFAULT_PROTOCOL = "sc"

# Agent, env and model settings.
ROWS: list[Row] = [
    # Agent settings (kind="agent": fields of agents/supervised_l2er.py's Args).
    Row(
        name="learning_rate",
        what="SGD step size",
        lop=Value(
            0.003,
            "lop/permuted_mnist/cfg/l2.json:16; lop/permuted_mnist/cfg/cbp.json:16",
            "BP's sweep: lop/permuted_mnist/cfg/bp/std_net.json:16",
        ),
        sc=Value(
            0.01,
            "permuted_mnist/config.py:19; permuted_mnist/scripts/runs/runs_l2_er.txt:1",
        ),
        option="--learning-rate",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="momentum",
        what="SGD momentum",
        lop=Value(0.0, "lop/permuted_mnist/cfg/bp/std_net.json:13", "plain SGD"),
        sc=Value(
            0.0,
            "permuted_mnist/train_permuted_mnist.py:275",
            "optax.sgd without momentum",
        ),
        option="--momentum",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="batch_size",
        what="examples per update",
        lop=Value(1, "lop/permuted_mnist/online_expr.py:35"),
        sc=Value(1, "permuted_mnist/config.py:28"),
        option="--batch-size",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="width",
        what="units per hidden layer of the MLP",
        lop=Value(2000, "lop/permuted_mnist/cfg/bp/std_net.json:14"),
        sc=Value(
            1000,
            "permuted_mnist/config.py:22; permuted_mnist/scripts/runs/runs_l2_er.txt:1",
        ),
        option="--width",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="num_tasks",
        what="tasks (permutations)",
        lop=Value(800, "lop/permuted_mnist/cfg/bp/std_net.json:6"),
        sc=Value(800, "permuted_mnist/config.py:31"),
        option="--num-tasks",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="examples_per_task",
        what="examples per task, one pass",
        lop=Value(60_000, "lop/permuted_mnist/online_expr.py:31"),
        sc=Value(60_000, "permuted_mnist/config.py:23"),
        option="--examples-per-task",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_every_tasks",
        what="Hessian spectrum every k-th task (start and end)",
        lop=None,
        sc=Value(10, "permuted_mnist/scripts/hyperparams/hessian/l2_er_hessian.py:21"),
        option="--curvature-every-tasks",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_order",
        what="Lanczos iterations of the spectral density",
        lop=None,
        sc=Value(100, "permuted_mnist/train_permuted_mnist.py:428"),
        option="--curvature-order",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="metric_samples",
        what="samples of the task the curvature is computed on",
        lop=None,
        sc=Value(2000, "permuted_mnist/config.py:50"),
        option="--metric-samples",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    # Model settings (kind="model": keywords of clenv.models.PermutedMNISTMLP).
    Row(
        name="init",
        what="initialisation of the output layer (hidden layers: Kaiming-uniform, "
        "ReLU gain, zero bias in both)",
        lop=Value(
            "lop",
            "lop/nets/deep_ffnn.py:58; lop/nets/deep_ffnn.py:26-28",
            "the output layer is a Layer with act_type='linear': Kaiming-uniform with "
            "the linear gain, bound sqrt(3 / fan_in)",
        ),
        sc=Value(
            "sc",
            "permuted_mnist/train_permuted_mnist.py:89-92",
            "Flax kaiming_uniform() (ReLU gain, bound sqrt(6 / fan_in)) on the head too",
        ),
        option="PermutedMNISTMLP(init=...)",
        test="tests/test_models.py::test_model_rows_build_each_papers_model",
        kind="model",
    ),
    Row(
        name="norm",
        what="LayerNorm before each hidden activation (SC's laynorm_l2 runs)",
        lop=None,
        sc=Value(
            "layer",
            "permuted_mnist/scripts/hyperparams/laynorm_l2.py:18; permuted_mnist/train_permuted_mnist.py:71-72",
            "Dense -> LayerNorm -> ReLU on every hidden layer (train_permuted_mnist.py:84-85)",
        ),
        option="--norm layer (model norm=...)",
        test="tests/test_baselines_structure.py::test_layernorm_rows_select_scs_laynorm_l2",
        kind="model",
        when="layernorm",
    ),
    Row(
        name="muon_momentum",
        what="Muon's momentum (optax.contrib.muon beta)",
        lop=None,
        sc=Value(
            0.95,
            "permuted_mnist/scripts/hyperparams/bp_muon.py:15; permuted_mnist/train_permuted_mnist.py:268-271",
            "optax's default (optax 0.2.5, pinned by SC's uv.lock:1589-1590; clenv.optim.OptaxMuon transcribes its muon in float32); SC passes only the learning rate and weight decay (0 in bp_muon)",
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
            "permuted_mnist/scripts/hyperparams/bp_muon.py:15; permuted_mnist/train_permuted_mnist.py:268-271",
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
            "permuted_mnist/scripts/hyperparams/bp_muon.py:15; permuted_mnist/train_permuted_mnist.py:268-271",
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
            "permuted_mnist/scripts/hyperparams/bp_muon.py:15; permuted_mnist/train_permuted_mnist.py:268-271",
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
            "permuted_mnist/scripts/hyperparams/bp_muon.py:15; permuted_mnist/train_permuted_mnist.py:268-271",
            "optax muon's adam_b1, adam_b2 defaults",
        ),
        option="--optimizer muon (clenv.optim.make_optimizer betas=...)",
        test="tests/test_baselines_structure.py::test_muon_rows_are_make_optimizers_settings",
        kind="optimizer",
        when="muon",
    ),
    Row(
        name="loss",
        what="training loss (SC's bp_mse: MSE on one-hot targets)",
        lop=Value(
            "cross_entropy", "lop/algos/bp.py:26", "LoP's 'nll' is F.cross_entropy"
        ),
        sc=Value(
            "cross_entropy",
            "permuted_mnist/config.py:18; permuted_mnist/train_permuted_mnist.py:134-135",
            "SC's bp_mse runs set loss_type='mse' (permuted_mnist/scripts/hyperparams/bp_mse.py:15): make_loss('mse'), mean over batch and classes of (output - one_hot)^2, no 1/2 (permuted_mnist/train_permuted_mnist.py:131-133)",
        ),
        option="--loss (clenv.losses.make_loss)",
        test="tests/test_baselines_structure.py::test_loss_rows_build_the_loss",
        kind="loss",
    ),
]

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = [
    method_row(
        name="l2.weight_decay",
        what="L2 coefficient lambda",
        lop=Value(
            0.0001,
            "lop/permuted_mnist/cfg/l2.json:17",
            "from LoP's grid 1e-3/1e-4/1e-5; the value LoP reports",
        ),
        sc=Value(0.001, "permuted_mnist/config.py:21"),
    ),
    method_row(
        name="er.ascent_lr",
        what="ER-only ascent step eta_ER",
        lop=None,
        sc=Value(
            0.0001,
            "permuted_mnist/scripts/hyperparams/er.py:6",
            "from SC's grid 1e-2/1e-3/1e-4; the value SC reports",
        ),
    ),
    method_row(
        name="er.ascent_lr",
        what="L2-ER ascent step eta_ER",
        lop=None,
        sc=Value(0.01, "permuted_mnist/config.py:34"),
        when="l2+er",
    ),
    method_row(
        name="er.interval",
        what="U: minibatches between ascents (the buffer)",
        lop=None,
        sc=Value(100, "permuted_mnist/config.py:35"),
    ),
    method_row(
        name="er.schedule",
        what="ascent every U steps on the buffer of their inputs, after them",
        lop=None,
        sc=Value("step", "permuted_mnist/train_permuted_mnist.py:320-337"),
    ),
    method_row(
        name="cbp.replacement_rate",
        what="units replaced per eligible unit per step",
        lop=Value(
            1e-06,
            "lop/permuted_mnist/cfg/cbp.json:19",
            "from LoP's grid 1e-4/1e-5/1e-6; the value LoP reports",
        ),
        sc=Value(1e-06, "permuted_mnist/config.py:55"),
    ),
    method_row(
        name="cbp.maturity_threshold",
        what="steps before a unit can be replaced",
        lop=Value(100, "lop/permuted_mnist/cfg/cbp.json:21"),
        sc=Value(100, "permuted_mnist/config.py:57"),
    ),
    method_row(
        name="cbp.decay_rate",
        what="running-average decay of utility and mean activation",
        lop=Value(0.99, "lop/permuted_mnist/cfg/cbp.json:20"),
        sc=Value(0.99, "permuted_mnist/config.py:56"),
    ),
    method_row(
        name="cbp.utility",
        what="CBP's utility",
        lop=Value("adaptable_contribution", "lop/permuted_mnist/cfg/cbp.json:18"),
        sc=Value("contribution", "permuted_mnist/cbp.py:136"),
        test="tests/test_methods_units.py::test_cbp_adaptable_contribution_matches_its_formula",
    ),
    method_row(
        name="cbp.accumulate",
        what="carry fractions of a unit across steps",
        lop=Value(True, "lop/permuted_mnist/cfg/cbp.json:17"),
        sc=Value(True, "permuted_mnist/cbp.py:143-153"),
        test="tests/test_methods_units.py::test_cbp_without_accumulate_replaces_one_unit_by_chance",
    ),
    method_row(
        name="cbp.variant",
        what="CBP's definition",
        lop=Value("lop", "lop/algos/gnt.py:166-203"),
        sc=Value(
            "lop",
            "permuted_mnist/cbp.py:11-31",
            "the paper's CBP (LoP's definition); SC's own CBP code replaces the highest-utility units, re-draws outgoing weights and skips bias correction: pass --method-kwargs cbp__variant=sc_code to reproduce SC's CBP curves (docs/methods.md)",
        ),
        test="tests/test_methods_units.py::test_cbp_sc_code_variant_replaces_the_highest_utility_units",
    ),
    method_row(
        name="snp.weight_decay",
        what="S&P shrink (coupled weight decay)",
        lop=Value(0.0001, "lop/permuted_mnist/cfg/snp.json:17"),
        sc=Value(
            0.0,
            "permuted_mnist/scripts/hyperparams/snp.py:14",
            "SC's S&P only perturbs; its snp_l2 (permuted_mnist/scripts/hyperparams/snp_l2.py) is --reg snp+l2",
        ),
    ),
    method_row(
        name="snp.noise_std",
        what="S&P noise sigma",
        lop=Value(
            1e-05,
            "lop/permuted_mnist/cfg/snp.json:19",
            "from LoP's grid 1e-4/1e-5/1e-6; the value LoP reports",
        ),
        sc=Value(1e-05, "permuted_mnist/config.py:25"),
    ),
    # Spectral regularisation: SC's spectral_reg baseline
    method_row(
        name="spectral.strength",
        what="spectral regulariser coefficient",
        lop=None,
        sc=Value(
            0.001,
            "permuted_mnist/scripts/hyperparams/hessian/fix_lr/spectral_reg_hessian_fix_lr.py:6",
            "the run SC plots (analysis/fig3.py:188); its grid 1e-2/1e-3/1e-4 is permuted_mnist/scripts/hyperparams/spectral_reg.py:6",
        ),
    ),
    method_row(
        name="spectral.k",
        what="exponent k of sigma_max in (sigma_max^k - target)^2",
        lop=None,
        sc=Value(2, "permuted_mnist/config.py:41"),
    ),
    method_row(
        name="spectral.target",
        what="value sigma_max^k is pulled toward",
        lop=None,
        sc=Value(2.0, "permuted_mnist/config.py:42"),
    ),
    method_row(
        name="spectral.power_iterations",
        what="power-iteration steps per update",
        lop=None,
        sc=Value(10, "permuted_mnist/config.py:43"),
    ),
    method_row(
        name="l2.weight_decay",
        what="L2 coefficient lambda with LayerNorm (SC's LayerNorm-L2)",
        lop=None,
        sc=Value(
            1e-05,
            "permuted_mnist/scripts/hyperparams/hessian/fix_lr/laynorm_l2_hessian_fix_lr.py:6",
            "from SC's grid 1e-3/1e-4/1e-5 (permuted_mnist/scripts/hyperparams/laynorm_l2.py:6); the value of the LayerNorm-L2 curve in SC's figures (analysis/fig3.py:187), at step size 0.01",
        ),
        when="l2+layernorm",
    ),
]
