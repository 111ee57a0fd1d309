"""Task panels and task files; run directories: resume, refusal of a different config, markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dg_apps.config import CollectConfig, EnvConfig, load_config
from dg_apps.rundir import RunDir
from dg_apps.tasks import TaskFileError, env_factory, read_tasks, task_panel, write_tasks
from dg_core import ConfigError, Task

SCRIPTED = EnvConfig(name="scripted", games=40, seed=3, settings={"rooms": 3}, max_steps=6)


def test_scripted_suite_splits_are_disjoint_deterministic_and_cover_the_suite() -> None:
    splits = {name: task_panel(SCRIPTED, name) for name in ("train", "validation", "test")}
    ids = [task.id for tasks in splits.values() for task in tasks]
    assert len(ids) == len(set(ids)) == 40
    assert all(task.split == name for name, tasks in splits.items() for task in tasks)
    assert [t.id for t in task_panel(SCRIPTED, "test")] == [t.id for t in splits["test"]]
    assert len(splits["train"]) > len(splits["test"]) > 0


def test_task_file_round_trip_and_panel(tmp_path: Path) -> None:
    tasks = task_panel(SCRIPTED, "test")
    file = write_tasks(tmp_path / "panel.jsonl", tasks)
    assert read_tasks(file) == tasks
    assert task_panel(SCRIPTED, str(file)) == tasks
    other = EnvConfig(name="textworld")
    with pytest.raises(ConfigError, match=r"is for env 'scripted', not env\.name 'textworld'"):
        task_panel(other, str(file))


def test_bad_task_file_line_names_file_line_and_field(tmp_path: Path) -> None:
    good = Task(id="a", env_id="scripted", instruction="take the coin")
    file = tmp_path / "tasks.jsonl"
    file.write_text(good.model_dump_json() + "\n" + '{"id": "b", "env_id": "scripted"}\n')
    with pytest.raises(TaskFileError, match=r"tasks.jsonl:2: field instruction: Field required"):
        read_tasks(file)
    file.write_text(good.model_dump_json() + "\n" + good.model_dump_json() + "\n")
    with pytest.raises(TaskFileError, match="task id 'a' appears more than once"):
        read_tasks(file)
    with pytest.raises(ConfigError, match="task file not found"):
        read_tasks(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="neither a split"):
        task_panel(SCRIPTED, "holdout")


def test_env_without_a_suite_needs_a_task_file_and_unknown_env_is_named() -> None:
    with pytest.raises(ConfigError, match="has no generated suite in dg; give tasks: a task file"):
        task_panel(EnvConfig(name="webshop"), "train")
    with pytest.raises(ConfigError, match=r"unknown env 'nowhere'; registered: .*textworld"):
        env_factory(EnvConfig(name="nowhere"))
    env = env_factory(SCRIPTED)()
    assert env.max_steps == 6


def test_run_dir_resumes_the_same_config_and_refuses_another(tmp_path: Path) -> None:
    config = CollectConfig(env=SCRIPTED)
    run = RunDir.start(tmp_path / "run", "collect", config)
    assert not run.resumed and (run.path / "config.yaml").exists() and not run.done
    run.release()  # as the first process's exit would (a SIGKILL included): the run is left "running"
    again = RunDir.start(tmp_path / "run", "collect", config)
    assert again.resumed and RunDir.read_meta(again.path)["resumes"] == 1
    # The resolved config reloads to the same model: a run can be repeated from its directory.
    assert load_config(CollectConfig, run.path / "config.yaml") == config
    changed = config.model_copy(update={"episodes_per_task": 3})
    with pytest.raises(ConfigError, match="different config \\(first difference: episodes_per_task\\)"):
        RunDir.start(tmp_path / "run", "collect", changed)
    with pytest.raises(ConfigError, match="holds a `dg collect` run"):
        RunDir.start(tmp_path / "run", "eval", config)
    again.finish()
    assert RunDir.start(tmp_path / "run", "collect", config).done
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a dg run directory"):
        RunDir.start(tmp_path / "other", "collect", config)


def test_a_running_run_directory_is_locked_and_its_run_json_left_alone(tmp_path: Path) -> None:
    """A second process on a running directory is refused before it writes anything (issue 21 item 4)."""
    import subprocess
    import sys
    import textwrap

    config = CollectConfig(env=SCRIPTED)
    run = RunDir.start(tmp_path / "run", "collect", config)
    meta = (run.path / "run.json").read_text()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from dg_apps.config import CollectConfig, load_config
        from dg_apps.rundir import RunDir
        from dg_core import ConfigError
        path = Path({str(run.path)!r})
        try:
            RunDir.start(path, "collect", load_config(CollectConfig, path / "config.yaml"))
        except ConfigError as error:
            print("REFUSED", error)
        """
    )
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert "REFUSED" in second.stdout and f"in use by another dg process (pid {os.getpid()})" in second.stdout
    assert (run.path / "run.json").read_text() == meta  # still "running", not rewritten to "failed"
    run.finish()
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert "REFUSED" not in again.stdout  # finished: the lock is released


