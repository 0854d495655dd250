"""The fast batch-1 path computes the same training run as the autograd loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clenv.fastpath import CBPState, FastMLPTrainer, load_kernel, mlp_linear_layers
from clenv.methods import make_method
from clenv.models import PermutedMNISTMLP

BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(
    load_kernel() is None, reason="no C++ compiler"))]  # fmt: skip


def small_model(seed=0, width=24, dtype=torch.float64):
    torch.manual_seed(seed)
    model = PermutedMNISTMLP(input_dim=30, width=width, depth=3, num_classes=5)
    # Non-zero biases exercise the bias updates and L2 on biases.
    with torch.no_grad():
        for layer in model.linear_layers:
            layer.bias.uniform_(-0.1, 0.1)
    return model.to(dtype)


def stream(n=240, dim=30, classes=5, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=generator, dtype=dtype)
    x[x < 0.5] = 0  # sparse, like MNIST
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def autograd_run(model, reg, x, y, lr, **overrides):
    """The plain loop the fast path must reproduce: batch 1, SGD, method hooks."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    method = make_method(reg, model, optimizer, preset="pmnist", **overrides)
    predictions, losses = [], []
    for k in range(x.shape[0]):
        logits = model(x[k : k + 1])
        loss = F.cross_entropy(logits, y[k : k + 1])
        predictions.append(int(logits.detach().argmax()))
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        method.after_backward()
        optimizer.step()
        method.after_step(x[k : k + 1])
    return torch.tensor(predictions), torch.tensor(losses, dtype=x.dtype)


def fast_run(model, reg, x, y, lr, backend, chunk, **overrides):
    method = make_method(reg, model, None, preset="pmnist", **overrides)
    trainer = FastMLPTrainer(model, lr, method=method, backend=backend)
    outputs = [trainer.train(x[s : s + chunk], y[s : s + chunk])
               for s in range(0, x.shape[0], chunk)]  # fmt: skip
    predictions = torch.cat([p for p, _ in outputs])
    losses = torch.cat([loss for _, loss in outputs])
    return predictions, losses, trainer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reg,overrides",
    [
        ("bp", {}),
        ("l2", {"weight_decay": 1e-2}),
        ("er", {"er__interval": 7, "er__ascent_lr": 1e-2}),
        ("l2er", {"weight_decay": 1e-2, "er__interval": 7}),
    ],
)
def test_same_weights_predictions_and_losses_as_autograd(backend, reg, overrides):
    x, y = stream()
    lr = 0.05
    reference = small_model()
    fast = copy.deepcopy(reference)
    ref_pred, ref_loss = autograd_run(reference, reg, x, y, lr, **overrides)
    # chunk 13 is coprime with the ER interval: ascents fall inside chunks.
    pred, loss, trainer = fast_run(fast, reg, x, y, lr, backend, 13, **overrides)
    assert trainer.backend == backend
    assert trainer.num_steps == x.shape[0]
    for (name, p_ref), p_fast in zip(
        reference.named_parameters(), fast.parameters(), strict=True
    ):
        assert torch.allclose(p_ref, p_fast, rtol=1e-9, atol=1e-11), name
    assert torch.equal(pred, ref_pred)
    assert torch.allclose(loss, ref_loss, rtol=1e-9, atol=1e-12)
    # Training really changed the net (the comparison is not vacuous).
    assert not torch.allclose(reference.head.weight, small_model().head.weight)


def test_er_ascends_every_interval_and_keeps_the_method_state_valid():
    x, y = stream(n=50)
    model = small_model()
    method = make_method("l2er", model, None, preset="pmnist", er__interval=7)
    trainer = FastMLPTrainer(model, 0.05, method=method)
    trainer.train(x[:20], y[:20])
    trainer.train(x[20:], y[20:])
    er = method["er"]
    assert er.num_ascents == 50 // 7
    assert er.num_steps == 50
    assert sum(b.shape[0] for b in er.buffer) == 50 % 7


def test_float32_native_matches_float32_autograd_closely():
    x, y = stream(dtype=torch.float32)
    reference = small_model(dtype=torch.float32, width=100)
    fast = copy.deepcopy(reference)
    autograd_run(reference, "l2", x, y, 0.01)
    fast_run(fast, "l2", x, y, 0.01, "auto", 32)
    for p_ref, p_fast in zip(reference.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-4, atol=1e-5)


