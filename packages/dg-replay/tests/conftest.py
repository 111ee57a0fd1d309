"""Shared builders: tasks and steps across environments, splits and sources, and clustered unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from dg_core import Action, Source, State, Step, Task
from dg_replay import HashingEncoder


def make_task(task_id: str = "t0", env_id: str = "scripted", split: str | None = "train") -> Task:
    return Task(id=task_id, env_id=env_id, instruction=f"find the key in {task_id}", split=split)  # type: ignore[arg-type]


def make_steps(count: int, *, source: Source = Source.REAL, prefix: str = "room", start: int = 0) -> list[Step]:
    return [
        Step(
            state=State(text=f"{prefix} {start + index}: a door and a chest", available_actions=("open door", "look")),
            action=Action(text=f"open door {start + index}"),
            next_state=State(text=f"{prefix} {start + index + 1}"),
            reward=float(index % 2),
            done=False,
            source=source,
            step_index=index,
        )
        for index in range(count)
    ]


def clustered_unit_vectors(count: int, dim: int, *, clusters: int = 20, seed: int = 0) -> NDArray[np.float32]:
    """Unit vectors around random centres: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, count)] + 0.6 * rng.standard_normal((count, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_top_k(
    queries: NDArray[np.float32], keys: NDArray[np.int64], vectors: NDArray[np.float32], k: int
) -> list[list[int]]:
    scores = queries @ vectors.T
    return [[int(keys[i]) for i in np.argsort(-row, kind="stable")[:k]] for row in scores]


@pytest.fixture
def encoder() -> HashingEncoder:
    return HashingEncoder(64)
