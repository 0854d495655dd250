"""N seeds batched in one BatchedMLPTrainer give each seed's single-seed run."""

from __future__ import annotations

import copy
import inspect
import io

import pytest
import torch

from clenv.fastpath import BatchedMLPTrainer, FastMLPTrainer, load_kernel
from clenv.methods import EffectiveRankAscent, make_method
from clenv.models import PermutedMNISTMLP

NUM_SEEDS = 3
# (backend, graphs): batched steps eagerly, batched static programs (what CUDA graphs
# replay), and the native kernel per seed on the shared tensors.
MODES = [("batched", "off"), ("batched", "on"), pytest.param(
    ("native", "off"), marks=pytest.mark.skipif(load_kernel() is None,
                                                reason="no C++ compiler"))]  # fmt: skip
CASES = [
    ("bp", {}),
    ("l2", {"weight_decay": 1e-2}),
    ("l2er", {"weight_decay": 1e-2, "er__interval": 7}),
    # A high replacement rate so that many units are replaced within 120 steps.
    ("cbp", {"cbp__replacement_rate": 0.02, "cbp__maturity_threshold": 10}),
    ("cbp+l2", {"cbp__replacement_rate": 0.02, "cbp__maturity_threshold": 10,
                "cbp__utility": "adaptable_contribution"}),
]  # fmt: skip
CASE_IDS = [reg for reg, _ in CASES]
if "gradient" in inspect.signature(EffectiveRankAscent).parameters:
    # The default is the closed-form gradient; the autograd one too.
    CASES.append(("l2er", {"weight_decay": 1e-2, "er__interval": 7,
                           "er__gradient": "autograd"}))  # fmt: skip
    CASE_IDS.append("l2er-autograd")


def small_model(seed, width=16, dtype=torch.float64, norm=None):
    torch.manual_seed(seed)
    model = PermutedMNISTMLP(
        input_dim=30, width=width, depth=3, num_classes=5, norm=norm
    )
    with torch.no_grad():  # non-zero biases exercise bias updates and L2 on them
        for layer in model.linear_layers:
            layer.bias.uniform_(-0.1, 0.1)
    return model.to(dtype)


def stream(seed, n=120, dim=30, classes=5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=generator, dtype=dtype)
    x[x < 0.7] = 0
    return x, torch.randint(0, classes, (n,), generator=generator)


def seeds_setup(reg, overrides, n=120):
    """Per seed: a model, its method (CBP generator seeded by the seed) and stream."""
    models = [small_model(seed) for seed in range(NUM_SEEDS)]
    methods = [
        make_method(reg, model, None, preset="pmnist", seed=seed, **overrides)
        for seed, model in enumerate(models)
    ]
    streams = [stream(100 + seed, n=n) for seed in range(NUM_SEEDS)]
    return models, methods, streams


def run_batched(trainer, streams, chunks):
    """Train on the stacked streams in chunks of the given lengths (cycled)."""
    x = torch.stack([s[0] for s in streams])
    y = torch.stack([s[1] for s in streams])
    outputs, position, index = [], 0, 0
    while position < x.shape[1]:
        stop = min(position + chunks[index % len(chunks)], x.shape[1])
        outputs.append(trainer.train(x[:, position:stop], y[:, position:stop]))
        position, index = stop, index + 1
    return torch.cat([p for p, _ in outputs], 1), torch.cat(
        [loss for _, loss in outputs], 1
    )


def run_single(model, method, x, y, chunk, loss="cross_entropy"):
    trainer = FastMLPTrainer(model, 0.05, method=method, loss=loss)
    outputs = [trainer.train(x[s : s + chunk], y[s : s + chunk])
               for s in range(0, x.shape[0], chunk)]  # fmt: skip
    return torch.cat([p for p, _ in outputs]), torch.cat([loss for _, loss in outputs])


