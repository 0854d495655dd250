"""agents/ppo_ant_study.py: the commands of its arms and its summary, on fake runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import load_agent_module

from clenv.logger import RunLogger

STUDY = Path(__file__).resolve().parents[1] / "agents" / "ppo_ant_study.py"


def test_arm_commands_follow_the_protocol_and_resume_an_existing_run(tmp_path):
    study = load_agent_module(STUDY)
    args = study.Run(runs_dir=str(tmp_path), total_timesteps=1000, switch_every=500)
    fresh = study.clenv_command("clenv-l2er-slippery", args, None)
    assert fresh[fresh.index("--reg") + 1] == "l2er"
    assert fresh[fresh.index("--protocol") + 1] == "lop"
    assert fresh[fresh.index("--env-kwargs") + 1] == "switch_every=500"
    stationary = study.clenv_command("clenv-bp-ant", args, None)
    assert stationary[stationary.index("--env-id") + 1] == "Ant-v5"
    assert stationary[stationary.index("--reg") + 1] == "bp"
    resumed = study.clenv_command("clenv-bp-ant", args, tmp_path / "run")
    assert resumed[2:4] == ["--resume", str(tmp_path / "run")]


def test_summary_blocks_and_switches_from_fake_runs(tmp_path):
    study = load_agent_module(STUDY)
    runs = tmp_path / "runs"
    # SB3's Monitor file: r,l,t rows (no header when appended across resumes).
    sb3 = runs / "sb3-bp-ant"
    sb3.mkdir(parents=True)
    rows = [(-10.0, 150_000), (20.0, 100_000), (40.0, 150_001)]  # ends at 400,001
    (sb3 / "monitor.monitor.csv").write_text(
        '#{"t_start": 0}\n' + "".join(f"{r},{n},0.0\n" for r, n in rows)
    )
    # A clenv run: episodic returns and the task id, as the agent logs them.
    run_dir = runs / "clenv-bp-slippery" / "run"
    with RunLogger(run_dir, tensorboard=False) as logger:
        for step, value in [(100_000, 1.0), (199_000, 3.0), (350_000, 5.0)]:
            logger.log_scalar("charts/episodic_return", value, step)
        for step, task in [(100_000, 0), (202_000, 1), (350_000, 1)]:
            logger.log_scalar("cl/task_id", task, step)
    (run_dir / "args.json").write_text("{}")
    assert study.switch_steps(runs, "clenv-bp-slippery") == [202_000]

    study.plot(study.Plot(runs_dir=str(runs), out=str(tmp_path / "out"), window=2))
    summary = json.loads((tmp_path / "out" / "ppo_ant.json").read_text())
    assert (tmp_path / "out" / "ppo_ant.png").stat().st_size > 0
    assert summary["sb3-bp-ant"]["steps"] == 400_001
    # The episode ending just past 400k counts in the last block.
    assert summary["sb3-bp-ant"]["mean_return_per_200k_steps"] == {
        "0k-200k": -10.0,
        "200k-400k": 30.0,
    }
    clenv_blocks = summary["clenv-bp-slippery"]["mean_return_per_200k_steps"]
    assert clenv_blocks == {"0k-200k": 2.0, "200k-400k": 5.0}
    assert summary["clenv-bp-slippery"]["last_20_episodes"] == np.mean([1, 3, 5])
    assert "clenv-l2er-slippery" not in summary  # no run, no row
