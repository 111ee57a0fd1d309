"""ALFWorld tasks: generated ALFRED-format games (cached) and the official game folders a user has."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dg_core import ConfigError, Task
from dg_envs._splits import SplitName, split_at, unit_interval
from dg_envs.alfworld._problems import TASK_TYPES, alfworld_module, make_problem, write_game

__all__ = ["GENERATOR_VERSION", "AlfWorldGames", "alfworld_tasks", "default_cache_dir", "load_alfworld_games"]

ENV_ID = "alfworld"
GENERATOR_VERSION = 1
"""Bumped whenever :func:`make_problem` changes what it writes (part of the cache key)."""
_TASK_LINE = re.compile(r"Your task is to: (.+?)\.\"")


def default_cache_dir() -> Path:
    """``$DG_CACHE_DIR/alfworld``, else ``~/.cache/dg/alfworld``."""
    root = os.environ.get("DG_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "dg") / "alfworld"


def _split_of(task_type: str, seed: int, fractions: tuple[float, float, float]) -> SplitName:
    return split_at(unit_interval("alfworld-split", task_type, seed), fractions)


def generated_game(task_type: str, seed: int, cache_dir: str | Path | None = None) -> Path:
    """The ``game.tw-pddl`` of a generated problem, written on first request into the content-addressed cache."""
    version = alfworld_module("alfworld.info").__version__
    key = hashlib.sha256(f"{task_type}:{seed}:{version}:{GENERATOR_VERSION}".encode()).hexdigest()[:16]
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{task_type}-{key}"
    game_file = folder / "game.tw-pddl"
    if not game_file.exists():  # write_game moves the game file into place last, atomically
        write_game(make_problem(task_type, seed), folder)
    return game_file


def _instruction(game_file: Path) -> str:
    game = json.loads(game_file.read_text())
    grammar = game.get("grammar") if isinstance(game, dict) else None
    match = _TASK_LINE.search(grammar) if isinstance(grammar, str) else None
    if match is None:
        raise ValueError("no 'Your task is to: ...' line in its grammar")
    return match.group(1)


def alfworld_tasks(
    task_types: tuple[str, ...] | list[str] = TASK_TYPES,
    *,
    count: int = 10,
    seed: int = 0,
    split: SplitName | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cache_dir: str | Path | None = None,
) -> list[Task]:
    """Generated ALFWorld games as tasks: ``count`` problems of each task type, split deterministically.

    Problem ``i`` of a type has seed ``seed + i``; its split is a hash of (type, seed), so it never moves.
    Only the games of the requested split are written.
    """
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown:
        raise ConfigError(f"unknown ALFWorld task types {unknown}; known: {', '.join(TASK_TYPES)}")
    if count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"fractions must be three non-negative shares summing to 1, got {fractions}")
    tasks = []
    for task_type in task_types:
        for problem_seed in range(seed, seed + count):
            problem_split = _split_of(task_type, problem_seed, fractions)
            if split is not None and problem_split != split:
                continue
            game_file = generated_game(task_type, problem_seed, cache_dir)
            tasks.append(
                Task(
                    id=f"alfworld-{task_type}-{problem_seed}",
                    env_id=ENV_ID,
                    instruction=_instruction(game_file),
                    seed=problem_seed,
                    config={"task_type": task_type, "problem_seed": problem_seed, "game_file": str(game_file)},
                    split=problem_split,
                    metadata={"task_type": task_type, "source": "generated"},
                )
            )
    return tasks


@dataclass
class AlfWorldGames:
    """Official ALFWorld games found on disk: one task per playable game, and why others were skipped."""

    tasks: list[Task] = field(default_factory=list)
    """One task per solvable game folder."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Game folder -> reason it was not loaded."""


def load_alfworld_games(path: str | Path | None = None, *, split: SplitName | None = None) -> AlfWorldGames:
    """Tasks for official ALFWorld game folders (``traj_data.json`` + ``game.tw-pddl``) under ``path``.

    Args:
        path: A folder such as ``$ALFWORLD_DATA/json_2.1.1/train``; defaults to ``$ALFWORLD_DATA/json_2.1.1``.
        split: Split recorded in the tasks.
    """
    if path is None:
        data = os.environ.get("ALFWORLD_DATA")
        if not data:
            raise ConfigError("no ALFWorld game folder: pass a path or set ALFWORLD_DATA (see `alfworld-download`)")
        path = Path(data) / "json_2.1.1"
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"no ALFWorld game folder at {root}")
    found = AlfWorldGames()
    for traj_file in sorted(root.rglob("traj_data.json")):
        folder = traj_file.parent
        game_file = folder / "game.tw-pddl"
        relative = folder.relative_to(root).as_posix()
        if "movable" in relative or "Sliced" in relative:
            found.skipped[str(folder)] = "movable-receptacle and sliced tasks are not in ALFWorld's text set"
            continue
        if not game_file.exists():
            found.skipped[str(folder)] = "no game.tw-pddl"
            continue
        try:
            traj_data = json.loads(traj_file.read_text())
            game = json.loads(game_file.read_text())
            instruction = _instruction(game_file)
        except (OSError, ValueError) as error:
            found.skipped[str(folder)] = f"unreadable: {error}"
            continue
        if not game.get("solvable", False):
            found.skipped[str(folder)] = "marked unsolvable"
            continue
        task_type = traj_data.get("task_type")
        found.tasks.append(
            Task(
                id=f"alfworld-{relative.replace('/', '-')}",
                env_id=ENV_ID,
                instruction=instruction,
                config={"game_file": str(game_file.resolve())},
                split=split,
                metadata={"task_type": task_type, "source": "official", "folder": relative},
            )
        )
    return found
