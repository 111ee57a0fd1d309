"""Policy-level fidelity: the same policies played in the real and in the synthetic environment.

Teacher-forced scores say how often one predicted step is right; what decides whether training in the synthetic
environment transfers is whether a policy fares there as it fares in the real one. :func:`policy_fidelity` plays
each policy from the same tasks, seeds and initial states in both environments, episode ``i`` of every policy on
``tasks[i % len(tasks)]`` with seed ``seed + i``, and compares success rate, mean return and mean episode length.

**Pairing.** Episode ``i`` in the real environment and episode ``i`` in the synthetic one share the task, the seed
(the real env's reset and the policy's random choices) and the initial state, so each metric's gap
(real - synthetic) is the mean of per-episode differences, with a 95% Student t interval over those differences
(paired t interval; :func:`mean_interval`). An interval of zero width means every pair differed by the same amount.

**Experts in the synthetic environment.** An expert reads its next action from the real environment
(``expert_action()``). In the synthetic env it reads it from a real environment of the same task and seed that is
sent every action the policy takes there: the expert acts on where its actions would have led in the real world,
whatever the synthetic env shows. So the policy is the same function of (task, seed, actions so far) in both envs,
and a synthetic env that simulates exactly gives exactly the real episodes. Should the real environment end while
the synthetic episode goes on (a missed done), the expert has no plan left: it takes the first available action of
the synthetic state (``look`` where none is listed), and such steps are counted (``unguided_steps``).

Policies are given as :data:`PolicyMaker` functions (dg-expmodel does not import dg-envs, where the experts
live): ``maker(env, seed)`` makes the policy of one episode, ``env`` being what an expert reads
(``dg_envs.named_policy`` makes ``random``, ``expert`` and ``noisy-expert`` this way).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dg_core import Action, BatchedEnv, ConfigError, Env, Policy, PolicyRequest, State, Task, Trajectory, play_episode
from dg_expmodel._synthetic import with_initial_state

PolicyMaker = Callable[[Any, int], Policy]
"""Makes the policy of one episode from the environment an expert reads (the real env being played, or the real
env that follows the synthetic episode's actions) and the episode seed."""

SUCCESS_GAP_TARGET = 0.05
"""Issue 17's target: |real - synthetic| success rate at most this for the random, expert and noisy-expert policies."""


# -- Student t interval ------------------------------------------------------------------------------------------
def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz evaluation)."""
    floor = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > floor else floor)
    value = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > floor else floor)
            c = 1.0 + numerator / c
            c = c if abs(c) > floor else floor
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return value


def _regularized_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ConfigError(f"degrees of freedom must be >= 1, got {df}")
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < probability < 1.0:
        raise ConfigError(f"probability must be in (0, 1), got {probability}")
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided Student t confidence interval (``None`` bounds with fewer than 2 values)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    """Values the mean is over."""
    confidence: float = 0.95

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def text(self, digits: int = 3) -> str:
        """``mean [low, high]`` (``mean (n=1)`` without an interval)."""
        if self.low is None or self.high is None:
            return f"{self.mean:+.{digits}f} (n={self.n})"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with the t interval ``mean ± t(1 - (1 - confidence) / 2, n - 1) * sd / sqrt(n)``.

    Given per-episode differences (real - synthetic), this is the paired t interval of the gap.
    """
    if not values:
        raise ConfigError("mean_interval needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    floats = [float(v) for v in values]
    mean = statistics.fmean(floats)
    if len(floats) < 2:
        return Interval(mean, None, None, len(floats), confidence)
    half = (
        student_t_quantile(1.0 - (1.0 - confidence) / 2.0, len(floats) - 1)
        * statistics.stdev(floats)
        / math.sqrt(len(floats))
    )
    return Interval(mean, mean - half, mean + half, len(floats), confidence)


# -- results -----------------------------------------------------------------------------------------------------
@dataclass
class EpisodeOutcomes:
    """Per-episode outcomes of one policy in one environment, in episode order."""

    success: list[bool] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def add(self, trajectory: Trajectory) -> None:
        """Record one episode."""
        self.success.append(trajectory.success)
        self.returns.append(trajectory.return_)
        self.lengths.append(trajectory.num_steps)

    def metric(self, name: str) -> list[float]:
        """``success`` (0 / 1), ``return`` or ``length`` of every episode."""
        values: dict[str, Sequence[float]] = {"success": self.success, "return": self.returns, "length": self.lengths}
        return [float(v) for v in values[name]]


METRICS = ("success", "return", "length")
"""What is compared, per episode."""


@dataclass
class PolicyComparison:
    """One policy in the real and in the synthetic environment, episode for episode."""

    name: str
    policy_id: str
    real: EpisodeOutcomes
    synthetic: EpisodeOutcomes
    episodes: list[tuple[str, int]]
    """(task id, seed) of each episode pair."""
    unguided_steps: int = 0
    """Synthetic steps on which the expert's real environment had already ended (see the module docstring)."""

    def gap(self, metric: str) -> Interval:
        """Mean of real - synthetic ``metric`` over the episode pairs, with its paired 95% t interval."""
        real, synthetic = self.real.metric(metric), self.synthetic.metric(metric)
        return mean_interval([r - s for r, s in zip(real, synthetic, strict=True)])

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report."""
        out: dict[str, Any] = {"policy_id": self.policy_id, "episodes": len(self.episodes)}
        for metric in METRICS:
            out[metric] = {
                "real": mean_interval(self.real.metric(metric)).as_dict(),
                "synthetic": mean_interval(self.synthetic.metric(metric)).as_dict(),
                "gap": self.gap(metric).as_dict(),
            }
        out["unguided_steps"] = self.unguided_steps
        columns = zip(self.real.success, self.synthetic.success, self.real.lengths, self.synthetic.lengths, strict=True)
        out["pairs"] = [
            {"task": task, "seed": seed, "success": [real_success, synthetic_success], "length": [real, synthetic]}
            for (task, seed), (real_success, synthetic_success, real, synthetic) in zip(
                self.episodes, columns, strict=True
            )
        ]  # per episode pair: [real, synthetic] success and length
        return out


@dataclass
class PolicyFidelity:
    """Every policy's comparison, and how they were played."""

    policies: list[PolicyComparison]
    tasks: int
    """Distinct tasks played."""
    seed: int
    """Episode ``i`` was played with seed ``seed + i``."""
    max_steps: int
    """Step limit of an episode, in both environments."""
    target: float = SUCCESS_GAP_TARGET

    def policy(self, name: str) -> PolicyComparison:
        """The comparison of policy ``name``."""
        for comparison in self.policies:
            if comparison.name == name:
                return comparison
        raise KeyError(f"no policy {name!r} in this comparison; have {[c.name for c in self.policies]}")

    def as_dict(self) -> dict[str, Any]:
        """For the JSON report (``policy_fidelity`` in ``audit.json``)."""
        return {
            "interval": "paired Student t, 95%, over episode pairs (same task, seed and initial state)",
            "tasks": self.tasks,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "success_gap_target": self.target,
            "policies": {
                c.name: {**c.as_dict(), "success_gap_within_target": abs(c.gap("success").mean) <= self.target}
                for c in self.policies
            },
        }

    def markdown(self) -> str:
        """The table: success, return and length in both envs, gaps with their paired 95% t intervals."""
        last = self.seed + max((len(c.episodes) for c in self.policies), default=1) - 1
        lines = [
            f"Policy-level fidelity: each policy played from the same tasks, seeds and initial states in the real and "
            f"the synthetic env ({self.tasks} tasks, seeds {self.seed} to {last}, step limit {self.max_steps}); gaps "
            f"are real - synthetic with paired 95% t intervals; target |success gap| <= {self.target:g}.",
            "",
            "| policy | episodes | success real / synthetic | success gap [95% CI] | within target | "
            "return real / synthetic | return gap [95% CI] | length real / synthetic | length gap [95% CI] |",
            "| --- " * 9 + "|",
        ]
        for c in self.policies:
            success = c.gap("success")
            cells = [c.name, str(len(c.episodes))]
            for metric in METRICS:
                real = statistics.fmean(c.real.metric(metric))
                synthetic = statistics.fmean(c.synthetic.metric(metric))
                cells += [f"{real:.3f} / {synthetic:.3f}", c.gap(metric).text()]
                if metric == "success":
                    cells.append("yes" if abs(success.mean) <= self.target else "no")
            lines.append("| " + " | ".join(cells) + " |")
        unguided = [f"{c.name} {c.unguided_steps}" for c in self.policies if c.unguided_steps]
        if unguided:
            lines += ["", f"Synthetic steps an expert took after its real episode had ended: {', '.join(unguided)}."]
        return "\n".join(lines)


# -- playing -----------------------------------------------------------------------------------------------------
class _RealGuide:
    """What an expert reads while it plays in the synthetic env: the real env that its actions lead through."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.shown: State | None = None
        self.unguided = 0

    def expert_action(self) -> str:
        """The real env's expert action; once the real episode is over, the shown state's first action."""
        if not self.env.done:
            expert = getattr(self.env, "expert_action", None)
            if expert is None:
                raise ConfigError(f"{type(self.env).__name__} has no expert_action(); it cannot guide an expert")
            return str(expert())
        self.unguided += 1
        actions = self.shown.available_actions if self.shown is not None else None
        return actions[0] if actions else "look"


def _check(
    tasks: Sequence[Task], policies: Mapping[str, PolicyMaker], episodes: int, batch_size: int, target: float
) -> None:
    if not tasks:
        raise ConfigError("policy fidelity needs at least one task")
    if not policies:
        raise ConfigError("policy fidelity needs at least one policy")
    for name, maker in policies.items():
        if not callable(maker):
            raise ConfigError(f"policy {name!r}: expected a function (env, seed) -> Policy, got {type(maker).__name__}")
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not (math.isfinite(target) and target >= 0):
        raise ConfigError(f"target must be a finite number >= 0, got {target}")


def _play_synthetic(
    synthetic: BatchedEnv,
    shadows: list[Env],
    maker: PolicyMaker,
    chunk: Sequence[tuple[Task, int]],
) -> tuple[list[Trajectory], int]:
    guides = [_RealGuide(shadow) for shadow in shadows[: len(chunk)]]
    starts = [guide.env.reset(task, seed) for guide, (task, seed) in zip(guides, chunk, strict=True)]
    policies = [maker(guide, seed) for guide, (_, seed) in zip(guides, chunk, strict=True)]
    synthetic.reset(
        [with_initial_state(task, start) for (task, _), start in zip(chunk, starts, strict=True)],
        [seed for _, seed in chunk],
    )
    while not synthetic.all_done:
        actions: list[Action | None] = []
        for index, (done, state) in enumerate(zip(synthetic.dones, synthetic.states, strict=True)):
            if done:
                actions.append(None)
                continue
            guides[index].shown = state
            request = PolicyRequest(task=chunk[index][0], history=synthetic.history(index), state=state)
            (action,) = policies[index].act([request])
            actions.append(action)
        synthetic.step(actions)
        for guide, taken in zip(guides, actions, strict=True):
            if taken is not None and not guide.env.done:
                guide.env.step(taken)
    return synthetic.trajectories(), sum(guide.unguided for guide in guides)


def policy_fidelity(
    real_env: Callable[[], Env],
    synthetic_env: BatchedEnv,
    tasks: Sequence[Task],
    policies: Mapping[str, PolicyMaker],
    *,
    episodes: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    target: float = SUCCESS_GAP_TARGET,
    progress: bool = False,
) -> PolicyFidelity:
    """Play every policy ``episodes`` times in the real and in the synthetic env and compare them pair by pair.

    Args:
        real_env: Makes a real single-episode environment (with a step limit): one plays the real episodes, and one
            per synthetic episode of a batch follows that episode's actions for the experts.
        synthetic_env: The simulator audited (e.g. a :class:`~dg_expmodel.BatchedSyntheticEnv` of the experience
            model, or a :class:`~dg_expmodel.PerturbedEnv`); its step limit must be the real env's. A synthetic env
            that reads initial states from the task gets the real one (``Task.metadata["initial_state"]``).
        tasks: The tasks; episode ``i`` plays ``tasks[i % len(tasks)]`` with seed ``seed + i``.
        policies: Name -> :data:`PolicyMaker`.
        episodes: Episodes per policy in each environment.
        seed: Seed of episode 0.
        batch_size: Synthetic episodes stepped together (one experience-model call per step of the batch).
        target: The success-gap target reported beside the numbers.
        progress: Show a progress bar.
    """
    _check(tasks, policies, episodes, batch_size, target)
    plan = [(tasks[i % len(tasks)], seed + i) for i in range(episodes)]
    real = real_env()
    shadows: list[Env] = []
    try:
        if real.max_steps is None:
            raise ConfigError("policy fidelity needs a step limit on the real env (max_steps), so both envs end alike")
        if synthetic_env.max_steps is not None and synthetic_env.max_steps != real.max_steps:
            raise ConfigError(
                f"the synthetic env's step limit ({synthetic_env.max_steps}) differs from the real env's "
                f"({real.max_steps}); give both the same max_steps"
            )
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * episodes * len(policies), desc="policy fidelity", disable=not progress, leave=False)
        comparisons = []
        for name, maker in policies.items():
            real_outcomes, synthetic_outcomes = EpisodeOutcomes(), EpisodeOutcomes()
            policy_id = name
            for task, episode_seed in plan:
                policy = maker(real, episode_seed)
                policy_id = policy.policy_id
                real_outcomes.add(play_episode(real, policy, task, seed=episode_seed))
                bar.update(1)
            unguided = 0
            for start in range(0, len(plan), batch_size):
                chunk = plan[start : start + batch_size]
                while len(shadows) < len(chunk):
                    shadows.append(real_env())
                trajectories, skipped = _play_synthetic(synthetic_env, shadows, maker, chunk)
                unguided += skipped
                for trajectory in trajectories:
                    synthetic_outcomes.add(trajectory)
                bar.update(len(chunk))
            comparisons.append(
                PolicyComparison(
                    name=name,
                    policy_id=policy_id,
                    real=real_outcomes,
                    synthetic=synthetic_outcomes,
                    episodes=[(task.id, episode_seed) for task, episode_seed in plan],
                    unguided_steps=unguided,
                )
            )
        bar.close()
        return PolicyFidelity(
            policies=comparisons,
            tasks=len({task.id for task, _ in plan}),
            seed=seed,
            max_steps=real.max_steps,
            target=target,
        )
    finally:
        for env in (real, *shadows):
            env.close()


@dataclass(frozen=True)
class PolicyFidelitySetup:
    """What :func:`~dg_expmodel.audit_experience_model` needs to add policy-level fidelity to its report.

    The synthetic env is the experience model's own (a :class:`~dg_expmodel.BatchedSyntheticEnv` with the full
    configuration: the retriever, ``options.max_retrieved`` and ``options.history_window``, the real env's step
    limit).
    """

    real_env: Callable[[], Env]
    """Makes a real environment with a step limit."""
    policies: Mapping[str, PolicyMaker]
    """Name -> :data:`PolicyMaker` (``dg_envs.named_policy`` makes ``random``, ``expert``, ``noisy-expert``)."""
    tasks: Sequence[Task] | None = None
    """The tasks (default: those of the held-out trajectories, each once, in order of first appearance)."""
    episodes: int = 16
    """Episodes per policy in each environment."""
    seed: int = 0
    """Episode ``i`` is played with seed ``seed + i``."""
    batch_size: int = 16
    """Synthetic episodes stepped together."""
    target: float = SUCCESS_GAP_TARGET
    """The success-gap target printed beside the numbers."""


def distinct_tasks(trajectories: Sequence[Trajectory]) -> list[Task]:
    """The tasks of ``trajectories``, each once, in order of first appearance."""
    seen: dict[str, Task] = {}
    for trajectory in trajectories:
        seen.setdefault(trajectory.task.id, trajectory.task)
    return list(seen.values())
