"""Slippery Ant (PPO): settings of `agents/ppo_l2er.py` under `--protocol lop` and `--protocol sc`."""

from __future__ import annotations

from clenv.settings import Row, Value

TITLE = "Slippery Ant (PPO)"
AGENT = "agents/ppo_l2er.py"
DEFAULT_PROTOCOL = "lop"

# Agent, env and model settings.
ROWS: list[Row] = []

# Method settings (kind="method"): clenv.methods.presets builds its presets from them.
METHOD_ROWS: list[Row] = []
