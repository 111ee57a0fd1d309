"""The audit's metrics through torchmetrics: the numbers are those the plain-Python audit gave (recorded in
``data/audit_values_before_torchmetrics.json`` before the change), and they reduce across two gloo processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dg_core.testing import ScriptedExperienceModel
from dg_expmodel import BinaryStats, TagStats
from dg_expmodel._audit import teacher_forced
from dg_expmodel._audit_metrics import binary_stat_scores, mean_of, update_binary
from tests.conftest import collect
from tests.test_audit import TaskExactRetriever

BEFORE = json.loads((Path(__file__).parent / "data" / "audit_values_before_torchmetrics.json").read_text())
SCRIPT = Path(__file__).with_name("dist_audit_metrics.py")
EXACT = {
    "steps",
    "eps_R",
    "reward_accuracy",
    "success",
    "done",
    "next_state_exact_match",
    "hallucination_rate",
    "hallucinated_entities_per_step",
    "parse_failure_rate",
    "irreversible_tags",
}
"""Ratios of counts: equal to the bit. The means of scores (token F1, action F1: eps_P) agree to 1e-12."""


def _close(now: Any, before: Any, path: str) -> None:
    if isinstance(before, dict):
        assert set(now) == set(before), path
        for key in before:
            _close(now[key], before[key], f"{path}/{key}")
    elif isinstance(before, float) and not isinstance(now, bool):
        assert now == pytest.approx(before, rel=0, abs=1e-12), path
    else:
        assert now == before, path


def test_teacher_forced_numbers_are_the_recorded_ones() -> None:
    held_out = collect(12, offset=300)
    retriever = TaskExactRetriever(collect(40) + held_out[:6])  # half the held-out steps grounded exactly
    for name, found in (("grounded", retriever), ("blind", None)):
        forced = teacher_forced(
            ScriptedExperienceModel(), held_out, history_window=2, retriever=found, top_k=1 if found else 0
        )
        now = forced.as_dict()
        before = BEFORE[name]
        for key, value in before.items():
            if key in EXACT:
                assert now[key] == value, f"{name}/{key}"
            else:
                _close(now[key], value, f"{name}/{key}")
    # The recorded numbers are not degenerate: success precision / recall / F1 and eps_R differ between the rows.
    assert BEFORE["grounded"]["success"]["recall"] == 3 / 7 and BEFORE["blind"]["success"]["recall"] == 0.0
    assert BEFORE["grounded"]["eps_R"] == 0.125 and BEFORE["blind"]["eps_R"] == 0.21875


def test_binary_and_tag_stats_keep_their_definitions_on_edge_cases() -> None:
    cases = {
        "empty": ([], []),
        "no_predicted": ([False, False, False], [True, False, False]),
        "no_actual": ([True, False, False], [False, False, False]),
        "all_negative": ([False] * 3, [False] * 3),
        "seven": ([True, True, False, True, False, False, True], [True, False, True, True, True, False, False]),
    }
    for name, (predicted, actual) in cases.items():
        assert BinaryStats.of(predicted, actual).as_dict() == BEFORE["cases"][name], name
    # Nothing predicted and nothing positive: precision and recall 1, F1 1; accuracy of no prediction 0.
    assert BEFORE["cases"]["empty"]["f1"] == 1.0 and BEFORE["cases"]["empty"]["accuracy"] == 0.0
    assert TagStats.of([], []).as_dict() == BEFORE["cases"]["tags_empty"]
    tags = TagStats.of(
        [["buy a"], [], ["buy a", "sell b"], ["x"], []], [["buy a", "sell b"], ["x"], ["sell b"], [], []]
    )
    assert tags.as_dict() == BEFORE["cases"]["tags"]


def test_means_equal_statistics_mean() -> None:
    flags = [True, False, False] * 5 + [True]
    assert mean_of(flags) == statistics.mean(flags) == 6 / 16
    scores = [0.1, 0.7, 1 / 3, 2 / 7, 0.9] * 3
    assert mean_of(scores) == pytest.approx(statistics.mean(scores), rel=0, abs=1e-15)
    with pytest.raises(ValueError, match="at least one value"):
        mean_of([])
    with pytest.raises(ValueError, match="3 predictions for 2"):
        BinaryStats.of([True, False, True], [True, False])


def test_a_metric_accumulates_over_updates_and_resets() -> None:
    metric = binary_stat_scores()
    assert BinaryStats.from_metric(metric) == BinaryStats(0, 0, 0, 0)
    update_binary(metric, [True, False], [True, True])
    update_binary(metric, [True, False, False], [False, False, True])
    assert BinaryStats.from_metric(metric) == BinaryStats.of(
        [True, False, True, False, False], [True, True, False, False, True]
    )
    metric.reset()
    assert BinaryStats.from_metric(metric) == BinaryStats(0, 0, 0, 0)


@pytest.mark.timeout(180)
def test_metrics_reduce_across_two_gloo_processes(tmp_path: Path) -> None:
    from tests.dist_audit_metrics import ACTUAL, PREDICTED, SCORES

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    union = BinaryStats.of(PREDICTED, ACTUAL).as_dict()
    assert ranks[0]["local"] != ranks[1]["local"]  # each rank counted only its half...
    for record in ranks:  # ...and every rank computed the whole set's numbers
        assert record["world"] == 2
        assert record["reduced"] == union
        assert record["accuracy"] == mean_of(p == a for p, a in zip(PREDICTED, ACTUAL, strict=True))
        assert record["score"] == pytest.approx(statistics.mean(SCORES), rel=0, abs=1e-15)
