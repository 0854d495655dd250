"""Argument handling of the benchmark scripts (clenv.bench.*): bad values exit with
status 2 and a message naming the flag; good ones parse. No benchmark is timed here
beyond the smallest clenv.bench.methods invocation (a few milliseconds of steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_ppo_bench_parses_good_arguments_and_the_worker_path(monkeypatch):
    args = ppo.PPOBenchArgs(agent=ROOT / "agents" / "ppo_l2er.py", iterations=2)
    assert args.iterations == 2 and args.rounds == 3
    calls = []
    monkeypatch.setattr(ppo, "reference_ppo", lambda *a: calls.append(a))
    argv = ["--worker", "reference", "--env-id", "clenv/X-v0", "--iterations", "3"]
    assert ppo.main(argv) == {}
    assert ppo.main(["--worker=reference"]) == {}
    assert calls == [("clenv/X-v0", 3), ("clenv/SlipperyAnt-v0", 4)]
    # The benchmark starts the worker with exactly these arguments.
    command = ppo.program_command("reference", Path("a.py"), "clenv/X-v0", 3, "runs")
    assert command[1:3] == ["-m", "clenv.bench.ppo"] and command[3:] == argv


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
