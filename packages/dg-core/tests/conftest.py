from __future__ import annotations

import pytest

from dg_core import Action, Source, State, Step, Task, Trajectory
from dg_core.testing import scripted_task


def make_trajectory(index: int = 0, num_steps: int = 3, *, success: bool = True) -> Trajectory:
    """A valid trajectory whose contents depend on ``index`` (for round-trip tests)."""
    task = scripted_task(f"task-{index}", rooms=3, seed=index, split="train")
    steps = []
    for position in range(num_steps):
        last = position == num_steps - 1
        steps.append(
            Step(
                state=State(text=f"room {position} of ep {index}", available_actions=("go east", "look")),
                action=Action(text="go east", reasoning=f"step {position}"),
                next_state=State(text=f"room {position + 1} of ep {index}", available_actions=("look",)),
                reward=1.0 if (last and success) else 0.0,
                done=last,
                step_index=position,
                duration_s=0.001 * position,
                info={"score": position, "note": "ü ✓"},
            )
        )
    return Trajectory(
        id=f"traj-{index}",
        task=task,
        steps=tuple(steps),
        success=success,
        **{"return": 1.0 if success else 0.0},
        policy_id="expert",
        source=Source.REAL,
        metadata={"index": index},
    )


@pytest.fixture
def task() -> Task:
    return scripted_task("t0", rooms=3, seed=1)
