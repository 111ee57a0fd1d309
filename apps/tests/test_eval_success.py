"""``dg eval``'s success through torchmetrics (dg-rl's ``SuccessRate``) gives the numbers the plain-Python sums
gave: the baselines' recorded before the change (at commit a6cef94) on the scripted world, 5 validation tasks x 3
episodes per seed, so the rates are fifteenths (which float32 would not give exactly); a tiny LM policy's checked
against the plain-Python sum over its own episodes (its sampled episodes depend on the process's threads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_apps.config import EnvConfig, EvalConfig, PolicyConfig
from dg_apps.evaluation import evaluate
from dg_apps.models import build_policy, save_policy
from dg_apps.tasks import task_panel
from dg_core import read_trajectories

ENV = EnvConfig(name="scripted", games=40, seed=3, settings={"rooms": 3}, max_steps=6)
BEFORE = {
    "random": [0.2, 0.2, 0.2],
    "expert": [1.0, 1.0, 1.0],
}


def test_eval_success_is_the_recorded_one(workspace: Path, expert_data: Path) -> None:
    config = PolicyConfig(hidden_size=16, num_layers=1, num_heads=2, vocab_size=300)
    policy = build_policy(config, trajectories=list(read_trajectories(expert_data)), tasks=task_panel(ENV, "train"))
    save_policy(policy, config, workspace / "eval-success" / "policy")
    for name, recorded in [*BEFORE.items(), ("policy", None)]:
        source = name if name in BEFORE else str(workspace / "eval-success" / name)
        out = workspace / "eval-success" / f"eval-{name}"
        metrics = evaluate(
            EvalConfig(env=ENV, tasks="validation", policy=source, seeds=[0, 1, 2], episodes_per_task=3),
            out,
            progress=False,
        )
        assert metrics["panel_size"] == 5
        if recorded is not None:
            assert metrics["per_seed"] == recorded, name
        for seed, rate in zip((0, 1, 2), metrics["per_seed"], strict=True):  # the plain-Python count, read back
            episodes = list(read_trajectories(out / f"episodes-seed{seed}.jsonl"))
            assert len(episodes) == 15 and rate == sum(t.success for t in episodes) / len(episodes)
        assert metrics["mean"] == pytest.approx(sum(metrics["per_seed"]) / 3, rel=0, abs=1e-15)
