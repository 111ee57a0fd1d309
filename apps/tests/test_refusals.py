"""Issue 21: what used to end in a raw traceback, a silent NaN run or a file `read_trajectories` rejects.

Every case runs the real command in this process (``main``) and checks its exit status and its message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from dg_apps.cli import main
from dg_apps.commands import set_aside_bad_lines
from dg_apps.config import AlgorithmConfig, TrainConfig
from dg_core import read_trajectories
from tests.conftest import SCRIPTED_ENV, TINY_POLICY


def interrupted(run: Path) -> None:
    """Leave ``run`` as a killed process does: status ``running`` (its lock died with it)."""
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "running"
    (run / "run.json").write_text(json.dumps(meta))


def real_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", *SCRIPTED_ENV, *TINY_POLICY, "--set", "where=real", "--set", f"data=[{data}]",
        "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--set", "algorithm.checkpoint_every=1", "--set", "curriculum.enabled=false",
        *extra, "--output", str(out), "--no-progress",
    ]  # fmt: skip


# Item 5: a resumed collection repairs a file with torn lines and says so.


def test_resumed_collect_moves_torn_lines_aside_and_collects_their_episodes_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "collect"
    args = ["collect", *SCRIPTED_ENV, "--set", "policy=expert", "--output", str(run), "--no-progress"]
    assert main(args) == 0
    file = run / "trajectories.jsonl"
    lines = file.read_bytes().splitlines(keepends=True)
    total = len(lines)
    assert total >= 6
    # Three kinds of damage: a line cut short (its end of line kept), a line of JSON that is no trajectory, and
    # the last line cut mid-write by a kill (no end of line).
    cut, foreign, last = 3, 5, total
    damaged = list(lines)
    damaged[cut - 1] = lines[cut - 1][:150] + b"\n"
    damaged[foreign - 1] = b'{"not": "a trajectory"}\n'
    damaged[last - 1] = lines[last - 1][:80]
    file.write_bytes(b"".join(damaged))
    interrupted(run)
    capsys.readouterr()

    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{file}:{cut}: invalid JSON" in err
    assert f"{file}:{foreign}: not a trajectory (field 'schema_version')" in err
    assert f"{file}:{last}: torn: the last line stops after 80 bytes without an end of line" in err
    torn = file.with_name("trajectories.jsonl.torn")
    assert f"3 unreadable line(s) of {file} moved to {torn}" in err
    # Nothing lost: the bad lines are in the side file, byte for byte.
    assert torn.read_bytes().splitlines() == [damaged[cut - 1].strip(), damaged[foreign - 1].strip(), damaged[-1]]
    # The file reads cleanly again and holds every episode once: the three were collected again.
    episodes = list(read_trajectories(file))
    assert sorted(t.metadata["collection"]["episode"] for t in episodes) == list(range(total))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dropped_lines"] == 3 and metrics["new_episodes"] == 3
    assert [item["line"] for item in metrics["dropped"]] == [cut, foreign, last]
    assert metrics["torn_file"] == str(torn)
    assert "3 unreadable line(s) of the existing file" in (run / "summary.md").read_text()


def test_a_whole_last_line_without_its_end_of_line_is_kept(tmp_path: Path, expert_data: Path) -> None:
    file = tmp_path / "t.jsonl"
    lines = expert_data.read_bytes().splitlines()[:3]
    file.write_bytes(b"\n".join(lines))  # the last record is whole; only its newline is missing
    assert set_aside_bad_lines(file) == []
    assert file.read_bytes() == b"\n".join(lines) + b"\n"
    assert len(list(read_trajectories(file))) == 3
    assert not file.with_name("t.jsonl.torn").exists()
    assert set_aside_bad_lines(file) == []  # a clean file is left alone


# Item 8: non-finite numbers are refused at config time; a non-finite training step stops the run.


def test_infinite_and_nan_config_values_are_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "never")
    for value, shown in ((".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan")):  # YAML's infinities and NaN
        assert main(["train", "--set", f"algorithm.learning_rate={value}", "--output", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dg: error:") and f"algorithm.learning_rate: must be a finite number (got {shown})" in err
    for value in ("inf", "nan", "1e999"):  # text that pydantic would read as a float
        assert main(["train", "--set", f"algorithm.learning_rate={value}", "--output", out]) == 2
        assert "algorithm.learning_rate: Input should be a finite number" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("policy:\n  temperature: .inf\ntrainer:\n  gradient_clip_val: .nan\n")
    assert main(["train", "--config", str(config), "--output", out]) == 2
    err = capsys.readouterr().err
    assert "policy.temperature: must be a finite number (got inf)" in err
    assert "trainer.gradient_clip_val: must be a finite number (got nan)" in err
    assert main(["eval", "--set", "env.options={scale: [1, .inf]}", "--output", out]) == 2
    assert "env.options.scale.1: must be a finite number (got inf)" in capsys.readouterr().err
    assert not Path(out).exists()
    with pytest.raises(ValidationError, match="finite number"):
        AlgorithmConfig(learning_rate=float("inf"))
    with pytest.raises(ValidationError, match="finite number"):
        TrainConfig().algorithm.kl_coef = float("nan")


def test_a_training_step_with_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    workspace: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = workspace / "train-nan"
    # PPO with a learning rate of 1e30 (finite, so the config takes it): step 1 moves every weight by about 1e30,
    # the forward pass of step 2 overflows and its loss is NaN.
    args = real_train_args(
        expert_data, out, "--set", "algorithm.name=ppo", "--set", "algorithm.learning_rate=1e30",
        "--set", "algorithm.steps=3", "--set", "algorithm.updates_per_batch=2",
    )  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dg: error: PPOModule: optimiser step 2: the loss is nan"), err
    assert "the step was not taken" in err and "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "policy").exists()  # no policy of a diverged run
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # the last good step, not the failed one
    weights = [value for value in saved["state_dict"].values() if value.is_floating_point()]
    assert weights and all(bool(torch.isfinite(value).all()) for value in weights)

    # A policy whose weights are NaN (what such a run saved before this fix) is refused by `dg eval`.
    broken = workspace / "nan-policy"
    shutil.copytree(out / "policy-initial", broken)
    tensors = load_file(broken / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    eval_args = ["eval", *SCRIPTED_ENV, "--set", f"policy={broken}", "--set", "seeds=[0]", "--no-progress"]
    assert main([*eval_args, "--output", str(workspace / "eval-nan")]) == 2
    err = capsys.readouterr().err
    assert f"dg: error: {broken}: 1 of" in err and "weight tensors hold NaN or infinite values" in err


# Item 9: a `dg: error:` line naming the path and what is wrong, never a traceback.


def test_a_folder_given_as_a_data_or_task_file_is_refused(
    tmp_path: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = expert_data.parent  # a `dg collect` run directory: it holds trajectories.jsonl
    assert main(["expmodel", "fit", "--set", f"data=[{folder}]", "--output", str(tmp_path / "fit")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dg: error: data: {folder} is a folder, not a trajectory file")
    assert f"(it holds {expert_data})" in err and "Traceback" not in err
    audit = ["expmodel", "audit", "--set", "expmodel=somewhere", "--set", f"held_out=[{folder}]"]
    assert main([*audit, "--output", str(tmp_path / "audit")]) == 2
    assert f"dg: error: held_out: {folder} is a folder, not a trajectory file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    train = ["train", "--set", "where=real", "--set", f"data=[{empty}]", "--output", str(tmp_path / "train")]
    assert main([*train, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"dg: error: data: {empty} is a folder, not a trajectory file; list the .jsonl / .parquet files\n" in err
    assert main(["eval", "--set", f"tasks={empty}", "--output", str(tmp_path / "eval"), "--no-progress"]) == 2
    assert f"dg: error: tasks: {empty} holds no playable textworld game" in capsys.readouterr().err


def test_a_policy_folder_without_a_readable_model_is_refused(
    workspace: Path, tmp_path: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def eval_error(policy: Path) -> str:
        output = tmp_path / f"eval-{policy.name}"
        assert main(["eval", *SCRIPTED_ENV, "--set", f"policy={policy}", "--output", str(output), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dg: error:") and "Traceback" not in err, err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} is not a Hugging Face model directory (no config.json)" in eval_error(empty)
    unknown = tmp_path / "unknown"  # a config.json that names no model type
    unknown.mkdir()
    (unknown / "config.json").write_text("{}")
    (unknown / "model.safetensors").write_bytes(b"")
    assert f"no causal LM could be loaded from {unknown}: Unrecognized model" in eval_error(unknown)
    # A policy directory whose weights were cut short (a copy or a save interrupted).
    source = workspace / "train-nan" / "policy-initial"
    if not source.exists():
        assert main(real_train_args(expert_data, workspace / "train-short", "--set", "algorithm.steps=1")) == 0
        source = workspace / "train-short" / "policy"
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = eval_error(truncated)
    assert f"the safetensors weights in {truncated} are unreadable (truncated or corrupt" in err
    # The run directory of a command that wrote no policy (here a collection).
    err = eval_error(expert_data.parent)
    assert f"{expert_data.parent} is a dg run directory without a policy (no policy/policy.json)" in err


def test_an_output_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("not a run directory")
    assert main(["eval", "--set", "policy=random", "--output", str(file), "--no-progress"]) == 2
    assert f"dg: error: --output {file}: is a file, not a directory" in capsys.readouterr().err
    assert main(["eval", "--set", "policy=random", "--output", str(file / "run"), "--no-progress"]) == 2
    assert f"dg: error: --output {file / 'run'}: lies under {file}, which is a file" in capsys.readouterr().err
    assert main(["resume", str(file)]) == 2
    assert f"dg: error: dg resume {file}: is a file, not a directory" in capsys.readouterr().err
    assert file.read_text() == "not a run directory"


def test_a_truncated_checkpoint_is_named_with_what_to_do(
    workspace: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = workspace / "train-truncated"
    one_step = ("--set", "algorithm.steps=1", "--set", "algorithm.updates_per_batch=1")
    assert main(real_train_args(expert_data, out, *one_step)) == 0
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a save cut short
    interrupted(out)
    capsys.readouterr()
    assert main(["resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    aside = last.with_name("last.ckpt.bad")
    assert err.startswith(f"dg: error: {last}: the checkpoint cannot be read (truncated or corrupt: ")
    assert f"Move it aside (mv {last} {aside}) and run the command again" in err and "Traceback" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    # Doing what it says works: the training restarts from its beginning and finishes.
    last.rename(aside)
    assert main(["resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["optimizer_steps"] == 1
    assert torch.load(last, weights_only=True)["global_step"] == 1


# Item 3: the run's copy of the experience model's replay buffer is made whole or not at all.


def test_a_half_copied_replay_buffer_is_never_used(
    workspace: Path, nearest_run: Path, expert_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dg_replay import ReplayBuffer

    out = workspace / "train-replay-copy"
    args = [
        "train", *SCRIPTED_ENV, *TINY_POLICY, "--set", f"data=[{expert_data}]",
        "--set", "algorithm.steps=1", "--set", "algorithm.tasks_per_step=2", "--set", "algorithm.group_size=2",
        "--output", str(out), "--no-progress",
    ]  # fmt: skip
    # A missing experience-model directory is named before anything is copied.
    fit = workspace / "fit-arrives-later"
    assert main([*args, "--set", f"expmodel={fit}"]) == 2
    err = capsys.readouterr().err
    assert f"dg: error: expmodel: {fit} is not a `dg expmodel fit` run directory (no such directory)" in err
    assert "Traceback" not in err and not (out / "replay").exists()
    # The fit appears; a copy killed midway left a partial folder (a torn SQLite file): it is replaced, never opened.
    shutil.copytree(nearest_run, fit)
    (out / "replay.partial").mkdir()
    (out / "replay.partial" / "transitions.sqlite").write_bytes(b"SQLite format 3\x00 torn")
    assert main(["resume", str(out), "--no-progress"]) == 0
    assert not (out / "replay.partial").exists()
    with (
        ReplayBuffer.open(out / "replay", read_only=True) as buffer,
        ReplayBuffer.open(fit / "replay", read_only=True) as original,
    ):
        assert buffer.stats().by_source["real"] == original.stats().by_source["real"]
