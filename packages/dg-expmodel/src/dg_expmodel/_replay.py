"""dg-replay's buffer as the synthetic environment's retriever and write-back target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dg_core import ExperienceQuery, Source, Step, Task
from dg_replay import ReplayBuffer, ReplayFilter, key_text


class ReplayRetriever:
    """Top-k similar transitions from a :class:`~dg_replay.ReplayBuffer` for experience-model queries.

    Args:
        buffer: The buffer to search.
        filters: Which transitions may ground a prediction; by default real ones only (synthetic transitions
            in the buffer do not ground other synthetic ones).
        exclude_self: Drop a hit that is the queried transition itself (same task, state and action) — for
            building training prompts from transitions that are in the buffer.
    """

    def __init__(
        self,
        buffer: ReplayBuffer,
        *,
        filters: ReplayFilter | Mapping[str, Any] | None = None,
        exclude_self: bool = False,
    ) -> None:
        self.buffer = buffer
        self.filters = filters if filters is not None else {"source": "real"}
        self.exclude_self = exclude_self

    def __call__(self, queries: Sequence[ExperienceQuery], k: int) -> list[list[Step]]:
        """The ``k`` best transitions for each query, most similar first."""
        if not queries or k < 1:
            return [[] for _ in queries]
        texts = [key_text(q.task, q.state, q.action) for q in queries]
        extra = 1 if self.exclude_self else 0
        hits = self.buffer.retrieve(texts, k + extra, self.filters)
        out = []
        for query, found in zip(queries, hits, strict=True):
            steps = [
                hit.step
                for hit in found
                if not (
                    self.exclude_self
                    and hit.transition.task_id == query.task.id
                    and hit.step.state.text == query.state.text
                    and hit.step.action.text == query.action.text
                )
            ]
            out.append(steps[:k])
        return out

    def for_step(self, task: Task, step: Step, k: int) -> list[Step]:
        """Retrieval for one real step (the ``retrieve`` hook of :func:`examples_from_trajectories`)."""
        query = ExperienceQuery(task=task, state=step.state, action=step.action)
        return self([query], k)[0]


class ReplayWriteBack:
    """Adds the synthetic environment's new transitions to a buffer (the paper's growing replay)."""

    def __init__(self, buffer: ReplayBuffer) -> None:
        self.buffer = buffer
        self.added = 0

    def __call__(self, task: Task, steps: Sequence[Step]) -> None:
        """Store ``steps`` of ``task`` as synthetic transitions."""
        if steps:
            result = self.buffer.add(steps, Source.SYNTHETIC, task=task)
            self.added += len(steps)
            del result
