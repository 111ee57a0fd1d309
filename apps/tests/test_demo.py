"""The quick demo end to end: every stage, the table, the figure; a second call keeps every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_apps.cli import main


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| DreamGym: GRPO in synthetic env |" in printed
    results = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == {
        "random actions",
        "initial policy",
        "DreamGym: GRPO in synthetic env",
        "GRPO in real env (same updates)",
        "expert (walkthrough)",
    }
    assert rows["expert (walkthrough)"]["mean"] == 1.0  # the walkthrough solves every held-out game
    assert rows["DreamGym: GRPO in synthetic env"]["real_transitions"] == 0
    assert rows["DreamGym: GRPO in synthetic env"]["synthetic_transitions"] > 0
    assert rows["GRPO in real env (same updates)"]["real_transitions"] > 0
    assert results["optimizer_steps"]["synthetic"] == results["optimizer_steps"]["real"]
    for row in rows.values():
        assert 0.0 <= row["mean"] <= 1.0 and len(row["per_seed"]) == 2
    assert 0.0 <= results["expmodel"]["eps_R"] <= 1.0
    assert (out / "plots" / "success.png").stat().st_size > 0
    stages = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name[:2].isdigit())
    assert stages[0] == "01-collect-expert" and stages[-1] == "08-eval-synthetic"
    assert all(json.loads((out / s / "run.json").read_text())["status"] == "done" for s in stages)
    assert main(["demo", "--quick", "--output", str(out), "--no-progress"]) == 0  # everything kept
    assert printed.count("finished in") == len(stages)
    assert "already holds this finished run" in capsys.readouterr().out


def test_demo_model_option_picks_the_pretrained_config_and_sets_the_policy() -> None:
    from dg_apps.cli import config_path, demo_output, demo_source
    from dg_apps.config import DemoConfig, load_config

    source, overrides = demo_source(None, False, "smollm2", ["algorithm.steps=2"])
    assert source == "demo-pretrained"
    assert overrides == ["policy.model=smollm2", "policy.lora=true", "algorithm.steps=2"]
    config = load_config(DemoConfig, config_path(source), overrides)
    tiny_demo = load_config(DemoConfig, config_path("demo"))
    assert (config.policy.model, config.policy.lora, config.algorithm.steps) == ("smollm2", True, 2)
    # The same suite and held-out panel as the tiny demo, so the two tables compare.
    assert config.env == tiny_demo.env and config.eval_seeds == tiny_demo.eval_seeds
    assert config.expmodel == tiny_demo.expmodel
    # --quick and --config keep their own config; the model still goes into it.
    assert demo_source(None, True, "smollm2", []) == ("demo-quick", ["policy.model=smollm2", "policy.lora=true"])
    assert demo_source("mine.yaml", False, None, ["seed=1"]) == ("mine.yaml", ["seed=1"])
    assert demo_source(None, False, None, []) == ("demo", [])
    assert demo_output(False, "smollm2") == Path("runs/demo-smollm2")
    assert demo_output(True, "/models/SmolLM2-135M.Q4_1.gguf") == Path("runs/demo-quick-SmolLM2-135M.Q4_1")
    assert demo_output(False, None) == Path("runs/demo")
