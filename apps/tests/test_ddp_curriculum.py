"""``dg train``'s curriculum and real-budget counting under DDP (2 gloo processes launched by torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ddp_curriculum import BUDGET, MAX_STEPS, TASKS_PER_STEP, make_curriculum

SCRIPT = Path(__file__).with_name("ddp_curriculum.py")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_curriculum_and_budget_are_one_for_all_ranks(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    steps = ranks[0]["global_step"]
    assert ranks[1]["global_step"] == steps
    # One curriculum draw per step, the same on both ranks, no drift to repair.
    assert ranks[0]["draws"] == ranks[1]["draws"] and len(ranks[0]["draws"]) == steps
    assert [r["resyncs"] for r in ranks] == [0, 0]
    # Both curricula heard every group: the same state, and the state one process holds when it is asked for
    # the same batches and fed the union of the groups (rank 0's slice first).
    assert ranks[0]["source_state"] == ranks[1]["source_state"]
    single = make_curriculum()
    for step, draw in enumerate(ranks[0]["draws"]):
        assert [task.id for task in single.next_batch(2 * TASKS_PER_STEP)] == draw
        assert [g[0] for g in ranks[0]["groups"][step] + ranks[1]["groups"][step]] == draw
        for task_id, rewards in ranks[0]["groups"][step] + ranks[1]["groups"][step]:
            single.report(task_id, rewards)
    assert json.loads(json.dumps(single.state_dict())) == ranks[0]["source_state"]["curriculum"]
    assert ranks[0]["source_state"]["reports"] == 2 * TASKS_PER_STEP * steps
    # One real budget for both ranks: the counters agree, hold the sum of both ranks' turns, and stopped both
    # ranks at the first batch that reached the budget.
    assert ranks[0]["counters"] == ranks[1]["counters"]
    per_batch = [a + b for a, b in zip(ranks[0]["local_turns"], ranks[1]["local_turns"], strict=True)]
    total = ranks[0]["counters"]["real_transitions"]
    assert total == sum(per_batch)
    assert ranks[0]["counters"]["episodes"] == 2 * TASKS_PER_STEP * 2 * steps
    assert 2 <= steps < MAX_STEPS
    assert total - per_batch[-1] < BUDGET <= total
