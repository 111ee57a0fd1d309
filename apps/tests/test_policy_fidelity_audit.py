"""`dg expmodel audit`'s policy-level fidelity: random, expert and noisy-expert in the real scripted corridor and in
the experience model's synthetic env, episode for episode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_apps.cli import main
from dg_apps.config import EnvConfig, PolicyConfig
from dg_apps.models import build_policy, load_policy, save_policy
from dg_apps.tasks import task_panel
from dg_core import (
    Action,
    Env,
    State,
    StepResult,
    Task,
    play_episode,
    read_trajectories,
    register_env,
    unregister_env,
    write_trajectories,
)
from dg_core.testing import ScriptedEnv
from dg_envs import named_policy
from tests.conftest import dg

NAMES = ("random", "expert", "noisy-expert")


def test_audit_plays_the_policies_in_both_envs(workspace: Path, nearest_run: Path, random_data: Path) -> None:
    out = workspace / "audit-policy-fidelity"
    metrics = dg(
        "expmodel", "audit", "--set", f"expmodel={nearest_run}", "--set", f"held_out=[{random_data}]",
        "--set", "open_loop_episodes=0", "--set", "ablations=false", "--set", "policy_fidelity.episodes=6",
        "--set", "policy_fidelity.max_steps=6", "--set", "policy_fidelity.epsilon=0.3",
        "--output", str(out),
    )  # fmt: skip
    block = metrics["policy_fidelity"]
    assert block == json.loads((out / "audit.json").read_text())["policy_fidelity"]
    assert set(block["policies"]) == set(NAMES) and block["max_steps"] == 6 and block["success_gap_target"] == 0.05
    # episode i plays the i-th distinct held-out task with seed i; the real side is the plain real episodes
    tasks = list({t.task.id: t.task for t in read_trajectories(random_data)}.values())
    env = ScriptedEnv(max_steps=6)
    for name in NAMES:
        entry = block["policies"][name]
        assert [pair["task"] for pair in entry["pairs"]] == [tasks[i % len(tasks)].id for i in range(6)]
        real = [
            play_episode(env, named_policy(name, env, seed=i, epsilon=0.3), tasks[i % len(tasks)], seed=i)
            for i in range(6)
        ]
        assert [pair["success"][0] for pair in entry["pairs"]] == [t.success for t in real]
        assert [pair["length"][0] for pair in entry["pairs"]] == [t.num_steps for t in real]
        synthetic = [pair["success"][1] for pair in entry["pairs"]]
        success = entry["success"]
        assert success["synthetic"]["mean"] == pytest.approx(sum(synthetic) / 6)
        assert success["gap"]["mean"] == pytest.approx(success["real"]["mean"] - success["synthetic"]["mean"])
        assert success["gap"]["n"] == 6 and success["gap"]["low"] <= success["gap"]["mean"] <= success["gap"]["high"]
        assert entry["success_gap_within_target"] == (abs(success["gap"]["mean"]) <= 0.05)
    assert block["policies"]["expert"]["success"]["real"]["mean"] == 1.0
    summary = (out / "summary.md").read_text()
    assert "Policy-level fidelity" in summary and "| expert | 6 |" in summary


def test_audit_without_policy_fidelity(workspace: Path, nearest_run: Path, random_data: Path) -> None:
    metrics = dg(
        "expmodel", "audit", "--set", f"expmodel={nearest_run}", "--set", f"held_out=[{random_data}]",
        "--set", "open_loop_episodes=0", "--set", "ablations=false", "--set", "policy_fidelity.episodes=0",
        "--output", str(workspace / "audit-no-policy-fidelity"),
    )  # fmt: skip
    assert metrics["policy_fidelity"] is None and "Policy-level fidelity" not in metrics["table"]


def test_an_unknown_policy_is_refused_before_the_audit(
    tmp_path: Path, nearest_run: Path, random_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "expmodel", "audit", "--set", f"expmodel={nearest_run}", "--set", f"held_out=[{random_data}]",
        "--set", "policy_fidelity.policies=[random, expret]", "--output", str(tmp_path / "audit"), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "dg: error: policy_fidelity.policies: 'expret' is neither one of expert, random, noisy-expert" in err
    assert "model 'expret' not found" in err and "Traceback" not in err
    assert not (tmp_path / "audit" / "audit.json").exists()


def test_a_trained_policy_plays_in_both_envs(
    workspace: Path, nearest_run: Path, expert_data: Path, random_data: Path
) -> None:
    config = PolicyConfig(hidden_size=16, num_layers=1, num_heads=2, vocab_size=300)
    env = EnvConfig(name="scripted", games=40, seed=3, settings={"rooms": 3}, max_steps=6)
    policy = build_policy(config, trajectories=list(read_trajectories(expert_data)), tasks=task_panel(env, "train"))
    folder = workspace / "policy-fidelity-lm" / "policy"
    save_policy(policy, config, folder)
    metrics = dg(
        "expmodel", "audit", "--set", f"expmodel={nearest_run}", "--set", f"held_out=[{random_data}]",
        "--set", "open_loop_episodes=0", "--set", "ablations=false", "--set", "policy_fidelity.episodes=4",
        "--set", "policy_fidelity.max_steps=6", "--set", f"policy_fidelity.policies=[expert, {folder}]",
        "--output", str(workspace / "audit-policy-fidelity-lm"),
    )  # fmt: skip
    block = metrics["policy_fidelity"]["policies"]
    assert list(block) == ["expert", str(folder)]
    trained = block[str(folder)]
    assert trained["episodes"] == 4 and trained["policy_id"] != "expert"
    lengths = [pair["length"] for pair in trained["pairs"]]
    assert all(1 <= real <= 6 and 1 <= synthetic <= 6 for real, synthetic in lengths)
    real_mean = sum(real for real, _ in lengths) / 4
    assert trained["length"]["real"]["mean"] == pytest.approx(real_mean)
    assert trained["length"]["gap"]["mean"] == pytest.approx(real_mean - sum(s for _, s in lengths) / 4)
    # its sampling is reseeded with each episode's seed: the real side is the episodes played that way here
    tasks = list({t.task.id: t.task for t in read_trajectories(random_data)}.values())
    loaded, real_env = load_policy(str(folder)), ScriptedEnv(max_steps=6)
    for i, pair in enumerate(trained["pairs"]):
        loaded.generator.manual_seed(i)
        episode = play_episode(real_env, loaded, tasks[i % len(tasks)], seed=i)
        assert pair["task"] == tasks[i % len(tasks)].id
        assert (pair["success"][0], pair["length"][0]) == (episode.success, episode.num_steps)


class ExpertlessCorridor(Env):
    """The scripted corridor without an expert (as MiniWoB, which has none): dg-core's Env over its rules."""

    env_id = "scripted-expertless"

    def __init__(self, *, max_steps: int | None = 20) -> None:
        super().__init__(max_steps=max_steps)
        self.rules = ScriptedEnv(max_steps=None)

    def _reset(self, task: Task, seed: int | None) -> State:
        return self.rules._reset(task, seed)

    def _step(self, action: Action) -> StepResult:
        return self.rules._step(action)


