"""Collection: policies, worker processes, crash handling, resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dg_core import ConfigError, RandomPolicy, Task, read_trajectories
from dg_core.testing import scripted_task
from dg_envs import collect
from tests._crashing_envs import CRASH_ITEM, make_dying_env, make_raising_env


def _scripted_tasks() -> list[Task]:
    return [
        scripted_task("corridor-coin", rooms=4, goal_item="gold coin"),
        scripted_task("corridor-key", rooms=3, goal_item=CRASH_ITEM),
        scripted_task("corridor-gem", rooms=5, goal_item="blue gem"),
    ]


def _episode_indices(path: Path) -> list[int]:
    return sorted(int(t.metadata["collection"]["episode"]) for t in read_trajectories(path))  # type: ignore[index]


def test_expert_random_and_noisy_expert_in_process(tmp_path: Path) -> None:
    tasks = [t for t in _scripted_tasks() if t.config["goal_item"] != CRASH_ITEM]
    output = tmp_path / "runs.jsonl"
    expert = collect("scripted", tasks, output, episodes=6, policy="expert", workers=0, progress=False)
    assert (expert.episodes, expert.new_episodes, expert.successes, expert.failed_episodes) == (6, 6, 6, 0)
    assert expert.success_rate == 1.0 and expert.steps > 0 and expert.steps_per_second > 0
    random_run = collect("scripted", tasks, output, episodes=6, policy="random", workers=0, progress=False)
    noisy = collect(
        "scripted", tasks, output, episodes=6, policy="noisy-expert", epsilon=0.5, workers=0, progress=False
    )
    assert random_run.new_episodes == noisy.new_episodes == 6
    by_policy: dict[str, int] = {}
    for trajectory in read_trajectories(output):
        assert trajectory.policy_id is not None
        by_policy[trajectory.policy_id] = by_policy.get(trajectory.policy_id, 0) + 1
    assert by_policy == {"expert": 6, "random": 6, "expert-eps0.5": 6}
    again = collect("scripted", tasks, output, episodes=6, policy="expert", workers=0, progress=False)
    assert (again.new_episodes, again.resumed_episodes) == (0, 6)
    assert "6 episodes" in str(again)


def test_any_policy_object_with_worker_processes(tmp_path: Path) -> None:
    tasks = [t for t in _scripted_tasks() if t.config["goal_item"] != CRASH_ITEM]
    summary = collect(
        "scripted", tasks, tmp_path / "r.jsonl", episodes=8, policy=RandomPolicy(3), workers=2, progress=False
    )
    assert summary.new_episodes == 8 and summary.worker_restarts == 0
    assert _episode_indices(tmp_path / "r.jsonl") == list(range(8))
    assert {t.policy_id for t in read_trajectories(tmp_path / "r.jsonl")} == {"random-3"}


def test_an_env_that_raises_is_rebuilt_and_its_episode_recorded_as_failed(tmp_path: Path) -> None:
    output = tmp_path / "raise.jsonl"
    summary = collect(make_raising_env, _scripted_tasks(), output, episodes=6, workers=0, progress=False)
    assert (summary.episodes, summary.failed_episodes, summary.successes) == (6, 2, 4)
    failed = [t for t in read_trajectories(output) if "error" in t.metadata]
    assert [t.task.config["goal_item"] for t in failed] == [CRASH_ITEM, CRASH_ITEM]
    assert all("simulated engine failure" in str(t.metadata["error"]) and not t.success for t in failed)


def test_a_worker_process_that_dies_is_restarted(tmp_path: Path) -> None:
    output = tmp_path / "die.jsonl"
    summary = collect(make_dying_env, _scripted_tasks(), output, episodes=6, workers=2, progress=False)
    assert summary.episodes == 6 and summary.worker_restarts == 2 and summary.failed_episodes == 2
    assert _episode_indices(output) == list(range(6))
    failed = [t for t in read_trajectories(output) if "error" in t.metadata]
    assert all("exit code 17" in str(t.metadata["error"]) for t in failed)


def test_bad_arguments_and_foreign_files_fail_clearly(tmp_path: Path) -> None:
    tasks = _scripted_tasks()
    with pytest.raises(ConfigError, match="unknown policy 'oracle'"):
        collect("scripted", tasks, tmp_path / "a.jsonl", policy="oracle", workers=0)
    with pytest.raises(ConfigError, match="JSONL"):
        collect("scripted", tasks, tmp_path / "a.parquet", workers=0)
    with pytest.raises(ConfigError, match="must be picklable"):
        collect(lambda: make_raising_env(), tasks, tmp_path / "a.jsonl", workers=2)
    with pytest.raises(ConfigError, match="at least one task"):
        collect("scripted", [], tmp_path / "a.jsonl", workers=0)
    output = tmp_path / "mixed.jsonl"
    collect("scripted", tasks[:1], output, episodes=2, workers=0, progress=False)
    with open(output, "a") as handle:
        handle.write("{not a trajectory}\n")
    with pytest.raises(ConfigError, match="played task 'corridor-coin'"):
        collect("scripted", tasks[2:], output, episodes=2, workers=0, progress=False)
    resumed = collect("scripted", tasks[:1], output, episodes=3, workers=0, progress=False)
    assert (resumed.unreadable_records, resumed.resumed_episodes, resumed.new_episodes) == (1, 2, 1)


_COLLECT_SCRIPT = """
import sys
from dg_core import Task
from dg_envs import collect
tasks = [Task.model_validate_json(line) for line in open(sys.argv[1])]
collect("textworld", tasks, sys.argv[2], episodes=200, workers=2, env_config={"max_steps": 30}, progress=False)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_textworld_collection_killed_midway_resumes_to_exactly_200_episodes(
    tmp_path: Path, textworld_custom_tasks: list[Task]
) -> None:
    task_file = tmp_path / "tasks.jsonl"
    task_file.write_text("".join(t.model_dump_json() + "\n" for t in textworld_custom_tasks))
    output = tmp_path / "textworld-expert.jsonl"
    process = subprocess.Popen([sys.executable, "-c", _COLLECT_SCRIPT, str(task_file), str(output)])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.read_bytes().count(b"\n") >= 40:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the collection finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = output.read_bytes().count(b"\n")
    assert 40 <= written < 200
    with open(output, "ab") as handle:  # what a kill in the middle of a write leaves behind
        handle.write(b'{"schema_version": 1, "id": "torn')
    summary = collect("textworld", textworld_custom_tasks, output, episodes=200, workers=2,
                      env_config={"max_steps": 30}, progress=False)  # fmt: skip
    trajectories = list(read_trajectories(output))
    assert len(trajectories) == 200
    assert _episode_indices(output) == list(range(200))
    assert summary.resumed_episodes == written and summary.new_episodes == 200 - written
    assert summary.episodes == 200 and summary.failed_episodes == 0
    assert all(t.success and t.finished for t in trajectories)
    assert (tmp_path / "textworld-expert.jsonl.torn").read_text().startswith('{"schema_version": 1, "id": "torn')
    tasks_by_index = {int(t.metadata["collection"]["episode"]): t.task.id for t in trajectories}  # type: ignore[index]
    assert all(tasks_by_index[i] == textworld_custom_tasks[i % 3].id for i in range(200))
    assert json.loads(output.read_text().splitlines()[-1])["schema_version"] == 1
