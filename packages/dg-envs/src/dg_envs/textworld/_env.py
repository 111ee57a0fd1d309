"""``TextWorldEnv``: TextWorld games behind the dg :class:`~dg_core.Env` contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dg_core import Action, ConfigError, Env, State, StepResult, Task
from dg_envs.textworld._games import GameSpec, build_game, quiet_jericho, textworld_module
from dg_envs.textworld._state import room_name, textworld_state

__all__ = ["TextWorldEnv"]


class TextWorldEnv(Env):
    """Plays one TextWorld game per episode.

    A task names its game with ``config["game_file"]`` (a ``.z8`` / ``.ulx`` with its ``.json``) and/or
    ``config["game"]`` (a :class:`GameSpec`, built into the cache when the file is missing). Reward is
    the outcome: 1 on the step that wins, else 0; TextWorld's score and intermediate reward are kept in
    ``info``. TextWorld answers unknown commands itself, so they are passed through to it.

    Args:
        max_steps: Step limit per episode.
        cache_dir: Where games named by a spec are built.
        expert: Ask TextWorld for the winning plan each step (needed by :meth:`expert_action`; slower).
    """

    env_id = "textworld"
    passes_invalid_actions = True

    def __init__(self, *, max_steps: int | None = 50, cache_dir: str | None = None, expert: bool = True) -> None:
        super().__init__(max_steps=max_steps)
        self._textworld = textworld_module()
        self.cache_dir = cache_dir
        self.expert = expert
        self._game: Any = None
        self._game_file: Path | None = None
        self._objective = ""
        self._room: str | None = None
        self._plan: list[str] = []
        self._walkthrough: list[str] = []
        self._on_walkthrough = True
        self._moves = 0

    def _request_infos(self) -> Any:
        return self._textworld.EnvInfos(
            admissible_commands=True,
            description=True,
            inventory=True,
            objective=True,
            won=True,
            lost=True,
            score=True,
            max_score=True,
            intermediate_reward=self.expert,
            policy_commands=self.expert,
            extras=["walkthrough"],
        )

    def _resolve_game(self, task: Task) -> Path:
        game_file = task.config.get("game_file")
        if isinstance(game_file, str) and Path(game_file).exists():
            return Path(game_file)
        spec = task.config.get("game")
        if spec is not None:
            try:
                return build_game(GameSpec.model_validate(spec), self.cache_dir)
            except ValueError as error:
                raise ConfigError(f"task {task.id!r}: config['game'] is not a valid game spec: {error}") from error
        if game_file is not None:
            raise ConfigError(f"task {task.id!r}: game file {game_file!r} does not exist and no config['game'] spec")
        raise ConfigError(f"task {task.id!r}: config needs 'game_file' (a .z8/.ulx path) or 'game' (a GameSpec)")

    def _reset(self, task: Task, seed: int | None) -> State:
        game_file = self._resolve_game(task)
        with quiet_jericho():
            if game_file != self._game_file:
                self._close()
                self._game = self._textworld.start(str(game_file), self._request_infos())
                self._game_file = game_file
            game_state = self._game.reset()
        self._objective = str(game_state.get("objective") or task.instruction)
        self._room = room_name(str(game_state.get("description") or ""))
        self._walkthrough = [str(c) for c in game_state.get("extra.walkthrough") or ()]
        self._on_walkthrough = True
        self._moves = 0
        return self._observe(game_state)

    def _observe(self, game_state: Any) -> State:
        self._plan = [str(c) for c in game_state.get("policy_commands") or ()]
        return textworld_state(game_state, objective=self._objective, room=self._room)

    def _step(self, action: Action) -> StepResult:
        on_plan = self._on_walkthrough and self._moves < len(self._walkthrough)
        self._on_walkthrough = on_plan and self._walkthrough[self._moves] == action.text
        game_state, score, done = self._game.step(action.text)
        self._moves += 1
        self._room = room_name(str(game_state.get("description") or "")) or self._room
        won, lost = bool(game_state.get("won")), bool(game_state.get("lost"))
        info: dict[str, Any] = {
            "score": score,
            "max_score": game_state.get("max_score"),
            "won": won,
            "lost": lost,
        }
        if self.expert:
            info["intermediate_reward"] = game_state.get("intermediate_reward")
        return StepResult(
            state=self._observe(game_state),
            reward=1.0 if won else 0.0,
            done=bool(done) or won or lost,
            success=won if (done or won or lost) else None,
            info=info,
        )

    def expert_action(self) -> str:
        """The next command of a winning plan (TextWorld's policy commands, else the walkthrough)."""
        if self._plan:
            return self._plan[0]
        if self._on_walkthrough and self._moves < len(self._walkthrough):
            return self._walkthrough[self._moves]
        return "look"

    def _close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None
            self._game_file = None
