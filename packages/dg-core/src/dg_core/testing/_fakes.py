"""Deterministic, dependency-free stand-ins for tests: a small text world, and scripted models.

``ScriptedEnv`` is a real (if small) environment: a corridor of rooms, one of which holds the item
the task asks for. Taking it wins (reward 1); taking anything else loses. Everything is fixed by the
task and the seed, and ``expert_action`` knows the shortest plan, so it serves conformance tests,
collection tests and learning tests that must not depend on TextWorld.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from dg_core._env import Env
from dg_core._episode import StepResult
from dg_core._errors import ConfigError
from dg_core._protocols import (
    ExperiencePrediction,
    ExperienceQuery,
    PolicyRequest,
    TaskGenerationRequest,
)
from dg_core._types import Action, State, Task

ITEMS = (
    "gold coin",
    "red key",
    "blue gem",
    "old map",
    "brass lamp",
    "silver ring",
    "green apple",
    "wooden box",
)


def scripted_task(
    task_id: str,
    *,
    rooms: int = 3,
    goal_item: str = "gold coin",
    seed: int | None = None,
    split: str | None = None,
) -> Task:
    """A :class:`ScriptedEnv` task: find ``goal_item`` somewhere along ``rooms`` rooms and take it."""
    return Task(
        id=task_id,
        env_id=ScriptedEnv.env_id,
        instruction=f"Find the {goal_item} and take it.",
        seed=seed,
        config={"rooms": rooms, "goal_item": goal_item},
        split=split,  # type: ignore[arg-type]
    )


class ScriptedEnv(Env):
    """A corridor of rooms holding items; the task names the item to take.

    Task ``config``: ``rooms`` (2-20) and ``goal_item`` (one of :data:`ITEMS`). The seed (the reset
    seed, else the task's, else 0) places the goal and one distractor per room and orders the
    available actions.

    Args:
        max_steps: Step limit per episode.
    """

    env_id = "scripted"

    def __init__(self, *, max_steps: int | None = 20) -> None:
        super().__init__(max_steps=max_steps)
        self._rooms: list[list[str]] = []
        self._position = 0
        self._goal = ""
        self._rng = random.Random(0)
        self.resets = 0

    def _reset(self, task: Task, seed: int | None) -> State:
        rooms = task.config.get("rooms", 3)
        goal = task.config.get("goal_item", "gold coin")
        if not isinstance(rooms, int) or not 2 <= rooms <= 20:
            raise ConfigError(f"task {task.id!r}: config['rooms'] must be an integer in 2..20, got {rooms!r}")
        if goal not in ITEMS:
            raise ConfigError(f"task {task.id!r}: config['goal_item'] must be one of {list(ITEMS)}, got {goal!r}")
        effective = seed if seed is not None else (task.seed if task.seed is not None else 0)
        self._rng = random.Random(effective)
        others = [item for item in ITEMS if item != goal]
        self._rooms = [self._rng.sample(others, 1) for _ in range(rooms)]
        self._rooms[self._rng.randrange(1, rooms)].append(goal)
        for room in self._rooms:
            self._rng.shuffle(room)
        self._goal = goal
        self._position = 0
        self.resets += 1
        return self._observe("You wake up at the west end of a corridor.")

    def _actions(self) -> list[str]:
        actions = [f"take {item}" for item in self._rooms[self._position]]
        if self._position < len(self._rooms) - 1:
            actions.append("go east")
        if self._position > 0:
            actions.append("go west")
        actions.append("look")
        self._rng.shuffle(actions)
        return actions

    def _observe(self, feedback: str) -> State:
        items = self._rooms[self._position]
        text = (
            f"{feedback} Room {self._position + 1} of {len(self._rooms)}. "
            f"You see: {', '.join('a ' + item for item in items) if items else 'nothing'}."
        )
        return State(text=text, available_actions=tuple(self._actions()), info={"room": self._position + 1})

    def _step(self, action: Action) -> StepResult:
        command = action.text
        if command == "go east":
            self._position += 1
            return StepResult(state=self._observe("You walk east."))
        if command == "go west":
            self._position -= 1
            return StepResult(state=self._observe("You walk west."))
        if command == "look":
            return StepResult(state=self._observe("You look around."))
        item = command.removeprefix("take ")
        if item == self._goal:
            done_state = State(text=f"You take the {item}. You win!", available_actions=(), info={"won": True})
            return StepResult(state=done_state, reward=1.0, done=True, success=True)
        done_state = State(text=f"You take the {item}. It was the wrong item. You lose.", available_actions=())
        return StepResult(state=done_state, reward=0.0, done=True, success=False, info={"lost": True})

    def expert_action(self) -> str:
        """The next action of a shortest winning plan from the current state."""
        if self._goal in self._rooms[self._position]:
            return f"take {self._goal}"
        goal_room = next(i for i, room in enumerate(self._rooms) if self._goal in room)
        return "go east" if goal_room > self._position else "go west"


class ScriptedPolicy:
    """Acts from a list of commands (cycled per episode step) or from a function of the request.

    Args:
        script: Commands by step index, or a callable mapping a request to a command.
        policy_id: Name recorded in trajectories.
    """

    def __init__(self, script: Sequence[str] | Callable[[PolicyRequest], str], *, policy_id: str = "scripted"):
        self._script = script
        self._policy_id = policy_id
        self.requests: list[PolicyRequest] = []

    @property
    def policy_id(self) -> str:
        """Name recorded in trajectories."""
        return self._policy_id

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """One scripted action per request."""
        actions = []
        for request in requests:
            self.requests.append(request)
            if callable(self._script):
                text = self._script(request)
            else:
                if not self._script:
                    raise ConfigError("ScriptedPolicy needs at least one command")
                text = self._script[len(request.history) % len(self._script)]
            actions.append(Action(text=text))
        return actions


FAILURE_TEXT = "Nothing happens."


class ScriptedExperienceModel:
    """An experience model with no model: a function of the query, or nearest-neighbour copying.

    With ``respond`` it returns ``respond(query)`` for each query (like pydantic-ai's
    ``FunctionModel``). Without, it answers from the retrieved real transitions: if one has the same
    state text and action, its outcome is copied; otherwise the failure state (same state, reward 0)
    is returned, as the paper prescribes for actions it cannot ground.

    Args:
        respond: Optional function from query to prediction.
    """

    def __init__(self, respond: Callable[[ExperienceQuery], ExperiencePrediction] | None = None) -> None:
        self._respond = respond
        self.queries: list[ExperienceQuery] = []

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        """One prediction per query."""
        self.queries.extend(queries)
        return [self._respond(q) if self._respond else self._copy(q) for q in queries]

    @staticmethod
    def _copy(query: ExperienceQuery) -> ExperiencePrediction:
        for step in query.retrieved:
            if step.state.text == query.state.text and step.action.text == query.action.text:
                return ExperiencePrediction(
                    reasoning=f"A real transition from this state with action {query.action.text!r} is known.",
                    next_state=step.next_state,
                    reward=step.reward,
                    done=step.done,
                    success=step.info.get("success") if isinstance(step.info.get("success"), bool) else None,
                )
        failure = State(
            text=f"{FAILURE_TEXT} {query.state.text}",
            available_actions=query.state.available_actions,
            irreversible_actions=query.state.irreversible_actions,
        )
        return ExperiencePrediction(
            reasoning="No retrieved transition grounds this action; predicting no effect.",
            next_state=failure,
            reward=0.0,
            done=False,
        )


class ScriptedTaskGenerator:
    """Varies :class:`ScriptedEnv` tasks: longer or shorter corridors and other goal items."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._counter = 0

    def generate(self, requests: Sequence[TaskGenerationRequest]) -> list[list[Task]]:
        """``num_variations`` children of each seed task, with lineage set."""
        out: list[list[Task]] = []
        for request in requests:
            parent = request.seed_task
            rooms = int(parent.config.get("rooms", 3))
            variations = []
            for _ in range(request.num_variations):
                self._counter += 1
                new_rooms = max(2, min(20, rooms + self._rng.choice((-1, 1, 2))))
                goal = self._rng.choice(ITEMS)
                child = scripted_task(f"{parent.id}.v{self._counter}", rooms=new_rooms, goal_item=goal)
                fields = child.model_dump()
                fields.update(parent_id=parent.id, generation=parent.generation + 1, seed=parent.seed)
                variations.append(Task.model_validate(fields))
            out.append(variations)
        return out
