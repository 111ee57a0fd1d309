"""``dg train`` and ``python -m dg_rl fit`` describe the same runs: a converted config trains the same weights.

Also: ``python -m dg_expmodel fit`` writes a run directory that ``dg train`` and the ``synthetic`` env take.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dg_apps.cli import run_command
from dg_apps.config import TrainConfig, load_config
from dg_apps.export import lightning_cli_config
from dg_core import ConfigError, read_trajectories
from tests.conftest import SCRIPTED_ENV, TINY_POLICY, dg

TEXTWORLD_ENV = [
    "--set", "env.name=textworld", "--set", "env.suite=coin_collector", "--set", "env.games=10",
    "--set", "env.seed=7", "--set", "env.settings={level: 5}", "--set", "env.max_steps=5",
]  # fmt: skip
"""The demo's TextWorld suite (coin collector, level 5), ten games."""

TWO_STEPS = [
    "--set", "algorithm.steps=2", "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
    "--set", "algorithm.updates_per_batch=1", "--set", "algorithm.checkpoint_every=1",
    "--set", "algorithm.learning_rate=0.01", "--set", "curriculum.enabled=false", "--set", "seed=3",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LightningCLI mains run as their ``python -m`` would (LightningCLI warns about pytest's arguments)."""
    monkeypatch.setattr(sys, "argv", ["python -m"])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def cli_history(run: Path) -> list[tuple[float, float]]:
    """(episodes, mean return) of every rollout batch a LightningCLI run logged."""
    (version,) = (run / "lightning_logs").glob("version_*")
    with (version / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("rollout/episodes")]
    return [(float(row["rollout/episodes"]), float(row["rollout/mean_return"])) for row in rows]


def train_both(workspace: Path, name: str, argv: list[str]) -> tuple[dict[str, Any], Path, Path]:
    """``dg train`` with ``argv``, then the same config through ``dg export-cli`` and ``python -m dg_rl fit``."""
    from dg_rl.cli import main as dg_rl_main

    metrics = dg("train", *argv, "--output", str(workspace / f"{name}-dg"))
    exported = workspace / f"{name}-cli"
    run_command(["export-cli", *argv, "--output", str(exported)])
    dg_rl_main(["fit", "--config", str(exported / "fit.yaml")])
    return metrics, workspace / f"{name}-dg", exported


def assert_same_run(metrics: dict[str, Any], dg_run: Path, cli_run: Path) -> None:
    (version,) = (cli_run / "lightning_logs").glob("version_*")
    trained, converted = weights(dg_run / "policy"), weights(version / "policy")
    assert trained.keys() == converted.keys()
    different = [key for key in trained if not torch.equal(trained[key], converted[key])]
    assert not different, f"{len(different)} of {len(trained)} tensors differ, first {different[0]}"
    initial = weights(dg_run / "policy-initial")
    assert any(not torch.equal(initial[key], trained[key]) for key in trained)  # training moved them
    per_batch = metrics["episodes"] / metrics["rollout_batches"]
    history = [(per_batch, row["mean_return"]) for row in metrics["rollout_history"]]
    assert cli_history(cli_run) == history  # the same episodes' returns, batch by batch
    saved = yaml.safe_load((version / "config.yaml").read_text())  # beside checkpoints/
    assert saved["data"]["updates_per_batch"] == 1 and (version / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_a_converted_real_textworld_run_trains_the_same_weights(workspace: Path) -> None:
    collected = workspace / "collect-textworld"
    dg("collect", *TEXTWORLD_ENV, "--set", "policy=expert", "--output", str(collected))
    data = collected / "trajectories.jsonl"
    assert all(t.success for t in read_trajectories(data))
    # PPO: its entropy bonus moves the weights even when no episode of the two batches succeeds (GRPO's update is
    # zero without a reward spread; the scripted test below has one).
    argv = [
        *TEXTWORLD_ENV, *TINY_POLICY, *TWO_STEPS, "--set", "algorithm.name=ppo", "--set", "where=real",
        "--set", f"data=[{data}]",
    ]  # fmt: skip
    metrics, dg_run, cli_run = train_both(workspace, "textworld-real", argv)
    assert metrics["real_transitions"] > 0
    assert_same_run(metrics, dg_run, cli_run)
    assert yaml.safe_load((cli_run / "fit.yaml").read_text())["model"]["class_path"] == "dg_rl.PPOModule"


def test_a_converted_real_grpo_run_trains_the_same_weights(workspace: Path, expert_data: Path) -> None:
    argv = [
        *SCRIPTED_ENV, *TINY_POLICY, *TWO_STEPS, "--set", "where=real", "--set", f"data=[{expert_data}]",
        "--set", "algorithm.tasks_per_step=4", "--set", "algorithm.group_size=4",
    ]  # fmt: skip
    metrics, dg_run, cli_run = train_both(workspace, "scripted-real", argv)
    returns = [row["mean_return"] for row in metrics["rollout_history"]]
    assert max(returns) > 0.0 and min(returns) < 1.0  # some episodes succeed, some fail: GRPO has a signal
    assert_same_run(metrics, dg_run, cli_run)


def test_dg_expmodel_cli_run_trains_the_same_synthetic_run_both_ways(
    workspace: Path, expert_data: Path, random_data: Path
) -> None:
    from dg_expmodel.cli import main as dg_expmodel_main

    fitted = workspace / "expmodel-cli"
    fit = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False},
        "data": {
            "run_dir": str(fitted),
            "data": [str(expert_data), str(random_data)],
            "model": {
                "class_path": "dg_expmodel.cli.TinyModel",
                "init_args": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 400},
            },
            "history_window": 1,
            "top_k": 1,
            "max_length": 512,
            "inference": {"max_new_tokens": 48},
        },
    }
    (workspace / "expmodel-cli.yaml").write_text(yaml.safe_dump(fit))
    dg_expmodel_main(["fit", "--config", str(workspace / "expmodel-cli.yaml")])
    assert json.loads((fitted / "expmodel.json").read_text())["options"]["max_retrieved"] == 1
    argv = [
        *SCRIPTED_ENV, *TINY_POLICY, *TWO_STEPS, "--set", "where=synthetic", "--set", f"expmodel={fitted}",
        "--set", f"data=[{expert_data}, {random_data}]", "--set", "synthetic.batch_size=8",
        "--set", "algorithm.name=ppo",
    ]  # fmt: skip
    metrics, dg_run, cli_run = train_both(workspace, "synthetic", argv)
    assert metrics["real_transitions"] == 0 and metrics["synthetic_transitions"] > 0
    assert_same_run(metrics, dg_run, cli_run)
    tasks = [json.loads(line) for line in (cli_run / "tasks.jsonl").read_text().splitlines()]
    assert all("initial_state" in task["metadata"] for task in tasks)  # synthetic episodes start from real states


