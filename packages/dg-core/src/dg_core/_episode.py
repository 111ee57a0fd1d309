"""Book-keeping of one episode, shared by :class:`Env` and :class:`BatchedEnv`."""

from __future__ import annotations

import uuid

from pydantic import Field, field_validator

from dg_core._errors import ResetNeededError
from dg_core._types import Action, JSONValue, Source, State, Step, Task, Trajectory, _finite, _Model


class StepResult(_Model):
    """What an environment answers to one action."""

    state: State
    """The next abstract state."""
    reward: float = 0.0
    """Reward of the transition."""
    done: bool = False
    """Whether the episode is over."""
    truncated: bool = False
    """Whether it is over because of a step limit (then ``done`` is true as well)."""
    success: bool | None = None
    """Whether the task was accomplished; left ``None`` it defaults to ``done and reward > 0``."""
    reasoning: str | None = None
    """Why the environment answered so (an experience model's reasoning); recorded on the step."""
    info: dict[str, JSONValue] = Field(default_factory=dict)
    """Environment extras recorded with the step."""

    @field_validator("reward")
    @classmethod
    def _reward_finite(cls, reward: float) -> float:
        return _finite(reward, "reward")


INVALID_ACTION_FEEDBACK = "That action is not available here. Nothing happens."


class EpisodeRecorder:
    """Validates the use of one episode and records its steps into a :class:`Trajectory`."""

    def __init__(
        self,
        task: Task,
        seed: int | None,
        state: State,
        *,
        source: Source,
        max_steps: int | None,
    ) -> None:
        self.task = task
        self.seed = seed
        self.state = state
        self.source = source
        self.max_steps = max_steps
        self.steps: list[Step] = []
        self.done = False
        self.success = False
        self.invalid_actions = 0
        self.id = f"{task.id}-{uuid.uuid4().hex[:12]}"

    def check_can_step(self) -> None:
        if self.done:
            raise ResetNeededError(f"episode {self.id} of task {self.task.id!r} is over; call reset() to start another")

    def invalid_result(self, action: str) -> StepResult:
        """The answer to an action outside the available set: unchanged state, reward 0."""
        return StepResult(
            state=self.state,
            reward=0.0,
            done=False,
            info={"invalid_action": True, "feedback": INVALID_ACTION_FEEDBACK, "attempted": action},
        )

    def record(self, action: Action, result: StepResult, *, duration_s: float) -> StepResult:
        """Apply the step limit to ``result``, append the step, and return what the caller sees."""
        info = dict(result.info)
        invalid = bool(info.get("invalid_action", False))
        if invalid:
            self.invalid_actions += 1
        done, truncated = result.done, result.truncated
        if self.max_steps is not None and len(self.steps) + 1 >= self.max_steps and not done:
            done, truncated = True, True
            info["truncated"] = True
        if done:
            self.success = result.success if result.success is not None else (result.reward > 0 and not truncated)
        step = Step(
            state=self.state,
            action=action,
            next_state=result.state,
            reward=result.reward,
            done=done,
            truncated=truncated,
            source=self.source,
            reasoning=result.reasoning,
            step_index=len(self.steps),
            duration_s=max(0.0, duration_s),
            info=info,
        )
        self.steps.append(step)
        self.state = result.state
        self.done = done
        return StepResult(
            state=step.next_state,
            reward=step.reward,
            done=done,
            truncated=truncated,
            success=self.success if done else None,
            reasoning=result.reasoning,
            info=info,
        )

    def trajectory(self, *, policy_id: str | None = None, metadata: dict[str, JSONValue] | None = None) -> Trajectory:
        """The episode so far as a :class:`Trajectory`."""
        meta: dict[str, JSONValue] = {"seed": self.seed, "invalid_actions": self.invalid_actions}
        if self.max_steps is not None:
            meta["max_steps"] = self.max_steps
        meta.update(metadata or {})
        fields: dict[str, JSONValue] = {
            "id": self.id,
            "task": self.task,
            "steps": tuple(self.steps),
            "success": self.success if self.done else False,
            "return": sum(step.reward for step in self.steps),
            "policy_id": policy_id,
            "source": self.source,
            "metadata": meta,
        }
        return Trajectory(**fields)
