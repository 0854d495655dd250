"""Class-incremental CIFAR-100: settings of `agents/supervised_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value

TITLE = "Class-incremental CIFAR-100"
AGENT = "agents/supervised_l2er.py"
DEFAULT_PROTOCOL = "sc"

# Agent, env and model settings.
ROWS: list[Row] = [
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
]

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = []
