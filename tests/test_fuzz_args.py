"""Property-based tests (hypothesis) over the command lines: the agents' ``check_args``
(agents/ppo_l2er.py, agents/supervised_l2er.py), ``clenv`` subcommands and ``clenv
sweep --dry-run`` (issue 16 item 6; docs/reliability.md).

Every argument list either validates or is refused before anything runs, with a
message naming the flag: a ``ValueError``/``FileNotFoundError`` whose text names one of
the flags given, or tyro's usage error (``SystemExit(2)``, the message on stderr). A
traceback from anywhere else (numpy, torch, h5py, MuJoCo) fails the test. ``pytest -m
slow tests/test_fuzz_args.py`` runs the deep profile; ``-s`` prints the counts.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
from pathlib import Path

import pytest
from conftest import load_agent_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clenv import cli

REPO = Path(__file__).resolve().parents[1]
TRIED: collections.Counter[str] = collections.Counter()
QUICK = dict(max_examples=30, deadline=None, derandomize=True, database=None)
DEEP = dict(max_examples=400, deadline=None, database=None)
FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

VALUES = st.sampled_from(
    ["-1", "0", "1", "2", "0.5", "5", "-0.0", "nan", "inf", "-inf", "1e400",
     "99999999999999999999", "1e-320", "abc", "", "True", "None", "lop", "sc", "bp",
     "l2er", "x=1", "3,4"]
)  # fmt: skip
# Left alone: where a run goes or comes from, display flags.
NOT_FUZZED = {"resume", "runs_dir", "data_dir", "exp_name", "progress", "plot"}
RUNTIME = {"batch_size", "minibatch_size", "num_iterations"}


def agent_flags(module) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(module.Args)
        if f.name not in NOT_FUZZED | RUNTIME
    ]


@st.composite
def agent_argvs(draw, flags: list[str]) -> list[str]:
    argv: list[str] = []
    for name in draw(st.lists(st.sampled_from(flags), min_size=1, max_size=3)):
        argv.append("--" + name.replace("_", "-"))
        argv += draw(st.lists(VALUES, min_size=0, max_size=3))
    return argv


def outcome(function, argv: list[str]) -> tuple[str, str]:
    """("ok"|"error"|"usage", message) of ``function(argv)``; other exceptions pass
    through (they fail the test)."""
    stderr = io.StringIO()
    try:
        with (
            contextlib.redirect_stderr(stderr),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            result = function(argv)
    except (ValueError, FileNotFoundError) as error:
        return "error", str(error)
    except SystemExit as exit:
        if exit.code in (None, 0):
            return "ok", ""
        return "usage", stderr.getvalue()
    if isinstance(result, int) and result == 2:  # clenv's one-line error
        return "error", stderr.getvalue()
    return "ok", ""


def flags_in(argv: list[str]) -> list[str]:
    flags = [a.split("=")[0] for a in argv if a.startswith("--")]
    return [*flags, *(f.lstrip("-").replace("-", "_") for f in flags)]


def assert_names_a_flag(kind: str, message: str, argv: list[str]) -> None:
    if kind == "ok":
        return
    assert message.strip(), f"{argv}: {kind} without a message"
    if "Unrecognized options:" in message:
        # tyro names the stray tokens (a value after a flag that takes fewer).
        words = message.split("Unrecognized options:", 1)[1].split()
        stray = words[0].rstrip(",").lstrip("-") if words else ""
        if stray.startswith("──") or stray.startswith("--"):
            stray = ""  # an empty token: tyro shows nothing before its rule
        assert any(stray in arg for arg in argv), f"{argv}: {message}"
        return
    if "choose from" in message and any(f"'{arg}'" in message for arg in argv):
        return  # names the value given and the choices (e.g. --reg's method names)
    assert any(flag in message for flag in flags_in(argv)), (
        f"{argv}: the {kind} message names none of the flags given: {message}"
    )


# -- the agents ----------------------------------------------------------------------
AGENTS = {
    "ppo_l2er": ["--env-id", "Pendulum-v1"],
    "supervised_l2er": [],
}


def _agent_test(name: str, profile: dict):
    module = load_agent_module(REPO / "agents" / f"{name}.py")
    base = AGENTS[name]

    @settings(**profile, suppress_health_check=FIXTURE_OK)
    @given(argv=agent_argvs(agent_flags(module)))
    def run(argv):
        TRIED[f"agent {name}"] += 1
        kind, message = outcome(module.check_args, [*base, *argv])
        assert_names_a_flag(kind, message, argv)

    return run


@pytest.mark.parametrize("name", list(AGENTS))
def test_agent_arguments_validate_or_name_the_flag(name, data_dir) -> None:
    _agent_test(name, QUICK)()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(AGENTS))
def test_agent_arguments_deep(name, data_dir) -> None:
    _agent_test(name, DEEP)()


# -- clenv subcommands ---------------------------------------------------------------
SUBCOMMAND_FLAGS = {
    "list": ["--json"],
    "download": ["--data-dir", "--mirror"],
    "plot": ["--out", "--metric", "--eps", "--title"],
}


@st.composite
def cli_argvs(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(SUBCOMMAND_FLAGS)))
    argv = [command]
    if command == "download":
        argv.append(draw(st.sampled_from(["mnist", "cifar100", "nope", ""])))
    if command == "plot":
        argv += draw(st.lists(st.sampled_from(["runs/none", "/", ""]), max_size=2))
    for flag in draw(st.lists(st.sampled_from(SUBCOMMAND_FLAGS[command]), max_size=3)):
        argv.append(flag)
        argv += draw(st.lists(VALUES, max_size=2))
    return argv


def _cli_test(profile: dict):
    @settings(**profile, suppress_health_check=FIXTURE_OK)
    @given(argv=cli_argvs())
    def run(argv):
        TRIED["clenv"] += 1
        if argv[0] == "download" and "--mirror" not in argv:
            argv = [*argv, "--mirror", "http://127.0.0.1:9"]  # never the network
        kind, message = outcome(cli.main, argv)
        if kind != "ok":
            assert message.strip(), argv

    return run


def test_clenv_subcommands_validate_or_exit_with_a_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLENV_DATA_DIR", str(tmp_path / "data"))
    _cli_test(QUICK)()


# -- clenv sweep --dry-run -----------------------------------------------------------
SWEEP_FLAGS = ["--seeds", "--reg", "--grid", "--max-retries", "--cpus-per-trial",
               "--num-cpus", "--max-concurrent", "--name"]  # fmt: skip


@st.composite
def sweep_argvs(draw) -> list[str]:
    argv = [str(REPO / "agents" / "supervised_l2er.py"), "--dry-run"]
    for flag in draw(st.lists(st.sampled_from(SWEEP_FLAGS), max_size=3, unique=True)):
        argv.append(flag)
        if flag == "--grid":
            key = draw(st.sampled_from(["learning-rate", "momentum", "seed", "x"]))
            argv.append(f"{key}={','.join(draw(st.lists(VALUES, max_size=2)))}")
        else:
            argv += draw(st.lists(VALUES, min_size=0, max_size=2))
    if draw(st.booleans()):
        argv += ["--", *draw(agent_argvs(["learning_rate", "num_tasks", "width"]))]
    return argv


def _sweep_test(profile: dict):
    @settings(**profile, suppress_health_check=FIXTURE_OK)
    @given(argv=sweep_argvs())
    def run(argv):
        TRIED["clenv sweep --dry-run"] += 1
        kind, message = outcome(cli.main, ["sweep", *argv])
        assert_names_a_flag(kind, message, argv)
        assert not Path("runs").exists(), f"{argv} left runs/ behind"

    return run


def test_sweep_dry_run_validates_or_names_the_flag(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    _sweep_test(QUICK)()


@pytest.mark.slow
def test_sweep_dry_run_deep(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    _sweep_test(DEEP)()


@pytest.mark.slow
def test_clenv_subcommands_deep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLENV_DATA_DIR", str(tmp_path / "data"))
    _cli_test(DEEP)()


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    if TRIED:
        print("\ninputs tried:", dict(TRIED), "total", sum(TRIED.values()))
