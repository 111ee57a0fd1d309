"""A separate reward / done head: the outcome of a step voted by its nearest real transitions.

A language-model experience model writes the reward and the done flag as a few tokens at the end of a long
response; the positive class (the step that wins the episode) is rare, so a small model learns to never write it
and the synthetic environment never pays a win (issue 17's levers benchmark measures success recall 0). The head
answers the outcome question on its own, from real transitions only:

- every real transition is keyed by two embeddings, of its action and of its task instruction with its state,
  concatenated (the action's scaled by ``action_weight``; both unit rows, so the key's cosine is a weighted mean of
  the two similarities): whether taking an item wins depends on what the task asks for;
- a query's outcome is the ``(reward, done)`` pair whose neighbours, among its ``k`` most similar transitions,
  have the largest summed similarity (ties: the first found in similarity order). An identical state and action
  has similarity 1, so a transition seen before gets its own outcome back, as from :class:`NearestExperienceModel`.

:class:`OutcomeHeadModel` wraps any experience model: its next states (and reasoning, parse status, counters)
stay the wrapped model's, its rewards and done flags are the head's. Episodes that end on the head's word carry
``info["outcome_head"]`` with the vote's support.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dg_core import ConfigError, ExperienceModel, ExperiencePrediction, ExperienceQuery, Step, Trajectory
from dg_expmodel._wrapper import WrappedModel

__all__ = ["OutcomeHead", "OutcomeHeadModel"]


class OutcomeHead:
    """k-nearest-neighbour reward / done classifier over real transitions (see the module docstring).

    Args:
        steps: The real transitions it answers from (at least one).
        instructions: The task instruction of each step (``from_trajectories`` passes them); none: states only.
        encoder: Any dg-replay encoder (``encode(texts) -> (n, dim)`` unit rows), e.g. ``HashingEncoder(384)``.
        k: Neighbours that vote (default 1: the nearest transition's outcome).
        action_weight: Weight of the action's similarity against the instruction-and-state's (default 0.5).
            The defaults found every win and no false one on held-out scripted games (the tests); more neighbours
            or a heavier action let games with other goals vote.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        encoder: Any,
        *,
        instructions: Sequence[str] | None = None,
        k: int = 1,
        action_weight: float = 0.5,
    ) -> None:
        if not steps:
            raise ConfigError("OutcomeHead: no real transitions to answer from")
        if k < 1:
            raise ConfigError(f"OutcomeHead: k must be >= 1, got {k}")
        if action_weight < 0:
            raise ConfigError(f"OutcomeHead: action_weight must be >= 0, got {action_weight}")
        self.encoder = encoder
        self.k = k
        self.action_weight = action_weight
        self.outcomes = [(float(step.reward), bool(step.done and not step.truncated)) for step in steps]
        if instructions is not None and len(instructions) != len(steps):
            raise ConfigError(f"OutcomeHead: {len(instructions)} instructions for {len(steps)} transitions")
        given = instructions or [""] * len(steps)
        self.keys = self._keys(
            [_situation(text, step.state.text) for text, step in zip(given, steps, strict=True)],
            [step.action.text for step in steps],
        )

    @classmethod
    def from_trajectories(cls, trajectories: Iterable[Trajectory], encoder: Any, **options: Any) -> OutcomeHead:
        """The head over every step of ``trajectories`` (real ones: the head is only as right as its data)."""
        trajectories = list(trajectories)
        steps = [step for trajectory in trajectories for step in trajectory.steps]
        instructions = [trajectory.task.instruction for trajectory in trajectories for _ in trajectory.steps]
        return cls(steps, encoder, instructions=instructions, **options)

    @classmethod
    def from_buffer(cls, buffer: Any, **options: Any) -> OutcomeHead:
        """The head over a dg-replay buffer's real transitions, encoded with the buffer's own encoder.

        Synthetic transitions are never read (a head that learned from the model's own outcomes would confirm
        them); each step's instruction is its stored task's.
        """
        steps: list[Step] = []
        instructions: list[str] = []
        tasks: dict[tuple[str, str], str] = {}
        for stored in buffer.transitions({"source": "real"}):
            where = (stored.env_id, stored.task_id)
            if where not in tasks:
                task = buffer.task(*where)
                tasks[where] = task.instruction if task is not None else ""
            steps.append(stored.step)
            instructions.append(tasks[where])
        if not steps:
            raise ConfigError("OutcomeHead: the replay buffer holds no real transitions to answer from")
        return cls(steps, buffer.encoder, instructions=instructions, **options)

    def _keys(self, states: Sequence[str], actions: Sequence[str]) -> NDArray[np.float64]:
        action = np.asarray(self.encoder.encode(list(actions)), dtype=np.float64) * self.action_weight
        state = np.asarray(self.encoder.encode(list(states)), dtype=np.float64)
        keys = np.concatenate([action, state], axis=1)
        norms = np.linalg.norm(keys, axis=1, keepdims=True)
        unit: NDArray[np.float64] = keys / np.maximum(norms, 1e-12)
        return unit

    def vote(self, queries: Sequence[ExperienceQuery]) -> list[tuple[float, bool, float]]:
        """``(reward, done, support)`` per query: the winning outcome and its share of the neighbours' similarity."""
        if not queries:
            return []
        keys = self._keys(
            [_situation(q.task.instruction, q.state.text) for q in queries], [q.action.text for q in queries]
        )
        similarity = keys @ self.keys.T
        k = min(self.k, similarity.shape[1])
        answers = []
        for row in similarity:
            nearest = np.argsort(-row, kind="stable")[:k]
            weights: dict[tuple[float, bool], float] = {}
            for index in nearest:
                outcome = self.outcomes[int(index)]
                weights[outcome] = weights.get(outcome, 0.0) + max(float(row[index]), 0.0)
            total = sum(weights.values())
            (reward, done), weight = max(weights.items(), key=lambda item: item[1])  # first maximum on ties
            answers.append((reward, done, weight / total if total > 0 else 0.0))
        return answers


def _situation(instruction: str, state: str) -> str:
    return f"{instruction}\n{state}" if instruction else state


class OutcomeHeadModel(WrappedModel):
    """An experience model whose rewards and done flags come from an :class:`OutcomeHead`.

    Everything else (next state, reasoning, parse status, ``stats``, the audit's ablations through
    ``with_options``) is the wrapped model's.
    """

    def __init__(self, model: ExperienceModel, head: OutcomeHead) -> None:
        super().__init__(model)
        self.head = head
        self.kind = f"{getattr(model, 'kind', type(model).__name__)}+outcome-head"

    def with_options(self, options: Any) -> OutcomeHeadModel:
        """The wrapped model under ``options`` (the audit's ablations), with the same head."""
        return OutcomeHeadModel(self.wrapped_with(options), self.head)

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        """The wrapped model's predictions with the head's reward and done."""
        predictions = self.model.predict(queries)
        answers = self.head.vote(queries)
        return [
            prediction.model_copy(
                update={
                    "reward": reward,
                    "done": done,
                    "success": None,  # read from reward and done, which are the head's now
                    "info": {**prediction.info, "outcome_head": round(support, 4)},
                }
            )
            for prediction, (reward, done, support) in zip(predictions, answers, strict=True)
        ]
