"""The data every dg package exchanges: tasks, abstract states, actions, steps and trajectories.

All models are pydantic v2, frozen where sharing them between episodes must be safe, and serialise
to plain JSON. A trajectory carries ``schema_version`` so files written today stay readable, and
files from a newer dg are refused with a clear message instead of being misread.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
"""Version of the trajectory schema this dg-core writes."""

READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
"""Versions of the trajectory schema this dg-core can read."""

JSONValue = Any
"""A value that survives a JSON round trip (checked where it is stored)."""

Split = Literal["train", "validation", "test"]


class Source(StrEnum):
    """Where a transition came from."""

    REAL = "real"
    """Produced by a real environment."""
    SYNTHETIC = "synthetic"
    """Predicted by an experience model."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Task(_Model):
    """One thing to do in one environment, with the lineage the curriculum needs."""

    id: str = Field(min_length=1)
    """Unique id of the task within its environment."""
    env_id: str = Field(min_length=1)
    """Registry name of the environment that runs the task (``"textworld"``, ``"alfworld"``...)."""
    instruction: str
    """What the agent is asked to do, in natural language."""
    seed: int | None = None
    """Seed that, with ``config``, fixes the task's world where the environment generates one."""
    config: dict[str, JSONValue] = Field(default_factory=dict)
    """Environment-specific settings that define the task (game file, difficulty knobs...)."""
    split: Split | None = None
    """Data split the task belongs to, if any."""
    parent_id: str | None = None
    """Id of the task this one was generated from (curriculum lineage); ``None`` for seed tasks."""
    generation: int = Field(default=0, ge=0)
    """0 for tasks from the real environment, n for the n-th generation of variations."""
    metadata: dict[str, JSONValue] = Field(default_factory=dict)
    """Free-form annotations (task type, difficulty, provenance)."""

    @model_validator(mode="after")
    def _lineage_is_consistent(self) -> Task:
        if self.generation > 0 and self.parent_id is None:
            raise ValueError("a generated task (generation > 0) needs a parent_id")
        if self.parent_id is not None and self.generation == 0:
            raise ValueError("a task with a parent_id must have generation >= 1")
        return self


class State(_Model):
    """The abstract state an agent (and the experience model) sees: compact text plus its affordances."""

    text: str
    """Token-efficient description of what the agent observes; keeps every fact needed to act."""
    available_actions: tuple[str, ...] | None = None
    """The finite set of valid actions where the environment has one, else ``None`` (free text)."""
    irreversible_actions: tuple[str, ...] = ()
    """Available actions that cannot be undone (purchase, delete, submit)."""
    info: dict[str, JSONValue] = Field(default_factory=dict)
    """Small structured facts (room name, url, score so far); not shown to the policy by default."""

    @field_validator("available_actions")
    @classmethod
    def _actions_are_unique(cls, actions: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if actions is None:
            return None
        seen: set[str] = set()
        for action in actions:
            if not action.strip():
                raise ValueError("available actions must be non-empty strings")
            if action in seen:
                raise ValueError(f"duplicate available action {action!r}")
            seen.add(action)
        return actions

    @model_validator(mode="after")
    def _irreversible_are_available(self) -> State:
        if self.available_actions is not None:
            unknown = set(self.irreversible_actions) - set(self.available_actions)
            if unknown:
                raise ValueError(f"irreversible actions not among available actions: {sorted(unknown)}")
        return self

    def allows(self, action: str) -> bool:
        """Whether ``action`` is valid here (always true when the action space is free text)."""
        return self.available_actions is None or action in self.available_actions


class Action(_Model):
    """What the agent does: the command sent to the environment, and the thinking that led to it."""

    text: str
    """The command exactly as the environment receives it."""
    reasoning: str | None = None
    """The policy's own reasoning before acting, if it produced any."""
    raw: str | None = None
    """The unparsed policy output the action was extracted from, if different from ``text``."""

    @classmethod
    def coerce(cls, action: Action | str) -> Action:
        """Accept a plain string wherever an action is expected."""
        if isinstance(action, Action):
            return action
        if isinstance(action, str):
            return cls(text=action)
        raise TypeError(f"expected an Action or a str, got {type(action).__name__}")


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class Step(_Model):
    """One transition (s, a, s', r, done) with where it came from and how long it took."""

    state: State
    """State the action was taken in."""
    action: Action
    """The action taken."""
    next_state: State
    """State that followed."""
    reward: float
    """Reward for this transition (outcome reward by default: 1 on success at the final step)."""
    done: bool
    """Whether the episode ended with this transition (success, failure or step limit)."""
    truncated: bool = False
    """Whether the episode was cut by a step limit rather than ended by the environment."""
    reasoning: str | None = None
    """The experience model's reasoning for a synthetic step, or an annotator's for a real one."""
    source: Source = Source.REAL
    """Real environment or experience model."""
    step_index: int = Field(ge=0)
    """0-based position of the transition in its episode."""
    duration_s: float = Field(default=0.0, ge=0.0)
    """Wall-clock seconds the environment took to produce ``next_state``."""
    info: dict[str, JSONValue] = Field(default_factory=dict)
    """Environment extras (intermediate reward, invalid-action flag, score)."""

    @field_validator("reward")
    @classmethod
    def _reward_finite(cls, reward: float) -> float:
        return _finite(reward, "reward")

    @model_validator(mode="after")
    def _truncation_ends_episode(self) -> Step:
        if self.truncated and not self.done:
            raise ValueError("a truncated step must also be done")
        return self


class Trajectory(_Model):
    """One episode of one task: its steps, outcome and who played it."""

    schema_version: int = SCHEMA_VERSION
    """Version of this schema the record was written with."""
    id: str = Field(min_length=1)
    """Unique id of the episode."""
    task: Task
    """The task that was played."""
    steps: tuple[Step, ...] = ()
    """Transitions in order; ``steps[i].step_index == i``."""
    success: bool
    """Whether the task was accomplished."""
    return_: float = Field(alias="return")
    """Sum of the step rewards (serialised as ``"return"``)."""
    policy_id: str | None = None
    """Which policy acted (``"expert"``, ``"random"``, a checkpoint path)."""
    source: Source = Source.REAL
    """Real environment or experience model."""
    metadata: dict[str, JSONValue] = Field(default_factory=dict)
    """Free-form annotations (seed, collection run, wall time)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, populate_by_name=True)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"unsupported schema_version {version}; this dg-core reads {list(READABLE_SCHEMA_VERSIONS)}"
            )
        return version

    @field_validator("return_")
    @classmethod
    def _return_finite(cls, value: float) -> float:
        return _finite(value, "return")

    @model_validator(mode="after")
    def _steps_are_ordered(self) -> Trajectory:
        for position, step in enumerate(self.steps):
            if step.step_index != position:
                raise ValueError(f"steps[{position}] has step_index {step.step_index}, expected {position}")
        for step in self.steps[:-1]:
            if step.done:
                raise ValueError(f"step {step.step_index} is done but is not the last step")
        return self

    @property
    def num_steps(self) -> int:
        """Number of transitions."""
        return len(self.steps)

    @property
    def finished(self) -> bool:
        """Whether the last step ended the episode."""
        return bool(self.steps) and self.steps[-1].done
