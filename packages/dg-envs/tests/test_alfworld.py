"""ALFWorld adapter: the real engine and handcoded expert on generated ALFRED-format problems."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dg_core import ConfigError, Task, play_episode
from dg_core.testing import EnvConformance
from dg_envs import ExpertPolicy
from dg_envs.alfworld import (
    TASK_TYPES,
    AlfWorldEnv,
    alfworld_tasks,
    load_alfworld_games,
    make_problem,
    write_game,
)


class TestAlfWorldConformance(EnvConformance):
    @pytest.fixture
    def make_env(self, alfworld_cache: Path):  # type: ignore[no-untyped-def]
        return lambda: AlfWorldEnv(max_steps=6, cache_dir=str(alfworld_cache), expert=False)

    @pytest.fixture
    def tasks(self, alfworld_cache: Path) -> list[Task]:
        return alfworld_tasks(["pick_and_place_simple"], count=2, seed=100, cache_dir=alfworld_cache)


def test_problems_are_alfred_format_and_deterministic(tmp_path: Path) -> None:
    problem = make_problem("pick_heat_then_place_in_recep", 3)
    assert problem == make_problem("pick_heat_then_place_in_recep", 3)
    assert problem != make_problem("pick_heat_then_place_in_recep", 4)
    assert "_bar__" in problem.pddl_problem and "(:goal" in problem.pddl_problem
    assert f"(objectType ?o {problem.object_target}Type)" in problem.pddl_problem
    game_file = write_game(problem, tmp_path / "game")
    game = json.loads(game_file.read_text())
    assert game["solvable"] is True and "UNKNOWN GOAL" not in game["grammar"]
    traj = json.loads((tmp_path / "game" / "traj_data.json").read_text())
    assert traj["task_type"] == "pick_heat_then_place_in_recep"
    assert traj["pddl_params"]["object_target"] == problem.object_target
    with pytest.raises(ConfigError, match="unknown ALFWorld task type"):
        make_problem("pick_and_juggle", 0)


def test_state_names_objects_like_alfworld(alfworld_cache: Path) -> None:
    (task,) = alfworld_tasks(["look_at_obj_in_light"], count=1, seed=7, cache_dir=alfworld_cache)
    with AlfWorldEnv(cache_dir=str(alfworld_cache)) as env:
        state = env.reset(task)
        assert "Welcome" not in state.text and "Your task is to" not in state.text
        assert "Location: the middle of the room" in state.text and "Holding: nothing" in state.text
        assert state.available_actions is not None
        assert any(action.startswith("go to ") and action[-1].isdigit() for action in state.available_actions)
        result = env.step("juggle the fridge")
        assert result.info["invalid_action"] is True


@pytest.mark.slow
def test_expert_solves_all_six_task_types(alfworld_cache: Path) -> None:
    tasks = alfworld_tasks(TASK_TYPES, count=2, seed=0, cache_dir=alfworld_cache)
    assert sorted({str(t.config["task_type"]) for t in tasks}) == sorted(TASK_TYPES)
    with AlfWorldEnv(cache_dir=str(alfworld_cache)) as env:
        trajectories = [play_episode(env, ExpertPolicy(env), task) for task in tasks]
    success_rate = sum(t.success for t in trajectories) / len(trajectories)
    assert success_rate >= 0.95, [(t.task.id, t.success) for t in trajectories]
    assert all(t.return_ == (1.0 if t.success else 0.0) for t in trajectories)


def test_official_game_folders_load_and_bad_ones_are_counted(
    tmp_path: Path, alfworld_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "json_2.1.1" / "train"
    game_dir = root / "pick_and_place_simple-Book-None-Desk-301" / "trial_T2019_0001"
    write_game(make_problem("pick_and_place_simple", 21), game_dir)
    shutil.copytree(game_dir, root / "pick_and_place_with_movable_recep-X" / "trial_1")
    broken = root / "pick_two_obj_and_place-Y" / "trial_2"
    write_game(make_problem("pick_two_obj_and_place", 2), broken)
    (broken / "game.tw-pddl").write_text("{")
    unsolvable = root / "look_at_obj_in_light-Z" / "trial_3"
    game = json.loads(write_game(make_problem("look_at_obj_in_light", 1), unsolvable).read_text())
    (unsolvable / "game.tw-pddl").write_text(json.dumps({**game, "solvable": False}))
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    found = load_alfworld_games(split="train")
    assert [t.metadata["folder"] for t in found.tasks] == [
        "train/pick_and_place_simple-Book-None-Desk-301/trial_T2019_0001"
    ]
    assert len(found.skipped) == 3
    assert any("unreadable" in reason for reason in found.skipped.values())
    assert any("unsolvable" in reason for reason in found.skipped.values())
    with AlfWorldEnv(cache_dir=str(alfworld_cache)) as env:
        assert play_episode(env, ExpertPolicy(env), found.tasks[0]).success
    monkeypatch.delenv("ALFWORLD_DATA")
    with pytest.raises(ConfigError, match="ALFWORLD_DATA"):
        load_alfworld_games()
