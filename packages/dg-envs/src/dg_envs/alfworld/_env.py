"""``AlfWorldEnv``: the real ALFWorld text engine behind the dg :class:`~dg_core.Env` contract."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dg_core import Action, ConfigError, Env, State, StepResult, Task
from dg_envs.alfworld._problems import alfworld_module
from dg_envs.alfworld._suite import generated_game

__all__ = ["AlfWorldEnv", "alfworld_state"]

_WELCOME = "-= Welcome to TextWorld, ALFRED! =-"
_TASK_SENTENCE = re.compile(r"\s*Your task is to: .*$", re.DOTALL)
_ARRIVE = re.compile(r"You arrive at ([^.]+)\.")
_MOVE = re.compile(r"^move (.+?) to ")


def alfworld_state(feedback: str, admissible: list[str], location: str, *, won: bool) -> State:
    """The abstract state: feedback without the welcome banner or task sentence, location, what is held."""
    text = feedback.replace(_WELCOME, "")
    text = _TASK_SENTENCE.sub("", text).strip()
    text = " ".join(text.split())
    held = sorted({m.group(1) for c in admissible if (m := _MOVE.match(c))})
    lines = [text, f"Location: {location}", f"Holding: {', '.join(held) if held else 'nothing'}"]
    actions: tuple[str, ...] = () if won else (tuple(dict.fromkeys(admissible)) or ("look",))
    return State(text="\n".join(line for line in lines if line), available_actions=actions, info={"won": won})


class AlfWorldEnv(Env):
    """Plays one ALFWorld game per episode with the real engine (``alfworld`` 0.4.2 on TextWorld's PDDL backend).

    A task names its game with ``config["game_file"]`` (a ``game.tw-pddl`` with ``traj_data.json`` beside
    it, official or generated) or ``config["task_type"]`` and ``config["problem_seed"]`` (generated into the
    cache when missing). Reward is 1 on the step that wins, else 0. Commands outside the admissible list
    are answered by dg (ALFWorld's own answer, "Nothing happens.", is indistinguishable from a valid no-op).

    Args:
        max_steps: Step limit per episode (ALFWorld uses 50).
        cache_dir: Where generated games are written.
        expert: Run ALFWorld's handcoded expert alongside (needed by :meth:`expert_action`; slower).
    """

    env_id = "alfworld"

    def __init__(self, *, max_steps: int | None = 50, cache_dir: str | None = None, expert: bool = True) -> None:
        super().__init__(max_steps=max_steps)
        self._textworld = alfworld_module("textworld")
        self._wrappers = alfworld_module("alfworld.agents.environment.alfred_tw_env")
        self._expert_module = alfworld_module("alfworld.agents.expert") if expert else None
        self.cache_dir = cache_dir
        self.expert = expert
        self._game: Any = None
        self._agent: Any = None
        self._game_file: Path | None = None
        self._location = "the middle of the room"
        self._plan = "look"

    def _resolve_game(self, task: Task) -> Path:
        game_file = task.config.get("game_file")
        if isinstance(game_file, str) and Path(game_file).exists():
            return Path(game_file)
        task_type, seed = task.config.get("task_type"), task.config.get("problem_seed")
        if isinstance(task_type, str) and isinstance(seed, int):
            return generated_game(task_type, seed, self.cache_dir)
        raise ConfigError(
            f"task {task.id!r}: config needs an existing 'game_file' (game.tw-pddl) or 'task_type' + 'problem_seed'"
        )

    def _reset(self, task: Task, seed: int | None) -> State:
        game_file = self._resolve_game(task)
        if game_file != self._game_file:
            self._close()
            infos = self._textworld.EnvInfos(won=True, admissible_commands=True, facts=self.expert, feedback=True)
            wrappers = [self._wrappers.AlfredDemangler(shuffle=False), self._wrappers.AlfredInfos]
            self._game = self._textworld.start(str(game_file), infos, wrappers=wrappers)
            self._game_file = game_file
        game_state = self._game.reset()
        self._location = "the middle of the room"
        if self._expert_module is not None:
            self._agent = self._expert_module.HandCodedTWAgent(max_steps=200)
            self._agent.reset(str(game_file))
            self._agent.observe(game_state["feedback"])
            self._plan = "look"
        return alfworld_state(
            str(game_state["feedback"]), list(game_state["admissible_commands"]), self._location, won=False
        )

    def _step(self, action: Action) -> StepResult:
        game_state, _score, done = self._game.step(action.text)
        feedback = str(game_state["feedback"])
        arrived = _ARRIVE.search(feedback)
        if arrived:
            self._location = arrived.group(1)
        won = bool(game_state["won"])
        admissible = list(game_state["admissible_commands"])
        if self._agent is not None and not won:
            self._plan = self._expert_next(game_state, action.text, admissible)
        return StepResult(
            state=alfworld_state(feedback, admissible, self._location, won=won),
            reward=1.0 if won else 0.0,
            done=bool(done) or won,
            success=won if (done or won) else None,
            info={"won": won},
        )

    def _expert_next(self, game_state: Any, command: str, admissible: list[str]) -> str:
        # ALFWorld 0.4.2's grammar says "move X to Y" where its expert's bookkeeping looks for "put": tell the
        # expert the command in the words it tracks, or it forgets it let go of the first object.
        tracked = _MOVE.sub(lambda m: f"put {m.group(1)} in/on ", command)
        try:
            proposal = self._agent.act(game_state, 0, game_state["won"], tracked)
        except Exception:  # the handcoded expert gives up (timeout / no subgoal left): fall back to looking
            return "look"
        return proposal if proposal in admissible else "look"

    def expert_action(self) -> str:
        """The handcoded expert's next command."""
        if self._agent is None:
            raise ConfigError("this AlfWorldEnv was made with expert=False")
        return self._plan

    def _close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None
            self._game_file = None
