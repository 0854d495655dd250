"""Parseval regularisation (Chung, Cherif, Meger & Precup, *Parseval Regularization
for Continual Reinforcement Learning*, NeurIPS 2024, arXiv:2412.07224; official code
``github.com/wechu/parseval_reg``): keep each hidden layer's rows near-orthogonal,
``W W^T ~ s I``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clenv.checks import check_range
from clenv.methods.base import PlasticityMethod, add_to_grad
from clenv.methods.layers import HiddenLayerSpec, find_hidden_layers


def parseval_penalty(weight: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    """``||W W^T - s I||_F^2`` with W = ``weight.reshape(units, -1)`` (one row per
    unit: a Linear's output feature, a Conv's output channel)."""
    matrix = weight.reshape(weight.shape[0], -1)
    gram = matrix @ matrix.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - scale * eye).square().sum()


class Parseval(PlasticityMethod):
    """``strength * sum_l ||W_l W_l^T - s I||_F^2`` over the hidden layers.

    ``after_backward`` adds the term's gradient, ``4 * strength * (W W^T - s I) W``
    per layer, to ``.grad`` (the same as adding the term to the loss). The layers are
    the hidden layers' weight layers (:func:`clenv.methods.find_hidden_layers`: every
    Linear/Conv followed by an activation); the output layer is left free, as in the
    official code (below), and so are biases. W's rows are
    the units' incoming weights (torch's ``(out, in)`` layout), so the rows of a
    layer with fewer units than inputs can be exactly orthonormal.

    Checked against the official code (``wechu/parseval_reg``, file
    ``parseval_reg/agent.py``): the term is ``||W W^T - s I||_F^2`` on torch's
    ``(out, in)`` weight (``agent.py:296-300``), summed over the layers named
    ``linear_orthog_*``, i.e. the hidden layers and not the output layer
    (``agent.py:284``, ``700``, ``719``, ``729``), biases excluded, added to the
    loss (``agent.py:315-317``). ``s`` is the square of the weight init gain,
    ``2`` (``sqrt(2)^2``) when none is given (``agent.py:286-289``, the default
    orthogonal init gain ``sqrt(2)``, ``agent.py:564-567``): so ``scale`` defaults
    to 2. ``strength`` 1e-3 is the value of the Gridworld and MetaWorld runs
    (``parseval_reg/main.py:337-338``, ``417-418``; 1e-4 on LunarLander and
    Quadruped, ``main.py:367-368``, ``393-394``).

    Not reproduced here: the official code multiplies lambda by
    ``(64 / width)^2`` (``agent.py:315-319``; 1 at its default width 64, so pass
    ``strength=1e-3 * (64 / width) ** 2`` to match it at another width); its
    MetaWorld runs add learnable diagonal layers after each hidden layer
    (``add_diag_layer``, ``main.py:419``, ``agent.py:731-751``) and its Quadruped
    runs a learnable input scale (``main.py:389``), both architecture changes that
    the clenv models do not have; the row-normalised and grouped variants
    (``parseval_norm``, ``parseval_num_groups``, ``agent.py:291-312``) are
    ablations. Neither SC nor LoP runs Parseval, so no preset sets it.

    Args:
        model: the network.
        optimizer: unused (the term goes through whatever optimizer steps).
        strength: lambda.
        scale: s, the target of ``W W^T``'s diagonal (each row's squared norm);
            the official code's default 2 (its init gain ``sqrt(2)`` squared).
        include_output: also regularise the output layer(s).
        hidden_layers: explicit hidden-layer spec (see
            :func:`clenv.methods.find_hidden_layers`).
    """

    name = "parseval"
    order = 23

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        strength: float = 1e-3,
        scale: float = 2.0,
        include_output: bool = False,
        hidden_layers: HiddenLayerSpec = None,
    ):
        check_range("strength", strength, 0)
        self.strength = float(strength)
        self.scale = float(scale)
        self.include_output = bool(include_output)
        hidden = find_hidden_layers(model, hidden_layers)
        layers = [h.layer for h in hidden]
        if self.include_output:
            inner = {id(layer) for layer in layers}
            for h in hidden:
                if id(h.next_layer) not in inner:
                    inner.add(id(h.next_layer))
                    layers.append(h.next_layer)
        self.weights = [layer.weight for layer in layers]

    def penalty(self) -> torch.Tensor:
        """The term at the current weights (differentiable)."""
        return self.strength * sum(
            parseval_penalty(w, self.scale) for w in self.weights
        )

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.strength == 0:
            return
        for weight in self.weights:
            matrix = weight.reshape(weight.shape[0], -1)
            gram = matrix @ matrix.T
            gram.diagonal().sub_(self.scale)
            grad = (gram @ matrix).mul_(4 * self.strength).reshape(weight.shape)
            add_to_grad(weight, grad)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "scale": self.scale,
            "include_output": self.include_output,
        }
