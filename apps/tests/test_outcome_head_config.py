"""`expmodel.outcome_head`: a separate reward / done head chosen in the config, written by `dg expmodel fit` and
used wherever the model is loaded (measured here through `dg expmodel audit`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_apps.cli import main
from tests.conftest import SCRIPTED_ENV, TINY_EXPMODEL, TINY_POLICY, dg


@pytest.fixture(scope="module")
def held_out_games(workspace: Path) -> Path:
    """Expert episodes of the test split: games the experience model never saw."""
    out = workspace / "collect-expert-test"
    dg("collect", *SCRIPTED_ENV, "--set", "policy=expert", "--set", "tasks=test", "--output", str(out))
    return out / "trajectories.jsonl"


def test_the_head_pays_the_wins_that_the_nearest_model_misses(
    workspace: Path, expert_data: Path, random_data: Path, held_out_games: Path
) -> None:
    audits = {}
    for name, head in (("plain", []), ("head", ["--set", "expmodel.outcome_head={}"])):
        fit = workspace / f"expmodel-nearest-{name}"
        dg(
            "expmodel", "fit", "--set", "expmodel.model=nearest", "--set", "expmodel.top_k=4", *head,
            "--set", f"data=[{expert_data}, {random_data}]", "--output", str(fit),
        )  # fmt: skip
        settings = json.loads((fit / "expmodel.json").read_text())
        assert settings["outcome_head"] == ({"k": 1, "action_weight": 0.5} if head else None)
        audits[name] = dg(
            "expmodel", "audit", "--set", f"expmodel={fit}", "--set", f"held_out=[{held_out_games}]",
            "--set", "open_loop_episodes=0", "--set", "ablations=false", "--set", "policy_fidelity.episodes=4",
            "--set", "policy_fidelity.policies=[expert]", "--set", "policy_fidelity.max_steps=6",
            "--output", str(workspace / f"audit-nearest-{name}"),
        )  # fmt: skip
    plain, head = audits["plain"], audits["head"]
    episodes = plain["held_out_episodes"]
    assert plain["success"]["positives"] == head["success"]["positives"] == episodes > 0  # one win per expert episode
    # Unseen games: the nearest model pays a win only where an identical transition was seen in training, else it
    # answers the failure state; the head votes each win from the real training transitions, and invents none.
    assert plain["success"]["true_positive"] == 1 and plain["success"]["recall"] == 0.25  # 1 of the 4 wins seen before
    assert head["success"]["recall"] == 1.0 and head["success"]["precision"] == 1.0
    assert head["done"]["accuracy"] == 1.0
    assert (plain["outcome_head"], head["outcome_head"]) == (None, {"k": 1, "action_weight": 0.5})
    # Next states stay the nearest model's: the per-field scores do not move.
    assert head["next_state_fields"] == plain["next_state_fields"]
    # The expert wins more often in the synthetic env with the head (its next states can still stall it).
    expert = {name: a["policy_fidelity"]["policies"]["expert"]["success"] for name, a in audits.items()}
    assert expert["plain"]["real"]["mean"] == expert["head"]["real"]["mean"] == 1.0
    assert expert["head"]["synthetic"]["mean"] > expert["plain"]["synthetic"]["mean"]


def test_bad_head_settings_are_refused(tmp_path: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for setting, message in (
        ("expmodel.outcome_head={k: 0}", "expmodel.outcome_head.k"),
        ("expmodel.outcome_head={neighbours: 3}", "expmodel.outcome_head.neighbours"),
    ):
        argv = ["expmodel", "fit", "--set", "expmodel.model=nearest", "--set", setting,
                "--set", f"data=[{expert_data}]", "--output", str(tmp_path / "fit"), "--no-progress"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "dg: error:" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "fit" / "expmodel.json").exists()


@pytest.fixture(scope="module")
def exact_first_run(workspace: Path, expert_data: Path, random_data: Path) -> Path:
    fit = workspace / "expmodel-exact-first"
    dg(
        "expmodel", "fit", *TINY_EXPMODEL, "--set", "expmodel.exact_first=true",
        "--set", f"data=[{expert_data}, {random_data}]", "--output", str(fit),
    )  # fmt: skip
    return fit


def test_exact_first_copies_what_the_buffer_holds(expmodel_run: Path, exact_first_run: Path, random_data: Path) -> None:
    """The fixtures' tiny LLM experience model never parses; exact-match first, the random episodes (which seeded the
    buffer, so every step of theirs is held) are answered from the buffer, all of them exactly."""
    workspace, fit = exact_first_run.parent, exact_first_run
    assert json.loads((fit / "expmodel.json").read_text())["exact_first"] is True
    audits = {}
    for name, run in (("plain", expmodel_run), ("exact-first", fit)):
        audits[name] = dg(
            "expmodel", "audit", "--set", f"expmodel={run}", "--set", f"held_out=[{random_data}]",
            "--set", "max_episodes=4", "--set", "open_loop_episodes=0", "--set", "ablations=false",
            "--set", "policy_fidelity.episodes=0", "--output", str(workspace / f"audit-exact-first-{name}"),
        )  # fmt: skip
    plain, first = audits["plain"], audits["exact-first"]
    # The failure state (the state repeated) is right only where nothing changes.
    assert plain["parse_failure_rate"] == 1.0 and plain["next_state_exact_match"] < 0.2
    assert (first["parse_failure_rate"], first["next_state_exact_match"], first["eps_R"]) == (0.0, 1.0, 0.0)


def test_synthetic_training_counts_copied_and_generated_steps(
    workspace: Path, exact_first_run: Path, expert_data: Path, random_data: Path
) -> None:
    """`dg train`'s metrics.expmodel with exact-first: every synthetic step is either copied from an exact match
    (parses) or generated by the tiny model (which never parses here), and the failure states are the env's count."""
    out = workspace / "train-exact-first"
    metrics = dg(
        "train", *SCRIPTED_ENV, *TINY_POLICY, "--set", f"expmodel={exact_first_run}",
        "--set", f"data=[{expert_data}, {random_data}]", "--set", "algorithm.steps=1",
        "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--set", "synthetic.max_new_tokens=48", "--output", str(out),
    )  # fmt: skip
    counts = metrics["expmodel"]
    assert counts["steps"] == metrics["synthetic_transitions"] > 0
    assert counts["exact_matches"] > 0 and counts["exact_matches"] + counts["queries"] == counts["steps"]
    assert counts["parse_failures"] == counts["model_parse_failures"] == counts["queries"]
    assert counts["parse_failure_rate"] == counts["queries"] / counts["steps"]
    assert metrics["replay"]["placeholders_withheld"] == counts["parse_failures"]


def test_exact_first_is_refused_where_it_means_nothing(
    tmp_path: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, message in (
        (["--set", "expmodel.model=nearest"], "the nearest model answers exact matches already"),
        (["--set", "expmodel.top_k=0"], "needs retrieved transitions to match"),
    ):
        argv = ["expmodel", "fit", "--set", "expmodel.exact_first=true", *extra,
                "--set", f"data=[{expert_data}]", "--output", str(tmp_path / "fit"), "--no-progress"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "dg: error:" in err and message in err and "Traceback" not in err
