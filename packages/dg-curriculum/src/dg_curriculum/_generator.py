"""Task variations written by the experience model's own backend, parsed and validated.

The model sees a seed task and its initial state and writes new tasks (harder, easier, recombined). Two
prompts: ``"list"`` (the default) shows worked examples built from the seed's own available actions as the
start of a numbered list and asks the model to continue it (a plain-text backend gets the next item number
as a prefill); ``"tags"`` is the zero-shot prompt asking for ``<task>...</task>`` lines. Every candidate is
validated — non-empty, not cut off, not too long, grounded in what the environment offers (the words of the
seed task, its initial state and its available actions), not a duplicate (of the seed, a worked example,
another candidate or the pool) — and rejects are counted by reason.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, Literal

from dg_core import ConfigError, State, Task, TaskGenerationRequest
from dg_expmodel import GenerationBackend, Prompt, Sampling

GENERATOR_FORMAT_VERSION = 1

REJECT_REASONS = ("unparseable", "empty", "truncated", "too_long", "out_of_vocabulary", "duplicate")
"""Why a candidate task was rejected."""

PromptStyle = Literal["list", "tags"]
"""``"list"``: continue a numbered list of worked examples; ``"tags"``: zero-shot, one ``<task>`` per line."""

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
# A numbered or bulleted line ("3. Go east.", "## 2) ...", "- ..."); markdown headings' hashes are allowed.
_LIST_ITEM = re.compile(r"^\s*(?:#+\s*)?(?:\d{1,2}\s*[.)]|[-*\u2022])\s+(.*\S)\s*$")
_MARKUP = re.compile(r"</?task>|\*\*")
# Commands that look around without changing the world: never the subject of a worked example, only the second
# step of a chained one (in this order of preference).
_LOOK_AROUND = ("look", "inventory", "wait", "help", "score")

GENERATOR_SYSTEM_PROMPT = (
    "You design tasks for an agent in a text environment. Given a seed task and the environment's initial "
    "state, write new tasks that can be done in the same environment: some harder, some easier, some "
    "recombining its objects. Use only objects and places that the state mentions. Write each task on its "
    "own line as <task>...</task>."
)
"""System message of the zero-shot ``"tags"`` prompt (chat backends)."""

GENERATOR_LIST_SYSTEM_PROMPT = (
    "You design tasks for an agent in a text game. Each task is one short imperative sentence that uses only the "
    "objects, places and directions named in the game text."
)
"""System message of the few-shot ``"list"`` prompt (chat backends)."""


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def vocabulary_of(task: Task, state: State | None) -> set[str]:
    """Content words an environment grounds: the seed instruction, the initial state and its actions."""
    texts = [task.instruction]
    if state is not None:
        texts.append(state.text)
        texts.extend(state.available_actions or ())
    return {word for text in texts for word in _words(text)}


def _seed_lines(request: TaskGenerationRequest) -> list[str]:
    lines = ["# Seed task", request.seed_task.instruction]
    if request.initial_state is not None:
        lines += ["# Initial state", request.initial_state.text]
        if request.initial_state.available_actions is not None:
            lines.append("Available actions: " + " | ".join(request.initial_state.available_actions))
    return lines


def render_generation_prompt(request: TaskGenerationRequest) -> str:
    """The zero-shot plain-text prompt (``"tags"``) asking for ``num_variations`` tasks."""
    lines = [f"[dg-curriculum v{GENERATOR_FORMAT_VERSION}]", *_seed_lines(request)]
    lines += [f"# Write {request.num_variations} new tasks", ""]
    return "\n".join(lines)


def _sentence(command: str) -> str:
    return command[:1].upper() + command[1:] + "."


def worked_examples(request: TaskGenerationRequest, count: int = 2) -> list[str]:
    """Example tasks built from the seed's own initial state, shown to the model as the start of the list.

    The first ``count - 1`` world-changing available actions each make a one-step task ("Go south."); the last
    example chains the last such action with the first ("Put oil on sofa, then drop oil."), or with a
    look-around command (``look``, ``inventory``...) when there is only one. No world-changing available
    actions, no examples. A candidate that repeats an example is rejected as a ``duplicate``.
    """
    state = request.initial_state
    actions = [a.strip() for a in (state.available_actions or ()) if a.strip()] if state is not None else []
    acting = [a for a in actions if a.lower() not in _LOOK_AROUND]
    if count <= 0 or not acting:
        return []
    if count == 1:
        return [_sentence(acting[0])]
    examples = [_sentence(action) for action in acting[: count - 1]]
    looks = sorted((a for a in actions if a.lower() in _LOOK_AROUND), key=lambda a: _LOOK_AROUND.index(a.lower()))
    if len(acting) > 1:
        examples.append(_sentence(f"{acting[-1]}, then {acting[0]}"))
    elif looks:
        examples.append(_sentence(f"{acting[0]}, then {looks[0]}"))
    return list(dict.fromkeys(examples))


def _numbered(items: Sequence[str]) -> str:
    return "\n".join(f"{number}. {item}" for number, item in enumerate(items, start=1))


def render_list_prompt(request: TaskGenerationRequest, examples: Sequence[str]) -> str:
    """The few-shot plain-text prompt (``"list"``): the worked examples, then the next item's number (a prefill)."""
    lines = [f"[dg-curriculum v{GENERATOR_FORMAT_VERSION}]", *_seed_lines(request)]
    lines.append("# New tasks (one short task per line, using only words above)")
    if examples:
        lines.append(_numbered(examples))
    lines.append(f"{len(examples) + 1}.")
    return "\n".join(lines)


