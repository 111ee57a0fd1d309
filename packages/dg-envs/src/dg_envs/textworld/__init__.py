"""TextWorld, the embedded default environment: generated game suites and user game folders.

Needs the ``textworld`` extra (``pip install "dg-envs[textworld]"``); nothing here imports TextWorld
until an environment is made or a game is built.
"""

from dg_envs.textworld._env import TextWorldEnv
from dg_envs.textworld._games import GAME_KINDS, GameSpec, build_game, default_cache_dir
from dg_envs.textworld._state import clean_feedback, textworld_state
from dg_envs.textworld._suite import GameFolder, game_split, load_game_folder, textworld_tasks

__all__ = [
    "GAME_KINDS",
    "GameFolder",
    "GameSpec",
    "TextWorldEnv",
    "build_game",
    "clean_feedback",
    "default_cache_dir",
    "game_split",
    "load_game_folder",
    "textworld_state",
    "textworld_tasks",
]
