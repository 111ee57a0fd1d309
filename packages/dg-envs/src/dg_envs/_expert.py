"""Expert policies for environments that know a winning next action (``env.expert_action()``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from dg_core import Action, ConfigError, PolicyRequest

__all__ = ["ExpertPolicy", "NoisyExpertPolicy", "SupportsExpert"]


@runtime_checkable
class SupportsExpert(Protocol):
    """An environment that can name the next action of a winning plan from its current state."""

    def expert_action(self) -> str:
        """The next expert action."""
        ...


class ExpertPolicy:
    """Acts as the environment's own expert (TextWorld's plan, ALFWorld's handcoded agent...).

    It reads the single environment it is bound to, so it serves one episode at a time.

    Args:
        env: The environment being played.
    """

    def __init__(self, env: SupportsExpert) -> None:
        if not isinstance(env, SupportsExpert):
            raise ConfigError(f"{type(env).__name__} has no expert_action(); it cannot be played by an expert")
        self.env = env

    @property
    def policy_id(self) -> str:
        """``expert``."""
        return "expert"

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """The expert action of the bound environment (one request at a time)."""
        if len(requests) != 1:
            raise ConfigError(f"an ExpertPolicy serves one episode at a time, got {len(requests)} requests")
        return [Action(text=self.env.expert_action())]


class NoisyExpertPolicy(ExpertPolicy):
    """The expert, except that with probability ``epsilon`` it picks a uniformly random available action.

    Args:
        env: The environment being played.
        epsilon: Probability of a random action, in [0, 1].
        seed: Seed of the private random generator.
    """

    def __init__(self, env: SupportsExpert, *, epsilon: float = 0.2, seed: int = 0) -> None:
        super().__init__(env)
        if not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self._rng = random.Random(seed)

    @property
    def policy_id(self) -> str:
        """``expert-eps<epsilon>``."""
        return f"expert-eps{self.epsilon:g}"

    def act(self, requests: Sequence[PolicyRequest]) -> list[Action]:
        """A random available action with probability ``epsilon``, else the expert's."""
        (expert,) = super().act(requests)
        options = requests[0].state.available_actions
        if options and self._rng.random() < self.epsilon:
            return [Action(text=self._rng.choice(options))]
        return [expert]
