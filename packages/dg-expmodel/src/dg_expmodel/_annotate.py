"""Reasoning traces for training the experience model.

The paper labels each real transition with a strong LLM's explanation of it. :class:`RuleBasedAnnotator`
writes that explanation from what the real environment reveals — whether the action was available, what
appeared or disappeared in the state and the action set, and why the reward and the end of episode are
what they are — so that training works offline. :class:`LLMAnnotator` asks any inference backend for the
causes instead (as the paper's teacher does), checks every answer with :func:`~dg_expmodel.check_trace` and
keeps the rule-based annotator as the fallback for the answers it rejects. Both implement :class:`Annotator`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dg_core import ConfigError, Step
from dg_expmodel._trace_check import REJECT_REASONS, check_trace, copies_outcome, transition_text

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
    "You explain the causes behind the answers of a text environment. You are shown a state, the available "
    "actions, the action taken, the next state, the reward and whether the episode ended. In 2 to 4 short "
    "sentences, say which rule or precondition made the action valid or invalid, why the state changed the way "
    "it did, and why the reward and the end of the episode are what they are. Do not restate or copy the next "
    "state: explain it. Answer with the explanation only."
)
"""The LLM annotator's instruction: causes (rules, preconditions, reasons for the outcome), not a restatement."""


def annotation_request(step: Step) -> str:
    """The user message of one transition: what happened, then the question to answer."""
    return (
        f"{transition_text(step)}\n\nWhy did the environment answer '{step.action.text}' this way? "
        "Explain the causes in 2 to 4 sentences."
    )


