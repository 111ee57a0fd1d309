"""The rollout engine: many episodes at once against a :class:`~dg_core.BatchedEnv`, recorded as tokens.

Every running episode is decided in one policy batch per turn. Each turn keeps the exact token ids the
policy saw and produced and the behaviour log-probs, so the loss sees the same ids. Budgets: the policy's
``max_turn_tokens`` bounds one turn; ``max_episode_tokens`` bounds the policy tokens of an episode, and an
episode that exhausts it is ended by the engine (truncated, counted). Nothing is truncated silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from dg_core import Action, BatchedEnv, ConfigError, PolicyRequest, Step, Task, Trajectory
from dg_rl._policy import Decision, LMPolicy
from dg_rl._sharding import full_parameters

__all__ = ["EpisodeRecord", "RolloutEngine", "RolloutStats", "Rollouts", "TurnRecord"]

# dg-core's BatchedEnv needs an action for every running episode; an episode the engine ended early
# (token budget) is sent this empty command, which every env answers as an invalid action, and the
# answer is not recorded.
_ABANDONED_ACTION = ""


@dataclass
class TurnRecord:
    """One policy turn: the decision and what the environment answered."""

    decision: Decision
    """Token ids, log-probs and flags of the policy's decision."""
    reward: float
    """Reward of the environment step."""
    invalid_action: bool
    """Whether the environment answered the action as invalid."""


@dataclass
class EpisodeRecord:
    """One episode: its task, group and turns."""

    task: Task
    """The task played."""
    group: int
    """Index of the task in the collected batch; the G episodes of a task share it (GRPO groups)."""
    seed: int | None
    """Reset seed (shared by a group, so its episodes start from the same world)."""
    turns: list[TurnRecord] = field(default_factory=list)
    """The policy's turns in order."""
    steps: list[Step] = field(default_factory=list)
    """The recorded transitions (what the policy saw as history)."""
    success: bool = False
    """Whether the environment reported success."""
    done: bool = False
    """Whether the episode is over (ended by the env or by the engine)."""
    env_truncated: bool = False
    """Ended by the environment's step limit."""
    budget_truncated: bool = False
    """Ended by the engine's per-episode token budget or turn limit."""

    @property
    def episode_return(self) -> float:
        """Sum of rewards."""
        return sum(turn.reward for turn in self.turns)

    @property
    def policy_tokens(self) -> int:
        """Policy-produced tokens over all turns."""
        return sum(len(turn.decision.completion_ids) for turn in self.turns)

    def trajectory(self, policy_id: str | None = None) -> Trajectory:
        """The episode as a dg-core :class:`~dg_core.Trajectory`."""
        steps = list(self.steps)
        if self.budget_truncated and steps and not steps[-1].done:
            steps[-1] = steps[-1].model_copy(update={"done": True, "truncated": True})
        return Trajectory.model_validate(
            {
                "id": f"{self.task.id}-g{self.group}-{id(self):x}",
                "task": self.task,
                "steps": tuple(steps),
                "success": self.success,
                "return": self.episode_return,
                "policy_id": policy_id,
                "metadata": {"seed": self.seed, "budget_truncated": self.budget_truncated},
            }
        )


@dataclass
class RolloutStats:
    """Counts and rates of one collection; every truncation is reported here."""

    episodes: int = 0
    """Episodes played."""
    success_rate: float = 0.0
    """Fraction of episodes that succeeded."""
    mean_return: float = 0.0
    """Mean episode return."""
    turns: int = 0
    """Policy turns taken."""
    policy_tokens: int = 0
    """Tokens the policy produced (or chose)."""
    prompt_tokens: int = 0
    """Prompt tokens the policy read."""
    seconds: float = 0.0
    """Wall-clock time of the collection."""
    unparseable: int = 0
    """Generate mode: turns whose text named no available action."""
    invalid_actions: int = 0
    """Steps the environment answered as invalid."""
    turn_truncations: int = 0
    """Turns that hit the per-turn token budget."""
    prompt_truncations: int = 0
    """Turns whose prompt was cut to the prompt budget."""
    episode_budget_truncations: int = 0
    """Episodes ended by the per-episode token budget or the engine's turn limit."""
    env_truncations: int = 0
    """Episodes ended by the environment's step limit."""

    @property
    def tokens_per_s(self) -> float:
        """Prompt and policy tokens processed per second of collection."""
        return (self.policy_tokens + self.prompt_tokens) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        """Every field and ``tokens_per_s`` as floats (for logging)."""
        values = {name: float(getattr(self, name)) for name in self.__dataclass_fields__}
        values["tokens_per_s"] = self.tokens_per_s
        return values


@dataclass
class Rollouts:
    """The episodes of one collection and their statistics."""

    episodes: list[EpisodeRecord]
    """Episodes in order: ``group_size`` consecutive episodes per task."""
    stats: RolloutStats
    """Counts and rates."""
    group_size: int
    """Episodes per task."""


