"""The fast batch-1 path computes the same training run as the autograd loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clenv.fastpath import (
    FastMLPTrainer,
    fast_path_supports,
    load_kernel,
    mlp_linear_layers,
)
from clenv.losses import make_loss
from clenv.methods import make_method
from clenv.models import PermutedMNISTMLP

BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(
    load_kernel() is None, reason="no C++ compiler"))]  # fmt: skip


def small_model(seed=0, width=24, dtype=torch.float64, norm=None):
    torch.manual_seed(seed)
    model = PermutedMNISTMLP(
        input_dim=30, width=width, depth=3, num_classes=5, norm=norm
    )
    # Non-zero biases (and LayerNorm scales other than 1) exercise every update and
    # L2 on each parameter.
    with torch.no_grad():
        for layer in model.linear_layers:
            layer.bias.uniform_(-0.1, 0.1)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.to(dtype)


def stream(n=240, dim=30, classes=5, dtype=torch.float64, seed=1, zeros=0.7):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=generator, dtype=dtype)
    x[x < zeros] = 0  # mostly zero, like MNIST (the kernel's sparse first layer)
    y = torch.randint(0, classes, (n,), generator=generator)
    return x, y


def autograd_run(
    model, reg, x, y, lr, methods_out=None, loss_name="cross_entropy", **overrides
):
    """The plain loop the fast path must reproduce: batch 1, SGD, method hooks."""
    loss_fn = make_loss(loss_name)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    method = make_method(reg, model, optimizer, preset="pmnist", **overrides)
    if methods_out is not None:
        methods_out.append(method)
    predictions, losses = [], []
    for k in range(x.shape[0]):
        logits = model(x[k : k + 1])
        loss = loss_fn(logits, y[k : k + 1])
        predictions.append(int(logits.detach().argmax()))
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        method.after_backward()
        optimizer.step()
        method.after_step(x[k : k + 1])
    return torch.tensor(predictions), torch.tensor(losses, dtype=x.dtype)


def assert_same_parameters(reference, fast):
    """Every parameter equal up to float64 rounding (named on failure)."""
    for (name, p_ref), p_fast in zip(
        reference.named_parameters(), fast.parameters(), strict=True
    ):
        assert torch.allclose(p_ref, p_fast, rtol=1e-9, atol=1e-11), name


def train_both_ways(
    reference, reg, x, y, lr, backend, loss_name="cross_entropy", **overrides
):
    """Train ``reference`` by autograd and a copy of it on the fast path (chunks of
    13, coprime with the ER intervals used here: ascents fall inside chunks); assert
    the same weights, predictions and losses. Returns (the fast copy, its losses, its
    trainer)."""
    fast = copy.deepcopy(reference)
    ref_pred, ref_loss = autograd_run(
        reference, reg, x, y, lr, loss_name=loss_name, **overrides
    )
    pred, loss, trainer = fast_run(
        fast, reg, x, y, lr, backend, 13, loss_name, **overrides
    )
    assert_same_parameters(reference, fast)
    assert torch.equal(pred, ref_pred)
    assert torch.allclose(loss, ref_loss, rtol=1e-9, atol=1e-12)
    return fast, loss, trainer


def fast_run(
    model, reg, x, y, lr, backend, chunk, loss_name="cross_entropy", **overrides
):
    method = make_method(reg, model, None, preset="pmnist", **overrides)
    trainer = FastMLPTrainer(model, lr, method=method, backend=backend, loss=loss_name)
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
    reference = small_model()
    _, _, trainer = train_both_ways(reference, reg, x, y, 0.05, backend, **overrides)
    assert trainer.backend == backend
    assert trainer.num_steps == x.shape[0]
    # Training really changed the net (the comparison is not vacuous).
    assert not torch.allclose(reference.head.weight, small_model().head.weight)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg", ["bp", "l2er"])
def test_mse_loss_matches_autograd(backend, reg):
    """SC's bp_mse (--loss mse): clenv.losses.one_hot_mse's gradient and value."""
    x, y = stream()
    lr, overrides = 0.05, {"er__interval": 7} if reg == "l2er" else {}
    fast, loss, _ = train_both_ways(
        small_model(), reg, x, y, lr, backend, "mse", **overrides
    )
    # Not cross-entropy's run: the losses and the weights differ from it.
    ce = copy.deepcopy(small_model())
    _, ce_loss, _ = fast_run(ce, reg, x, y, lr, backend, 13, **overrides)
    assert not torch.allclose(loss, ce_loss)
    assert not torch.allclose(ce.head.weight, fast.head.weight)
    with pytest.raises(ValueError, match="loss must be one of"):
        FastMLPTrainer(small_model(), lr, loss="hinge")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reg,overrides,loss_name",
    [
        ("bp", {}, "cross_entropy"),
        ("l2", {"weight_decay": 1e-2}, "cross_entropy"),  # the study's layernorm_l2
        ("l2er", {"weight_decay": 1e-2, "er__interval": 7}, "cross_entropy"),
        ("l2", {"weight_decay": 1e-2}, "mse"),
    ],
)
def test_layer_norm_mlp_matches_autograd(backend, reg, overrides, loss_name):
    """--norm layer (a LayerNorm before each hidden ReLU): the kernel's normalisation,
    its backward and the scale/shift updates equal torch.nn.LayerNorm under autograd."""
    x, y = stream()
    lr = 0.05
    fast, _, trainer = train_both_ways(
        small_model(norm="layer"), reg, x, y, lr, backend, loss_name, **overrides
    )
    assert trainer.backend == backend and len(trainer.norms) == 3
    # The norms were trained (not a vacuous comparison), and they matter: the same
    # weights run as a plain ReLU MLP give another run.
    initial = small_model(norm="layer")
    assert not torch.allclose(fast.layers[1].weight, initial.layers[1].weight)
    plain = small_model()
    fast_run(plain, reg, x, y, lr, backend, 13, loss_name, **overrides)
    assert not torch.allclose(plain.head.weight, fast.head.weight)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reg,overrides,without",
    [
        ("l2init", {"weight_decay": 1e-2}, ("bp", {})),
        ("l2init", {"weight_decay": 1e-2, "halve": True}, ("bp", {})),
        (
            "l2init+l2",
            {"l2init__weight_decay": 1e-2, "l2__weight_decay": 1e-2},
            ("l2", {"weight_decay": 1e-2}),
        ),
        (
            "l2init+er",
            {"weight_decay": 1e-2, "er__interval": 7},
            ("er", {"er__interval": 7}),
        ),
    ],
)
def test_l2init_matches_autograd_and_pulls_toward_the_stored_weights(
    backend, reg, overrides, without
):
    """L2 Init (Kumar et al. 2023) fused into the kernel's update: the same run as
    clenv.methods.L2Init under autograd, toward the component's own theta_0."""
    x, y = stream()
    lr = 0.05
    fast, _, trainer = train_both_ways(
        small_model(), reg, x, y, lr, backend, **overrides
    )
    assert trainer.l2init is not None
    # The pull acts: the same run without L2 Init ends elsewhere.
    plain = small_model()
    fast_run(plain, without[0], x, y, lr, backend, 13, **without[1])
    assert not torch.allclose(plain.head.weight, fast.head.weight)


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2init_reads_the_components_current_initial_weights(backend):
    """theta_0 comes from the component at each call (a resumed run loads it there):
    with theta_0 = 0, L2 Init's 2 lambda (theta - 0) is L2 at weight decay 2 lambda."""
    x, y = stream()
    anchored, decayed = small_model(), small_model()
    method = make_method("l2init", anchored, None, weight_decay=1e-2)
    trainer = FastMLPTrainer(anchored, 0.05, method=method, backend=backend)
    method.load_state_dict(
        {
            **method.state_dict(),
            "initial": [torch.zeros_like(p) for p in method.initial],
        }
    )
    trainer.train(x, y)
    fast_run(decayed, "l2", x, y, 0.05, backend, 240, weight_decay=2e-2)
    for a, b in zip(anchored.parameters(), decayed.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reg,overrides",
    [
        ("nap", {}),
        ("nap+l2", {"weight_decay": 1e-2}),
        ("nap", {"norm_params": "keep"}),
        ("nap", {"include_output": True}),
    ],
)
def test_nap_matches_autograd_and_holds_the_initial_norms(backend, reg, overrides):
    """Normalize-and-Project (Lyle et al. 2024) in the kernel: each step's projection
    of the weights (and LayerNorm scale/shift, jointly) to their initial norms, as
    clenv.methods.NormalizeAndProject's after_step under autograd."""
    x, y = stream()
    fast, _, trainer = train_both_ways(
        small_model(norm="layer"), reg, x, y, 0.05, backend, **overrides
    )
    nap = trainer.nap
    for group, initial in zip(nap.groups, nap.initial_norms, strict=True):
        norm = torch.cat([t.detach().reshape(-1) for t in group]).norm()
        assert torch.isclose(norm, initial.to(norm.dtype), rtol=1e-12)
    # The projection acts: the same run without it ends elsewhere.
    plain = small_model(norm="layer")
    fast_run(plain, reg.replace("nap", "bp"), x, y, 0.05, backend, 13,
             **({"weight_decay": 1e-2} if "l2" in reg else {}))  # fmt: skip
    assert not torch.allclose(plain.layers[0].weight, fast.layers[0].weight)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "reg,overrides",
    [
        ("bp", {}),
        ("l2", {"weight_decay": 1e-2}),
        ("l2er", {"weight_decay": 1e-2, "er__interval": 7}),
        ("l2init", {}),
    ],
)
@pytest.mark.parametrize("width", [24, 400])  # 400: deferred hidden updates (>= 2^18)
def test_crelu_mlp_matches_autograd(backend, reg, overrides, width):
    """--activation crelu (clenv.models.layers.CReLU, two interleaved features per
    unit): the kernel's features and their gradient equal the module's under
    autograd."""
    torch.manual_seed(0)
    reference = PermutedMNISTMLP(
        input_dim=30, width=width, depth=3, num_classes=5, activation="crelu"
    ).double()
    with torch.no_grad():
        for layer in reference.linear_layers:
            layer.bias.uniform_(-0.1, 0.1)
    initial_head = reference.head.weight.detach().clone()
    x, y = stream(n=120)
    lr = 0.05 if width < 100 else 0.002  # the wide net diverges at 0.05
    fast, loss, trainer = train_both_ways(
        reference, reg, x, y, lr, backend, **overrides
    )
    assert trainer.crelu and reference.layers[2].in_features == 2 * width
    assert torch.isfinite(loss).all()
    assert not torch.allclose(fast.head.weight, initial_head)  # it trained


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", [None, "layer"])
@pytest.mark.parametrize(
    "reg,overrides",
    [
        ("head_reset", {}),
        ("reset", {}),
        ("layer_reset", {"layers": "last_two"}),  # the study's arm (below)
    ],
)
def test_task_switch_resets_match_autograd(backend, norm, reg, overrides):
    """The reset methods act only at task switches, in place, between chunks: the
    fast path trains on the reset tensors exactly as the autograd loop does."""
    x, y = stream(n=200)
    lr, switch = 0.05, 120
    reference, fast = small_model(norm=norm), small_model(norm=norm)
    if overrides.get("layers") == "last_two":  # the last hidden layer and the head
        names = [name for name, m in fast.named_modules() if isinstance(m, nn.Linear)]
        overrides = {"layers": names[-2:]}
    optimizer = torch.optim.SGD(reference.parameters(), lr=lr)
    ref_method = make_method(reg, reference, optimizer, preset="pmnist", **overrides)
    fast_method = make_method(reg, fast, None, preset="pmnist", **overrides)
    trainer = FastMLPTrainer(fast, lr, method=fast_method, backend=backend)
    ref_pred = []
    for k in range(x.shape[0]):
        if k == switch:
            torch.manual_seed(7)  # reset's reset_parameters draws from torch's
            ref_method.on_task_switch(1)
        logits = reference(x[k : k + 1])
        ref_pred.append(int(logits.detach().argmax()))
        optimizer.zero_grad()
        F.cross_entropy(logits, y[k : k + 1]).backward()
        ref_method.after_backward()
        optimizer.step()
        ref_method.after_step(x[k : k + 1])
    before, _ = trainer.train(x[:switch], y[:switch])
    trained = copy.deepcopy(fast.state_dict())
    torch.manual_seed(7)
    fast_method.on_task_switch(1)
    changed = [
        k for k, v in fast.state_dict().items() if not torch.equal(v, trained[k])
    ]
    after, _ = trainer.train(x[switch:], y[switch:])
    assert changed, "the switch reset nothing: the comparison would be vacuous"
    assert torch.equal(torch.cat([before, after]), torch.tensor(ref_pred))
    assert_same_parameters(reference, fast)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_inputs_match_autograd(backend):
    x, y = stream(zeros=0.0)
    reference = small_model()
    fast = copy.deepcopy(reference)
    ref_pred, _ = autograd_run(reference, "bp", x, y, 0.05)
    pred, _, _ = fast_run(fast, "bp", x, y, 0.05, backend, 64)
    assert torch.equal(pred, ref_pred)
    for p_ref, p_fast in zip(reference.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg", ["bp", "l2", "l2er"])
@pytest.mark.parametrize("norm", [None, "layer"])
def test_large_layers_with_deferred_updates_match_autograd(backend, reg, norm):
    """Width 600: the kernel defers the updates of layers >= 2^18 weights (rank-16
    corrections, rewritten every 16 examples); 70 examples cross 4 rewrites."""
    torch.manual_seed(0)
    reference = PermutedMNISTMLP(input_dim=784, width=600, depth=2, norm=norm).double()
    fast = copy.deepcopy(reference)
    x, y = stream(n=70, dim=784, classes=10)
    overrides = {"weight_decay": 1e-2} if "l2" in reg else {}
    if reg == "l2er":
        overrides["er__interval"] = 20
    ref_pred, ref_loss = autograd_run(reference, reg, x, y, 0.05, **overrides)
    pred, loss, _ = fast_run(fast, reg, x, y, 0.05, backend, 30, **overrides)
    assert torch.equal(pred, ref_pred)
    assert torch.allclose(loss, ref_loss, rtol=1e-9, atol=1e-12)
    for p_ref, p_fast in zip(reference.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-8, atol=1e-11)


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


@pytest.mark.parametrize(
    "reg,model_kwargs",
    [("l2", {}), ("l2", {"norm": "layer"}), ("nap", {"norm": "layer"}),
     ("l2init", {}), ("bp", {"activation": "crelu"})],
)  # fmt: skip
def test_float32_native_matches_float32_autograd_closely(reg, model_kwargs):
    """At the study's precision the runs differ by rounding only (~1e-6 relative
    after 240 steps here)."""
    x, y = stream(dtype=torch.float32)
    torch.manual_seed(0)
    reference = PermutedMNISTMLP(
        input_dim=30, width=100, depth=3, num_classes=5, **model_kwargs
    )
    fast = copy.deepcopy(reference)
    autograd_run(reference, reg, x, y, 0.01)
    fast_run(fast, reg, x, y, 0.01, "auto", 32)
    for p_ref, p_fast in zip(reference.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg", ["cbp", "cbp+l2"])
def test_cbp_matches_the_autograd_loop_with_clenv_methods(backend, reg):
    x, y = stream()
    lr = 0.05
    # A high replacement rate so that many units are replaced within 240 steps.
    overrides = {"cbp__replacement_rate": 0.02, "cbp__maturity_threshold": 10}
    reference = small_model()
    fast = copy.deepcopy(reference)
    ref_pred, _ = autograd_run(reference, reg, x, y, lr, **overrides)
    pred, _, trainer = fast_run(fast, reg, x, y, lr, backend, 50, **overrides)
    replaced = trainer.cbp.num_replaced
    assert sum(replaced) > 20
    assert torch.equal(pred, ref_pred)
    for p_ref, p_fast in zip(reference.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-9, atol=1e-11)


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
    for option in ({"variant": "sc_code"}, {"replacement_count": "all"}):
        cbp = make_method("cbp", model, None, **option)
        with pytest.raises(ValueError, match="variant='lop'"):
            FastMLPTrainer(model, 0.01, method=cbp)
        cbp.remove()
    er = make_method("er", model, None, schedule="epoch", timing="before")
    with pytest.raises(ValueError, match="schedule='step'"):
        FastMLPTrainer(model, 0.01, method=er)


def test_fast_path_supports_says_which_condition_fails():
    """Every condition the trainer needs, with the reason it is not met; a supported
    run is also one the trainer accepts."""
    model = small_model()

    def sgd(**options):
        return torch.optim.SGD(model.parameters(), lr=0.01, **options)

    def reason(**kwargs):
        support = fast_path_supports(kwargs.pop("model", model), **kwargs)
        assert not support and not support.supported
        return support.reason

    for reg in ("bp", "l2", "er", "l2er", "cbp", "cbp+l2", "head_reset", "reset",
                "layer_reset"):  # fmt: skip
        method = make_method(reg, model, None, preset="pmnist")
        support = fast_path_supports(model, sgd(), method, batch_size=1)
        assert support and support == (True, ""), (reg, support)
        FastMLPTrainer(model, 0.01, method=method)  # accepted
        method.remove()
    assert reason(batch_size=32) == "batch size 32 (batch 1 only)"
    assert reason(optimizer=sgd(momentum=0.9)) == "momentum 0.9 (plain SGD only)"
    assert "optimizer weight decay 0.001" in reason(optimizer=sgd(weight_decay=1e-3))
    adam = torch.optim.Adam(model.parameters())
    assert reason(optimizer=adam) == "optimizer Adam (plain SGD only)"
    tanh = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    assert "Linear-ReLU" in reason(model=tanh)
    assert "cannot run 'snp'" in reason(method=make_method("snp", model, None))
    er = make_method("er", model, None, schedule="epoch", timing="before")
    assert reason(method=er) == "the fast path runs ER with schedule='step' only"
    for option in ({"variant": "sc_code"}, {"accumulate": False}):
        cbp = make_method("cbp", model, None, **option)
        assert "variant='lop'" in reason(method=cbp), option
        cbp.remove()
    other = make_method("cbp", small_model(seed=1), None)
    assert "hidden layers are not the MLP's" in reason(method=other)
    # LayerNorm: every method above but CBP.
    normed = small_model(norm="layer")
    for reg in ("bp", "l2", "l2er", "layer_reset"):
        method = make_method(reg, normed, None, preset="pmnist")
        assert fast_path_supports(normed, method=method), reg
        method.remove()
    cbp = make_method("cbp", normed, None)
    assert "CBP on ReLU MLPs without LayerNorm" in reason(model=normed, method=cbp)
    no_affine = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4, elementwise_affine=False), nn.ReLU(),
        nn.Linear(4, 2),
    )  # fmt: skip
    assert "elementwise_affine=True" in reason(model=no_affine)
    half = nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
        nn.Linear(4, 2),
    )  # fmt: skip
    assert "with or without a LayerNorm" in reason(model=half)
    # L2 Init: on its own model, without CBP or LayerNorm.
    l2init = make_method("l2init", model, None)
    assert fast_path_supports(model, sgd(), l2init)
    for other_model, reg in ((model, "l2init+cbp"), (normed, "l2init")):
        method = make_method(reg, other_model, None)
        assert "l2init without LayerNorm and CBP" in reason(
            model=other_model, method=method
        )
        method.remove()
    foreign = make_method("l2init", small_model(seed=1), None)
    assert "does not hold the MLP's parameters" in reason(method=foreign)
    # NaP: on the MLP's LayerNorm layers, without ER.
    nap = make_method("nap", normed, None)
    assert fast_path_supports(normed, sgd(), nap)
    assert "nap on its MLP's LayerNorm" in reason(
        method=make_method("nap", model, None)
    )
    nap_er = make_method("nap+er", normed, None)
    assert "nap without ER" in reason(model=normed, method=nap_er)
    nap_er.remove()
    # CReLU: without CBP or LayerNorm.
    crelu = PermutedMNISTMLP(input_dim=30, width=8, num_classes=5, activation="crelu")
    assert fast_path_supports(crelu, sgd(), make_method("l2er", crelu, None))
    cbp_crelu = make_method("cbp", crelu, None)
    assert "CBP on ReLU MLPs" in reason(model=crelu, method=cbp_crelu)
    cbp_crelu.remove()
    crelu_norm = PermutedMNISTMLP(
        input_dim=30, width=8, activation="crelu", norm="layer"
    )
    assert "CReLU instead of ReLU (no LayerNorm)" in reason(model=crelu_norm)
    # The lockstep trainer (--num-seeds) reads its layers with mlp_linear_layers.
    for other in (normed, crelu):
        with pytest.raises(ValueError, match="ReLU MLPs without LayerNorm"):
            mlp_linear_layers(other)


