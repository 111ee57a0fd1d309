"""A scripted MiniWoB++ expert for offline data: reads the abstract state, never the browser.

It plays ``click-test``, ``click-button``, ``click-link``, ``focus-text``, ``enter-text``,
``enter-password`` and ``login-user`` from the state text (element lines) and ``state.info["fields"]``
(the values MiniWoB's utterance asks for), choosing only among ``state.available_actions``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dg_core import Action, ConfigError, PolicyRequest, State

__all__ = ["EXPERT_TASKS", "MiniWoBExpert"]

_LINE = re.compile(r"^\[(?P<ref>\d+)\] (?P<tag>\S+)(?: (?P<text>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"))?(?P<rest>.*)$")
_VALUE = re.compile(r"value=(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


@dataclass(frozen=True)
class _Element:
    ref: str
    tag: str
    text: str
    value: str


def _elements(state: State) -> list[_Element]:
    found = []
    for line in state.text.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        text = ast.literal_eval(match["text"]) if match["text"] else ""
        value_match = _VALUE.search(match["rest"])
        value = ast.literal_eval(value_match["value"]) if value_match else ""
        found.append(_Element(match["ref"], match["tag"], str(text), str(value)))
    return found


def _click(element: _Element) -> str:
    return f"click({json.dumps(element.ref)})"


def _fill(element: _Element, value: str) -> str:
    return f"fill({json.dumps(element.ref)}, {json.dumps(value, ensure_ascii=False)})"


def _fill_then_submit(pairs: list[tuple[_Element | None, str]], elements: list[_Element], submit: str) -> str:
    for element, value in pairs:
        if element is not None and element.value != value:
            return _fill(element, value)
    button = next((e for e in elements if e.tag == "button" and e.text.lower() == submit.lower()), None)
    if button is None:
        raise ValueError(f"no {submit!r} button")
    return _click(button)


def _by_text(elements: list[_Element], text: str, tags: tuple[str, ...] | None = None) -> _Element:
    for element in elements:
        if element.text == text and (tags is None or element.tag in tags):
            return element
    raise ValueError(f"no element with text {text!r}")


def _first(elements: list[_Element], tag: str, index: int = 0) -> _Element | None:
    matching = [e for e in elements if e.tag == tag]
    return matching[index] if len(matching) > index else None


def _click_test(elements: list[_Element], fields: dict[str, str]) -> str:
    return _click(_by_text(elements, "Click Me!", ("button",)))


def _click_target(elements: list[_Element], fields: dict[str, str]) -> str:
    return _click(_by_text(elements, fields["target"]))


def _focus_text(elements: list[_Element], fields: dict[str, str]) -> str:
    box = _first(elements, "input_text")
    if box is None:
        raise ValueError("no text box")
    return _click(box)


def _enter_text(elements: list[_Element], fields: dict[str, str]) -> str:
    return _fill_then_submit([(_first(elements, "input_text"), fields["target"])], elements, "Submit")


def _enter_password(elements: list[_Element], fields: dict[str, str]) -> str:
    password = fields["target"]
    pairs = [(_first(elements, "input_password", 0), password), (_first(elements, "input_password", 1), password)]
    return _fill_then_submit(pairs, elements, "Submit")


def _login_user(elements: list[_Element], fields: dict[str, str]) -> str:
    pairs = [
        (_first(elements, "input_text"), fields["username"]),
        (_first(elements, "input_password"), fields["password"]),
    ]
    return _fill_then_submit(pairs, elements, "Login")


_SOLVERS: dict[str, Callable[[list[_Element], dict[str, str]], str]] = {
    "click-test": _click_test,
    "click-button": _click_target,
    "click-link": _click_target,
    "focus-text": _focus_text,
    "enter-text": _enter_text,
    "enter-password": _enter_password,
    "login-user": _login_user,
}

EXPERT_TASKS: tuple[str, ...] = tuple(sorted(_SOLVERS))
"""MiniWoB++ tasks the scripted expert solves."""


class MiniWoBExpert:
    """Scripted expert policy for :data:`EXPERT_TASKS` (a :class:`dg_core.Policy`).

    Raises:
        ConfigError: From :meth:`act` for a task it does not know.
    """

    @property
    def policy_id(self) -> str:
        """``miniwob-expert``."""
        return "miniwob-expert"

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """The expert's next action for each request."""
        return [Action(text=self.next_action(r.task.config.get("task_name", ""), r.state)) for r in requests]

    @staticmethod
    def next_action(task_name: object, state: State) -> str:
        """The next action for ``task_name`` in ``state`` (always one of ``state.available_actions``)."""
        solver = _SOLVERS.get(str(task_name))
        if solver is None:
            raise ConfigError(f"the MiniWoB++ expert knows {', '.join(EXPERT_TASKS)}, not {task_name!r}")
        fields = {str(k): str(v) for k, v in dict(state.info.get("fields") or {}).items()}
        try:
            action = solver(_elements(state), fields)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"the expert cannot read this {task_name} state ({error}):\n{state.text}") from error
        if state.available_actions is not None and action not in state.available_actions:
            raise ConfigError(f"the expert chose {action!r}, which this state does not offer")
        return action
