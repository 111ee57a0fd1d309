"""DDP with two CPU processes on gloo: ranks play different tasks and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train.py")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_grpo_under_ddp_two_cpu_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(29_500 + os.getpid() % 1000)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" and r["global_step"] == 3 for r in ranks)
    # Gradients are all-reduced: both replicas hold the same weights after training.
    assert ranks[0]["param_sum"] == pytest.approx(ranks[1]["param_sum"], rel=1e-6, abs=1e-6)
    assert ranks[0]["param_abs_sum"] == pytest.approx(ranks[1]["param_abs_sum"], rel=1e-6)
    # Gradients are identical after the all-reduce, and not all zero (the ranks did learn something).
    assert ranks[0]["grad_sums"] == pytest.approx(ranks[1]["grad_sums"], rel=1e-5)
    assert max(ranks[0]["grad_sums"]) > 0
    # ... while each rank collected its own slice of the tasks.
    for step_r0, step_r1 in zip(ranks[0]["tasks"], ranks[1]["tasks"], strict=True):
        assert not set(step_r0) & set(step_r1)