def test_resume_mid_stream_reproduces_the_run():
    """Model, method and trainer state saved mid-stream continue the same run."""
    x, y = stream(n=90)
    overrides = {"cbp__replacement_rate": 0.05, "cbp__maturity_threshold": 5,
                 "er__interval": 7}  # fmt: skip

    def build(model):
        method = make_method("cbp+l2+er", model, None, preset="pmnist", **overrides)
        return method, FastMLPTrainer(model, 0.05, method=method)

    model = small_model()
    method, trainer = build(model)
    trainer.train(x[:40], y[:40])
    saved = copy.deepcopy(
        (model.state_dict(), method.state_dict(), trainer.state_dict())
    )
    first = trainer.train(x[40:], y[40:])[0]
    final = copy.deepcopy(model.state_dict())
    resumed_model = small_model(seed=5)
    resumed_model.load_state_dict(saved[0])
    resumed_method, resumed = build(resumed_model)
    resumed_method.load_state_dict(saved[1])
    resumed.load_state_dict(saved[2])
    second = resumed.train(x[40:], y[40:])[0]
    assert torch.equal(first, second)
    for key, value in resumed_model.state_dict().items():
        assert torch.equal(value, final[key]), key


def test_missing_compiler_is_reported_and_torch_backend_still_works(monkeypatch):
    from clenv.fastpath import native

    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="no C.. compiler found"):
        native.build_kernel()
    model = small_model()
    trainer = FastMLPTrainer(model, 0.05, backend="torch")
    predictions, _ = trainer.train(*stream(n=10))
    assert trainer.backend == "torch" and predictions.shape == (10,)


