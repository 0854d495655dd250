"""``clenv bench`` / ``python -m clenv.bench``: every benchmark script, one table.

Each module ``clenv.bench.<name>`` runs in its own process (a fresh interpreter: no
thread-pool or allocator state carried from one benchmark to the next), its output is
streamed as it runs, and the figures its ``main()`` returns (a dict of name -> number)
are collected into one Markdown table at the end. A benchmark that fails or times out
gets a row saying so, and the command exits with status 1.

Examples::

    clenv bench                                   # every benchmark, default settings
    clenv bench envs metrics                      # only these
    clenv bench gpu                               # batched seeds, CUDA graphs
    clenv bench envs --args "envs=--repeats 3"    # pass arguments to one benchmark
    clenv bench --json bench.json                 # also save the table as JSON
"""

from __future__ import annotations

import json
import os
import pkgutil
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

import clenv.bench
from clenv.cli_kwargs import run_command

RESULT_MARKER = "@@clenv-bench-result@@"
# Runs main() with the given argv and prints what it returned after a marker line.
_RUNNER = (
    "import json, sys, importlib\n"
    "module = importlib.import_module(sys.argv[1])\n"
    "result = module.main(sys.argv[2:])\n"
    "if isinstance(result, dict):\n"
    "    result = {str(k): v for k, v in result.items()}\n"
    f"print({RESULT_MARKER!r} + json.dumps(result, default=repr), flush=True)\n"
)


@dataclass
class BenchResult:
    """One benchmark's outcome: its figures, or why there are none."""

    name: str
    status: str
    seconds: float
    figures: dict[str, object] = field(default_factory=dict)


def available_benchmarks() -> list[str]:
    """Names of the ``clenv.bench.<name>`` modules, sorted."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(clenv.bench.__path__)
        if not info.name.startswith("_")
    )


def run_benchmark(
    name: str, argv: Sequence[str] = (), timeout: float | None = None
) -> BenchResult:
    """Run ``clenv.bench.<name>.main(argv)`` in a subprocess, streaming its output."""
    command = [sys.executable, "-c", _RUNNER, f"clenv.bench.{name}", *argv]
    start = time.perf_counter()
    figures: dict[str, object] = {}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        deadline = None if timeout is None else start + timeout
        for line in process.stdout:
            if line.startswith(RESULT_MARKER):
                returned = json.loads(line[len(RESULT_MARKER) :])
                figures = (
                    returned if isinstance(returned, dict) else {"result": returned}
                )
                continue
            print(f"[{name}] {line}", end="", flush=True)
            if deadline is not None and time.perf_counter() > deadline:
                raise subprocess.TimeoutExpired(command, timeout or 0)
        returncode = process.wait(
            timeout=None if deadline is None else max(deadline - time.perf_counter(), 1)
        )
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return BenchResult(
            name, f"timed out after {timeout:g} s", time.perf_counter() - start
        )
    seconds = time.perf_counter() - start
    status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    return BenchResult(name, status, seconds, figures)


def _format_figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flatten_figures(figures: dict, prefix: str = "") -> dict[str, object]:
    """Nested figures (e.g. per batch size, per method) as ``"a / b / c": value``."""
    flat: dict[str, object] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_figures(value, prefix=f"{name} / "))
        else:
            flat[name] = value
    return flat


def format_table(results: Sequence[BenchResult]) -> str:
    """One Markdown table: a row per figure, a row per failed benchmark."""
    lines = ["| benchmark | figure | value |", "|---|---|---|"]
    for result in results:
        if result.status != "ok":
            lines.append(f"| {result.name} | **{result.status}** | |")
        elif not result.figures:
            lines.append(f"| {result.name} | (main() returned no figures) | |")
        for key, value in flatten_figures(result.figures).items():
            lines.append(f"| {result.name} | {key} | {_format_figure(value)} |")
    times = ", ".join(f"{r.name} {r.seconds:.0f} s" for r in results)
    return "\n".join(lines) + f"\n\nwall time: {times}"


def _parse_bench_args(
    items: Sequence[str], names: Sequence[str]
) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or name not in names:
            raise ValueError(
                f"--args {item!r}: expected NAME=ARGUMENTS with NAME one of {list(names)}, "
                'e.g. --args "envs=--repeats 3"'
            )
        parsed.setdefault(name, []).extend(shlex.split(rest))
    return parsed


@dataclass
class BenchArgs:
    """Run the benchmark scripts (clenv.bench.<name>), each in its own process, and
    collect their figures into one Markdown table; exit status 1 if any failed."""

    benchmarks: Annotated[
        tyro.conf.Positional[tuple[str, ...]],
        tyro.conf.arg(
            metavar="NAME",
            help="benchmarks to run (default: all): "
            + (", ".join(available_benchmarks()) or "(none installed)"),
        ),
    ] = ()
    args: tyro.conf.UseAppendAction[list[str]] = field(default_factory=list)
    """arguments for one benchmark, NAME=ARGS, e.g. --args 'envs=--repeats 3'"""
    timeout: float | None = None
    """seconds allowed per benchmark"""
    json: Path | None = None
    """also write the results"""
    list_benchmarks: Annotated[bool, tyro.conf.arg(name="list")] = False
    """list the benchmarks and exit"""


def run(args: BenchArgs) -> int:
    """Run the chosen benchmarks and print one table; 1 if any failed."""
    names = available_benchmarks()
    if args.list_benchmarks:
        print("\n".join(names))
        return 0
    unknown = [name for name in args.benchmarks if name not in names]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; available: {names}")
    chosen = list(args.benchmarks) or names
    extra = _parse_bench_args(args.args, names)
    results = []
    for index, name in enumerate(chosen, 1):
        print(f"== [{index}/{len(chosen)}] python -m clenv.bench.{name} "
              f"{shlex.join(extra.get(name, []))}", flush=True)  # fmt: skip
        results.append(run_benchmark(name, extra.get(name, []), args.timeout))
    print("\n" + format_table(results))
    if args.json is not None:
        args.json.write_text(
            json.dumps([asdict(r) for r in results], indent=2, default=repr)
        )
        print(f"results written to {args.json}")
    return 0 if all(r.status == "ok" for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``clenv bench``: run the benchmarks ``argv`` names; 1 if any failed."""
    return run(tyro.cli(BenchArgs, args=argv, prog="clenv bench"))


if __name__ == "__main__":
    sys.exit(run_command("clenv bench", main))