def cbp_run(backend, x, y, chunk):
    model = small_model()
    state = CBPState([24, 24, 24], replacement_rate=0.05, maturity_threshold=10,
                     utility="adaptable_contribution", seed=3, dtype=torch.float64)  # fmt: skip
    trainer = FastMLPTrainer(model, 0.05, cbp=state, backend=backend)
    predictions = torch.cat(
        [
            trainer.train(x[s : s + chunk], y[s : s + chunk])[0]
            for s in range(0, x.shape[0], chunk)
        ]  # fmt: skip
    )
    return model, state, predictions


@pytest.mark.skipif(load_kernel() is None, reason="no C++ compiler")
def test_cbp_native_and_torch_agree_and_replace_units():
    x, y = stream()
    model_t, state_t, pred_t = cbp_run("torch", x, y, 17)
    model_n, state_n, pred_n = cbp_run("native", x, y, 50)
    # 3 layers x 0.05 x 24 eligible units per step after maturity: many replacements.
    assert sum(state_t.num_replaced) > 20
    assert state_t.num_replaced == state_n.num_replaced
    assert torch.equal(pred_t, pred_n)
    for a, b in zip(model_t.parameters(), model_n.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    for a, b in zip(state_t.utilities, state_n.utilities, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(state_t.ages, state_n.ages, strict=True):
        assert torch.equal(a, b)


def test_cbp_replacement_keeps_the_output_and_resets_units():
    model = small_model()
    weights = [layer.weight.data for layer in model.linear_layers]
    biases = [layer.bias.data for layer in model.linear_layers]
    state = CBPState([24, 24, 24], replacement_rate=1.0, maturity_threshold=0,
                     dtype=torch.float64)  # fmt: skip
    x = torch.rand(1, 30, dtype=torch.float64)
    # Constant input: the bias-corrected mean activation is the activation itself, so
    # moving the unit's mean contribution into the next bias keeps the output.
    activations = []
    hooks = [m.register_forward_hook(lambda m, i, o: activations.append(o[0].clone()))
             for m in model.layers if isinstance(m, nn.ReLU)]  # fmt: skip
    before = model(x)
    for hook in hooks:
        hook.remove()
    state.update(activations, [w.abs().mean(0) for w in weights[1:]],
                 [w.abs().mean(1) for w in weights[:-1]])  # fmt: skip
    state.accumulated[:] = 0
    state.accumulated[1] = 2.5
    replaced = state.replace(weights, biases)
    assert [r.numel() for r in replaced] == [0, 2, 0]
    units = replaced[1]
    assert torch.count_nonzero(weights[2][:, units]) == 0
    assert torch.count_nonzero(biases[1][units]) == 0
    assert torch.equal(state.ages[1][units], torch.zeros(2, dtype=torch.int64))
    assert state.accumulated[1] == pytest.approx(0.5)
    # The second layer's replaced units' new pre-activations may differ from before,
    # but their output weights are zero, so only the absorbed mean matters.
    assert torch.allclose(model(x), before, atol=1e-10)


def test_rejects_models_and_inputs_it_cannot_run():
    with pytest.raises(ValueError, match="Linear-ReLU"):
        mlp_linear_layers(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)))
    model = small_model()
    trainer = FastMLPTrainer(model, 0.01)
    with pytest.raises(ValueError, match="features per example"):
        trainer.train(torch.rand(2, 31), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        trainer.train(torch.rand(2, 30), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="lr must be > 0"):
        FastMLPTrainer(model, 0.0)


def test_trainer_state_round_trips():
    x, y = stream(n=60)
    model = small_model()
    state = CBPState([24, 24, 24], replacement_rate=0.05, maturity_threshold=5,
                     dtype=torch.float64)  # fmt: skip
    trainer = FastMLPTrainer(model, 0.05, cbp=state)
    trainer.train(x[:30], y[:30])
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(trainer.state_dict())
    first = trainer.train(x[30:], y[30:])[0]
    final = copy.deepcopy(model.state_dict())
    model.load_state_dict(saved_model)
    resumed = FastMLPTrainer(model, 0.05, cbp=CBPState(
        [24, 24, 24], replacement_rate=0.05, maturity_threshold=5, dtype=torch.float64))  # fmt: skip
    resumed.load_state_dict(saved)
    second = resumed.train(x[30:], y[30:])[0]
    assert torch.equal(first, second)
    for key, value in model.state_dict().items():
        assert torch.equal(value, final[key]), key