def test_an_env_without_an_expert_is_found_before_the_audit(
    workspace: Path, nearest_run: Path, random_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_env("scripted-expertless", ExpertlessCorridor)
    try:
        held_out = tmp_path / "held-out.jsonl"
        episodes = [
            t.model_copy(update={"task": t.task.model_copy(update={"env_id": "scripted-expertless"})})
            for t in read_trajectories(random_data)
        ]
        write_trajectories(held_out, episodes)
        audit = [
            "expmodel", "audit", "--set", f"expmodel={nearest_run}", "--set", f"held_out=[{held_out}]",
            "--set", "open_loop_episodes=0", "--set", "ablations=false", "--set", "policy_fidelity.episodes=4",
            "--set", "policy_fidelity.max_steps=6",
        ]  # fmt: skip
        # The default list: the expert policies are dropped with a note, random is played.
        metrics = dg(*audit, "--output", str(tmp_path / "default"))
        assert set(metrics["policy_fidelity"]["policies"]) == {"random"}
        assert "'scripted-expertless' has no expert; playing random only" in capsys.readouterr().err
        # Asked for by name: refused before anything runs.
        argv = [*audit, "--set", "policy_fidelity.policies=[random, expert]", "--output", str(tmp_path / "named")]
        assert main([*argv, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "dg: error: policy_fidelity.policies: expert need the env's expert" in err and "Traceback" not in err
        assert not (tmp_path / "named" / "audit.json").exists()
    finally:
        unregister_env("scripted-expertless")
