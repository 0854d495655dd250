"""The ``clenv`` command line.

::

    clenv list                                   every env id, what changes, its schedule
    clenv download mnist [--data-dir DIR]        fetch a dataset (md5-verified)
    clenv plot runs/<run>... --out fig.png       figures from the runs' metrics.h5
    clenv bench [NAME...]                        every benchmark script, one table
    clenv sweep agents/supervised_l2er.py ...    seeds x methods x hyperparameters on Ray

``clenv <command> --help`` explains each command. Errors in what was asked (a missing
run directory, an unknown dataset, no network) are printed as one line and exit with
status 2 (1 for a failed download); set ``CLENV_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tyro

from clenv.cli_kwargs import run_command
from clenv.data import DATASETS

# Constructor arguments that make up an env's task schedule, shown by ``clenv list``.
SCHEDULE_ARGUMENTS = (
    "switch_every",
    "switch_at",
    "num_tasks",
    "examples_per_task",
    "epochs_per_task",
    "classes_per_task",
    "initial_classes",
    "drift",
    "drift_steps",
    "batch_size",
)
# Registration kwargs that say which base env / parameter a generic class is given.
VARIANT_ARGUMENTS = ("base_env_id", "parameter")


# -- clenv list ----------------------------------------------------------------------
def summary_sentence(doc: str, max_chars: int = 110) -> str:
    """The first sentence of a docstring's first paragraph (Markdown headings skipped)."""
    paragraph: list[str] = []
    for line in (ln.strip() for ln in doc.splitlines()):
        if line.startswith("#") or (not line and not paragraph):
            continue
        if not line:
            break
        paragraph.append(line)
    text = " ".join(paragraph)
    end = text.find(". ")
    sentence = text if end < 0 else text[: end + 1]
    if len(sentence) > max_chars:
        sentence = sentence[: max_chars - 1].rsplit(" ", 1)[0] + "…"
    return sentence


def describe_env(env_id: str) -> dict[str, Any]:
    """An env id's one-line description (first docstring line) and schedule defaults.

    The class is imported but not constructed, so datasets need not be present.

    Returns:
        ``{"id", "entry_point", "description", "schedule", "max_episode_steps"}``; when
        the class cannot be imported, ``description`` says why.
    """
    import gymnasium as gym

    import clenv  # noqa: F401  (registers the ids)

    spec = gym.spec(env_id)
    info: dict[str, Any] = {
        "id": env_id,
        "entry_point": spec.entry_point,
        "max_episode_steps": spec.max_episode_steps,
        "schedule": {},
    }
    try:
        module_name, class_name = str(spec.entry_point).split(":")
        env_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        info["description"] = f"(not available: {type(error).__name__}: {error})"
        return info
    description = summary_sentence(inspect.getdoc(env_class) or "") or class_name
    variant = [str(spec.kwargs[k]) for k in VARIANT_ARGUMENTS if k in spec.kwargs]
    if variant:
        description += f" [{', '.join(variant)}]"
    info["description"] = description
    parameters = inspect.signature(env_class.__init__).parameters
    for name in SCHEDULE_ARGUMENTS:
        if name in spec.kwargs:
            info["schedule"][name] = spec.kwargs[name]
        elif (
            name in parameters
            and parameters[name].default is not inspect.Parameter.empty
        ):
            info["schedule"][name] = parameters[name].default
    return info


def _format_value(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:_}"
    return repr(value)


@dataclass
class ListArgs:
    """Every env id with a one-line description and its task schedule."""

    json: bool = False
    """machine-readable output"""


