"""Task panels and environment factories from an :class:`EnvConfig`.

A panel is a split of a generated suite (TextWorld, ALFWorld-format problems, the scripted corridor), a
task file a user writes: JSONL, one dg-core ``Task`` per line (``{"id": ..., "env_id": ..., "instruction":
..., "config": {...}}``), or a folder of games: TextWorld ``.z8`` / ``.ulx`` games with the ``.json`` that
``tw-make`` writes beside them, or ALFWorld game folders (``traj_data.json`` + ``game.tw-pddl``). What a folder
holds that cannot be played is named on stderr with the reason. ``dg tasks`` writes any panel as a task file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dg_apps.config import EnvConfig
from dg_core import ConfigError, DGError, Env, Task, list_envs, make_env

__all__ = ["SPLITS", "TaskFileError", "env_factory", "read_game_folder", "read_tasks", "task_panel", "write_tasks"]

GAME_FOLDER_ENVS = ("textworld", "alfworld")

SPLITS = ("train", "validation", "test")


class TaskFileError(DGError, ValueError):
    """A task file line that is not a valid task (the message names the file and the line)."""


def read_tasks(path: str | Path) -> list[Task]:
    """Read a JSONL task file; a bad line raises :class:`TaskFileError` naming ``file:line`` and the field."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: task file not found")
    tasks = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                tasks.append(Task.model_validate_json(line))
            except ValidationError as error:
                first = error.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or "(line)"
                raise TaskFileError(f"{path}:{number}: field {field}: {first['msg']}") from None
    if not tasks:
        raise ConfigError(f"{path}: the task file holds no tasks")
    ids = [task.id for task in tasks]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise TaskFileError(f"{path}: task id {duplicate!r} appears more than once")
    return tasks


def write_tasks(path: str | Path, tasks: list[Task]) -> Path:
    """Write tasks as JSONL (what :func:`read_tasks` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(task.model_dump_json() + "\n" for task in tasks))
    return path


def read_game_folder(env: EnvConfig, folder: str | Path, *, report: bool = True) -> tuple[list[Task], dict[str, str]]:
    """Tasks for the games in ``folder`` (TextWorld game files or ALFWorld game folders, by ``env.name``), and
    what was skipped with why (printed to stderr when ``report``); a folder with no playable game is an error."""
    folder = Path(folder)
    if env.name == "textworld":
        from dg_envs.textworld import load_game_folder

        textworld = load_game_folder(folder, split=None)
        tasks, skipped = textworld.tasks, textworld.skipped
        wanted = ".z8 / .ulx game files with the .json tw-make writes beside them"
    elif env.name == "alfworld":
        from dg_envs.alfworld import load_alfworld_games

        alfworld = load_alfworld_games(folder, split=None)
        tasks, skipped = alfworld.tasks, alfworld.skipped
        wanted = "ALFWorld game folders (traj_data.json and game.tw-pddl)"
    else:
        raise ConfigError(
            f"tasks: {folder} is a folder, not a task file; game folders are read for env.name "
            f"{' and '.join(GAME_FOLDER_ENVS)}, and {env.name!r} takes a task file (JSONL, one dg-core Task per line)"
        )
    if report:
        for path, reason in skipped.items():
            print(f"tasks: skipped {path}: {reason}", file=sys.stderr)
    if not tasks:
        detail = "none found"
        if skipped:
            first, why = next(iter(skipped.items()))
            detail = f"{len(skipped)} skipped (first: {first}: {why})"
        raise ConfigError(f"tasks: {folder} holds no playable {env.name} game ({wanted}); {detail}")
    return tasks, skipped


def _scripted_split(task_id: str) -> str:
    digest = int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if digest < 0.8 else "validation" if digest < 0.9 else "test"


def _scripted_tasks(env: EnvConfig) -> list[Task]:
    import random

    from dg_core.testing import ITEMS, scripted_task

    rng = random.Random(env.seed)
    tasks = []
    for index in range(env.games):
        task_id = f"corridor-{env.seed}-{index}"
        rooms = int(env.settings.get("rooms", rng.randint(3, 5)))
        item = rng.choice(ITEMS)
        seed = env.seed * 100_003 + index
        tasks.append(scripted_task(task_id, rooms=rooms, goal_item=item, seed=seed, split=_scripted_split(task_id)))
    return tasks


def task_panel(env: EnvConfig, tasks: str) -> list[Task]:
    """The tasks named by ``tasks``: a split of ``env``'s suite, a task file, or a folder of games."""
    if tasks not in SPLITS:
        if not (tasks.endswith((".jsonl", ".json")) or Path(tasks).exists()):
            raise ConfigError(
                f"tasks: {tasks!r} is neither a split ({', '.join(SPLITS)}), a task file nor a folder of games"
            )
        if Path(tasks).is_dir():
            return read_game_folder(env, tasks)[0]
        panel = read_tasks(tasks)
        wrong = [task.id for task in panel if task.env_id != env.name]
        if wrong:
            raise ConfigError(f"{tasks}: task {wrong[0]!r} is for env {panel[0].env_id!r}, not env.name {env.name!r}")
        return panel
    if env.name == "textworld":
        from dg_envs.textworld import textworld_tasks

        suite = textworld_tasks(env.suite, count=env.games, seed=env.seed, settings=env.settings, split=tasks)  # type: ignore[arg-type]
    elif env.name == "alfworld":
        from dg_envs.alfworld import TASK_TYPES, alfworld_tasks

        types = env.task_types or list(TASK_TYPES)
        suite = alfworld_tasks(types, count=env.games, seed=env.seed, split=tasks)  # type: ignore[arg-type]
    elif env.name == "scripted":
        suite = [task for task in _scripted_tasks(env) if task.split == tasks]
    else:
        raise ConfigError(
            f"env.name {env.name!r} has no generated suite in dg; give tasks: a task file (JSONL of Task) "
            "instead of a split name (suites: textworld, alfworld, scripted)"
        )
    if not suite:
        raise ConfigError(f"the {env.name} suite of {env.games} games has no {tasks!r} games; raise env.games")
    return suite


def _make(name: str, options: dict[str, Any]) -> Env:
    env = make_env(name, **options)
    if not isinstance(env, Env):
        raise ConfigError(f"env {name!r} is a batched env; dg commands play single-episode envs through EnvPool")
    return env


def env_factory(env: EnvConfig) -> functools.partial[Env]:
    """A picklable function that builds the real environment (for pools and worker processes)."""
    known = list_envs()
    if env.name not in known:
        raise ConfigError(f"env.name: unknown env {env.name!r}; registered: {', '.join(sorted(known))}")
    options = {"max_steps": env.max_steps, **env.options}
    return functools.partial(_make, env.name, options)


def describe(tasks: list[Task]) -> str:
    """``N tasks (first: id)`` for logs."""
    return f"{len(tasks)} tasks" + (f" (first: {tasks[0].id})" if tasks else "")


def tasks_digest(tasks: list[Task]) -> str:
    """A short digest of a panel (recorded in metrics, so two results on different panels are not compared)."""
    payload = json.dumps([task.id for task in tasks]).encode()
    return hashlib.sha256(payload).hexdigest()[:12]
