"""How a policy sees a request (prompt text) and how its written answer becomes an action."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dg_core import PolicyRequest

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


@dataclass(frozen=True)
class PromptFormat:
    """Renders a :class:`~dg_core.PolicyRequest` as plain text ending where the action begins.

    Args:
        history_turns: Most recent steps shown (older ones are dropped first when a prompt is too long).
        list_actions: Whether the available actions are listed in the prompt.
    """

    history_turns: int = 4
    list_actions: bool = True

    def render(self, request: PolicyRequest, *, history_turns: int | None = None) -> str:
        """The prompt for ``request``, showing at most ``history_turns`` earlier steps."""
        keep = self.history_turns if history_turns is None else history_turns
        lines = [f"Task: {request.task.instruction}"]
        shown = request.history[len(request.history) - keep :] if keep > 0 else ()
        for step in shown:
            lines.append(step.state.text)
            lines.append(f"> {step.action.text}")
        lines.append(request.state.text)
        actions = request.state.available_actions
        if self.list_actions and actions:
            lines.append("Actions: " + " | ".join(actions))
        return "\n".join(lines) + "\n> "
