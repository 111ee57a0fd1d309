"""ALFWorld with the real ``alfworld`` engine and handcoded expert, on official or generated games.

Needs the ``alfworld`` extra (``pip install "dg-envs[alfworld]"``); nothing here imports ALFWorld until
an environment is made or a game is generated.
"""

from dg_envs.alfworld._env import AlfWorldEnv, alfworld_state
from dg_envs.alfworld._problems import TASK_TYPES, AlfWorldProblem, make_problem, write_game
from dg_envs.alfworld._suite import AlfWorldGames, alfworld_tasks, default_cache_dir, load_alfworld_games

__all__ = [
    "TASK_TYPES",
    "AlfWorldEnv",
    "AlfWorldGames",
    "AlfWorldProblem",
    "alfworld_state",
    "alfworld_tasks",
    "default_cache_dir",
    "load_alfworld_games",
    "make_problem",
    "write_game",
]
