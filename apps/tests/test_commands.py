"""Every command on dg-core's scripted corridor world with tiny models: real envs, real training, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_apps.cli import main, run_command
from dg_apps.training import RunCounters
from dg_core import read_trajectories
from dg_replay import ReplayBuffer
from tests.conftest import SCRIPTED_ENV, TINY_POLICY, dg


def test_collect_writes_expert_trajectories_and_resumes(workspace: Path, expert_data: Path) -> None:
    episodes = list(read_trajectories(expert_data))
    assert episodes and all(t.success for t in episodes)  # the scripted expert always succeeds
    metrics = json.loads((expert_data.parent / "metrics.json").read_text())
    assert metrics["episodes"] == len(episodes) == metrics["tasks"]
    assert (expert_data.parent / "summary.md").read_text().startswith("# dg collect")
    again = dg("collect", *SCRIPTED_ENV, "--set", "policy=expert", "--output", str(expert_data.parent))
    assert again == metrics  # finished run: kept, nothing replayed


def test_expmodel_fit_seeds_replay_and_writes_a_model(expmodel_run: Path, expert_data: Path, random_data: Path) -> None:
    metrics = json.loads((expmodel_run / "metrics.json").read_text())
    real_steps = sum(t.num_steps for path in (expert_data, random_data) for t in read_trajectories(path))
    assert metrics["examples"] == real_steps
    assert (expmodel_run / "model" / "config.json").exists() and (expmodel_run / "expmodel.json").exists()
    with ReplayBuffer.open(expmodel_run / "replay", read_only=True) as buffer:
        assert buffer.stats().by_source == {"real": metrics["replay_transitions"]}
    assert metrics["fit_metrics"]["train/loss"] > 0


def test_expmodel_audit_reports_eps(workspace: Path, expmodel_run: Path, random_data: Path) -> None:
    out = workspace / "audit"
    metrics = dg(
        "expmodel",
        "audit",
        "--set",
        f"expmodel={expmodel_run}",
        "--set",
        f"held_out=[{random_data}]",
        "--set",
        "max_episodes=3",
        "--set",
        "open_loop_episodes=1",
        "--set",
        "ablations=false",
        "--output",
        str(out),
    )
    assert 0.0 <= metrics["eps_R"] <= 1.0 and 0.0 <= metrics["eps_P"] <= 1.0
    assert 0.0 <= metrics["parse_failure_rate"] <= 1.0
    assert "| full |" in (out / "summary.md").read_text()
    # Per-field next-state fidelity: the scripted env's states carry their available actions only.
    fields = metrics["next_state_fields"]
    assert fields["all"]["steps"] == fields["determined"]["steps"] + fields["revealing"]["steps"] > 0
    assert fields["all"]["per_field"]["actions"]["steps"] == fields["all"]["steps"]
    assert fields["all"]["per_field"]["room"]["steps"] == 0
    assert "Targets on determined transitions (full): field F1 " in (out / "summary.md").read_text()


def train_args(expmodel_run: Path, expert_data: Path, *extra: str) -> list[str]:
    return [
        "train", *SCRIPTED_ENV, *TINY_POLICY,
        "--set", f"expmodel={expmodel_run}", "--set", f"data=[{expert_data}]",
        "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--set", "algorithm.updates_per_batch=1", "--set", "algorithm.checkpoint_every=1",
        "--set", "synthetic.max_new_tokens=48", *extra,
    ]  # fmt: skip


def test_train_synthetic_uses_no_real_transitions_and_grows_replay(
    workspace: Path, nearest_run: Path, expert_data: Path
) -> None:
    out = workspace / "train-synthetic"
    metrics = dg(*train_args(nearest_run, expert_data, "--set", "algorithm.steps=2"), "--output", str(out))
    assert metrics["real_transitions"] == 0
    assert metrics["synthetic_transitions"] > 0 and metrics["optimizer_steps"] == 2
    with ReplayBuffer.open(out / "replay", read_only=True) as buffer:
        by_source = buffer.stats().by_source
    assert by_source.get("synthetic", 0) > 0  # written back; the fit run's buffer is untouched
    with ReplayBuffer.open(nearest_run / "replay", read_only=True) as original:
        assert "synthetic" not in original.stats().by_source
    assert metrics["expmodel"]["parse_failures"] == 0 and metrics["replay"]["placeholders_withheld"] == 0
    assert metrics["curriculum"]["pool_size"] == metrics["seed_tasks"]
    for name in ("policy/policy.json", "checkpoints/last.ckpt", "curriculum.json", "plots/learning_curve.png"):
        assert (out / name).exists(), name
    assert (out / "logs" / "csv" / "version_0" / "metrics.csv").exists()
    assert any((out / "logs" / "tensorboard").rglob("events.out.tfevents*"))


def test_interrupted_training_resumes_from_its_checkpoint_with_its_replay(
    workspace: Path, nearest_run: Path, expert_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = workspace / "train-resume"
    args = [*train_args(nearest_run, expert_data, "--set", "algorithm.steps=4"), "--output", str(out)]
    original = RunCounters.on_batch

    def crash_on_fourth(self: RunCounters, rollouts: object) -> None:
        if self.batches == 3:
            raise RuntimeError("simulated crash")
        original(self, rollouts)

    monkeypatch.setattr(RunCounters, "on_batch", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_command([*args, "--no-progress"])
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert (out / "checkpoints" / "last.ckpt").exists()
    with ReplayBuffer.open(out / "replay", read_only=True) as buffer:
        synthetic_before = buffer.stats().by_source.get("synthetic", 0)
    assert synthetic_before > 0
    monkeypatch.setattr(RunCounters, "on_batch", original)
    assert main(["resume", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 4
    assert json.loads((out / "run.json").read_text())["resumes"] == 1
    # The crash came after the fourth batch's transitions were stored, past the third step's checkpoint: the
    # resumed run removed them and collected that batch again (test_kill_resume.py compares runs exactly).
    assert metrics["replay"]["removed_on_resume"] > 0 and metrics["rollout_batches"] == 4
    with ReplayBuffer.open(out / "replay", read_only=True) as buffer:
        assert buffer.stats().by_source.get("synthetic", 0) == metrics["replay"]["by_source"]["synthetic"]
        assert buffer.stats().by_source["synthetic"] >= synthetic_before - metrics["replay"]["removed_on_resume"]


def test_train_real_stops_at_the_real_budget_and_eval_reads_the_policy(workspace: Path, expert_data: Path) -> None:
    out = workspace / "train-real"
    metrics = dg(
        "train", *SCRIPTED_ENV, *TINY_POLICY, "--set", "where=real", "--set", f"data=[{expert_data}]",
        "--set", "algorithm.steps=50", "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--set", "algorithm.updates_per_batch=2", "--set", "real_budget=20", "--set", "curriculum.enabled=false",
        "--output", str(out),
    )  # fmt: skip
    assert metrics["synthetic_transitions"] == 0
    assert 20 <= metrics["real_transitions"] < 20 + 2 * 2 * 6  # the batch that crossed the budget, no more
    assert metrics["optimizer_steps"] == 2 * metrics["rollout_batches"] < 100  # every batch trained on twice
    evaluation = dg(
        "eval", *SCRIPTED_ENV, "--set", f"policy={out}", "--set", "seeds=[0, 1]", "--set", "episodes_per_task=1",
        "--output", str(workspace / "eval-real"),
    )  # fmt: skip
    assert len(evaluation["per_seed"]) == 2 and 0.0 <= evaluation["mean"] <= 1.0
    episodes = list(read_trajectories(workspace / "eval-real" / "episodes" / "episodes-seed0.jsonl"))
    assert len(episodes) == evaluation["panel_size"]


def test_eval_baselines_expert_solves_everything_random_does_not(workspace: Path) -> None:
    expert = dg("eval", *SCRIPTED_ENV, "--set", "policy=expert", "--output", str(workspace / "eval-expert"))
    assert expert["per_seed"] == [1.0, 1.0, 1.0] and expert["std"] == 0.0
    random = dg("eval", *SCRIPTED_ENV, "--set", "policy=random", "--output", str(workspace / "eval-random"))
    assert random["mean"] < 1.0


def test_s2r_runs_a_synthetic_then_a_budgeted_real_phase(
    workspace: Path, expmodel_run: Path, expert_data: Path
) -> None:
    out = workspace / "s2r"
    prefix = [a.replace("env.", "train.env.").replace("policy.", "train.policy.") for a in SCRIPTED_ENV + TINY_POLICY]
    metrics = dg(
        "s2r", *prefix, "--set", f"train.expmodel={expmodel_run}", "--set", f"train.data=[{expert_data}]",
        "--set", "train.algorithm.steps=1", "--set", "train.algorithm.tasks_per_step=2",
        "--set", "train.algorithm.group_size=2", "--set", "train.algorithm.updates_per_batch=1",
        "--set", "train.synthetic.max_new_tokens=48", "--set", "real_steps=3", "--set", "real_budget=10",
        "--output", str(out),
    )  # fmt: skip
    assert metrics["synthetic"]["synthetic_transitions"] > 0
    assert metrics["real"]["real_transitions"] >= 10
    assert (out / "real" / "policy" / "policy.json").exists()
    real_config = json.loads(json.dumps(__import__("yaml").safe_load((out / "real" / "config.yaml").read_text())))
    assert real_config["policy"]["model"] == str(out / "synthetic" / "policy")


def test_config_errors_are_messages_not_tracebacks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "--set", "algorithm.nme=grpo", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dg: error:") and "algorithm.nme: unknown key" in err and "Traceback" not in err
    assert main(["train", "--set", "where=synthetic", "--set", "env.name=scripted", "--set", "data=[]",
                 "--output", str(tmp_path / "y"), "--no-progress"]) == 2  # fmt: skip
    assert "policy.model: 'tiny' trains its tokenizer on real trajectories" in capsys.readouterr().err
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a dg run directory" in capsys.readouterr().err
