"""What the buffer stores and returns: transitions, retrieval queries and hits, content hashes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from dg_core import Action, Source, State, Step, Task

__all__ = ["RetrievalQuery", "Retrieved", "StoredTransition", "content_hash", "key_text"]


@dataclass(frozen=True, slots=True)
class StoredTransition:
    """One transition as stored: the step and the task context it was recorded in."""

    key: int
    """Integer key shared by the storage row and the vector index."""
    env_id: str
    """Environment the transition comes from."""
    task_id: str
    """Id of the task that was being played."""
    split: str | None
    """Data split of that task, if any."""
    source: Source
    """Real environment or experience model."""
    trajectory_id: str | None
    """Episode the step belongs to, when it was added from a trajectory."""
    step: Step
    """The transition itself."""


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A stored transition returned by similarity search, with its cosine similarity to the query."""

    transition: StoredTransition
    """The stored transition."""
    score: float
    """Cosine similarity between the query key and the transition key (1.0 is identical)."""

    @property
    def key(self) -> int:
        """The transition's key."""
        return self.transition.key

    @property
    def step(self) -> Step:
        """The transition's step."""
        return self.transition.step


@dataclass(frozen=True, slots=True)
class RetrievalQuery:
    """A (task, state, action) key to look up; strings stand for the instruction, state text or command."""

    task: Task | str
    """The task being played, or its instruction."""
    state: State | str
    """The current abstract state, or its text."""
    action: Action | str
    """The action about to be taken, or its text."""


def key_text(task: Task | str, state: State | str, action: Action | str) -> str:
    """The text that is embedded for a (task, state, action) key; stored steps and queries share it.

    Args:
        task: The task or its instruction.
        state: The state the action is taken in, or its text.
        action: The action, or its text.
    """
    instruction = task.instruction if isinstance(task, Task) else task
    state_text = state.text if isinstance(state, State) else state
    action_text = action.text if isinstance(action, Action) else action
    return f"Task: {instruction}\nState: {state_text}\nAction: {action_text}"


def content_hash(task: Task, step: Step) -> bytes:
    """A 16-byte digest identifying a transition's content, for exact-duplicate detection.

    Two transitions are duplicates when they come from the same environment and task (id and
    instruction) and their steps agree on everything except ``duration_s``, which is timing noise.
    ``source`` is part of the content: a synthetic copy of a real step is not a duplicate of it.
    """
    payload = {
        "env_id": task.env_id,
        "task_id": task.id,
        "instruction": task.instruction,
        "step": step.model_dump(mode="json", exclude={"duration_s"}),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()