def test_kernel_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
    from clenv.fastpath import native

    if native._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("CLENV_CACHE_DIR", str(tmp_path))
    first = native.build_kernel()
    assert first.parent == tmp_path / "fastpath" and first.exists()
    mtime = first.stat().st_mtime_ns
    assert native.build_kernel() == first and first.stat().st_mtime_ns == mtime
    assert list(first.parent.iterdir()) == [first]  # no temporary file left behind


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptable_cbp_utilities_match_autograd_without_replacements(backend):
    """The adaptable utility reads the true incoming weights, so the first layer runs
    the kernel's eager sparse update; with no replacement the two paths agree."""
    x, y = stream()
    overrides = {"cbp__utility": "adaptable_contribution", "cbp__replacement_rate": 0.0}
    reference = small_model()
    fast = copy.deepcopy(reference)
    methods = []
    ref_pred, _ = autograd_run(reference, "cbp", x, y, 0.05, methods, **overrides)
    pred, _, trainer = fast_run(fast, "cbp", x, y, 0.05, backend, 50, **overrides)
    assert torch.equal(pred, ref_pred)
    for p_ref, p_fast in zip(reference.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p_ref, p_fast, rtol=1e-9, atol=1e-11)
    (ref_cbp,) = methods
    assert ref_cbp.utility == trainer.cbp.utility == "adaptable_contribution"
    for name in ("utilities", "mean_activations", "ages"):
        for a, b in zip(
            getattr(ref_cbp, name), getattr(trainer.cbp, name), strict=True
        ):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), name
    assert all(float(u.abs().sum()) > 0 for u in trainer.cbp.utilities)


def test_l2er_run_with_the_closed_form_ascent_equals_the_autograd_ascent():
    """A fixed-seed float64 run: the closed-form ascent (manual backward, Gram
    eigendecomposition) and autograd through the SVD give the same weights,
    predictions and ascent count after 30 ascents."""
    x, y = stream(n=600)
    runs = {}
    for gradient in ("closed_form", "autograd"):
        model = small_model()
        overrides = {
            "er__interval": 20,
            "er__ascent_lr": 0.05,
            "er__gradient": gradient,
        }
        predictions, losses, trainer = fast_run(model, "l2er", x, y, 0.05, "torch", 60,
                                                **overrides)  # fmt: skip
        assert trainer.method["er"].num_ascents == 30
        runs[gradient] = (model, predictions, losses)
    (closed, p1, l1), (reference, p2, l2) = runs["closed_form"], runs["autograd"]
    assert torch.equal(p1, p2)
    torch.testing.assert_close(l1, l2, rtol=1e-9, atol=0)
    # Each ascent agrees to ~1e-10; 600 SGD steps amplify that a little.
    for a, b in zip(closed.parameters(), reference.parameters(), strict=True):
        assert (a - b).norm() <= 1e-8 * b.norm()
