"""TextWorld adapter: conformance, expert, suites and cache, user folders, abstract state."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from dg_core import ConfigError, MissingExtraError, Task, make_env, play_episode
from dg_core.testing import EnvConformance
from dg_envs import ExpertPolicy
from dg_envs.textworld import (
    GameSpec,
    TextWorldEnv,
    build_game,
    clean_feedback,
    game_split,
    load_game_folder,
    textworld_tasks,
)

BANNER_OBSERVATION = (
    "\n\n                    ________  ________  __    __\n                   |        \\|        \\|  \\  |  \\\n"
    "                    \\$$$$$$$$| $$$$$$$$| $$  | $$\n\n"
    "Get ready! First off, take the key.\n\n-= Scullery =-\nYou are in a scullery.\n\n"
    "You can see a counter.\n\n>                                  -= Scullery =-0/1"
)


class TestTextWorldConformance(EnvConformance):
    @pytest.fixture
    def make_env(self, textworld_cache: Path):  # type: ignore[no-untyped-def]
        return lambda: TextWorldEnv(max_steps=20, cache_dir=str(textworld_cache))

    @pytest.fixture
    def tasks(self, textworld_custom_tasks: list[Task]) -> list[Task]:
        return textworld_custom_tasks[:2]


def test_clean_feedback_strips_banner_objective_and_prompt() -> None:
    text = clean_feedback(BANNER_OBSERVATION, objective="Get ready! First off, take the key.")
    assert text == "You are in a scullery.\nYou can see a counter."


def test_state_has_room_objects_inventory_and_commands(
    textworld_custom_tasks: list[Task], textworld_cache: Path
) -> None:
    with TextWorldEnv(cache_dir=str(textworld_cache)) as env:
        state = env.reset(textworld_custom_tasks[0])
        assert "$$" not in state.text
        assert textworld_custom_tasks[0].instruction not in state.text
        room = state.info["room"]
        assert isinstance(room, str) and f"Room: {room}" in state.text
        assert "Visible: " in state.text and "Inventory: " in state.text
        assert state.available_actions is not None and "look" in state.available_actions
        result = env.step("xyzzy frobnicate the quux")
        assert result.info["invalid_action"] is True and result.reward == 0.0


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("custom", {"world_size": 3, "nb_objects": 5, "quest_length": 3}),
        ("cooking", {"recipe": 1, "take": 1, "go": 1, "open": False}),
        ("coin_collector", {"level": 3}),
        ("treasure_hunter", {"level": 3}),
    ],
)
def test_expert_wins_every_kind_of_game(kind: str, settings: dict[str, int | bool], textworld_cache: Path) -> None:
    tasks = textworld_tasks(kind, count=3, seed=5, settings=settings, cache_dir=textworld_cache)
    with TextWorldEnv(cache_dir=str(textworld_cache)) as env:
        trajectories = [play_episode(env, ExpertPolicy(env), task) for task in tasks]
    assert [t.success for t in trajectories] == [True] * len(tasks)
    for trajectory in trajectories:
        assert trajectory.return_ == 1.0  # outcome reward only: 1 at the winning step
        assert [s.reward for s in trajectory.steps[:-1]] == [0.0] * (trajectory.num_steps - 1)
        assert trajectory.steps[-1].info["won"] is True
        assert "intermediate_reward" in trajectory.steps[-1].info


def test_games_are_built_once_and_suites_are_deterministic(textworld_cache: Path) -> None:
    settings: dict[str, int | bool | str] = {"world_size": 3, "nb_objects": 5, "quest_length": 3}
    first = textworld_tasks("custom", count=3, seed=11, settings=settings, cache_dir=textworld_cache)
    game = Path(str(first[0].config["game_file"]))
    built_at = game.stat().st_mtime_ns
    again = textworld_tasks("custom", count=3, seed=11, settings=settings, cache_dir=textworld_cache)
    assert again == first
    assert game.stat().st_mtime_ns == built_at
    grown = textworld_tasks("custom", count=4, seed=11, settings=settings, split="train", cache_dir=textworld_cache)
    assert [t for t in first if t.split == "train"] == grown[: len([t for t in first if t.split == "train"])]
    splits = [game_split(0, index, (0.8, 0.1, 0.1)) for index in range(200)]
    assert 140 <= splits.count("train") <= 180 and splits.count("validation") > 5 and splits.count("test") > 5


def test_a_missing_cached_game_is_rebuilt_from_its_spec(tmp_path: Path, textworld_cache: Path) -> None:
    spec = GameSpec(kind="treasure_hunter", seed=3, settings={"level": 1})
    game = build_game(spec, tmp_path / "cache")
    task = Task(
        id="th", env_id="textworld", instruction="find it", config={"game": spec.model_dump(), "game_file": str(game)}
    )
    shutil.rmtree(tmp_path / "cache")
    with TextWorldEnv(cache_dir=str(tmp_path / "cache")) as env:
        assert play_episode(env, ExpertPolicy(env), task).success
    assert game.exists()


def test_bad_specs_and_tasks_fail_clearly(textworld_cache: Path) -> None:
    with pytest.raises(ConfigError, match="do not take 'levle'"):
        textworld_tasks("coin_collector", count=1, settings={"levle": 3}, cache_dir=textworld_cache)
    with pytest.raises(ValueError, match="must be int"):
        GameSpec(kind="custom", settings={"world_size": "big"})
    with TextWorldEnv(cache_dir=str(textworld_cache)) as env:
        with pytest.raises(ConfigError, match="needs 'game_file'"):
            env.reset(Task(id="x", env_id="textworld", instruction=""))
        with pytest.raises(ConfigError, match="does not exist"):
            env.reset(Task(id="x", env_id="textworld", instruction="", config={"game_file": "/nowhere/g.z8"}))


def test_user_game_folder_becomes_a_split(tmp_path: Path, textworld_custom_tasks: list[Task]) -> None:
    folder = tmp_path / "my-games"
    (folder / "sub").mkdir(parents=True)
    for index, task in enumerate(textworld_custom_tasks[:2]):
        source = Path(str(task.config["game_file"]))
        target = folder / ("sub" if index else "") / f"game{index}.z8"
        shutil.copy(source, target)
        shutil.copy(source.with_suffix(".json"), target.with_suffix(".json"))
    shutil.copy(Path(str(textworld_custom_tasks[2].config["game_file"])), folder / "orphan.ulx")
    (folder / "broken.z8").write_bytes(b"\0")
    (folder / "broken.json").write_text("{not json")
    found = load_game_folder(folder, split="test")
    assert len(found.tasks) == 2
    assert sorted(Path(p).name for p in found.skipped) == ["broken.z8", "orphan.ulx"]
    assert "no orphan.json" in found.skipped[str(folder / "orphan.ulx")]
    assert {t.instruction for t in found.tasks} == {t.instruction for t in textworld_custom_tasks[:2]}
    env = make_env("textworld", max_steps=30)
    assert isinstance(env, TextWorldEnv)
    with env:
        assert all(play_episode(env, ExpertPolicy(env), task).success for task in found.tasks)
    with pytest.raises(ConfigError, match="no game folder"):
        load_game_folder(tmp_path / "absent")


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "textworld", None)  # makes `import textworld` raise ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "dg-envs\[textworld\]"'):
        TextWorldEnv()