def render_list_messages(request: TaskGenerationRequest, examples: Sequence[str]) -> list[dict[str, str]]:
    """The few-shot chat prompt (``"list"``): the worked examples as an earlier answer, then "continue the list"."""
    seed = "\n".join(_seed_lines(request))
    messages = [{"role": "system", "content": GENERATOR_LIST_SYSTEM_PROMPT}]
    if not examples:
        ask = f"Write {request.num_variations} tasks for this game as a numbered list, one per line."
        return [*messages, {"role": "user", "content": f"{seed}\n\n{ask}"}]
    return [
        *messages,
        {"role": "user", "content": f"{seed}\n\nWrite {len(examples)} tasks for this game as a numbered list."},
        {"role": "assistant", "content": _numbered(examples)},
        {
            "role": "user",
            "content": f"Continue the list with {request.num_variations} new tasks, one per line. "
            "Use only words from the game text.",
        },
    ]


def _clean(candidate: str) -> str:
    return " ".join(_MARKUP.sub("", candidate).strip().strip("\"'").split())


def parse_candidates(text: str, *, line_fallback: bool = True) -> list[str]:
    """The candidate instructions of a completion, in order.

    Every ``<task>...</task>`` if there is one; otherwise, with ``line_fallback``, the items of the first
    numbered or bulleted list (it ends at the first other non-blank line: what follows is commentary or a new
    section). Tags and markdown emphasis inside an item are dropped, whitespace is collapsed.
    """
    return _parse(text, line_fallback)[0]


def _parse(text: str, line_fallback: bool) -> tuple[list[str], bool]:
    """The candidates, and whether the last one runs to the very end of the text (it may be cut off)."""
    tags = _TASK.findall(text)
    if tags or not line_fallback:
        return [" ".join(tag.split()) for tag in tags], False
    items: list[str] = []
    open_end = False
    lines = text.split("\n")
    for index, line in enumerate(lines):
        match = _LIST_ITEM.match(line)
        if match:
            items.append(_clean(match.group(1)))
            open_end = index == len(lines) - 1
        elif items and line.strip():
            break
    return items, open_end


