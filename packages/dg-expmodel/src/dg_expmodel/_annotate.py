"""Reasoning traces for training the experience model.

The paper labels each real transition with a strong LLM's explanation of it. :class:`RuleBasedAnnotator`
writes that explanation from what the real environment reveals — whether the action was available, what
appeared or disappeared in the state and the action set, and why the reward and the end of episode are
what they are — so that training works offline. An LLM annotator (any inference backend) implements the
same :class:`Annotator` protocol.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from dg_core import Step

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@runtime_checkable
class Annotator(Protocol):
    """Writes one reasoning trace per real transition."""

    def annotate(self, steps: Sequence[Step]) -> list[str]:
        """One reasoning string per step, in order."""
        ...


def _facts(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE.split(text) if part.strip()]


def _quote_list(items: Sequence[str], limit: int) -> str:
    shown = [f"'{item}'" for item in items[:limit]]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown) + more


class RuleBasedAnnotator:
    """Explains a real transition from the difference between its states and its outcome.

    Args:
        max_listed: At most this many facts or actions are quoted per sentence (keeps traces short).
    """

    def __init__(self, *, max_listed: int = 4) -> None:
        self.max_listed = max_listed

    def annotate(self, steps: Sequence[Step]) -> list[str]:
        """One reasoning string per step."""
        return [self.explain(step) for step in steps]

    def explain(self, step: Step) -> str:
        """The reasoning for one transition."""
        action = step.action.text
        parts: list[str] = []
        available = step.state.available_actions
        invalid = bool(step.info.get("invalid_action")) or (available is not None and action not in available)
        if invalid:
            parts.append(f"The action '{action}' is not among the available actions, so it cannot take effect.")
        elif available is not None:
            parts.append(f"The action '{action}' is available in the current state.")
        else:
            parts.append(f"The agent issues '{action}'.")
        if action in step.state.irreversible_actions:
            parts.append("It is irreversible.")
        before, after = _facts(step.state.text), _facts(step.next_state.text)
        appeared = [fact for fact in after if fact not in before]
        vanished = [fact for fact in before if fact not in after]
        if not appeared and not vanished:
            parts.append("The observation does not change.")
        else:
            if appeared:
                parts.append(f"New in the observation: {_quote_list(appeared, self.max_listed)}.")
            if vanished:
                parts.append(f"No longer observed: {_quote_list(vanished, self.max_listed)}.")
        parts.extend(self._action_changes(step))
        parts.append(self._outcome(step))
        return " ".join(parts)

    def _action_changes(self, step: Step) -> list[str]:
        before, after = step.state.available_actions, step.next_state.available_actions
        if before is None or after is None:
            return []
        gained = [a for a in after if a not in before]
        lost = [a for a in before if a not in after]
        out = []
        if gained:
            out.append(f"Newly available: {_quote_list(gained, self.max_listed)}.")
        if lost:
            out.append(f"No longer available: {_quote_list(lost, self.max_listed)}.")
        return out

    @staticmethod
    def _outcome(step: Step) -> str:
        if step.truncated:
            return "The step limit is reached without success: reward 0 and the episode ends."
        if step.done and step.reward > 0:
            return f"This accomplishes the task: reward {step.reward:g} and the episode ends."
        if step.done:
            return "The episode ends without accomplishing the task: reward 0."
        if step.reward:
            return f"The task is not finished; this step earns reward {step.reward:g}."
        return "The task is not finished yet: reward 0 and the episode goes on."
