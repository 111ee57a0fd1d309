"""``dg train`` in the controlled-error simulator (``synthetic.simulator: perturbed``) on the scripted world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from dg_apps.cli import main, run_command
from dg_apps.training import RunCounters
from tests.conftest import SCRIPTED_ENV, TINY_POLICY, dg


def args(expert_data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "train", *SCRIPTED_ENV, *TINY_POLICY, "--set", f"data=[{expert_data}]",
        "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--set", "algorithm.updates_per_batch=1", "--set", "algorithm.checkpoint_every=1",
        "--set", "curriculum.enabled=false", *extra, "--output", str(output),
    ]  # fmt: skip


PERTURBED = ["--set", "where=synthetic", "--set", "synthetic.simulator=perturbed"]


def weights(run: Path) -> dict[str, Any]:
    return load_file(str(run / "policy" / "model.safetensors"))


def test_zero_error_training_equals_real_env_training(workspace: Path, expert_data: Path) -> None:
    """Same seed, tasks, policy and updates: GRPO in the simulator at zero error is GRPO in the real env."""
    real = dg(*args(expert_data, workspace / "tol-real", "--set", "where=real", "--set", "algorithm.steps=3"))
    zero = dg(*args(expert_data, workspace / "tol-zero", *PERTURBED, "--set", "algorithm.steps=3"))
    assert real["real_transitions"] == zero["synthetic_transitions"] > 0
    assert zero["real_transitions"] == 0 and real["synthetic_transitions"] == 0
    assert zero["rollout_history"] == real["rollout_history"]
    assert zero["optimizer_steps"] == real["optimizer_steps"] == 3
    ours, theirs = weights(workspace / "tol-zero"), weights(workspace / "tol-real")
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    initial = load_file(str(workspace / "tol-zero" / "policy-initial" / "model.safetensors"))
    assert any(not ours[k].equal(initial[k]) for k in ours)  # the updates changed the policy
    simulator = zero["simulator"]
    assert simulator["steps"] == zero["synthetic_transitions"]
    assert sum(simulator["transition_errors"].values()) == sum(simulator["reward_errors"].values()) == 0
    assert simulator["reward_eligible"] == zero["episodes"]


def test_errors_are_injected_counted_and_summarised(workspace: Path, expert_data: Path) -> None:
    out = workspace / "tol-errors"
    metrics = dg(
        *args(
            expert_data, out, *PERTURBED, "--set", "algorithm.steps=3",
            "--set", "synthetic.eps_r=0.5", "--set", "synthetic.eps_p=0.5",
        )
    )  # fmt: skip
    simulator = metrics["simulator"]
    assert metrics["real_transitions"] == 0
    assert metrics["synthetic_transitions"] == simulator["steps"] + simulator["limbo_steps"]
    assert sum(simulator["transition_errors"].values()) > 0 and sum(simulator["reward_errors"].values()) > 0
    assert 0 < simulator["transition_rate"] < 1 and 0 < simulator["reward_rate"] <= 1
    summary = (out / "summary.md").read_text()
    assert "perturbed simulator (real env underneath): eps_R 0.5, eps_P 0.5 requested; measured eps_R" in summary


def test_only_the_chosen_kinds_are_injected(workspace: Path, expert_data: Path) -> None:
    metrics = dg(
        *args(
            expert_data, workspace / "tol-kinds", *PERTURBED, "--set", "algorithm.steps=2",
            "--set", "synthetic.eps_p=1.0", "--set", "synthetic.error_kinds=[missing_object, premature_done]",
        )
    )  # fmt: skip
    errors = metrics["simulator"]["transition_errors"]
    assert errors["missing_object"] + errors["premature_done"] == metrics["simulator"]["transition_eligible"] > 0
    assert all(count == 0 for kind, count in errors.items() if kind not in ("missing_object", "premature_done"))


def test_a_resumed_run_injects_what_an_uninterrupted_one_does(
    workspace: Path, expert_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rates = ["--set", "synthetic.eps_r=0.3", "--set", "synthetic.eps_p=0.3", "--set", "algorithm.steps=4"]
    straight = dg(*args(expert_data, workspace / "tol-straight", *PERTURBED, *rates))
    out = workspace / "tol-resumed"
    original = RunCounters.on_batch

    def crash_on_fourth(self: RunCounters, rollouts: object) -> None:
        if self.batches == 3:
            raise RuntimeError("simulated crash")
        original(self, rollouts)

    monkeypatch.setattr(RunCounters, "on_batch", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_command([*args(expert_data, out, *PERTURBED, *rates), "--no-progress"])
    monkeypatch.setattr(RunCounters, "on_batch", original)
    assert main(["resume", str(out), "--no-progress"]) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["simulator"] == straight["simulator"]
    assert resumed["rollout_history"] == straight["rollout_history"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "synthetic.eps_r=0.1"], "set synthetic.simulator=perturbed"),
        ([*PERTURBED, "--set", "synthetic.eps_p=1.5"], "synthetic.eps_p: Input should be less than or equal to 1"),
        ([*PERTURBED, "--set", "synthetic.error_kinds=[wrong_room]"], "synthetic.error_kinds.0: Input should be"),
        ([*PERTURBED, "--set", "expmodel=somewhere"], "expmodel: not used by synthetic.simulator=perturbed"),
        ([*PERTURBED, "--set", "curriculum.enabled=true", "--set", "curriculum.grow_every=1"], "grow_every"),
    ],
)
def test_bad_simulator_settings_are_messages(
    extra: list[str], message: str, expert_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args(expert_data, tmp_path / "x", *extra), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dg: error:") and message in err, err


def test_error_kinds_match_the_simulators() -> None:
    from typing import get_args

    from dg_apps.config import SyntheticConfig
    from dg_expmodel import TRANSITION_ERRORS

    annotation = SyntheticConfig.model_fields["error_kinds"].annotation
    (literal,) = get_args(annotation)
    assert get_args(literal) == TRANSITION_ERRORS
    assert tuple(SyntheticConfig().error_kinds) == TRANSITION_ERRORS
