"""clenv sweep on a real two-node Ray cluster on this machine; the worker node is killed
mid-sweep (docs/tooling.md "A Ray cluster", docs/reliability.md).

The cluster is started with ``ray start`` (a head and a worker node, 1 CPU each, token
authentication with a random token) and the sweep connects through ``RAY_ADDRESS``, as
a user would. Each node is started with ``CLENV_TEST_NODE=head|worker`` in its
environment, which Ray's workers and so the trials' agent processes inherit: the
test-double agent writes it into its records, so the test knows where every attempt ran.
The agent counts steps, writes a checkpoint after each and, resumed, continues from the
newest one. When one trial has finished on the worker and another one is half-way
there, every process of the worker node (raylet, Ray workers, agents) gets SIGKILL.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
STEPS, STEP_SECONDS = 24, 0.25

STEPPING_AGENT = """
import argparse, json, os, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--reg", default="bp")
parser.add_argument("--exp-name", default="stepping")
parser.add_argument("--runs-dir", default="runs")
parser.add_argument("--resume", default=None)
args = parser.parse_args()
if args.resume:
    resume = args.resume
    args = argparse.Namespace(**json.loads((Path(resume) / "args.json").read_text()))
    run_dir = Path(resume)
else:
    name = f"Stepping-v0__{args.exp_name}__{args.seed}__{time.time_ns()}"
    run_dir = Path(args.runs_dir) / name
    run_dir.mkdir(parents=True)
    (run_dir / "args.json").write_text(json.dumps(vars(args)))
checkpoints = run_dir / "checkpoints"
checkpoints.mkdir(exist_ok=True)
steps = sorted(int(p.stem.split("_")[1]) for p in checkpoints.glob("step_*.pt"))
start = steps[-1] if steps else 0
record = {"seed": args.seed, "node": os.environ.get("CLENV_TEST_NODE"),
          "start": start, "run_dir": str(run_dir.resolve())}
with open(Path(args.runs_dir).parent / "calls.jsonl", "a") as f:
    f.write(json.dumps(record) + "\\n")
for step in range(start + 1, STEPS + 1):
    time.sleep(STEP_SECONDS)
    tmp = checkpoints / f".step_{step}.tmp"
    tmp.write_text(str(step))
    os.replace(tmp, checkpoints / f"step_{step}.pt")
    with open(run_dir / "steps.log", "a") as f:
        f.write(f"{step}\\n")
print("done", run_dir)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue += children.get(pid, [])
    return tree


