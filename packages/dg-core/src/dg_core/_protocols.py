"""Protocols of the pluggable parts: policies, experience models and task generators.

They are structural (``typing.Protocol``): any object with the right methods qualifies, so the RL
loop trains a Hugging Face policy, a scripted one or a remote one alike. Every call takes a batch,
because batching is what makes model inference fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import Field

from dg_core._types import Action, JSONValue, State, Step, Task, _Model


class PolicyRequest(_Model):
    """What a policy sees when it must act."""

    task: Task
    """The task being played."""
    history: tuple[Step, ...] = ()
    """Earlier steps of the episode, oldest first."""
    state: State
    """The current abstract state."""


@runtime_checkable
class Policy(Protocol):
    """Chooses actions for a batch of episodes."""

    @property
    def policy_id(self) -> str:
        """Name recorded in the trajectories the policy plays (``"expert"``, a checkpoint path)."""
        ...

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """One action per request, in order."""
        ...


class ExperienceQuery(_Model):
    """One prediction request for the experience model (the inputs of the paper's Eq. 4)."""

    task: Task
    """The task being played."""
    history: tuple[Step, ...] = ()
    """The last H steps of the episode, oldest first."""
    state: State
    """The current abstract state."""
    action: Action
    """The agent's action."""
    retrieved: tuple[Step, ...] = ()
    """The top-k most similar real transitions from the replay buffer."""


class ExperiencePrediction(_Model):
    """What the experience model predicts for one query."""

    reasoning: str = ""
    """The model's reasoning trace."""
    next_state: State
    """The predicted next abstract state (with its available actions)."""
    reward: float = 0.0
    """The predicted reward."""
    done: bool = False
    """Whether the episode ends."""
    success: bool | None = None
    """Whether the task is accomplished (``None``: infer from reward when done)."""
    parse_ok: bool = True
    """False when the model's output could not be parsed and a failure state was substituted."""
    raw: str | None = None
    """The unparsed model output, for audits."""
    info: dict[str, JSONValue] = Field(default_factory=dict)
    """Backend extras (tokens generated, retries, latency)."""


@runtime_checkable
class ExperienceModel(Protocol):
    """Predicts next states and rewards in place of a real environment."""

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        """One prediction per query, in order; never raises on unparseable model output."""
        ...


class TaskGenerationRequest(_Model):
    """Ask for variations of one seed task."""

    seed_task: Task
    """The task to vary."""
    initial_state: State | None = None
    """Its initial abstract state, which grounds the variations in what the environment offers."""
    num_variations: int = Field(default=1, ge=1)
    """How many variations to write."""


@runtime_checkable
class TaskGenerator(Protocol):
    """Writes task variations for the curriculum."""

    def generate(self, requests: Sequence[TaskGenerationRequest]) -> list[list[Task]]:
        """For each request, the valid variations produced (possibly fewer than asked)."""
        ...
