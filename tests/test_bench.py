"""Argument handling of the benchmark scripts (clenv.bench.*): bad values exit with
status 2 and a message naming the flag; good ones parse. No benchmark is timed here
beyond the smallest clenv.bench.methods invocation (a few milliseconds of steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clenv.bench import envs, methods, ppo

ROOT = Path(__file__).resolve().parents[1]


def usage_error(main, argv, capsys) -> str:
    """``main(argv)`` exits with tyro's usage status 2; returns its stderr, unwrapped
    from tyro's box (lines broken at the terminal width, joined by single spaces)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2, argv
    return " ".join(capsys.readouterr().err.replace("│", " ").split())


def test_ppo_bench_refuses_bad_arguments(capsys):
    message = usage_error(ppo.main, ["--iterations", "1"], capsys)
    assert "--iterations must be >= 2" in message and "got 1" in message
    message = usage_error(ppo.main, ["--agent", "nope.py"], capsys)
    assert "--agent nope.py: no such file" in message
    assert "agents/ppo_l2er.py" in message  # says what to pass instead
    assert "--worker" in usage_error(ppo.main, ["--worker", "bp"], capsys)
    message = usage_error(ppo.main, ["--rounds", "0"], capsys)
    assert "--rounds must be >= 1" in message and "got 0" in message
    message = usage_error(ppo.main, ["--base-agent", "old.py"], capsys)
    assert "--base-agent old.py: no such file" in message
    message = usage_error(
        ppo.main, ["--protocol", "sc", "--programs", "bp", "sb3"], capsys
    )
    assert "drop 'sb3' from --programs" in message
    assert "--threads" in usage_error(ppo.main, ["--threads", "2"], capsys)


def test_ppo_bench_parses_good_arguments_and_the_worker_path(monkeypatch):
    args = ppo.PPOBenchArgs(agent=ROOT / "agents" / "ppo_l2er.py", iterations=2)
    assert args.iterations == 2 and args.rounds == 3 and args.threads == "one"
    calls = []
    for worker in ("reference_ppo", "sb3_ppo"):
        monkeypatch.setattr(
            ppo, worker, lambda *a, name=worker, **k: calls.append((name, *a, k))
        )
    argv = ["--worker", "reference", "--env-id", "clenv/X-v0", "--iterations", "3",
            "--threads", "all"]  # fmt: skip
    assert ppo.main(argv) == {}
    assert ppo.main(["--worker=reference"]) == {}
    assert ppo.main(["--worker", "sb3", "--threads", "one"]) == {}
    assert calls == [
        ("reference_ppo", "clenv/X-v0", 3, {"threads": "all"}),
        ("reference_ppo", "clenv/SlipperyAnt-v0", 4, {"threads": "one"}),
        ("sb3_ppo", "clenv/SlipperyAnt-v0", 4, {"threads": "one"}),
    ]
    # The benchmark starts the worker with exactly these arguments.
    command = ppo.program_command(
        "reference", Path("a.py"), "clenv/X-v0", 3, "runs", threads="all"
    )
    assert command[1:3] == ["-m", "clenv.bench.ppo"] and command[3:] == argv


