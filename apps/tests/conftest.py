from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dg_apps.cli import run_command

SCRIPTED_ENV = [
    "--set",
    "env.name=scripted",
    "--set",
    "env.games=40",
    "--set",
    "env.seed=3",
    "--set",
    "env.settings={rooms: 3}",
    "--set",
    "env.max_steps=6",
]
"""The scripted corridor world (dg-core's fake env, real Env contract): fast enough for every command's test."""

TINY_EXPMODEL = [
    "--set",
    "expmodel.hidden_size=32",
    "--set",
    "expmodel.num_layers=1",
    "--set",
    "expmodel.num_heads=2",
    "--set",
    "expmodel.vocab_size=400",
    "--set",
    "expmodel.max_length=512",
    "--set",
    "expmodel.epochs=1",
    "--set",
    "expmodel.max_new_tokens=48",
]

TINY_POLICY = [
    "--set",
    "policy.hidden_size=16",
    "--set",
    "policy.num_layers=1",
    "--set",
    "policy.num_heads=2",
    "--set",
    "policy.vocab_size=300",
]


def dg(*argv: str) -> dict[str, Any]:
    """Run a dg command in this process and return its metrics."""
    metrics = run_command([*argv, "--no-progress"])
    assert metrics is not None
    return metrics


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dg-apps")


@pytest.fixture(scope="session")
def expert_data(workspace: Path) -> Path:
    out = workspace / "collect-expert"
    dg("collect", *SCRIPTED_ENV, "--set", "policy=expert", "--output", str(out))
    return out / "trajectories.jsonl"


@pytest.fixture(scope="session")
def random_data(workspace: Path) -> Path:
    out = workspace / "collect-random"
    dg("collect", *SCRIPTED_ENV, "--set", "policy=random", "--set", "episodes_per_task=2", "--output", str(out))
    return out / "trajectories.jsonl"


@pytest.fixture(scope="session")
def expmodel_run(workspace: Path, expert_data: Path, random_data: Path) -> Path:
    out = workspace / "expmodel"
    dg("expmodel", "fit", *TINY_EXPMODEL, "--set", f"data=[{expert_data}, {random_data}]", "--output", str(out))
    return out


@pytest.fixture(scope="session")
def nearest_run(workspace: Path, expert_data: Path, random_data: Path) -> Path:
    """The non-parametric experience model over the same data: it answers (never fails to parse), so synthetic
    training writes real-looking transitions back to the replay buffer."""
    out = workspace / "expmodel-nearest"
    dg(
        "expmodel", "fit", "--set", "expmodel.model=nearest", "--set", "expmodel.top_k=4",
        "--set", f"data=[{expert_data}, {random_data}]", "--output", str(out),
    )  # fmt: skip
    return out
