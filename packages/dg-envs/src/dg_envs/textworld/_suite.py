"""TextWorld tasks: generated suites with deterministic splits, and folders of games a user already has."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from dg_core import ConfigError, Task
from dg_envs._splits import SplitName, split_at, unit_interval
from dg_envs.textworld._games import GameSpec, build_game, textworld_module

__all__ = ["GameFolder", "game_split", "load_game_folder", "textworld_tasks"]

ENV_ID = "textworld"
GAME_SUFFIXES = (".z8", ".ulx")


def game_split(suite_seed: int, index: int, fractions: tuple[float, float, float]) -> SplitName:
    """The split of game ``index`` of a suite: a hash of (suite seed, index), so it never moves as a suite grows."""
    return split_at(unit_interval("split", suite_seed, index), fractions)


def _game_seed(suite_seed: int, index: int) -> int:
    return int(unit_interval("game", suite_seed, index) * (2**31 - 1))


def _objective(metadata_file: Path) -> str:
    data = json.loads(metadata_file.read_text())
    objective = data.get("objective") if isinstance(data, dict) else None
    if not isinstance(objective, str):
        raise ValueError("no 'objective' string")
    return objective


def textworld_tasks(
    kind: str = "custom",
    *,
    count: int = 10,
    seed: int = 0,
    settings: dict[str, int | bool | str] | None = None,
    split: SplitName | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    cache_dir: str | Path | None = None,
) -> list[Task]:
    """A suite of generated TextWorld games as tasks, building (once, then cached) the games it returns.

    Game ``i`` of a suite gets a seed and a split derived from ``(seed, i)``, so a suite is the same on
    every machine and a game keeps its split when ``count`` grows. Only the games of the requested split
    are built.

    Args:
        kind: ``custom``, ``cooking``, ``coin_collector`` or ``treasure_hunter``.
        count: Number of games in the whole suite (all splits).
        seed: Seed of the suite.
        settings: Difficulty knobs of the kind (see ``GAME_KINDS``).
        split: Return only the games of this split; ``None`` for all.
        fractions: Shares of train, validation and test (summing to 1).
        cache_dir: Where compiled games are kept.
    """
    if count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"fractions must be three non-negative shares summing to 1, got {fractions}")
    if split not in (None, "train", "validation", "test"):
        raise ConfigError(f"split must be 'train', 'validation', 'test' or None, got {split!r}")
    version = textworld_module().__version__
    tasks = []
    for index in range(count):
        game_split_name = game_split(seed, index, fractions)
        if split is not None and game_split_name != split:
            continue
        try:
            spec = GameSpec.model_validate({"kind": kind, "seed": _game_seed(seed, index), "settings": settings or {}})
        except ValueError as error:
            raise ConfigError(str(error)) from error
        game_file = build_game(spec, cache_dir)
        tasks.append(
            Task(
                id=f"textworld-{kind}-{spec.cache_key(version)[:12]}",
                env_id=ENV_ID,
                instruction=_objective(game_file.with_suffix(".json")),
                seed=spec.seed,
                config={"game": spec.model_dump(), "game_file": str(game_file)},
                split=game_split_name,
                metadata={"kind": kind, "settings": spec.resolved_settings, "suite_seed": seed, "index": index},
            )
        )
    return tasks


@dataclass
class GameFolder:
    """The games found in a folder: one task per playable game, and why the others were skipped."""

    tasks: list[Task] = field(default_factory=list)
    """One task per game file with a readable ``.json`` beside it."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Game file -> reason it was not loaded."""


def load_game_folder(path: str | Path, *, split: SplitName | None = "test", recursive: bool = True) -> GameFolder:
    """Tasks for the ``.z8`` / ``.ulx`` games of a folder (``tw-make`` output or a public benchmark set).

    Each game needs its ``.json`` (written by ``tw-make`` beside the game) for the objective; games
    without one are listed in :attr:`GameFolder.skipped`, never raised.

    Args:
        path: The folder.
        split: Split recorded in the tasks.
        recursive: Look in sub-folders too.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"no game folder at {folder}")
    pattern = "**/*" if recursive else "*"
    found = GameFolder()
    for game_file in sorted(p for p in folder.glob(pattern) if p.suffix in GAME_SUFFIXES and p.is_file()):
        metadata_file = game_file.with_suffix(".json")
        if not metadata_file.exists():
            found.skipped[str(game_file)] = f"no {metadata_file.name} beside it"
            continue
        try:
            objective = _objective(metadata_file)
        except (OSError, ValueError) as error:
            found.skipped[str(game_file)] = f"unreadable {metadata_file.name}: {error}"
            continue
        digest = hashlib.sha256(game_file.read_bytes()).hexdigest()[:12]
        found.tasks.append(
            Task(
                id=f"textworld-file-{game_file.stem}-{digest}",
                env_id=ENV_ID,
                instruction=objective,
                config={"game_file": str(game_file.resolve())},
                split=split,
                metadata={"kind": "file", "source": str(game_file.relative_to(folder))},
            )
        )
    return found
