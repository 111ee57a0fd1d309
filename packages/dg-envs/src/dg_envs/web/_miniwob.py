"""MiniWoB++ tasks (the ``miniwob`` package ships them) on Debian Chromium: ``MiniWoBEnv``.

The abstract state is the episode's utterance plus the page's meaningful DOM elements, one line each
(``[4] button 'Submit'``, ``[5] input_text value='Kasey' focused``); layout-only wrappers and empty
elements are dropped. The action set is finite: ``click("<ref>")`` for every element shown, and
``fill("<ref>", "<value>")`` for every text input and every value in the utterance's fields (the text
MiniWoB asks to type). Reward is outcome-based: 1 when MiniWoB scores the episode a success, else 0;
MiniWoB's time-decayed reward is kept in ``info["miniwob_reward"]``.

A browser that crashes or hangs (``step_timeout_s``, then it is killed) ends the episode as a failure;
the next ``reset`` starts a fresh one, and ``close`` leaves no browser or chromedriver process.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from dg_core import Action as DGAction
from dg_core import ConfigError, Env, EnvError, StepResult, Task, require
from dg_core import State as DGState
from dg_envs.web._actions import ActionParseError, parse_web_action
from dg_envs.web._axtree import IRREVERSIBLE_PATTERN
from dg_envs.web._browser import ProcessTracker, configure_miniwob_chrome, run_watched

__all__ = ["MINIWOB_TEXT_INPUTS", "MiniWoBEnv", "miniwob_task"]

_T = TypeVar("_T")
MINIWOB_TEXT_INPUTS = frozenset({"input_text", "input_password", "textarea", "input_number", "input_email"})
"""MiniWoB element tags that take typed text."""
_CLICKABLE_TAGS = frozenset({"button", "a", "input_checkbox", "input_radio", "label", "span", "option", "li"})
_MAX_TEXT = 80


def miniwob_task(task_name: str, *, task_id: str | None = None, seed: int | None = None) -> Task:
    """A :class:`MiniWoBEnv` task: ``task_name`` is a MiniWoB++ task (``"click-button"``, ``"enter-text"``)."""
    return Task(
        id=task_id or f"miniwob.{task_name}",
        env_id=MiniWoBEnv.env_id,
        instruction=f"Solve the MiniWoB++ task {task_name!r}: do what the page's instruction says.",
        seed=seed,
        config={"task_name": task_name},
    )


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    return repr(text)


class MiniWoBEnv(Env):
    """MiniWoB++ through its own Selenium driver on Debian Chromium (see the module docstring).

    Args:
        max_steps: Step limit per episode.
        step_timeout_s: A step taking longer is treated as a hung browser (which is then killed).
        reset_timeout_s: The same for starting the browser and an episode.
    """

    env_id = "miniwob"

    def __init__(
        self, *, max_steps: int | None = 10, step_timeout_s: float = 30.0, reset_timeout_s: float = 60.0
    ) -> None:
        super().__init__(max_steps=max_steps)
        if min(step_timeout_s, reset_timeout_s) <= 0:
            raise ConfigError(f"timeouts must be positive, got {step_timeout_s} and {reset_timeout_s}")
        require("miniwob", distribution="dg-envs", extra="miniwob", purpose="the MiniWoB++ adapter")
        configure_miniwob_chrome()
        self.step_timeout_s = step_timeout_s
        self.reset_timeout_s = reset_timeout_s
        self.browser_restarts = 0
        self._tracker = ProcessTracker()
        self._gym_env: Any = None
        self._task_name = ""
        self._refs: dict[str, str] = {}  # ref -> tag of the elements shown

    @property
    def browser_pids(self) -> list[int]:
        """Main processes of the running browser (chromedriver and Chromium)."""
        return self._tracker.main_pids()

    def _watched(self, call: Callable[[], _T], timeout_s: float | None = None) -> _T:
        return run_watched(self._tracker, call, timeout_s or self.step_timeout_s)

    def _stop_browser(self) -> None:
        gym_env, self._gym_env = self._gym_env, None
        if gym_env is not None:
            with contextlib.suppress(Exception):
                self._watched(gym_env.close, self.reset_timeout_s)
        self._tracker.kill()

    def _start(self, task_name: str) -> None:
        import gymnasium
        import miniwob

        self._stop_browser()
        gymnasium.register_envs(miniwob)
        env_name = f"miniwob/{task_name}-v1"
        if env_name not in gymnasium.registry:
            raise ConfigError(f"unknown MiniWoB++ task {task_name!r} (no gymnasium id {env_name!r})")
        with self._tracker:
            self._gym_env = self._watched(lambda: gymnasium.make(env_name), self.reset_timeout_s)
        self._task_name = task_name

    # -- Env hooks ------------------------------------------------------------------------------
    def _reset(self, task: Task, seed: int | None) -> DGState:
        task_name = task.config.get("task_name")
        if not isinstance(task_name, str) or not task_name:
            raise ConfigError(f"task {task.id!r}: config needs 'task_name' (a MiniWoB++ task such as 'click-button')")
        seed = seed if seed is not None else (task.seed if task.seed is not None else 0)
        for attempt in range(2):  # one retry: a browser can fail to start on a loaded machine
            try:
                if self._gym_env is None or self._task_name != task_name:
                    self._start(task_name)
                observation, _ = self._watched(lambda: self._gym_env.reset(seed=seed), self.reset_timeout_s)
                return self._state(observation)
            except ConfigError:
                raise
            except Exception as error:
                self._stop_browser()
                self.browser_restarts += 1
                if attempt == 1:
                    raise EnvError(f"could not start MiniWoB++ task {task_name!r}: {error}") from error
        raise AssertionError("unreachable")

    def _step(self, action: DGAction) -> StepResult:
        from miniwob.action import ActionTypes

        state = self.state
        try:
            parsed = parse_web_action(action.text)
        except ActionParseError as error:  # only reachable if a state offered a malformed action
            return StepResult(state=state, info={"invalid_action": True, "feedback": f"Invalid action: {error}."})
        ref = int(parsed.bid) if parsed.bid is not None else 0
        if self._gym_env is None:
            return self._crashed(state, "the browser is not running")
        unwrapped = self._gym_env.unwrapped
        if parsed.name == "fill":
            miniwob_action = unwrapped.create_action(
                ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT, ref=ref, text=str(parsed.args[1])
            )
        else:
            miniwob_action = unwrapped.create_action(ActionTypes.CLICK_ELEMENT, ref=ref)
        try:
            observation, reward, terminated, _, info = self._watched(lambda: self._gym_env.step(miniwob_action))
        except Exception as error:  # the browser died or hung (and was killed)
            return self._crashed(state, f"{type(error).__name__}: {error}")
        won = float(info.get("raw_reward", reward)) > 0
        next_state = self._state(observation) if not terminated else self._final_state(state, won)
        return StepResult(
            state=next_state,
            reward=1.0 if terminated and won else 0.0,
            done=bool(terminated),
            success=won if terminated else None,
            info={"miniwob_reward": float(reward), "reason": str(info.get("reason") or "")},
        )

    def _close(self) -> None:
        self._stop_browser()

    # -- states ---------------------------------------------------------------------------------
    def _crashed(self, state: DGState, reason: str) -> StepResult:
        self._stop_browser()
        self.browser_restarts += 1
        ended = DGState(text=f"{state.text}\nThe browser crashed; the episode ended.", available_actions=None)
        return StepResult(state=ended, reward=0.0, done=True, success=False, info={"browser_crashed": reason})

    @staticmethod
    def _final_state(state: DGState, won: bool) -> DGState:
        outcome = "The task was completed." if won else "The task failed."
        return DGState(text=f"{state.text.splitlines()[0]}\n{outcome}", info={**state.info, "success": won})

    def _state(self, observation: dict[str, Any]) -> DGState:
        utterance = str(observation["utterance"])
        fields = [(str(key), str(value)) for key, value in observation.get("fields", ())]
        lines = [f"Task: {utterance}"]
        actions: list[str] = []
        irreversible: list[str] = []
        self._refs = {}
        for element in observation["dom_elements"]:
            tag, text = str(element["tag"]), str(element["text"]).strip()
            value = str(element.get("value") or "")
            flags = list(element.get("flags", [0, 0, 0, 0]))
            is_leaf = len(flags) > 3 and bool(flags[3])
            typed = tag in MINIWOB_TEXT_INPUTS
            if tag in ("body", "html") or not (text or typed or (is_leaf and tag in _CLICKABLE_TAGS)):
                continue
            ref = str(int(element["ref"]))
            if int(ref) < 0:  # a bare text node: content to read, nothing to act on
                lines.append(" ".join(text.split()))
                continue
            parts = [f"[{ref}] {tag}"]
            if text:
                parts.append(_quote(text))
            if typed or value:
                parts.append(f"value={_quote(value)}")
            if element.get("id"):
                parts.append(f"#{element['id']}")
            if flags and flags[0]:
                parts.append("focused")
            lines.append(" ".join(parts))
            self._refs[ref] = tag
            click = f'click("{ref}")'
            actions.append(click)
            if tag in ("button", "input_submit") and IRREVERSIBLE_PATTERN.search(text):
                irreversible.append(click)
            if typed:
                for _, field_value in fields:
                    fill = f"fill({json.dumps(ref)}, {json.dumps(field_value, ensure_ascii=False)})"
                    if fill not in actions:
                        actions.append(fill)
        if not actions:
            lines.append("(no elements)")
            actions.append('click("1")')
        return DGState(
            text="\n".join(lines),
            available_actions=tuple(actions),
            irreversible_actions=tuple(irreversible),
            info={"task_name": self._task_name, "fields": dict(fields)},
        )