def _kill_node(worker: subprocess.Popen) -> None:
    """SIGKILL a node's every process at once (its `ray start --block`, raylet, Ray
    workers in their own process groups, and the agents they started)."""
    for pid in _process_tree(worker.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    worker.wait()


def _calls(workspace: Path) -> list[dict]:
    path = workspace / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _alive_nodes(env: dict, address: str) -> int:
    status = subprocess.run(
        [str(RAY), "status", "--address", address],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return active.count("node_")


@pytest.fixture
def ray_cluster(tmp_path: Path):
    """A head and a worker node started with `ray start`; stopped at the end."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="clenv-ray-", dir="/tmp")  # short socket paths
    env = {
        **os.environ,
        "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "OMP_NUM_THREADS": "1",
    }
    common = ["--num-cpus", "1", "--disable-usage-stats", "--temp-dir", temp_dir]
    worker = None
    try:
        subprocess.run(
            [str(RAY), "start", "--head", "--port", str(port),
             "--ray-client-server-port", str(_free_port()),
             "--include-dashboard", "false", "--resources", '{"clenv_head": 1}',
             *common],
            env={**env, "CLENV_TEST_NODE": "head"}, check=True, timeout=120,
            capture_output=True,
        )  # fmt: skip
        # --block: the worker node's processes are this process's descendants, so
        # the test can kill the whole node at once, as a machine failure would.
        worker = subprocess.Popen(
            [str(RAY), "start", "--address", address, "--block",
             "--resources", '{"clenv_worker": 1}', *common],
            env={**env, "CLENV_TEST_NODE": "worker"}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while _alive_nodes(env, address) < 2:
            assert time.monotonic() < deadline, "the worker node did not join"
            assert worker.poll() is None, "ray start of the worker node exited"
            time.sleep(2)
        yield {"address": address, "env": env, "worker": worker}
    finally:
        if worker is not None and worker.poll() is None:
            _kill_node(worker)
        subprocess.run(
            [str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120
        )
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_sweep_on_a_two_node_cluster_survives_a_killed_worker_node(
    ray_cluster: dict, tmp_path: Path
) -> None:
    workspace = tmp_path
    (workspace / "stepping_agent.py").write_text(
        STEPPING_AGENT.replace("STEP_SECONDS", str(STEP_SECONDS)).replace(
            "STEPS", str(STEPS)
        )
    )
    seeds = ["1", "2", "3", "4", "5"]
    env = {
        **ray_cluster["env"],
        "RAY_ADDRESS": ray_cluster["address"],
        "PYTHONPATH": str(REPO),
    }
    sweep = subprocess.Popen(
        [sys.executable, "-m", "clenv.cli", "sweep", "stepping_agent.py",
         "--name", "cluster", "--seeds", *seeds, "--reg", "bp",
         "--max-retries", "2", "--cpus-per-trial", "1"],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    trials_dir = workspace / "runs" / "sweeps" / "cluster" / "trials"
    try:
        # Kill the worker node once a trial has finished there and another one has
        # checkpoints there.
        deadline = time.monotonic() + 240
        finished_on_worker = interrupted = None
        while interrupted is None:
            assert time.monotonic() < deadline, "no kill point reached"
            assert sweep.poll() is None, sweep.stdout.read()
            on_worker = [c for c in _calls(workspace) if c["node"] == "worker"]
            done = {
                p.stem.split("__seed=")[1]
                for p in trials_dir.glob("*.json")
                if json.loads(p.read_text())["status"] == "done"
            }
            finished = [c for c in on_worker if str(c["seed"]) in done]
            running = [
                c
                for c in on_worker
                if str(c["seed"]) not in done
                and len(list(Path(c["run_dir"], "checkpoints").glob("step_*.pt"))) >= 4
            ]
            if finished and running:
                finished_on_worker, interrupted = finished[0], running[0]
            time.sleep(0.2)
        _kill_node(ray_cluster["worker"])
        killed_at = len(
            list(Path(interrupted["run_dir"], "checkpoints").glob("step_*.pt"))
        )
        out, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    manifest = json.loads(
        (workspace / "runs/sweeps/cluster/manifest.json").read_text()
    )["trials"]
    assert {t["status"] for t in manifest.values()} == {"done"}, manifest
    calls = _calls(workspace)
    # Trials ran on both nodes, and every trial's attempts record their node ids.
    assert {c["node"] for c in calls} == {"head", "worker"}
    assert len({node for t in manifest.values() for node in t["nodes"]}) == 2
    # The trial that finished on the worker is kept: one run, not run again.
    kept = manifest[f"cluster-bp__seed={finished_on_worker['seed']}"]
    assert kept["attempts"] == 1 and kept["run_dir"] == finished_on_worker["run_dir"]
    assert [c["seed"] for c in calls].count(finished_on_worker["seed"]) == 1
    steps = Path(kept["run_dir"], "steps.log").read_text().split()
    assert steps == [str(s) for s in range(1, STEPS + 1)]
    # The interrupted trial was retried on the head, resuming from its newest checkpoint
    # in the same run directory, not from step 0.
    retried = manifest[f"cluster-bp__seed={interrupted['seed']}"]
    assert retried["attempts"] == 2, retried
    assert len(set(retried["nodes"])) == 2
    attempts = [c for c in calls if c["seed"] == interrupted["seed"]]
    assert [c["node"] for c in attempts] == ["worker", "head"]
    assert attempts[1]["run_dir"] == attempts[0]["run_dir"] == retried["run_dir"]
    start = attempts[1]["start"]
    assert start == killed_at and start >= 4
    steps = Path(retried["run_dir"], "steps.log").read_text().split()
    assert steps[-(STEPS - start) :] == [str(s) for s in range(start + 1, STEPS + 1)]
    assert steps.count("1") == 1  # never restarted from the first step
    # Every other trial ran exactly once.
    for seed in map(int, seeds):
        if seed != interrupted["seed"]:
            assert [c["seed"] for c in calls].count(seed) == 1
    assert "5 done; retried and recovered: 1" in out
