"""TextWorld games made locally, from a small spec, into a content-addressed cache.

A :class:`GameSpec` (kind, difficulty settings, seed) names one game. Its cache key hashes the spec
together with the TextWorld version, so a game is compiled once and found again by any process; a
file lock keeps two processes from compiling the same game at the same time, and files are moved into
place only when complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dg_core import ConfigError, require

__all__ = ["GAME_KINDS", "GameSpec", "build_game", "default_cache_dir", "quiet_jericho", "textworld_module"]

GameKind = Literal["custom", "cooking", "coin_collector", "treasure_hunter"]

GAME_KINDS: dict[str, dict[str, int | bool | str]] = {
    "custom": {"world_size": 5, "nb_objects": 10, "quest_length": 5},
    "cooking": {"recipe": 2, "take": 1, "go": 6, "open": True, "cook": False, "cut": False, "drop": False},
    "coin_collector": {"level": 5},
    "treasure_hunter": {"level": 5},
}
"""Difficulty settings of each kind of game, with their defaults."""

_CHALLENGE_NAMES = {
    "cooking": "tw-cooking",
    "coin_collector": "tw-coin_collector",
    "treasure_hunter": "tw-treasure_hunter",
}


def textworld_module() -> ModuleType:
    """Import ``textworld`` or fail with the install command of the extra."""
    return require("textworld", distribution="dg-envs", extra="textworld", purpose="The TextWorld environment")


def default_cache_dir() -> Path:
    """``$DG_CACHE_DIR/textworld``, else ``~/.cache/dg/textworld``."""
    root = os.environ.get("DG_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "dg"
    return base / "textworld"


class GameSpec(BaseModel):
    """One generated TextWorld game: what kind, how hard, which seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: GameKind = "custom"
    """``custom`` quests, ``cooking``, ``coin_collector`` or ``treasure_hunter``."""
    seed: int = Field(default=0, ge=0, lt=2**31)
    """Seed of every random choice of the generator."""
    settings: dict[str, int | bool | str] = Field(default_factory=dict)
    """Difficulty knobs of the kind (see :data:`GAME_KINDS`); missing ones take their defaults."""

    @model_validator(mode="after")
    def _settings_are_known(self) -> GameSpec:
        allowed = GAME_KINDS[self.kind]
        unknown = sorted(set(self.settings) - set(allowed))
        if unknown:
            raise ValueError(
                f"{self.kind} games do not take {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
            )
        for key, value in self.settings.items():
            expected = type(allowed[key])
            if type(value) is not expected:
                raise ValueError(f"setting {key!r} of {self.kind} games must be {expected.__name__}, got {value!r}")
        return self

    @property
    def resolved_settings(self) -> dict[str, int | bool | str]:
        """The settings with defaults filled in."""
        return {**GAME_KINDS[self.kind], **self.settings}

    def cache_key(self, textworld_version: str) -> str:
        """Hex digest identifying the compiled game (spec and TextWorld version)."""
        payload = {
            "kind": self.kind,
            "seed": self.seed,
            "settings": self.resolved_settings,
            "textworld": textworld_version,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def quiet_jericho() -> Iterator[None]:
    """Silence Jericho's warning that it cannot track score in TextWorld games (TextWorld tracks it itself)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is not fully supported\. Score, move")
        yield


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _make_game(textworld: ModuleType, spec: GameSpec, options: Any) -> Any:
    settings = spec.resolved_settings
    if spec.kind == "custom":
        options.nb_rooms = int(settings["world_size"])
        options.nb_objects = int(settings["nb_objects"])
        options.quest_length = int(settings["quest_length"])
        return textworld.generator.make_game(options)
    challenges = require("textworld.challenges", distribution="dg-envs", extra="textworld", purpose="TextWorld games")
    make = challenges.CHALLENGES[_CHALLENGE_NAMES[spec.kind]][1]
    if spec.kind == "cooking":
        settings = {**settings, "recipe_seed": spec.seed, "split": "train"}
    return make(settings, options)


def build_game(spec: GameSpec, cache_dir: str | Path | None = None) -> Path:
    """The compiled ``.z8`` of ``spec`` (its ``.json`` beside it), compiling it on the first request.

    Args:
        spec: The game to build.
        cache_dir: Where compiled games live; defaults to :func:`default_cache_dir`.

    Returns:
        Path of the ``.z8`` file.
    """
    textworld = textworld_module()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = spec.cache_key(textworld.__version__)
    game_file = cache / f"{spec.kind}-{key}.z8"
    metadata_file = game_file.with_suffix(".json")
    if game_file.exists() and metadata_file.exists():
        return game_file
    with _locked(cache / ".locks" / f"{key}.lock"):
        if game_file.exists() and metadata_file.exists():
            return game_file
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as scratch:
            options = textworld.GameOptions()
            options.seeds = spec.seed
            options.path = str(Path(scratch) / "game.z8")
            options.force_recompile = True
            try:
                with quiet_jericho():  # compiling a cooking game replays its walkthrough in Jericho
                    game = _make_game(textworld, spec, options)
                    compiled = Path(textworld.generator.compile_game(game, options))
            except Exception as error:
                raise ConfigError(f"TextWorld could not build {spec.kind} game {spec.model_dump()}: {error}") from error
            shutil.move(str(compiled.with_suffix(".json")), metadata_file)
            shutil.move(str(compiled), game_file)  # the .z8 appears last: its presence means complete
    return game_file