class RolloutEngine:
    """Plays ``group_size`` episodes of every task in parallel and records token-level turns.

    Args:
        policy: The LM policy (its ``max_turn_tokens`` is the per-turn budget).
        env: A batched environment (``EnvPool(factory)`` wraps any single-episode env).
        group_size: Episodes per task (G of GRPO).
        max_episode_tokens: Per-episode budget of policy tokens; ``None`` for no limit.
        max_turns: Turn limit applied by the engine (on top of the env's own ``max_steps``).
    """

    def __init__(
        self,
        policy: LMPolicy,
        env: BatchedEnv,
        *,
        group_size: int = 1,
        max_episode_tokens: int | None = None,
        max_turns: int | None = None,
    ) -> None:
        if group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {group_size}")
        if max_episode_tokens is not None and max_episode_tokens < 1:
            raise ConfigError(f"max_episode_tokens must be positive, got {max_episode_tokens}")
        self.policy = policy
        self.env = env
        self.group_size = group_size
        self.max_episode_tokens = max_episode_tokens
        self.max_turns = max_turns

    def collect(self, tasks: Sequence[Task], *, seed: int = 0) -> Rollouts:
        """Play every task ``group_size`` times.

        A policy sharded with FSDP2 (:class:`~dg_rl.FSDP2Strategy`) plays with its full weights, gathered once for
        the whole collection: every rank must collect together (each once per batch, as the data module does),
        and in between each rank runs as many forwards as its own episodes need.

        Args:
            tasks: Tasks to play; a task's own seed fixes its world, else ``seed + index`` does.
            seed: Base reset seed for tasks without one.
        """
        with full_parameters(self.policy.model):
            return self._collect(tasks, seed)

    def _collect(self, tasks: Sequence[Task], seed: int) -> Rollouts:
        started = time.perf_counter()
        episodes: list[EpisodeRecord] = []
        for index, task in enumerate(tasks):
            world_seed = task.seed if task.seed is not None else seed + index
            episodes.extend(EpisodeRecord(task=task, group=index, seed=world_seed) for _ in range(self.group_size))
        states = self.env.reset([e.task for e in episodes], [e.seed for e in episodes])
        stats = RolloutStats(episodes=len(episodes))
        while True:
            running = [i for i, e in enumerate(episodes) if not e.done]
            if not running:
                break
            requests, budgets = [], []
            for i in running:
                episode = episodes[i]
                requests.append(PolicyRequest(task=episode.task, history=tuple(episode.steps), state=states[i]))
                budgets.append(self._remaining(episode))
            decisions = self.policy.decide(requests, max_new_tokens=budgets)
            actions: list[Action | str | None] = [
                None if e.done and self.env.dones[i] else _ABANDONED_ACTION for i, e in enumerate(episodes)
            ]
            for i, decision in zip(running, decisions, strict=True):
                actions[i] = decision.action
            results = self.env.step(actions)
            for i, decision in zip(running, decisions, strict=True):
                result = results[i]
                if result is None:  # pragma: no cover - a running episode always gets an answer
                    raise RuntimeError(f"{type(self.env).__name__} answered no result for a running episode")
                episode = episodes[i]
                invalid = bool(result.info.get("invalid_action", False))
                episode.turns.append(TurnRecord(decision=decision, reward=result.reward, invalid_action=invalid))
                episode.steps.append(
                    Step(
                        state=states[i],
                        action=decision.action,
                        next_state=result.state,
                        reward=result.reward,
                        done=result.done,
                        truncated=result.truncated,
                        step_index=len(episode.steps),
                        info=result.info,
                    )
                )
                states[i] = result.state
                stats.turns += 1
                stats.policy_tokens += len(decision.completion_ids)
                stats.prompt_tokens += len(decision.prompt_ids)
                stats.unparseable += int(not decision.parsed)
                stats.invalid_actions += int(invalid)
                stats.turn_truncations += int(decision.turn_truncated)
                stats.prompt_truncations += int(decision.prompt_truncated)
                if result.done:
                    episode.done = True
                    episode.success = bool(result.success)
                    episode.env_truncated = result.truncated
                    stats.env_truncations += int(result.truncated)
                elif self._remaining(episode) <= 0 or (
                    self.max_turns is not None and len(episode.turns) >= self.max_turns
                ):
                    episode.done = True
                    episode.budget_truncated = True
                    stats.episode_budget_truncations += 1
        stats.seconds = time.perf_counter() - started
        stats.success_rate = sum(e.success for e in episodes) / len(episodes)
        stats.mean_return = sum(e.episode_return for e in episodes) / len(episodes)
        return Rollouts(episodes=episodes, stats=stats, group_size=self.group_size)

    def _remaining(self, episode: EpisodeRecord) -> int:
        if self.max_episode_tokens is None:
            return self.policy.max_turn_tokens
        return min(self.policy.max_turn_tokens, self.max_episode_tokens - episode.policy_tokens)
