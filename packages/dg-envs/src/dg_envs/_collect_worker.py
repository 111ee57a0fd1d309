"""What runs inside a collection worker: make the env and the policy, play episodes, survive crashes.

Kept separate from :mod:`dg_envs._collect` because it is the code a spawned process imports.
"""

from __future__ import annotations

import contextlib
import os
import queue
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dg_core import ConfigError, Env, Policy, RandomPolicy, Task, Trajectory, make_env, play_episode
from dg_envs._expert import ExpertPolicy, NoisyExpertPolicy

__all__ = [
    "NAMED_POLICIES",
    "Episode",
    "EpisodeRunner",
    "PolicySpec",
    "failed_trajectory",
    "named_policy",
    "worker_main",
]

PolicySpec = str | Policy | Callable[[Env], Policy]
"""``"expert"``, ``"random"``, ``"noisy-expert"``, a :class:`~dg_core.Policy`, or a function env -> Policy."""

NAMED_POLICIES = ("expert", "random", "noisy-expert")
"""The policies :func:`named_policy` makes by name."""


class _PerEpisodeRandomPolicy(RandomPolicy):
    """The uniform baseline seeded per episode, recorded under one name for the whole run."""

    @property
    def policy_id(self) -> str:
        return "random"


def named_policy(name: str, env: Any, *, seed: int = 0, epsilon: float = 0.2) -> Policy:
    """The policy of one episode called ``name`` (one of :data:`NAMED_POLICIES`).

    Args:
        name: ``expert`` (the env's own expert), ``noisy-expert`` (the expert, with probability ``epsilon`` a
            uniformly random available action) or ``random`` (uniform over the available actions).
        env: What the expert reads its next action from (``expert_action()``); unused by ``random``.
        seed: Seed of the policy's random choices (the episode's seed).
        epsilon: Random-action probability of ``noisy-expert``.
    """
    if name == "expert":
        return ExpertPolicy(env)
    if name == "noisy-expert":
        return NoisyExpertPolicy(env, epsilon=epsilon, seed=seed)
    if name == "random":
        return _PerEpisodeRandomPolicy(seed)
    raise ConfigError(f"unknown policy {name!r}; named policies: {', '.join(NAMED_POLICIES)}")


@dataclass(frozen=True)
class Episode:
    """One planned episode of a collection run."""

    index: int
    """Position of the episode in the run (0-based)."""
    task: Task
    """The task to play."""
    seed: int
    """Episode seed (env reset and policy randomness)."""


def policy_label(policy: PolicySpec, epsilon: float) -> str:
    """The ``policy_id`` recorded for ``policy`` (also for episodes that never got to play)."""
    if isinstance(policy, str):
        return f"expert-eps{epsilon:g}" if policy == "noisy-expert" else policy
    if isinstance(policy, Policy):
        return policy.policy_id
    return getattr(policy, "__name__", "custom")


def failed_trajectory(episode: Episode, *, policy_id: str, error: str, metadata: dict[str, Any]) -> Trajectory:
    """An episode recorded as failed because its environment or worker crashed before it produced steps."""
    return Trajectory.model_validate(
        {
            "id": f"{episode.task.id}-failed-{uuid.uuid4().hex[:12]}",
            "task": episode.task,
            "steps": (),
            "success": False,
            "return": 0.0,
            "policy_id": policy_id,
            "metadata": {**metadata, "error": error, "seed": episode.seed},
        }
    )


class EpisodeRunner:
    """Plays episodes one after another in one environment, rebuilding the environment after a crash.

    Args:
        env: Registry name (made with ``env_config``) or a function making the environment.
        env_config: Keyword configuration for a registry name.
        policy: What acts (see :data:`PolicySpec`).
        epsilon: Random-action probability of ``"noisy-expert"``.
        run: Name of the collection run, stored with every episode.
    """

    def __init__(
        self,
        env: str | Callable[[], Env],
        env_config: dict[str, Any],
        policy: PolicySpec,
        *,
        epsilon: float,
        run: str,
    ) -> None:
        if isinstance(policy, str) and policy not in NAMED_POLICIES:
            raise ConfigError(f"unknown policy {policy!r}; named policies: {', '.join(NAMED_POLICIES)}")
        self._env_spec = env
        self._env_config = env_config
        self._policy = policy
        self._epsilon = epsilon
        self.run = run
        self.policy_id = policy_label(policy, epsilon)
        self.env_restarts = 0
        self._env: Env | None = None

    def _make_env(self) -> Env:
        made = make_env(self._env_spec, **self._env_config) if isinstance(self._env_spec, str) else self._env_spec()
        if not isinstance(made, Env):
            raise ConfigError(f"collection needs a single-episode Env, got {type(made).__name__}")
        return made

    def _make_policy(self, env: Env, seed: int) -> Policy:
        if isinstance(self._policy, str):
            return named_policy(self._policy, env, seed=seed, epsilon=self._epsilon)
        if isinstance(self._policy, Policy):
            return self._policy
        assert callable(self._policy)
        return self._policy(env)

    def metadata(self, episode: Episode) -> dict[str, Any]:
        """What every trajectory of ``episode`` carries to make the run resumable."""
        return {"collection": {"run": self.run, "episode": episode.index}}

    def play(self, episode: Episode) -> Trajectory:
        """Play ``episode``; a crash of the environment is recorded as a failed episode and the env rebuilt."""
        try:
            if self._env is None:
                self._env = self._make_env()
            env = self._env
            policy = self._make_policy(env, episode.seed)
            return play_episode(env, policy, episode.task, seed=episode.seed, metadata=self.metadata(episode))
        except Exception as error:
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            self._discard_env()
            return failed_trajectory(
                episode, policy_id=self.policy_id, error=f"env crashed: {detail}", metadata=self.metadata(episode)
            )

    def _discard_env(self) -> None:
        if self._env is not None:
            self.env_restarts += 1
            with contextlib.suppress(Exception):  # the env is already broken; its close may fail too
                self._env.close()
            self._env = None

    def close(self) -> None:
        """Close the environment."""
        if self._env is not None:
            self._env.close()
            self._env = None


def worker_main(
    worker_id: int,
    runner_args: tuple[Any, ...],
    runner_kwargs: dict[str, Any],
    jobs: Any,
    results: Any,
    parent_pid: int,
) -> None:
    """Entry point of a worker process: play the episodes sent on ``jobs``; put trajectories on ``results``.

    The worker stops on a ``None`` job, and also when its parent disappears (the collector was killed).
    """
    runner = EpisodeRunner(*runner_args, **runner_kwargs)
    try:
        while True:
            try:
                episode = jobs.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    return
                continue
            if episode is None:
                return
            trajectory = runner.play(episode)
            results.put((worker_id, episode.index, trajectory.model_dump_json(by_alias=True)))
    finally:
        runner.close()