def test_a_config_field_added_since_the_run_started_takes_its_default(tmp_path: Path) -> None:
    """Upgrading dg must not orphan a run directory: a key missing from the stored config compares as its default."""
    import yaml

    config = CollectConfig(env=SCRIPTED)
    run = RunDir.start(tmp_path / "run", "collect", config)
    run.release()
    stored = yaml.safe_load((run.path / "config.yaml").read_text())
    del stored["episodes_per_task"]  # as written by a dg that did not have this field yet
    (run.path / "config.yaml").write_text(yaml.safe_dump(stored))
    again = RunDir.start(tmp_path / "run", "collect", config)
    assert again.resumed
    again.release()
    with pytest.raises(ConfigError, match="first difference: episodes_per_task"):
        RunDir.start(tmp_path / "run", "collect", config.model_copy(update={"episodes_per_task": 5}))


def test_a_folder_of_textworld_games_is_a_task_panel_in_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tasks: FOLDER reads a user's TextWorld games (issue 20 item 2); what cannot be played is named, not raised."""
    import json
    import shutil

    from dg_apps.cli import main
    from dg_envs.textworld import textworld_tasks

    generated = textworld_tasks("coin_collector", count=3, seed=11, settings={"level": 1}, split=None)
    games = tmp_path / "my-games"
    (games / "sub").mkdir(parents=True)
    for index, task in enumerate(generated):
        game = Path(str(task.config["game_file"]))
        target = games / ("sub" if index == 2 else "") / f"game{index}.z8"
        shutil.copy(game, target)
        shutil.copy(game.with_suffix(".json"), target.with_suffix(".json"))
    shutil.copy(Path(str(generated[0].config["game_file"])), games / "orphan.z8")  # no .json beside it
    (games / "broken.ulx").write_bytes(b"not a game")
    (games / "broken.json").write_text("{half")
    (games / "notes.txt").write_text("ignored")

    textworld = EnvConfig(name="textworld", max_steps=5)
    panel = task_panel(textworld, str(games))
    assert len(panel) == 3 and all(task.env_id == "textworld" for task in panel)
    assert sorted(str(task.metadata["source"]) for task in panel) == ["game0.z8", "game1.z8", "sub/game2.z8"]
    assert [task.instruction for task in sorted(panel, key=lambda t: str(t.metadata["source"]))] == [
        task.instruction for task in generated
    ]
    err = capsys.readouterr().err
    assert f"tasks: skipped {games / 'orphan.z8'}: no orphan.json beside it" in err
    assert f"tasks: skipped {games / 'broken.ulx'}: unreadable broken.json" in err

    # dg tasks writes it as a task file a user can read and edit, and every command takes either.
    task_file = tmp_path / "mine.jsonl"
    env_args = ["--set", "env.name=textworld", "--set", "env.max_steps=5"]
    assert main(["tasks", *env_args, "--set", f"tasks={games}", "--output", str(task_file)]) == 0
    out = capsys.readouterr().out
    assert f"3 textworld tasks from {games} written to {task_file} (2 skipped, named above)" in out
    assert read_tasks(task_file) == panel
    assert main(["tasks", *env_args, "--set", f"tasks={games}", "--output", str(task_file)]) == 2  # never overwritten
    assert "exists; choose another file" in capsys.readouterr().err
    digests = []
    for tasks in (str(games), str(task_file)):
        output = tmp_path / f"eval-{Path(tasks).name}"
        eval_args = ["--set", f"tasks={tasks}", "--set", "policy=random", "--set", "seeds=[0]"]
        assert main(["eval", *env_args, *eval_args, "--output", str(output), "--no-progress"]) == 0
        metrics = json.loads((output / "metrics.json").read_text())
        assert metrics["panel_size"] == 3 and 0.0 <= metrics["mean"] <= 1.0
        digests.append(metrics["tasks_digest"])
    assert digests[0] == digests[1]  # the folder and its task file are the same panel

    # A folder with nothing playable, and a folder for an env without game folders, are errors naming why.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"holds no playable textworld game \(\.z8 / \.ulx game files .*none found"):
        task_panel(textworld, str(empty))
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    (only_bad / "x.z8").write_bytes(b"?")
    with pytest.raises(ConfigError, match=r"1 skipped \(first: .*x\.z8: no x\.json beside it\)"):
        task_panel(textworld, str(only_bad))
    with pytest.raises(ConfigError, match=r"game folders are read for env\.name textworld and alfworld"):
        task_panel(SCRIPTED, str(games))
