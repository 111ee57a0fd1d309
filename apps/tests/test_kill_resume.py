"""Kill ``dg train`` with SIGKILL at every phase of a step, resume it, and compare with an uninterrupted run.

A checkpoint must be one consistent cut: after ``dg resume`` every counter, the learning curve, the curriculum
(pool, statistics, random state) and the replay buffer equal what the uninterrupted run has.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dg_replay import ReplayBuffer
from tests.conftest import SCRIPTED_ENV, TINY_POLICY
from tests.kill_driver import PHASES

DRIVER = Path(__file__).with_name("kill_driver.py")
STEPS = 5
# Which occurrence of the phase kills: mid-run (the third batch, the third update...).
NTH = {
    "write-back": 9,
    "curriculum-report": 5,
    "batch-counted": 3,
    "training-step": 3,
    "run-state-saved": 3,
    "checkpoint-written": 3,
}


def _train_args(nearest_run: Path, expert_data: Path, out: Path) -> list[str]:
    return [
        "train", *SCRIPTED_ENV, *TINY_POLICY,
        "--set", f"expmodel={nearest_run}", "--set", f"data=[{expert_data}]",
        "--set", f"algorithm.steps={STEPS}", "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--set", "algorithm.updates_per_batch=1", "--set", "algorithm.checkpoint_every=1",
        "--set", "synthetic.max_new_tokens=48", "--output", str(out), "--no-progress",
    ]  # fmt: skip


def _drive(phase: str, nth: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    root = str(Path(__file__).resolve().parents[1])  # apps/: `tests` is importable as in pytest
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(DRIVER), phase, str(nth), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def _state(out: Path) -> dict[str, Any]:
    """What must match: counters, learning curve steps, curriculum pool and the replay buffer's contents."""
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "logs" / "csv" / "version_0" / "metrics.csv").open(newline="") as handle:
        logged = [row["step"] for row in csv.DictReader(handle) if row.get("train/loss")]
    with ReplayBuffer.open(out / "replay", read_only=True) as buffer:
        rows = buffer.get(buffer.storage.keys())
        synthetic = sorted(
            (row.task_id, row.step.state.text, row.step.action.text, row.step.next_state.text, row.step.reward)
            for row in rows
            if row.source.value == "synthetic"
        )
        by_source = buffer.stats().by_source
    return {
        "counters": {
            key: metrics[key]
            for key in ("optimizer_steps", "rollout_batches", "episodes", "real_transitions", "synthetic_transitions")
        },
        "rollout_history": metrics["rollout_history"],
        "curriculum": {key: metrics["curriculum"][key] for key in ("pool_size", "reports", "score_histogram")},
        "pool": json.loads((out / "curriculum.json").read_text()),
        "replay_by_source": by_source,
        "replay_synthetic": synthetic,
        "logged_steps": logged,
    }


@pytest.fixture(scope="module")
def uninterrupted(workspace: Path, nearest_run: Path, expert_data: Path) -> dict[str, Any]:
    out = workspace / "kill-resume-uninterrupted"
    done = _drive("none", 0, _train_args(nearest_run, expert_data, out))
    assert done.returncode == 0, done.stderr[-3000:]
    state = _state(out)
    assert state["counters"]["optimizer_steps"] == STEPS and state["counters"]["rollout_batches"] == STEPS
    assert state["logged_steps"] == [str(step) for step in range(STEPS)]
    assert state["curriculum"]["reports"] == STEPS * 2  # two tasks per batch
    assert state["replay_by_source"].get("synthetic", 0) > 0
    return state


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_kill_and_resume_equals_the_uninterrupted_run(
    phase: str, uninterrupted: dict[str, Any], workspace: Path, nearest_run: Path, expert_data: Path
) -> None:
    out = workspace / f"kill-resume-{phase}"
    killed = _drive(phase, NTH[phase], _train_args(nearest_run, expert_data, out))
    assert killed.returncode == -signal.SIGKILL, f"{phase} never happened:\n{killed.stderr[-3000:]}"
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # as a SIGKILL leaves it
    resumed = _drive("none", 0, ["resume", str(out), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["resumes"] == 1
    state = _state(out)
    for key, expected in uninterrupted.items():
        assert state[key] == expected, f"after a kill at {phase}: {key} differs"
