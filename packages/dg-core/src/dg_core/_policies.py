"""Policies that need no model, and the loop that plays one episode."""

from __future__ import annotations

import random
from collections.abc import Sequence

from dg_core._env import Env
from dg_core._errors import ConfigError
from dg_core._protocols import Policy, PolicyRequest
from dg_core._types import Action, JSONValue, Task, Trajectory


class RandomPolicy:
    """Picks uniformly among the available actions (a baseline and a data source).

    Args:
        seed: Seed of its private random generator; the same seed gives the same choices.
        fallback_action: What to do where the state lists no available actions.
        policy_id: Name recorded in trajectories (default ``random-<seed>``; give one name to policies
            seeded per episode so their trajectories group together).
    """

    def __init__(self, seed: int = 0, *, fallback_action: str = "look", policy_id: str | None = None) -> None:
        self._rng = random.Random(seed)
        self.fallback_action = fallback_action
        self.seed = seed
        self._policy_id = policy_id or f"random-{seed}"

    @property
    def policy_id(self) -> str:
        """The name recorded in trajectories."""
        return self._policy_id

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """One uniformly chosen available action per request."""
        actions = []
        for request in requests:
            options = request.state.available_actions
            text = self._rng.choice(options) if options else self.fallback_action
            actions.append(Action(text=text))
        return actions


def play_episode(
    env: Env,
    policy: Policy,
    task: Task,
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    metadata: dict[str, JSONValue] | None = None,
) -> Trajectory:
    """Play one episode of ``task`` in ``env`` with ``policy`` and return its trajectory.

    Args:
        env: A single-episode environment.
        policy: Any :class:`Policy`.
        task: The task to play.
        seed: Episode seed passed to ``env.reset``.
        max_steps: Stop after this many steps even if the environment has no limit
            (the trajectory is then not ``finished``).
        metadata: Extra annotations stored in the trajectory.
    """
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be positive, got {max_steps}")
    state = env.reset(task, seed)
    taken = 0
    while not env.done and (max_steps is None or taken < max_steps):
        history = env.history
        (action,) = policy.act([PolicyRequest(task=task, history=history, state=state)])
        state = env.step(action).state
        taken += 1
    return env.trajectory(policy_id=policy.policy_id, metadata=metadata)
