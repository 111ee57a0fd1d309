"""``WebShopEnv``: a user's WebShop install (princeton-nlp/WebShop) behind the dg Env contract."""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from dg_core import INVALID_ACTION_FEEDBACK, Action, ConfigError, Env, MissingExtraError, State, StepResult, Task
from dg_envs.webshop._state import webshop_state

__all__ = ["WebShopEnv", "load_webshop_engine", "webshop_tasks"]

_ACTION = re.compile(r"^(search|click)\[(.*)\]$", re.IGNORECASE | re.DOTALL)


def load_webshop_engine(webshop_path: str | None = None, *, num_products: int | None = None) -> Any:
    """WebShop's own ``WebAgentTextEnv`` (text mode) from the checkout at ``webshop_path`` or ``$WEBSHOP_PATH``.

    The checkout must have run WebShop's ``setup.sh`` (product data, search index, spaCy model).
    """
    path = webshop_path or os.environ.get("WEBSHOP_PATH")
    if not path:
        raise ConfigError("WebShop needs webshop_path (or $WEBSHOP_PATH): a set-up checkout of princeton-nlp/WebShop")
    root = Path(path).expanduser().resolve()
    if not (root / "web_agent_site").is_dir():
        raise ConfigError(f"{root} is not a WebShop checkout: it has no web_agent_site/ folder")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("web_agent_site.envs.web_agent_text_env")
    except ImportError as error:
        raise MissingExtraError(
            getattr(error, "name", None) or "web_agent_site", "dg-envs", "webshop", f"WebShop at {root}"
        ) from error
    kwargs: dict[str, Any] = {"observation_mode": "text"}
    if num_products is not None:
        kwargs["num_products"] = num_products
    return module.WebAgentTextEnv(**kwargs)


def webshop_tasks(
    indices: range | list[int], *, split: Literal["train", "validation", "test"] | None = None
) -> list[Task]:
    """One task per WebShop goal index (WebShop's own convention: 0-499 test, 500-1499 validation, rest train).

    The instruction text comes from the shop's goal list at reset; it is left empty here because the goals
    live in the user's install.
    """
    return [
        Task(id=f"webshop-{index}", env_id="webshop", instruction="", config={"session": index}, split=split)
        for index in indices
    ]


class WebShopEnv(Env):
    """Plays WebShop sessions through its text environment, in this process.

    Reward is the outcome: 1 when the purchase scores at least ``success_score`` (WebShop's attribute
    match, 1.0 for an exact match), else 0; WebShop's own score is kept in ``info["webshop_score"]``.

    Args:
        webshop_path: A set-up checkout of princeton-nlp/WebShop (else ``$WEBSHOP_PATH``).
        max_steps: Step limit per episode (WebShop's papers use 15).
        num_products: Load only this many products (WebShop's own option; faster start).
        success_score: Score counted as success.
        engine: An already made engine with WebAgentTextEnv's interface (``reset(session=)``, ``step``,
            ``get_available_actions``, ``get_instruction_text``) instead of loading one from ``webshop_path``.
    """

    env_id = "webshop"

    def __init__(
        self,
        webshop_path: str | None = None,
        *,
        max_steps: int | None = 15,
        num_products: int | None = None,
        success_score: float = 1.0,
        engine: Any = None,
    ) -> None:
        super().__init__(max_steps=max_steps)
        self._engine = engine if engine is not None else load_webshop_engine(webshop_path, num_products=num_products)
        self.success_score = success_score
        self._instruction = ""
        self._available: dict[str, Any] = {}
        self._state = State(text="")

    def _observe(self, observation: str) -> State:
        self._available = dict(self._engine.get_available_actions())
        self._state = webshop_state(observation, self._available, instruction=self._instruction)
        return self._state

    def _understood(self, command: str) -> bool:
        """Whether WebShop would act on ``command`` (it silently ignores anything else)."""
        match = _ACTION.match(command.strip())
        if match is None:
            return False
        name, argument = match.group(1).lower(), match.group(2).strip()
        if name == "search":
            return bool(self._available.get("has_search_bar")) and bool(argument)
        return argument.lower() in {str(c) for c in self._available.get("clickables") or ()}

    def _reset(self, task: Task, seed: int | None) -> State:
        session = task.config.get("session")
        if not isinstance(session, int | str):
            raise ConfigError(f"task {task.id!r}: config['session'] must be a goal index or session id")
        observation, _info = self._engine.reset(session=session)
        self._instruction = str(self._engine.get_instruction_text()).removeprefix("Instruction:").strip()
        return self._observe(str(observation))

    def _step(self, action: Action) -> StepResult:
        if not self._understood(action.text):
            return StepResult(state=self._state, info={"invalid_action": True, "feedback": INVALID_ACTION_FEEDBACK})
        observation, score, done, _info = self._engine.step(action.text)
        score = float(score or 0.0)
        success = bool(done) and score >= self.success_score
        return StepResult(
            state=self._observe(str(observation)),
            reward=1.0 if success else 0.0,
            done=bool(done),
            success=success if done else None,
            info={"webshop_score": score, "instruction": self._instruction},
        )

    def _close(self) -> None:
        close = getattr(self._engine, "close", None)
        if callable(close):
            close()
