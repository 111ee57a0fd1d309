"""``SuccessRate``: exactly successes / episodes (float64), accumulated, reset, and reduced across two gloo ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dg_rl import SuccessRate
from tests.dist_success import SUCCESSES

SCRIPT = Path(__file__).with_name("dist_success.py")


def test_success_rate_is_the_python_division() -> None:
    metric = SuccessRate()
    with pytest.warns(UserWarning, match="called before the ``update``"):  # torchmetrics' own warning
        assert math.isnan(float(metric.compute()))  # no episode yet
    metric.update([True, False, False])
    metric.update(torch.tensor([False, True, False, False]))
    value = metric.compute()
    assert value.dtype == torch.float64 and float(value) == 2 / 7  # float32 would give 0.2857142984867096
    metric.reset()
    metric.update([True] * 4 + [False] * 11)
    assert float(metric.compute()) == 4 / 15


@pytest.mark.timeout(180)
def test_success_rate_reduces_across_two_gloo_processes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["local"] for r in ranks] == [2 / 6, 2 / 5]  # each rank's own share...
    assert [r["reduced"] for r in ranks] == [4 / 11, 4 / 11]  # ...and the whole set's rate on both
    assert sum(SUCCESSES) / len(SUCCESSES) == 4 / 11
