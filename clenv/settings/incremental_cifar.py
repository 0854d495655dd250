"""Class-incremental CIFAR-100: settings of `agents/supervised_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value, method_row

TITLE = "Class-incremental CIFAR-100"
AGENT = "agents/supervised_l2er.py"
DEFAULT_PROTOCOL = "sc"

# Agent, env and model settings.
ROWS: list[Row] = [
    # Agent settings (kind="agent": fields of agents/supervised_l2er.py's Args).
    Row(
        name="learning_rate",
        what="SGD step size (LoP: at each task start)",
        lop=Value(0.1, "lop/incremental_cifar/cfg/base_deep_learning_system.json:11"),
        sc=Value(
            0.01,
            "incremental_cifar/scripts/hyperparams/l2_er.py:5; incremental_cifar/scripts/hyperparams/hessian/bp_hessian.py:5",
        ),
        option="--learning-rate",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="momentum",
        what="SGD momentum",
        lop=Value(0.9, "lop/incremental_cifar/cfg/base_deep_learning_system.json:13"),
        sc=Value(0.9, "incremental_cifar/config.py:30"),
        option="--momentum",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="batch_size",
        what="minibatch size",
        lop=Value(90, "lop/incremental_cifar/incremental_cifar_experiment.py:96"),
        sc=Value(100, "incremental_cifar/config.py:25"),
        option="--batch-size",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="num_tasks",
        what="tasks (5 new classes each)",
        lop=Value(
            20,
            "lop/incremental_cifar/incremental_cifar_experiment.py:94; lop/incremental_cifar/incremental_cifar_experiment.py:130",
            "4000 epochs, 5 classes added every 200",
        ),
        sc=Value(20, "incremental_cifar/config.py:28"),
        option="--num-tasks",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="epochs_per_task",
        what="epochs per task",
        lop=Value(200, "lop/incremental_cifar/incremental_cifar_experiment.py:130"),
        sc=Value(200, "incremental_cifar/config.py:29"),
        option="--epochs-per-task",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="extra_fc",
        what="hidden FC layers of 512 after pooling",
        lop=Value(0, "lop/incremental_cifar/incremental_cifar_experiment.py:103"),
        sc=Value(2, "incremental_cifar/model.py:170-186"),
        option="--extra-fc",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="lr_milestones",
        what="epochs of a task at which the step size is multiplied by 0.2",
        lop=Value(
            (60, 120, 160),
            "lop/incremental_cifar/incremental_cifar_experiment.py:423-427",
        ),
        sc=Value(
            (),
            "incremental_cifar/train_incremental_cifar.py:220-223",
            "a constant step size",
        ),
        option="--lr-milestones",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="optimizer_weight_decay",
        what="the optimizer's own weight decay, on top of --reg",
        lop=Value(
            5e-4,
            "lop/incremental_cifar/cfg/base_deep_learning_system.json:12; lop/incremental_cifar/incremental_cifar_experiment.py:107-108",
        ),
        sc=Value(
            0.0,
            "incremental_cifar/train_incremental_cifar.py:221",
            "SC's weight_decay is the coupled L2 of its L2 methods: clenv's --reg l2",
        ),
        option="--optimizer-weight-decay",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="augment",
        what="flip, padded crop and rotation",
        lop=Value(
            True, "lop/incremental_cifar/incremental_cifar_experiment.py:323-326"
        ),
        sc=Value(
            False,
            "incremental_cifar/train_incremental_cifar.py:391-393",
            "the raw arrays",
        ),
        option="--augment",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="normalize",
        what="per-channel normalisation",
        lop=Value(
            True, "lop/incremental_cifar/incremental_cifar_experiment.py:316-320"
        ),
        sc=Value(
            False,
            "incremental_cifar/train_incremental_cifar.py:391-393",
            "the raw arrays",
        ),
        option="--normalize",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="restore_best_validation",
        what="restore the best validation epoch's weights at each task end",
        lop=Value(
            True,
            "lop/incremental_cifar/cfg/base_deep_learning_system.json:24",
            "early_stopping",
        ),
        sc=Value(
            False,
            "incremental_cifar/train_incremental_cifar.py:441-452",
            "trains every epoch and keeps the last weights",
        ),
        option="--restore-best-validation",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_every_tasks",
        what="Hessian spectrum every k-th task (start and end)",
        lop=None,
        sc=Value(
            1, "incremental_cifar/scripts/hyperparams/hessian/l2_er_hessian.py:21"
        ),
        option="--curvature-every-tasks",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_order",
        what="Lanczos iterations of the spectral density",
        lop=None,
        sc=Value(
            16,
            "incremental_cifar/train_incremental_cifar.py:420; incremental_cifar/train_incremental_cifar.py:435",
        ),
        option="--curvature-order",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="metric_samples",
        what="samples the curvature is computed on",
        lop=None,
        sc=Value(2000, "incremental_cifar/config.py:54"),
        option="--metric-samples",
        test="tests/test_supervised_agent.py::test_protocol_rows_fill_unset_options",
    ),
    Row(
        name="curvature_classes",
        what="the classes whose samples the curvature is computed on",
        lop=None,
        sc=Value(
            "new",
            "incremental_cifar/train_incremental_cifar.py:402-413",
            "the 5 classes the task adds (the logits stay those of every class seen)",
        ),
        option="--curvature-classes",
        test="tests/test_supervised_agent.py::test_sc_cifar_curvature_on_new_classes_in_train_mode",
    ),
    Row(
        name="curvature_batchnorm",
        what="BatchNorm mode of the Hessian's loss",
        lop=None,
        sc=Value(
            "train",
            "incremental_cifar/train_incremental_cifar.py:91-98",
            "batch statistics of the curvature samples; the running statistics are left untouched",
        ),
        option="--curvature-batchnorm",
        test="tests/test_supervised_agent.py::test_sc_cifar_curvature_on_new_classes_in_train_mode",
    ),
    # Env settings (kind="env": gym.make keywords of clenv/IncrementalCIFAR100-v0).
    Row(
        name="train_images_per_class",
        what="training images per class; the rest of the 500 form the validation set",
        lop=Value(
            450,
            "lop/incremental_cifar/incremental_cifar_experiment.py:348-349",
            "50 per class validate (best-validation weights are restored)",
        ),
        sc=Value(
            500,
            "incremental_cifar/train_incremental_cifar.py:180; "
            "incremental_cifar/train_incremental_cifar.py:391-393",
            "every training image of the seen classes trains; no validation split",
        ),
        option="--env-kwargs train_images_per_class=...",
        test="tests/test_supervised_envs.py::test_env_rows_build_each_papers_env",
        kind="env",
    ),
    Row(
        name="reshuffle_each_epoch",
        what="a new order of the task's images every epoch (else one order per task)",
        lop=Value(
            True,
            "lop/incremental_cifar/incremental_cifar_experiment.py:339",
            "DataLoader(shuffle=True)",
        ),
        sc=Value(
            False,
            "incremental_cifar/train_incremental_cifar.py:243-244; "
            "incremental_cifar/train_incremental_cifar.py:441-452; "
            "incremental_cifar/load_cifar.py:25-26",
            "the data file is shuffled once when written; every epoch slices the "
            "task's images in that order. clenv draws the order at the task's start",
        ),
        option="--env-kwargs reshuffle_each_epoch=...",
        test="tests/test_supervised_envs.py::test_env_rows_build_each_papers_env",
        kind="env",
    ),
    # Model settings (kind="model": keywords of clenv.models.IncrementalCIFARResNet18).
    Row(
        name="init",
        what="initialisation of the convolutions and linear layers (zero biases, "
        "BatchNorm 1 and 0 in both)",
        lop=Value(
            "lop",
            "lop/incremental_cifar/incremental_cifar_experiment.py:104; "
            "lop/nets/torchvision_modified_resnet.py:261-271",
            "kaiming_init_resnet_module after construction: convs Kaiming-normal "
            "(fan_in, ReLU gain), the head Kaiming-normal (fan_in, linear gain); it "
            "replaces the constructor's fan_out init (torchvision_modified_resnet.py:155)",
        ),
        sc=Value(
            "sc",
            "incremental_cifar/model.py:13-15; incremental_cifar/model.py:170-198",
            "truncated normal: convs variance 2 / fan_out, linear layers (the two "
            "extra FC and the head) variance 1 / fan_out",
        ),
        option="IncrementalCIFARResNet18(init=...)",
        test="tests/test_models.py::test_model_rows_build_each_papers_model",
        kind="model",
    ),
    Row(
        name="norm",
        what="LayerNorm before each hidden activation (SC's laynorm_l2 runs)",
        lop=None,
        sc=Value(
            "layer",
            "incremental_cifar/scripts/hyperparams/layernorm_l2.py:15; incremental_cifar/model.py:177-188",
            "LayerNorm on the two extra FC layers; the convolutions keep BatchNorm",
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
        lop=None,
        sc=Value(
            0.001,
            "incremental_cifar/scripts/hyperparams/l2_er.py:7",
            "from SC's grid 1e-3/1e-4/1e-5; the value SC reports",
        ),
    ),
    method_row(
        name="er.ascent_lr",
        what="ER-only ascent step eta_ER",
        lop=None,
        sc=Value(
            0.0001,
            "incremental_cifar/scripts/hyperparams/er.py:6",
            "from SC's grid 1e-2/1e-3/1e-4; the value SC reports",
        ),
    ),
    method_row(
        name="er.ascent_lr",
        what="L2-ER ascent step eta_ER",
        lop=None,
        sc=Value(
            0.001,
            "incremental_cifar/scripts/hyperparams/l2_er.py:6",
            "from SC's grid 1e-2/1e-3/1e-4; the value SC reports",
        ),
        when="l2+er",
    ),
    method_row(
        name="er.interval",
        what="U: minibatches per ascent (the agent groups U minibatches)",
        lop=None,
        sc=Value(5, "incremental_cifar/config.py:33"),
    ),
    method_row(
        name="er.schedule",
        what="one ascent per group of U minibatches",
        lop=None,
        sc=Value("epoch", "incremental_cifar/train_incremental_cifar.py:287-306"),
    ),
    method_row(
        name="er.timing",
        what="the ascent runs on the next U minibatches' inputs, before training on them",
        lop=None,
        sc=Value("before", "incremental_cifar/train_incremental_cifar.py:288-302"),
        test="tests/test_methods.py::test_er_before_timing_ascends_in_before_epoch_and_not_after_epoch",
    ),
    method_row(
        name="er.last_layers",
        what="ranked layers: the last two (the extra FC layers)",
        lop=None,
        sc=Value(2, "incremental_cifar/train_incremental_cifar.py:59"),
    ),
    method_row(
        name="cbp.replacement_rate",
        what="units replaced per unit per step",
        lop=Value(1e-05, "lop/incremental_cifar/cfg/continual_backpropagation.json:20"),
        sc=Value(
            1e-05,
            "incremental_cifar/scripts/hyperparams/cbp.py:6",
            "from SC's grid 1e-4/1e-5/1e-6; the value SC reports",
        ),
    ),
    method_row(
        name="cbp.maturity_threshold",
        what="steps before a unit can be replaced",
        lop=Value(1000, "lop/incremental_cifar/cfg/continual_backpropagation.json:22"),
        sc=Value(100, "incremental_cifar/config.py:61"),
    ),
    method_row(
        name="cbp.utility",
        what="CBP's utility",
        lop=Value(
            "contribution",
            "lop/incremental_cifar/cfg/continual_backpropagation.json:21",
        ),
        sc=Value("contribution", "incremental_cifar/cbp.py:162"),
        test="tests/test_methods_units.py::test_cbp_adaptable_contribution_matches_its_formula",
    ),
    method_row(
        name="cbp.replacement_count",
        what="what the rate multiplies: mature units or all units",
        lop=Value("all", "lop/algos/res_gnt.py:78; lop/algos/res_gnt.py:127"),
        sc=Value("eligible", "incremental_cifar/cbp.py:169"),
        test="tests/test_methods_units.py::test_cbp_replacement_count_all_counts_every_unit_of_the_layer",
    ),
    method_row(
        name="cbp.reset_optimizer_state",
        what="zero the replaced units' optimizer state",
        lop=Value(
            False, "lop/algos/res_gnt.py:168-197", "ResGnT never touches the optimizer"
        ),
        sc=Value(
            False,
            "incremental_cifar/cbp.py:264-266",
            "optax's SGD-momentum trace is kept",
        ),
        test="tests/test_methods_units.py::test_cbp_can_keep_the_optimizer_state_and_draws_with_init_gain",
    ),
    method_row(
        name="cbp.variant",
        what="CBP's definition",
        lop=Value("lop", "lop/algos/res_gnt.py:99-166"),
        sc=Value(
            "lop",
            "incremental_cifar/cbp.py:17-37",
            "the paper's CBP (LoP's definition); SC's own CBP code replaces the highest-utility units, re-draws outgoing weights and skips bias correction: pass --method-kwargs cbp__variant=sc_code to reproduce SC's CBP curves (docs/methods.md)",
        ),
        test="tests/test_methods_units.py::test_cbp_sc_code_variant_replaces_the_highest_utility_units",
    ),
    method_row(
        name="snp.weight_decay",
        what="S&P shrink (coupled weight decay)",
        lop=Value(
            0.0,
            "lop/incremental_cifar/cfg/shrink_and_perturb.json:12",
            "LoP's shrink is the optimizer's weight decay 5e-4 of every CIFAR run (an agent setting), so S&P adds none",
        ),
        sc=None,
    ),
    method_row(
        name="snp.noise_std",
        what="S&P noise sigma",
        lop=Value(1e-05, "lop/incremental_cifar/cfg/shrink_and_perturb.json:16"),
        sc=Value(1e-05, "incremental_cifar/config.py:24"),
    ),
    method_row(
        name="reset.reset_optimizer_state",
        what="clear the optimizer state at a full reset",
        lop=Value(
            False,
            "lop/incremental_cifar/incremental_cifar_experiment.py:466-469",
            "the SGD momentum is kept",
        ),
        sc=Value(
            True,
            "incremental_cifar/train_incremental_cifar.py:364-378",
            "a new optimizer state is built",
        ),
        test="tests/test_methods_units.py::test_resets_keep_or_clear_the_optimizer_state",
    ),
    method_row(
        name="head_reset.reset_optimizer_state",
        what="clear the head's optimizer state at a reset",
        lop=Value(
            False,
            "lop/incremental_cifar/incremental_cifar_experiment.py:466-467",
            "the SGD momentum is kept",
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
            "incremental_cifar/scripts/hyperparams/hessian/spec_reg_hessian.py:6",
            "SC's Hessian run (analysis/fig4.py:172); its grid 1e-2/1e-3/1e-4 is incremental_cifar/scripts/hyperparams/spectral_reg.py:6",
        ),
    ),
    method_row(
        name="spectral.k",
        what="exponent k of sigma_max in (sigma_max^k - target)^2",
        lop=None,
        sc=Value(2, "incremental_cifar/config.py:39"),
    ),
    method_row(
        name="spectral.target",
        what="value sigma_max^k is pulled toward",
        lop=None,
        sc=Value(2.0, "incremental_cifar/config.py:40"),
    ),
    method_row(
        name="spectral.power_iterations",
        what="power-iteration steps per update",
        lop=None,
        sc=Value(10, "incremental_cifar/config.py:41"),
    ),
    method_row(
        name="l2.weight_decay",
        what="L2 coefficient lambda with LayerNorm (SC's LayerNorm-L2)",
        lop=None,
        sc=Value(
            0.0001,
            "incremental_cifar/scripts/hyperparams/hessian/layernorm_l2_hessian.py:6",
            "from SC's grid 1e-3/1e-4/1e-5 (incremental_cifar/scripts/hyperparams/layernorm_l2.py:6); SC's single LayerNorm-L2 spectrum run, at step size 1e-2 (line 5, the default)",
        ),
        when="l2+layernorm",
    ),
]
