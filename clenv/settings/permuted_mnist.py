"""Permuted MNIST: settings of `agents/supervised_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value

TITLE = "Permuted MNIST"
AGENT = "agents/supervised_l2er.py"
DEFAULT_PROTOCOL = "sc"

# Agent, env and model settings.
ROWS: list[Row] = [
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
]

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = []
