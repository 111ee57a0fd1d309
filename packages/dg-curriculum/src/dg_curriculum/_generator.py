"""Task variations written by the experience model's own backend, parsed and validated.

The model sees a seed task and its initial state and writes new tasks (harder, easier, recombined), each
inside ``<task>...</task>``. Every candidate is validated — non-empty, not too long, grounded in what the
environment offers (the words of the seed task, its initial state and its available actions), not a
duplicate — and rejects are counted by reason.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dg_core import State, Task, TaskGenerationRequest
from dg_expmodel import GenerationBackend, Sampling

GENERATOR_FORMAT_VERSION = 1

REJECT_REASONS = ("unparseable", "empty", "too_long", "out_of_vocabulary", "duplicate")
"""Why a candidate task was rejected."""

_STOPWORD_TEXT = """
a an the and or of to in on at into onto from with for by it its this that then than is are be
you your all any some each one two three first second last next new other another same both
either after before up down out over under again also only just not no so as if while until find
take put get go use make do does done there here where what which who them they he she we us me my our
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
"""Words that carry no grounding (they are not checked against the environment's vocabulary)."""

_TASK = re.compile(r"<task>(.*?)</task>", re.DOTALL)
_WORD = re.compile(r"[a-z0-9]+")

GENERATOR_SYSTEM_PROMPT = (
    "You design tasks for an agent in a text environment. Given a seed task and the environment's initial "
    "state, write new tasks that can be done in the same environment: some harder, some easier, some "
    "recombining its objects. Use only objects and places that the state mentions. Write each task on its "
    "own line as <task>...</task>."
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def vocabulary_of(task: Task, state: State | None) -> set[str]:
    """Content words an environment grounds: the seed instruction, the initial state and its actions."""
    texts = [task.instruction]
    if state is not None:
        texts.append(state.text)
        texts.extend(state.available_actions or ())
    return {word for text in texts for word in _words(text)}


def render_generation_prompt(request: TaskGenerationRequest) -> str:
    """The plain-text prompt asking for ``num_variations`` tasks."""
    lines = [f"[dg-curriculum v{GENERATOR_FORMAT_VERSION}]", "# Seed task", request.seed_task.instruction]
    if request.initial_state is not None:
        lines += ["# Initial state", request.initial_state.text]
        if request.initial_state.available_actions is not None:
            lines.append("Available actions: " + " | ".join(request.initial_state.available_actions))
    lines += [f"# Write {request.num_variations} new tasks", ""]
    return "\n".join(lines)


class LLMTaskGenerator:
    """A :class:`~dg_core.TaskGenerator` over any dg-expmodel generation backend.

    Args:
        backend: Generates the variations (plain or chat).
        sampling: Decoding settings (a temperature above 0 gives varied tasks).
        max_chars: Longest accepted instruction.
        min_grounded: Share of an instruction's content words that must come from the vocabulary.
        is_duplicate: Optional check of a candidate task against a pool (e.g. ``TaskPool.duplicate_of``).
    """

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        sampling: Sampling | None = None,
        max_chars: int = 200,
        min_grounded: float = 0.8,
        is_duplicate: Any = None,
    ) -> None:
        self.backend = backend
        self.sampling = sampling or Sampling(max_new_tokens=160, temperature=0.8, stop=())
        self.max_chars = max_chars
        self.min_grounded = min_grounded
        self.is_duplicate = is_duplicate
        self.rejects: Counter[str] = Counter()
        self.accepted = 0

    def _prompt(self, request: TaskGenerationRequest) -> Any:
        text = render_generation_prompt(request)
        if self.backend.chat:
            return [{"role": "system", "content": GENERATOR_SYSTEM_PROMPT}, {"role": "user", "content": text}]
        return text

    def generate(self, requests: Sequence[TaskGenerationRequest]) -> list[list[Task]]:
        """Valid variations for each request (possibly fewer than asked); rejects are counted."""
        completions = self.backend.complete([self._prompt(r) for r in requests], self.sampling)
        return [self._validate(r, c.text) for r, c in zip(requests, completions, strict=True)]

    def _validate(self, request: TaskGenerationRequest, text: str) -> list[Task]:
        candidates = [" ".join(match.split()) for match in _TASK.findall(text)]
        if not candidates:
            self.rejects["unparseable"] += 1
            return []
        seed = request.seed_task
        vocabulary = vocabulary_of(seed, request.initial_state)
        seen = {_key(seed.instruction)}
        accepted: list[Task] = []
        for candidate in candidates:
            reason = self._reject_reason(candidate, vocabulary, seen)
            variation = _child(seed, candidate) if reason is None else None
            if variation is not None and self.is_duplicate is not None and self.is_duplicate(variation) is not None:
                reason = "duplicate"
            if reason is not None or variation is None:
                self.rejects[reason or "duplicate"] += 1
                continue
            seen.add(_key(candidate))
            accepted.append(variation)
            if len(accepted) == request.num_variations:
                break
        self.accepted += len(accepted)
        return accepted

    def _reject_reason(self, candidate: str, vocabulary: set[str], seen: set[str]) -> str | None:
        if not candidate:
            return "empty"
        if len(candidate) > self.max_chars:
            return "too_long"
        content = [w for w in _words(candidate) if w not in STOPWORDS]
        if not content:
            return "empty"
        grounded = sum(w in vocabulary for w in content) / len(content)
        if grounded < self.min_grounded:
            return "out_of_vocabulary"
        if _key(candidate) in seen:
            return "duplicate"
        return None


def _key(text: str) -> str:
    return " ".join(_words(text))


def _child(parent: Task, instruction: str) -> Task:
    digest = hashlib.sha256(f"{parent.id}\n{_key(instruction)}".encode()).hexdigest()[:10]
    fields = parent.model_dump()
    fields.update(
        id=f"{parent.id}~g{parent.generation + 1}-{digest}",
        instruction=instruction,
        parent_id=parent.id,
        generation=parent.generation + 1,
        split="train",
        metadata={**parent.metadata, "generated": True},
    )
    return Task.model_validate(fields)
