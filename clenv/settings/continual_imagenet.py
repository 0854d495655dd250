"""Continual ImageNet: settings of `agents/supervised_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value

TITLE = "Continual ImageNet"
AGENT = "agents/supervised_l2er.py"
DEFAULT_PROTOCOL = "sc"

# Agent, env and model settings.
ROWS: list[Row] = [
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
]

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = []
