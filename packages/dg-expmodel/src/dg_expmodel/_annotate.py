"""Reasoning traces for training the experience model.

The paper labels each real transition with a strong LLM's explanation of it. :class:`RuleBasedAnnotator`
writes that explanation from what the real environment reveals — whether the action was available, what
appeared or disappeared in the state and the action set, and why the reward and the end of episode are
what they are — so that training works offline. An LLM annotator (any inference backend) implements the
same :class:`Annotator` protocol.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dg_core import ConfigError, Step

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


ANNOTATION_SYSTEM_PROMPT = (
    "You explain transitions of a text environment. Given the state, the action, the next state, the reward "
    "and whether the episode ended, write a short step-by-step explanation of why the environment answered "
    "this way: whether the action was valid, what changed, and why the reward is what it is. "
    "Answer with the explanation only."
)


def _annotation_request(step: Step) -> str:
    actions = step.state.available_actions
    listed = " | ".join(actions) if actions is not None else "free text"
    return (
        f"State: {step.state.text}\nAvailable actions: {listed}\nAction: {step.action.text}\n"
        f"Next state: {step.next_state.text}\nReward: {step.reward:g}\nDone: {'true' if step.done else 'false'}"
    )


def step_key(step: Step) -> str:
    """Content hash of a transition (what an annotation depends on), for caching."""
    payload = json.dumps(
        [step.state.text, step.state.available_actions, step.action.text, step.next_state.text, step.reward, step.done],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class LLMAnnotator:
    """Reasoning written by an LLM through any generation backend, batched, cached on disk, resumable.

    Every answer is appended to the JSONL cache as soon as its batch returns, so an interrupted run
    resumes where it stopped and never asks twice for the same transition. Empty answers fall back to
    ``fallback`` (the rule-based annotator by default) and are counted in ``fallbacks``.

    Args:
        backend: A :class:`~dg_expmodel.GenerationBackend`.
        cache_path: JSONL file of ``{"key": ..., "reasoning": ...}`` records.
        batch_size: Transitions per backend call.
        max_new_tokens: Length cap of one explanation.
        fallback: Annotator for transitions the LLM leaves unexplained.
    """

    def __init__(
        self,
        backend: Any,
        cache_path: str | Path,
        *,
        batch_size: int = 16,
        max_new_tokens: int = 160,
        fallback: Annotator | None = None,
    ) -> None:
        self.backend = backend
        self.cache_path = Path(cache_path)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.fallback = fallback or RuleBasedAnnotator()
        self.fallbacks = 0
        self.generated = 0
        self._cache = self._load()

    def _load(self) -> dict[str, str]:
        cache: dict[str, str] = {}
        if not self.cache_path.exists():
            return cache
        complete_bytes = 0
        with self.cache_path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith("\n"):
                    # A record cut by a kill: drop the fragment (its transition is simply asked again).
                    with self.cache_path.open("r+b") as raw:
                        raw.truncate(complete_bytes)
                    break
                complete_bytes += len(line.encode("utf-8"))
                try:
                    record = json.loads(line)
                    cache[str(record["key"])] = str(record["reasoning"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ConfigError(f"{self.cache_path}:{number}: not an annotation record ({error})") from error
        return cache

    def annotate(self, steps: Sequence[Step]) -> list[str]:
        """One explanation per step; cached ones are not asked again."""
        from dg_expmodel._backends import Sampling

        keys = [step_key(step) for step in steps]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        by_key = dict(zip(keys, steps, strict=True))
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        sampling = Sampling(max_new_tokens=self.max_new_tokens, stop=())
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            prompts: list[Any] = []
            for key in batch:
                request = _annotation_request(by_key[key])
                if self.backend.chat:
                    prompts.append(
                        [{"role": "system", "content": ANNOTATION_SYSTEM_PROMPT}, {"role": "user", "content": request}]
                    )
                else:
                    prompts.append(f"{ANNOTATION_SYSTEM_PROMPT}\n\n{request}\nExplanation:")
            completions = self.backend.complete(prompts, sampling)
            self.generated += len(batch)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                for key, completion in zip(batch, completions, strict=True):
                    text = " ".join(completion.text.replace("<", " ").replace(">", " ").split())
                    if not text:
                        self.fallbacks += 1
                        text = self.fallback.annotate([by_key[key]])[0]
                    self._cache[key] = text
                    handle.write(json.dumps({"key": key, "reasoning": text}, ensure_ascii=False) + "\n")
        return [self._cache[key] for key in keys]