def step_key(step: Step) -> str:
    """Content hash of a transition (what an annotation depends on), for caching."""
    payload = json.dumps(
        [step.state.text, step.state.available_actions, step.action.text, step.next_state.text, step.reward, step.done],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _clean(text: str) -> str:
    # Tags are stripped so that a trace cannot break the response format it is trained inside.
    return " ".join(text.replace("<", " ").replace(">", " ").split())


@dataclass(frozen=True)
class AnnotationRecord:
    """The decision on one transition, as the cache keeps it."""

    key: str
    """:func:`step_key` of the transition."""
    raw: str
    """The LLM's answer as generated."""
    reason: str | None
    """Why the answer was rejected (one of :data:`REJECT_REASONS`), or ``None`` when it was kept."""
    reasoning: str
    """The trace served: the cleaned answer, or the fallback annotator's trace when the answer was rejected."""
    finished: bool = True
    """False when generation stopped at the token cap."""

    def to_json(self) -> str:
        """One line of the JSONL cache."""
        record = {"key": self.key, "raw": self.raw, "finished": self.finished, "reason": self.reason}
        return json.dumps({**record, "reasoning": self.reasoning}, ensure_ascii=False)


class LLMAnnotator:
    """Reasoning written by an LLM through any generation backend, checked, batched, cached on disk, resumable.

    Every answer goes through :func:`~dg_expmodel.check_trace`; one that fails it (empty, degenerate,
    contradicting the reward, or only copying the outcome) is replaced by ``fallback``'s trace (the rule-based
    annotator by default), and the reason is counted in ``rejects``. Each decision (the raw answer, the reason
    and the trace served) is appended to the JSONL cache as soon as its batch returns, so an interrupted run
    resumes where it stopped, never asks twice for the same transition and takes the same decisions. Records of
    earlier versions (``key`` and ``reasoning`` only) are read as unchecked answers: they are checked when first
    served and the decision is appended to the cache.

    The counters cover the distinct transitions this annotator served (``generated + cached``);
    :meth:`summary` adds outcome-copy rates and the cost per generated transition.

    Args:
        backend: A :class:`~dg_expmodel.GenerationBackend`.
        cache_path: JSONL file of :class:`AnnotationRecord` lines.
        batch_size: Transitions per backend call.
        max_new_tokens: Length cap of one explanation (an answer cut at the cap is rejected as degenerate).
        fallback: Annotator for the transitions whose answer is rejected.
    """

    def __init__(
        self,
        backend: Any,
        cache_path: str | Path,
        *,
        batch_size: int = 16,
        max_new_tokens: int = 96,
        fallback: Annotator | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.backend = backend
        self.cache_path = Path(cache_path)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.fallback = fallback or RuleBasedAnnotator()
        self.generated = 0
        """Transitions the backend was asked to explain."""
        self.cached = 0
        """Transitions answered from the cache."""
        self.rejects: Counter[str] = Counter()
        """Rejected answers by reason (each replaced by the fallback's trace)."""
        self.seconds = 0.0
        """Time spent in the backend."""
        self.completion_tokens = 0
        """Tokens generated by the backend."""
        self.raw_copies = 0
        """Served transitions whose raw answer only copies the outcome (:func:`~dg_expmodel.copies_outcome`)."""
        self.final_copies = 0
        """Served transitions whose final trace only copies the outcome."""
        self._served: set[str] = set()
        self._asked: set[str] = set()
        self._records = self._load()

    @property
    def fallbacks(self) -> int:
        """Served transitions whose trace is the fallback's."""
        return sum(self.rejects.values())

    @property
    def transitions(self) -> int:
        """Distinct transitions served."""
        return len(self._served)

    def _load(self) -> dict[str, AnnotationRecord | str]:
        cache: dict[str, AnnotationRecord | str] = {}
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
                    key, reasoning = str(record["key"]), str(record["reasoning"])
                    if "raw" in record:
                        reason = record.get("reason")
                        if reason is not None and reason not in REJECT_REASONS:
                            raise KeyError(f"unknown reason {reason!r}")
                        finished = bool(record.get("finished", True))
                        cache[key] = AnnotationRecord(key, str(record["raw"]), reason, reasoning, finished)
                    else:
                        cache[key] = reasoning  # written before the check: decided when first served
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ConfigError(f"{self.cache_path}:{number}: not an annotation record ({error})") from error
        return cache

    def _prompt(self, step: Step) -> Any:
        request = annotation_request(step)
        if self.backend.chat:
            return [{"role": "system", "content": ANNOTATION_SYSTEM_PROMPT}, {"role": "user", "content": request}]
        return f"{ANNOTATION_SYSTEM_PROMPT}\n\n{request}\nExplanation:"

    def _decide(self, items: Sequence[tuple[str, Step, str, bool]]) -> list[AnnotationRecord]:
        """Check answers ``(key, step, raw, finished)``; rejected ones get the fallback's trace."""
        reasons = [check_trace(_clean(raw), step, finished=finished) for _key, step, raw, finished in items]
        rejected = [step for (_key, step, _raw, _done), reason in zip(items, reasons, strict=True) if reason]
        replacements = iter(self.fallback.annotate(rejected) if rejected else [])
        return [
            AnnotationRecord(key, raw, reason, next(replacements) if reason else _clean(raw), finished)
            for (key, _step, raw, finished), reason in zip(items, reasons, strict=True)
        ]

    def _write(self, records: Sequence[AnnotationRecord]) -> None:
        with self.cache_path.open("a", encoding="utf-8") as handle:
            for record in records:
                self._records[record.key] = record
                handle.write(record.to_json() + "\n")

    def annotate(self, steps: Sequence[Step]) -> list[str]:
        """One explanation per step; cached ones are not asked again."""
        from dg_expmodel._backends import Sampling

        keys = [step_key(step) for step in steps]
        by_key = dict(zip(keys, steps, strict=True))
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        legacy = [key for key in dict.fromkeys(keys) if isinstance(self._records.get(key), str)]
        if legacy:
            self._write(self._decide([(key, by_key[key], str(self._records[key]), True) for key in legacy]))
        missing = [key for key in dict.fromkeys(keys) if key not in self._records]
        sampling = Sampling(max_new_tokens=self.max_new_tokens, stop=())
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            started = time.perf_counter()
            completions = self.backend.complete([self._prompt(by_key[key]) for key in batch], sampling)
            self.seconds += time.perf_counter() - started
            self.generated += len(batch)
            self._asked.update(batch)
            self.completion_tokens += sum(completion.completion_tokens for completion in completions)
            answers = [
                (key, by_key[key], completion.text, completion.finished)
                for key, completion in zip(batch, completions, strict=True)
            ]
            self._write(self._decide(answers))
        records = [self.record_of(key) for key in keys]
        for key, record in zip(keys, records, strict=True):
            if key not in self._served:
                self._count(record, by_key[key])
        return [record.reasoning for record in records]

    def _count(self, record: AnnotationRecord, step: Step) -> None:
        self._served.add(record.key)
        if record.key not in self._asked:
            self.cached += 1
        if record.reason is not None:
            self.rejects[record.reason] += 1
        self.raw_copies += copies_outcome(_clean(record.raw), step)
        self.final_copies += copies_outcome(record.reasoning, step)

    def record_of(self, key: str) -> AnnotationRecord:
        """The decision on the transition of :func:`step_key` ``key`` (``KeyError`` if it was never annotated)."""
        record = self._records[key]
        if isinstance(record, str):
            raise KeyError(f"{key}: not yet checked (annotate its step first)")
        return record

    def summary(self) -> dict[str, Any]:
        """Counts, outcome-copy rates and cost over the transitions served so far."""
        served = max(1, self.transitions)
        return {
            "kind": "llm",
            "transitions": self.transitions,
            "generated": self.generated,
            "cached": self.cached,
            "accepted": self.transitions - self.fallbacks,
            "fallbacks": self.fallbacks,
            "fallback_share": self.fallbacks / served,
            "rejects": {reason: self.rejects[reason] for reason in REJECT_REASONS},
            "raw_copy_rate": self.raw_copies / served,
            "final_copy_rate": self.final_copies / served,
            "seconds": self.seconds,
            "seconds_per_generated": self.seconds / self.generated if self.generated else None,
            "completion_tokens_per_generated": self.completion_tokens / self.generated if self.generated else None,
        }