class LLMTaskGenerator:
    """A :class:`~dg_core.TaskGenerator` over any dg-expmodel generation backend.

    Args:
        backend: Generates the variations (plain or chat).
        prompt: ``"list"`` (few-shot: continue a numbered list that starts with worked examples built from the
            seed's available actions; a plain-text backend gets the next item number as a prefill) or ``"tags"``
            (zero-shot, one ``<task>...</task>`` per task).
        num_examples: Worked examples in the ``"list"`` prompt (see :func:`worked_examples`); 0 for none.
        line_fallback: Read numbered or bulleted lines as candidates when a completion has no task tags.
        sampling: Decoding settings; defaults to 96 new tokens at temperature 0.4 (top-p 0.95) for ``"list"``
            (plain backends also stop at a blank line or a heading), 160 tokens at 0.8 for ``"tags"``.
        max_chars: Longest accepted instruction.
        min_grounded: Share of an instruction's content words that must come from the vocabulary.
        is_duplicate: Optional check of a candidate task against a pool (e.g. ``TaskPool.duplicate_of``).
    """

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        prompt: PromptStyle = "list",
        num_examples: int = 2,
        line_fallback: bool = True,
        sampling: Sampling | None = None,
        max_chars: int = 200,
        min_grounded: float = 0.8,
        is_duplicate: Any = None,
    ) -> None:
        if prompt not in ("list", "tags"):
            raise ConfigError(f"prompt must be 'list' or 'tags', got {prompt!r}")
        if num_examples < 0:
            raise ConfigError(f"num_examples must be >= 0, got {num_examples}")
        self.backend = backend
        self.prompt = prompt
        self.num_examples = num_examples if prompt == "list" else 0
        self.line_fallback = line_fallback
        if sampling is None:
            if prompt == "tags":
                sampling = Sampling(max_new_tokens=160, temperature=0.8, stop=())
            else:
                stop = () if backend.chat else ("\n\n", "\n#")
                sampling = Sampling(max_new_tokens=96, temperature=0.4, top_p=0.95, stop=stop)
        self.sampling = sampling
        self.max_chars = max_chars
        self.min_grounded = min_grounded
        self.is_duplicate = is_duplicate
        self.rejects: Counter[str] = Counter()
        """Rejected candidates by reason (:data:`REJECT_REASONS`)."""
        self.accepted = 0
        """Candidates accepted as variations."""
        self.candidates = 0
        """Candidates examined: ``accepted + sum(rejects.values())`` (an unparseable completion counts as one).
        Candidates after a request's ``num_variations`` were accepted are not examined."""
        self.recent_rejects: deque[tuple[str, str]] = deque(maxlen=64)
        """The latest rejected candidates as ``(text, reason)`` (an unparseable completion's text, shortened)."""

    def prompt_for(self, request: TaskGenerationRequest) -> Prompt:
        """The prompt sent for ``request`` (chat messages or plain text, as the backend wants)."""
        if self.prompt == "tags":
            text = render_generation_prompt(request)
            if self.backend.chat:
                return [{"role": "system", "content": GENERATOR_SYSTEM_PROMPT}, {"role": "user", "content": text}]
            return text
        examples = worked_examples(request, self.num_examples)
        if self.backend.chat:
            return render_list_messages(request, examples)
        return render_list_prompt(request, examples)

    def _prefill(self, request: TaskGenerationRequest) -> str:
        if self.prompt == "tags" or self.backend.chat:
            return ""
        return f"{len(worked_examples(request, self.num_examples)) + 1}."

    def generate(self, requests: Sequence[TaskGenerationRequest]) -> list[list[Task]]:
        """Valid variations for each request (possibly fewer than asked); rejects are counted."""
        completions = self.backend.complete([self.prompt_for(r) for r in requests], self.sampling)
        return [self.validate(r, c.text, finished=c.finished) for r, c in zip(requests, completions, strict=True)]

    def validate(self, request: TaskGenerationRequest, text: str, *, finished: bool = True) -> list[Task]:
        """The accepted variations in one completion ``text`` for ``request``; rejects are counted.

        Args:
            request: What was asked.
            text: The completion (without the prefill, which is added back here).
            finished: False when generation hit its token limit: a list item running to the end of the
                text is then ``truncated``.
        """
        prefill = self._prefill(request)
        if prefill:
            text = prefill + (text if text[:1].isspace() else " " + text)
        candidates, open_end = _parse(text, self.line_fallback)
        if not candidates:
            self._reject("unparseable", " ".join(text.split())[:200])
            return []
        seed = request.seed_task
        vocabulary = vocabulary_of(seed, request.initial_state)
        seen = {_key(seed.instruction)} | {_key(e) for e in worked_examples(request, self.num_examples)}
        accepted: list[Task] = []
        for index, candidate in enumerate(candidates):
            cut = open_end and not finished and index == len(candidates) - 1
            reason = "truncated" if cut and candidate else self._reject_reason(candidate, vocabulary, seen)
            variation = _child(seed, candidate) if reason is None else None
            if variation is not None and self.is_duplicate is not None and self.is_duplicate(variation) is not None:
                reason = "duplicate"
            if reason is not None or variation is None:
                self._reject(reason or "duplicate", candidate)
                continue
            self.candidates += 1
            seen.add(_key(candidate))
            accepted.append(variation)
            if len(accepted) == request.num_variations:
                break
        self.accepted += len(accepted)
        return accepted

    def _reject(self, reason: str, text: str) -> None:
        self.candidates += 1
        self.rejects[reason] += 1
        self.recent_rejects.append((text, reason))

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