def cmd_list(args: ListArgs) -> int:
    from clenv.registration import ENV_IDS

    described = [describe_env(env_id) for env_id in ENV_IDS]
    if args.json:
        print(json.dumps(described, indent=2, default=str))
        return 0
    width = max(len(d["id"]) for d in described)
    for d in described:
        print(f"{d['id']:<{width}}  {d['description']}")
        # None means "derived from other arguments" here (e.g. one pass over the data).
        schedule = ", ".join(
            f"{k}={_format_value(v)}" for k, v in d["schedule"].items() if v is not None
        )
        if schedule:
            print(f"{'':<{width}}  schedule: {schedule}")
    print(
        "\nEvery schedule argument can be changed: gym.make(ID, switch_every=...). "
        "Env cards: docs/envs/."
    )
    return 0


# -- clenv download ------------------------------------------------------------------
DatasetName = Literal[DATASETS]


@dataclass
class DownloadArgs:
    """Fetch a dataset into the data root (md5-verified, atomic); imagenet32 needs
    Imagenet32_train.zip under <data-dir>/imagenet32/ first (an image-net.org login)."""

    dataset: tyro.conf.Positional[DatasetName]
    """the dataset"""
    data_dir: str | None = None
    """data root (default: $CLENV_DATA_DIR, else ~/.cache/clenv)"""
    mirror: str | None = None
    """base URL to fetch from instead of the canonical hosts"""


def cmd_download(args: DownloadArgs) -> int:
    from clenv.data import download

    try:
        where = download(args.dataset, root=args.data_dir, mirror=args.mirror)
    except FileNotFoundError:
        raise
    except OSError as error:  # offline, HTTP error: say how to get the files by hand
        print(f"clenv download: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: ready in {where}")
    return 0


# -- clenv plot ----------------------------------------------------------------------
@dataclass
class PlotArgs:
    """Figure from run directories' metrics.h5: performance per task, dead units,
    effective rank, spectral density and ε-rank vs performance (docs/tooling.md)."""

    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """run directories (or runs/ itself)"""
    out: str
    """image to write, e.g. fig.png"""
    metric: str | None = None
    """per-task performance tag (default: first found)"""
    eps: float | None = None
    """ε of the ε-rank panel (default: the ε maximising R², as SC)"""
    title: str | None = None
    """figure title"""


def cmd_plot(args: PlotArgs) -> int:
    from clenv.plotting import plot_runs

    result = plot_runs(
        list(args.run_dirs),
        args.out,
        metric=args.metric,
        eps=args.eps,
        title=args.title,
    )
    print(f"wrote {result.path} with {len(result.panels)} panel(s):")
    for title in result.panels:
        print(f"  - {title}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


# -- the command --------------------------------------------------------------------
def subcommands() -> dict[str, type]:
    """``{command: its tyro Args}``; bench and sweep parse their own arguments."""
    from clenv.bench.__main__ import BenchArgs
    from clenv.sweep import SweepArgs

    return {
        "list": ListArgs,
        "download": DownloadArgs,
        "plot": PlotArgs,
        "bench": BenchArgs,
        "sweep": SweepArgs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clenv`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # bench and sweep parse their own arguments (sweep passes what follows -- on).
    if argv and argv[0] == "bench":
        from clenv.bench.__main__ import main as bench_main

        return run_command("clenv bench", lambda: bench_main(argv[1:]))
    if argv and argv[0] == "sweep":
        from clenv.sweep import SWEEP_ERRORS
        from clenv.sweep import main as sweep_main

        return run_command("clenv sweep", lambda: sweep_main(argv[1:]), SWEEP_ERRORS)
    args = tyro.extras.subcommand_cli_from_dict(
        subcommands(),
        prog="clenv",
        description="Continual-learning environments and plasticity tools."
        + __doc__.split("::")[1].split("``clenv")[0].rstrip(),
        args=argv,
    )
    handlers = {ListArgs: cmd_list, DownloadArgs: cmd_download, PlotArgs: cmd_plot}
    name = next(k for k, v in subcommands().items() if isinstance(args, v))
    return run_command(f"clenv {name}", lambda: handlers[type(args)](args))


if __name__ == "__main__":
    sys.exit(main())