def method_tensors(method):
    """Every tensor and number in a method's state_dict, flattened (not the rng)."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, list | tuple):
            for key, item in enumerate(value):
                walk(f"{prefix}.{key}", item)
        elif not prefix.endswith("rng"):
            flat[prefix] = value

    walk("", method.state_dict())
    return flat


def assert_same_state(a, b, rtol=1e-9, atol=1e-11):
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert torch.allclose(value, b[key], rtol=rtol, atol=atol), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("mode", MODES, ids=["batched", "programs", "native"])
@pytest.mark.parametrize("reg,overrides", CASES, ids=CASE_IDS)
def test_batched_seeds_equal_separate_single_seed_runs(reg, overrides, mode):
    models, methods, streams = seeds_setup(reg, overrides)
    singles = copy.deepcopy((models, methods))
    backend, graphs = mode
    trainer = BatchedMLPTrainer(models, 0.05, methods, graphs=graphs,
                                max_graph_steps=8, backend=backend)  # fmt: skip
    assert trainer.backend == backend
    # chunk 13 is coprime with the ER interval: ascents fall inside chunks.
    predictions, losses = run_batched(trainer, streams, [13])
    for seed in range(NUM_SEEDS):
        model, method = singles[0][seed], singles[1][seed]
        single_predictions, single_losses = run_single(
            model, method, *streams[seed], 13
        )
        assert torch.equal(predictions[seed], single_predictions), seed
        assert torch.allclose(losses[seed], single_losses, rtol=1e-9, atol=1e-12)
        assert_same_state(models[seed].state_dict(), model.state_dict())
        assert_same_state(method_tensors(methods[seed]), method_tensors(method))
        # training changed the net (the comparison is not vacuous)
        assert not torch.allclose(model.head.weight, small_model(seed).head.weight)
    assert trainer.num_steps == 120
    if "er" in reg:
        assert all(er.num_ascents == 120 // 7 for er in trainer.ers)
    if "cbp" in reg:
        replaced = [sum(trainer.seed(i).cbp.num_replaced) for i in range(NUM_SEEDS)]
        assert all(count > 10 for count in replaced), replaced
    # The seeds differ (each has its own weights and stream).
    assert not torch.allclose(models[0].head.weight, models[1].head.weight)


@pytest.mark.parametrize("mode", MODES, ids=["batched", "programs", "native"])
@pytest.mark.parametrize("reg,overrides", [CASES[0], CASES[2]], ids=["bp", "l2er"])
def test_batched_mse_seeds_equal_separate_single_seed_runs(reg, overrides, mode):
    """--loss mse (SC's bp_mse) in lockstep: each seed the single run (which
    tests/test_fastpath.py checks against autograd)."""
    models, methods, streams = seeds_setup(reg, overrides)
    singles = copy.deepcopy((models, methods))
    backend, graphs = mode
    trainer = BatchedMLPTrainer(models, 0.05, methods, graphs=graphs,
                                max_graph_steps=8, backend=backend, loss="mse")  # fmt: skip
    predictions, losses = run_batched(trainer, streams, [13])
    for seed in range(NUM_SEEDS):
        model, method = singles[0][seed], singles[1][seed]
        single_predictions, single_losses = run_single(
            model, method, *streams[seed], 13, loss="mse"
        )
        assert torch.equal(predictions[seed], single_predictions), seed
        assert torch.allclose(losses[seed], single_losses, rtol=1e-9, atol=1e-12)
        assert_same_state(models[seed].state_dict(), model.state_dict())
    # MSE's losses, not cross-entropy's (log 5 = 1.6 at the start).
    ce_models, ce_methods, _ = seeds_setup(reg, overrides)
    ce = BatchedMLPTrainer(ce_models, 0.05, ce_methods, graphs=graphs,
                           max_graph_steps=8, backend=backend)  # fmt: skip
    ce_losses = run_batched(ce, streams, [13])[1]
    assert float(losses[:, 0].max()) < 1.0 < float(ce_losses[:, 0].min())
    with pytest.raises(ValueError, match="loss must be one of"):
        BatchedMLPTrainer(models, 0.05, loss="hinge")


@pytest.mark.parametrize("reg,overrides", CASES, ids=CASE_IDS)
def test_any_chunking_and_static_programs_give_the_same_run(reg, overrides):
    """Chunked == unchunked, eager == static programs (what CUDA graphs replay),
    bit for bit on CPU."""
    results = []
    for chunks, graphs, longest in (
        ([120], "off", 128), ([1, 5, 17, 64], "off", 128), ([13], "on", 4),
        ([120], "on", 128), ([2, 31], "on", 16),
    ):  # fmt: skip
        models, methods, streams = seeds_setup(reg, overrides)
        trainer = BatchedMLPTrainer(models, 0.05, methods, graphs=graphs,
                                    max_graph_steps=longest, backend="batched")  # fmt: skip
        predictions, losses = run_batched(trainer, streams, chunks)
        results.append((predictions, losses, [m.state_dict() for m in models]))
    first = results[0]
    for predictions, losses, states in results[1:]:
        assert torch.equal(predictions, first[0])
        assert torch.equal(losses, first[1])
        for state, reference in zip(states, first[2], strict=True):
            for key, value in state.items():
                assert torch.equal(value, reference[key]), key


def test_per_seed_state_is_a_single_runs_and_resumes_the_run():
    """Each seed's model/method/trainer state dicts are what a single run holds
    (own tensors, same keys), and loading them into fresh objects continues the
    same batched run."""
    reg = "cbp+l2+er"
    overrides = {"cbp__replacement_rate": 0.05, "cbp__maturity_threshold": 5,
                 "er__interval": 7}  # fmt: skip
    models, methods, streams = seeds_setup(reg, overrides, n=90)
    trainer = BatchedMLPTrainer(models, 0.05, methods, backend="batched")
    head = [(x[:40], y[:40]) for x, y in streams]
    tail = [(x[40:], y[40:]) for x, y in streams]
    run_batched(trainer, head, [40])
    saved = []
    for seed in range(NUM_SEEDS):
        state = (models[seed].state_dict(), methods[seed].state_dict(),
                 trainer.seed(seed).state_dict())  # fmt: skip
        for value in state[0].values():  # a copy, not a view of the stacked weights
            assert value.untyped_storage().nbytes() == value.numel() * 8
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved.append(buffer.getvalue())
    # A single run of seed 0 to step 40 holds the same state, file size included.
    single_models, single_methods, _ = seeds_setup(reg, overrides, n=90)
    run_single(single_models[0], single_methods[0], *head[0], 40)
    single_state = (single_models[0].state_dict(), single_methods[0].state_dict(),
                    {"num_steps": 40})  # fmt: skip
    assert_same_state(single_state[0], torch.load(io.BytesIO(saved[0]))[0])
    buffer = io.BytesIO()
    torch.save(single_state, buffer)
    assert abs(len(buffer.getvalue()) - len(saved[0])) < 200
    first = run_batched(trainer, tail, [50])
    final = [copy.deepcopy(m.state_dict()) for m in models]

    resumed_models, resumed_methods, _ = seeds_setup(reg, overrides, n=90)
    for seed in range(NUM_SEEDS):
        model_state, method_state, _ = torch.load(io.BytesIO(saved[seed]))
        resumed_models[seed].load_state_dict(model_state)
        resumed_methods[seed].load_state_dict(method_state)
    resumed = BatchedMLPTrainer(resumed_models, 0.05, resumed_methods,
                                backend="batched")  # fmt: skip
    for seed in range(NUM_SEEDS):
        resumed.seed(seed).load_state_dict(torch.load(io.BytesIO(saved[seed]))[2])
    second = run_batched(resumed, tail, [50])
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for seed in range(NUM_SEEDS):
        for key, value in resumed_models[seed].state_dict().items():
            assert torch.equal(value, final[seed][key]), key


def test_seed_models_stay_current_and_replaced_tensors_are_taken_in():
    models, methods, streams = seeds_setup("bp", {})
    trainer = BatchedMLPTrainer(models, 0.05, methods, backend="batched")
    run_batched(trainer, [(x[:10], y[:10]) for x, y in streams], [10])
    # The model's own forward sees the trained weights (views of the stack).
    assert torch.equal(models[1].head.weight, trainer.weights[-1][1])
    # A wholesale replacement (as a reset might do) is copied into the stack.
    with torch.no_grad():
        models[2].head.weight.data = torch.zeros_like(models[2].head.weight)
        models[0].head.bias.zero_()  # in place: shared at once
    assert trainer.biases[-1][0].abs().sum() == 0
    run_batched(trainer, [(x[10:11], y[10:11]) for x, y in streams], [1])
    assert models[2].head.weight.data_ptr() == trainer.weights[-1][2].data_ptr()
    assert models[2].head.weight.abs().sum() < 1.0  # zeros + one small update
    trainer.release()
    assert models[2].head.weight.data_ptr() != trainer.weights[-1][2].data_ptr()


def test_rejects_mixed_configurations_and_bad_inputs():
    models, methods, _ = seeds_setup("l2", {"weight_decay": 1e-2})
    other = make_method("l2", models[2], None, weight_decay=1e-3)
    with pytest.raises(ValueError, match="seed 2's l2 options"):
        BatchedMLPTrainer(models, 0.05, [*methods[:2], other])
    with pytest.raises(ValueError, match="one architecture"):
        BatchedMLPTrainer([models[0], small_model(3, width=8)], 0.05)
    with pytest.raises(ValueError, match="one method per model"):
        BatchedMLPTrainer(models, 0.05, methods[:2])
    snp = make_method("snp", models[0], None)
    with pytest.raises(ValueError, match="seed 0: the fast path cannot run 'snp'"):
        BatchedMLPTrainer(models, 0.05, [snp, None, None])
    l2init = make_method("l2init", models[0], None)
    with pytest.raises(ValueError, match="seed 0: the lockstep trainer cannot run"):
        BatchedMLPTrainer(models, 0.05, [l2init, None, None])
    normed = [small_model(seed, norm="layer") for seed in range(2)]
    with pytest.raises(ValueError, match="without LayerNorm"):
        BatchedMLPTrainer(normed, 0.05)
    with pytest.raises(ValueError, match="power of two"):
        BatchedMLPTrainer(models, 0.05, max_graph_steps=6)
    with pytest.raises(ValueError, match="graphs off"):
        BatchedMLPTrainer(models, 0.05, graphs="on", backend="native")
    trainer = BatchedMLPTrainer(models, 0.05, methods)
    x = torch.rand(3, 4, 30, dtype=torch.float64)
    with pytest.raises(ValueError, match="num_seeds=3"):
        trainer.train(x[:2], torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        trainer.train(x, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        trainer.train(x, torch.full((3, 4), 5))
    trainer.seed(1).load_state_dict({"num_steps": 7})
    with pytest.raises(ValueError, match="different steps"):
        trainer.train(x, torch.zeros(3, 4, dtype=torch.long))


def test_cbp_on_hidden_layers_of_different_widths_equals_single_runs():
    """CBP's schedule is planned per hidden layer (here 20 and 9 units)."""

    def model(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 9),
            torch.nn.ReLU(), torch.nn.Linear(9, 5),
        ).double()  # fmt: skip

    options = {"replacement_rate": 0.03, "maturity_threshold": 8}
    models = [model(seed) for seed in range(NUM_SEEDS)]
    singles = [model(seed) for seed in range(NUM_SEEDS)]
    methods = [make_method("cbp", m, None, seed=s, **options)
               for s, m in enumerate(models)]  # fmt: skip
    single_methods = [make_method("cbp", m, None, seed=s, **options)
                      for s, m in enumerate(singles)]  # fmt: skip
    streams = [stream(100 + seed) for seed in range(NUM_SEEDS)]
    trainer = BatchedMLPTrainer(models, 0.05, methods, backend="batched")
    predictions, _ = run_batched(trainer, streams, [25])
    for seed in range(NUM_SEEDS):
        single_predictions, _ = run_single(singles[seed], single_methods[seed],
                                           *streams[seed], 25)  # fmt: skip
        assert torch.equal(predictions[seed], single_predictions)
        assert_same_state(models[seed].state_dict(), singles[seed].state_dict())
        assert min(trainer.seed(seed).cbp.num_replaced) > 0
