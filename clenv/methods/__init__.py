"""Plasticity methods as hooks any PyTorch training loop can call.

Build one by its ``--reg`` name and drive it with the hooks::

    method = make_method("l2er", model, optimizer, preset="pmnist")
    method.before_epoch(inputs)           # epoch-wise loops, before an epoch
    loss.backward(); method.after_backward()
    optimizer.step(); method.after_step(inputs)
    method.after_epoch(inputs)            # epoch-wise loops, after an epoch
    method.on_task_switch(task_id)        # when info["task_switch"]

See docs/methods.md.
"""

from __future__ import annotations

from clenv.methods.base import Compose, PlasticityMethod
from clenv.methods.cchain import CChain
from clenv.methods.continual_backprop import ContinualBackprop
from clenv.methods.effective_rank import (
    EffectiveRankAscent,
    ascend_relu_chain,
    effective_rank_gradient,
)
from clenv.methods.inject import PlasticityInjection
from clenv.methods.l2 import L2
from clenv.methods.l2init import L2Init
from clenv.methods.layers import HiddenLayer, find_hidden_layers, find_output_layers
from clenv.methods.nap import NormalizeAndProject
from clenv.methods.parseval import Parseval
from clenv.methods.presets import PRESETS
from clenv.methods.redo import ReDo
from clenv.methods.registry import METHODS, make_method, method_names, split_name
from clenv.methods.resets import FullReset, HeadReset, LayerReset
from clenv.methods.shrink_perturb import ShrinkPerturb
from clenv.methods.spectral import SpectralRegularization
from clenv.methods.upgd import UPGD

__all__ = [
    # building
    "make_method",
    "method_names",
    "split_name",
    "METHODS",
    "PRESETS",
    # interface
    "PlasticityMethod",
    "Compose",
    # methods
    "L2",
    "EffectiveRankAscent",
    "effective_rank_gradient",
    "ascend_relu_chain",
    "ContinualBackprop",
    "ShrinkPerturb",
    "ReDo",
    "HeadReset",
    "FullReset",
    "LayerReset",
    "L2Init",
    "SpectralRegularization",
    "Parseval",
    "UPGD",
    "NormalizeAndProject",
    "PlasticityInjection",
    "CChain",
    # layers
    "HiddenLayer",
    "find_hidden_layers",
    "find_output_layers",
]