def test_ppo_bench_programs_and_threads():
    def command(program, **options):
        return ppo.program_command(program, Path("new.py"), "clenv/X-v0", 2, "runs",
                                   agent_args=("--num-threads", "2"),
                                   base_agent=Path("old.py"), **options)  # fmt: skip

    sb3 = command("sb3", threads="all")
    assert sb3[3:6] == ["--worker", "sb3", "--env-id"] and sb3[-2:] == [
        "--threads",
        "all",
    ]
    bp, base = command("bp"), command("bp-base")
    assert bp[1] == "new.py" and bp[-2:] == ["--num-threads", "2"]
    # bp-base: the other agent script, with its own defaults (no --agent-args).
    assert base[1] == "old.py" and "--num-threads" not in base
    assert base[base.index("--reg") + 1] == "bp"
    autograd = command("l2er-autograd")
    assert autograd[autograd.index("--method-kwargs") + 1] == "er__gradient=autograd"
    assert autograd[-2:] == ["--num-threads", "2"]
    # One thread each, or each program's own choice (no OMP_NUM_THREADS).
    assert ppo.thread_env("one")["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in ppo.thread_env("all")
    assert "MKL_NUM_THREADS" not in ppo.thread_env("all")
    args = ppo.PPOBenchArgs(agent=ROOT / "agents" / "ppo_l2er.py", threads="all",
                            programs=("reference", "sb3", "bp"))  # fmt: skip
    assert args.programs == ("reference", "sb3", "bp")


def test_methods_bench_refuses_bad_arguments(capsys):
    cases = {
        ("--methods", "bp,nope"): "--methods: ",
        ("--methods", "l2:nope"): "unknown variant 'nope'",
        ("--batch-sizes", "1,0"): "--batch-sizes takes comma-separated positive",
        ("--batch-sizes", "one"): "--batch-sizes takes comma-separated positive",
        ("--rounds", "1,2,3"): "--rounds needs one positive value or one per",
        ("--intervals", "0"): "--intervals takes comma-separated positive",
        ("--block-steps", "0"): "--block-steps must be positive, got 0",
        ("--optimizer", "adam"): "--optimizer",
    }
    for argv, expected in cases.items():
        assert expected in usage_error(methods.main, list(argv), capsys), argv


def test_methods_bench_smallest_run_returns_its_figures(capsys):
    figures = methods.main(
        ["--methods", "bp,l2", "--batch-sizes", "1", "--rounds", "1",
         "--block-steps", "2", "--width", "8", "--intervals", "2"]
    )  # fmt: skip
    assert list(figures) == [1] and list(figures[1]) == ["bp", "l2"]
    assert figures[1]["bp"]["ratio"] == 1.0
    assert figures[1]["l2"]["ms_per_step"] > 0
    table = capsys.readouterr().out.split("b1 x BP\n")[1].splitlines()
    assert [line.split()[0] for line in table] == ["bp", "l2"]


def test_envs_bench_refuses_bad_arguments(capsys):
    for flag in ("--block-steps", "--repeats", "--stub-steps"):
        message = usage_error(envs.main, [flag, "0"], capsys)
        assert "must be positive" in message, flag
    assert "--seed" in usage_error(envs.main, ["--seed", "x"], capsys)
    args = envs.EnvsBenchArgs(block_steps=5, repeats=1, stub_steps=5)
    assert (args.block_steps, args.repeats, args.stub_steps) == (5, 1, 5)


def test_methods_bench_variants_change_the_network_optimizer_or_loss():
    from clenv.losses import one_hot_mse
    from clenv.models import CReLU, FourierFeatures
    from clenv.optim import MuonWithAdam

    def trainer(name):
        return methods.Trainer(name, width=8, lr=0.01, interval=2)

    plain = trainer("bp")
    assert isinstance(plain.optimizer, torch.optim.SGD)
    assert plain.loss is torch.nn.functional.cross_entropy
    assert any(isinstance(m, CReLU) for m in trainer("bp:crelu").model.modules())
    assert any(
        isinstance(m, FourierFeatures) for m in trainer("bp:fourier").model.modules()
    )
    assert any(
        isinstance(m, torch.nn.LayerNorm)
        for m in trainer("l2:layernorm").model.modules()
    )
    assert isinstance(trainer("bp:muon").optimizer, MuonWithAdam)
    assert trainer("bp:mse").loss is one_hot_mse
    # Every method starts from the same weights (the variants aside).
    first = next(trainer("l2").model.parameters())
    assert torch.equal(first, next(plain.model.parameters()))
    with pytest.raises(ValueError, match="unknown variant 'adam' in 'bp:adam'"):
        trainer("bp:adam")


def test_supervised_agent_bench_times_network_variants_on_both_paths(capsys):
    """--methods takes method:variant (the fast path's LayerNorm and CReLU nets), and
    --autograd times the same entries on the autograd loop, with their ratio."""
    from clenv.bench import supervised_agent
    from clenv.fastpath import load_kernel

    if load_kernel() is None:
        pytest.skip("no C++ compiler")
    specs = ["nap:layernorm", "bp:crelu"]
    rates = supervised_agent.main(
        ["--widths", "8", "--rounds", "1", "--seconds", "0.01", "--chunk", "10",
         "--methods", *specs, "--autograd", *specs, "--no-compare-ascent"]
    )  # fmt: skip
    names = set(rates[8])
    assert {"fast nap:layernorm", "autograd bp:crelu"} <= names
    assert all(cpu > 0 and wall > 0 for cpu, wall in rates[8].values())
    output = capsys.readouterr().out
    assert "nap:layernorm: fast path / autograd" in output
    model, reg = supervised_agent.build_model(8, "bp:crelu")
    assert reg == "bp" and model.layers[2].in_features == 16
    with pytest.raises(SystemExit, match="unknown network variant 'muon'"):
        supervised_agent.build_model(8, "bp:muon")
