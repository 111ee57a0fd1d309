"""How a policy sees a request (prompt text) and how its written answer becomes an action."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dg_core import PolicyRequest, Step

__all__ = ["PromptFormat", "parse_action"]

_SPACES = re.compile(r"\s+")


def _normalize(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def parse_action(text: str, available: tuple[str, ...] | None) -> str | None:
    """The action that ``text`` names, or ``None`` when it names none.

    The first non-empty line is compared with the available actions ignoring case and runs of
    whitespace. With a free-text action space (``available is None``) that line is the action.

    Args:
        text: What the policy wrote.
        available: The state's available actions, or ``None`` for free text.
    """
    line = next((part for part in text.splitlines() if part.strip()), "")
    if available is None:
        cleaned = line.strip()
        return cleaned or None
    wanted = _normalize(line)
    if not wanted:
        return None
    for action in available:
        if _normalize(action) == wanted:
            return action
    return None


SYSTEM_PROMPT = (
    "You are an agent in a text environment. Read the task and the current observation, then reply with "
    "exactly one action, written as it appears in the list of available actions, and nothing else."
)
"""System message of instruct (chat) policies."""


@dataclass(frozen=True)
class PromptFormat:
    """Renders a :class:`~dg_core.PolicyRequest` as plain text ending where the action begins, or, for
    instruct models, as chat messages: the task and each observation are user turns, each earlier action an
    assistant turn, so the model's own answer is the next assistant turn.

    Args:
        history_turns: Most recent steps shown (older ones are dropped first when a prompt is too long).
        list_actions: Whether the available actions are listed in the prompt.
        system_prompt: System message of the chat rendering.
    """

    history_turns: int = 4
    list_actions: bool = True
    system_prompt: str = SYSTEM_PROMPT

    def _shown(self, request: PolicyRequest, history_turns: int | None) -> Sequence[Step]:
        keep = self.history_turns if history_turns is None else history_turns
        return request.history[len(request.history) - keep :] if keep > 0 else ()

    def _observation(self, text: str, actions: tuple[str, ...] | None) -> str:
        if self.list_actions and actions:
            return text + "\nActions: " + " | ".join(actions)
        return text

    def messages(self, request: PolicyRequest, *, history_turns: int | None = None) -> list[dict[str, str]]:
        """The chat messages for ``request`` (system, then alternating user / assistant, ending with a user turn).

        Earlier observations list their actions too, so every turn reads as the current one does.
        """
        turns: list[tuple[str, str]] = []
        for step in self._shown(request, history_turns):
            turns.append(("user", self._observation(step.state.text, step.state.available_actions)))
            turns.append(("assistant", step.action.text))
        turns.append(("user", self._observation(request.state.text, request.state.available_actions)))
        first_role, first_text = turns[0]
        turns[0] = (first_role, f"Task: {request.task.instruction}\n{first_text}")
        return [{"role": "system", "content": self.system_prompt}] + [
            {"role": role, "content": content} for role, content in turns
        ]

    def render(self, request: PolicyRequest, *, history_turns: int | None = None) -> str:
        """The prompt for ``request``, showing at most ``history_turns`` earlier steps."""
        lines = [f"Task: {request.task.instruction}"]
        for step in self._shown(request, history_turns):
            lines.append(step.state.text)
            lines.append(f"> {step.action.text}")
        lines.append(self._observation(request.state.text, request.state.available_actions))
        return "\n".join(lines) + "\n> "
