"""DDP with two CPU processes on gloo, launched by Lightning and by torchrun: ranks play disjoint slices of one
shared draw, every rank's task source hears every group, the budget is counted over both ranks and logged
metrics are reduced across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ddp_train import BUDGET, MAX_STEPS, TASKS_PER_STEP, SpreadSource, make_tasks

SCRIPT = Path(__file__).with_name("ddp_train.py")


def _run(command: list[str], out: Path) -> list[dict[str, Any]]:
    port = str(29_500 + (os.getpid() + len(command) * 7) % 1000)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    return ranks


def _lightning(out: Path, mode: str) -> list[dict[str, Any]]:
    return _run([sys.executable, str(SCRIPT), str(out), mode], out)


def _torchrun(out: Path, mode: str) -> list[dict[str, Any]]:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(out), mode]
    return _run(command, out)


def _check_training(ranks: list[dict[str, Any]]) -> None:
    # Gradients are all-reduced: both replicas hold the same weights after training, and they learned something.
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert ranks[0]["param_sum"] == pytest.approx(ranks[1]["param_sum"], rel=1e-6, abs=1e-6)
    assert ranks[0]["param_abs_sum"] == pytest.approx(ranks[1]["param_abs_sum"], rel=1e-6)
    assert ranks[0]["grad_sums"] == pytest.approx(ranks[1]["grad_sums"], rel=1e-5)
    assert max(ranks[0]["grad_sums"]) > 0
    # One draw per step, the same on both ranks; each rank played its own slice of it.
    assert ranks[0]["draws"] == ranks[1]["draws"]
    for step, draw in enumerate(ranks[0]["draws"]):
        assert len(draw) == 2 * TASKS_PER_STEP
        assert ranks[0]["tasks"][step] == draw[:TASKS_PER_STEP]
        assert ranks[1]["tasks"][step] == draw[TASKS_PER_STEP:]
        assert [g[0] for g in ranks[0]["groups"][step]] == ranks[0]["tasks"][step]
        assert [g[0] for g in ranks[1]["groups"][step]] == ranks[1]["tasks"][step]
    # Logged metrics are over both ranks, and the same on both: the loss is the mean of the ranks' losses, the
    # rollout statistics are those of all episodes.
    assert ranks[0]["logged"] == ranks[1]["logged"]
    for step, logged in enumerate(ranks[0]["logged"]):
        losses = [r["local_loss"][step] for r in ranks]
        assert logged["train/loss"] == pytest.approx(sum(losses) / 2, rel=1e-6, abs=1e-7)
        local = [r["local_stats"][step] for r in ranks]
        assert logged["rollout/episodes"] == sum(part["episodes"] for part in local) == 2 * TASKS_PER_STEP * 2
        assert logged["rollout/turns"] == sum(part["turns"] for part in local)
        successes = sum(part["successes"] for part in local)
        assert logged["rollout/success_rate"] == pytest.approx(successes / logged["rollout/episodes"], abs=1e-7)
    # on_stats got the same global statistics on both ranks.
    assert ranks[0]["global_stats"] == ranks[1]["global_stats"]


def _check_source_and_budget(ranks: list[dict[str, Any]], resyncs: int) -> None:
    _check_training(ranks)
    assert [r["resyncs"] for r in ranks] == [resyncs, resyncs]
    # Both sources heard every group of both ranks: they hold the same state, and it is what one process asked for
    # the same draws and fed the union of the groups (rank 0's slice first) would hold.
    assert ranks[0]["source_state"] == ranks[1]["source_state"]
    single = SpreadSource(make_tasks(), seed=0)
    for step, draw in enumerate(ranks[0]["draws"]):
        assert [task.id for task in single.next_batch(2 * TASKS_PER_STEP)] == draw
        for task_id, rewards in ranks[0]["groups"][step] + ranks[1]["groups"][step]:
            single.report(task_id, rewards)
    assert json.loads(json.dumps(single.state_dict())) == ranks[0]["source_state"]
    # The budget is counted over both ranks and stops both at the same step, before MAX_STEPS: the turns before
    # the last batch were under the budget, so the total exceeds it by less than one (global) batch.
    steps = ranks[0]["global_step"]
    assert 2 <= steps < MAX_STEPS and ranks[1]["global_step"] == steps
    per_batch = [sum(r["local_stats"][step]["turns"] for r in ranks) for step in range(steps)]
    assert per_batch == [stats["turns"] for stats in ranks[0]["global_stats"]]
    total = sum(per_batch)
    assert total - per_batch[-1] < BUDGET <= total < BUDGET + per_batch[-1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_grpo_under_ddp_two_cpu_processes(tmp_path: Path) -> None:
    ranks = _lightning(tmp_path, "uniform")
    assert [r["global_step"] for r in ranks] == [3, 3]
    _check_training(ranks)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_task_source_and_budget_are_shared_by_the_ranks(tmp_path: Path) -> None:
    _check_source_and_budget(_lightning(tmp_path, "source"), resyncs=0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_launch_brings_a_drifting_source_back_to_rank_zero(tmp_path: Path) -> None:
    # Launched as a multi-node job would be; rank 1's source starts from another seed and draws differently at
    # the first step: it is given rank 0's state, and from then on both hold the same.
    _check_source_and_budget(_torchrun(tmp_path, "divergent"), resyncs=1)