def test_what_only_dg_train_does_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = load_config(TrainConfig, None, ["where=real", "env.name=scripted", "real_budget=10"])
    with pytest.raises(ConfigError) as error:
        lightning_cli_config(config, tmp_path / "tasks.jsonl", tmp_path)
    message = str(error.value)
    assert "curriculum.enabled: python -m dg_rl fit draws tasks uniformly" in message
    assert "real_budget: python -m dg_rl fit has no real-transition budget" in message
    perturbed = load_config(TrainConfig, None, ["curriculum.enabled=false", "synthetic.simulator=perturbed"])
    with pytest.raises(ConfigError, match="the perturbed simulator is a dg train option only"):
        lightning_cli_config(perturbed, tmp_path / "tasks.jsonl", tmp_path)


def test_every_dg_train_setting_lands_in_the_converted_config(tmp_path: Path) -> None:
    overrides = [
        "where=real", "env.name=scripted", "env.max_steps=7", "env.options={}", "curriculum.enabled=false",
        "data=[a.jsonl]", "policy.hidden_size=48", "policy.num_layers=3", "policy.num_heads=4",
        "policy.vocab_size=700", "policy.mode=generate", "policy.temperature=0.7", "policy.history_turns=2",
        "policy.max_turn_tokens=9", "policy.max_prompt_tokens=300", "policy.lora=true", "algorithm.name=ppo",
        "algorithm.steps=5", "algorithm.updates_per_batch=3", "algorithm.tasks_per_step=6", "algorithm.group_size=5",
        "algorithm.learning_rate=0.003", "algorithm.entropy_coef=0.02", "algorithm.max_episode_tokens=99",
        "algorithm.checkpoint_every=4", "trainer={accelerator: cpu, precision: bf16-mixed}", "seed=11",
    ]  # fmt: skip
    config = load_config(TrainConfig, None, overrides)
    cli = lightning_cli_config(config, tmp_path / "tasks.jsonl", tmp_path)
    assert cli["seed_everything"] == 11 and cli["data"]["seed"] == 11
    assert cli["trainer"]["max_steps"] == 15 and cli["trainer"]["precision"] == "bf16-mixed"
    assert cli["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] == 4
    sharded = load_config(TrainConfig, None, [*overrides, "trainer={accelerator: cpu, strategy: fsdp}"])
    fsdp = lightning_cli_config(sharded, tmp_path / "tasks.jsonl", tmp_path)["trainer"]["strategy"]
    assert fsdp == {"class_path": "dg_rl.FSDP2Strategy"}  # what dg train runs for strategy: fsdp
    data = cli["data"]
    assert (data["env"], data["env_options"]) == ("scripted", {"max_steps": 7})
    assert (data["group_size"], data["tasks_per_step"], data["updates_per_batch"]) == (5, 6, 3)
    assert data["max_episode_tokens"] == 99
    policy = data["policy"]
    assert policy["model"]["init_args"] == {
        "data": [str(Path("a.jsonl").resolve())], "hidden_size": 48, "num_layers": 3, "num_heads": 4,
        "vocab_size": 700,
    }  # fmt: skip
    assert (policy["mode"], policy["temperature"], policy["history_turns"]) == ("generate", 0.7, 2)
    assert (policy["max_turn_tokens"], policy["max_prompt_tokens"], policy["lora"]) == (9, 300, True)
    assert cli["model"] == {
        "class_path": "dg_rl.PPOModule",
        "init_args": {
            "loss": {"class_path": "dg_rl.PPOLoss", "init_args": {"entropy_coef": 0.02}},
            "learning_rate": 0.003,
            "micro_batch_tokens": None,
        },
    }
