"""Policy-level fidelity: the same policies in the real and the synthetic env, gaps with paired t intervals.

Known by construction: a simulator equal to the real env (``PerturbedEnv`` at zero error, or an experience model
that replays the real episode) gives the real episodes exactly (every gap 0, zero-width intervals); injected reward
errors move synthetic success by exactly the flips the simulator counts.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dg_core import ConfigError, ExperiencePrediction, ExperienceQuery, Task, play_episode
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_envs import named_policy
from dg_expmodel import (
    ABLATIONS,
    SUCCESS_GAP_TARGET,
    BatchedSyntheticEnv,
    PerturbedEnv,
    PolicyFidelitySetup,
    PromptOptions,
    audit_experience_model,
    mean_interval,
    policy_fidelity,
    student_t_quantile,
)
from dg_expmodel._policy_fidelity import distinct_tasks, student_t_cdf
from tests.conftest import collect

MAX_STEPS = 6
NAMES = ("random", "expert", "noisy-expert")


def makers(names: Sequence[str] = NAMES, epsilon: float = 0.3) -> dict[str, Any]:
    return {name: functools.partial(_named, name, epsilon) for name in names}


def _named(name: str, epsilon: float, env: Any, seed: int) -> Any:
    return named_policy(name, env, seed=seed, epsilon=epsilon)


def corridor_tasks(count: int, prefix: str = "f") -> list[Task]:
    return [scripted_task(f"{prefix}{i}", rooms=3 + i % 3, goal_item=ITEMS[i % 6], seed=i) for i in range(count)]


def real_env() -> ScriptedEnv:
    return ScriptedEnv(max_steps=MAX_STEPS)


# -- the interval -------------------------------------------------------------------------------------------------
def test_student_t_quantiles_match_the_tables() -> None:
    for df, table in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (15, 2.1314), (30, 2.0423), (120, 1.9799)):
        assert student_t_quantile(0.975, df) == pytest.approx(table, abs=1e-4)
    assert student_t_quantile(0.95, 10) == pytest.approx(1.8125, abs=1e-4)
    assert student_t_quantile(0.025, 15) == pytest.approx(-2.1314, abs=1e-4)
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi


def test_mean_interval_on_known_inputs() -> None:
    # differences 1, 0, 0, 1: mean 0.5, sd sqrt(1/3), half width t(0.975, 3) * sd / 2
    interval = mean_interval([1, 0, 0, 1])
    half = 3.182446 * math.sqrt(1 / 3) / 2
    assert interval.mean == 0.5 and interval.n == 4
    assert interval.low == pytest.approx(0.5 - half, abs=1e-5) and interval.high == pytest.approx(0.5 + half, abs=1e-5)
    constant = mean_interval([0.25] * 5)
    assert (constant.mean, constant.low, constant.high) == (0.25, 0.25, 0.25)
    single = mean_interval([1.0])
    assert (single.low, single.high) == (None, None) and single.text() == "+1.000 (n=1)"
    assert mean_interval([2, 4], confidence=0.9).high == pytest.approx(3 + 6.313752)  # sd sqrt(2), n 2
    with pytest.raises(ConfigError, match="at least one value"):
        mean_interval([])
    with pytest.raises(ConfigError, match="confidence"):
        mean_interval([1, 2], confidence=1.0)


# -- known gaps ---------------------------------------------------------------------------------------------------
def test_a_simulator_equal_to_the_real_env_has_no_gap() -> None:
    tasks = corridor_tasks(5)
    synthetic = PerturbedEnv(real_env, eps_r=0.0, eps_p=0.0, max_steps=MAX_STEPS, seed=3)
    result = policy_fidelity(real_env, synthetic, tasks, makers(), episodes=12, seed=40, batch_size=5)
    synthetic.close()
    assert [c.name for c in result.policies] == list(NAMES)
    assert result.tasks == 5 and result.max_steps == MAX_STEPS and result.target == SUCCESS_GAP_TARGET
    for comparison in result.policies:
        assert comparison.real == comparison.synthetic  # every episode the same, pair by pair
        assert comparison.episodes == [(tasks[i % 5].id, 40 + i) for i in range(12)]
        for metric in ("success", "return", "length"):
            gap = comparison.gap(metric)
            assert (gap.mean, gap.low, gap.high, gap.n) == (0.0, 0.0, 0.0, 12)
        assert comparison.unguided_steps == 0
    assert result.policy("expert").real.success == [True] * 12  # the scripted expert wins within the limit
    # the real side is the plain episodes of each policy
    env = real_env()
    for i in range(12):
        seed = 40 + i
        noisy_expert = named_policy("noisy-expert", env, seed=seed, epsilon=0.3)
        trajectory = play_episode(env, noisy_expert, tasks[i % 5], seed=seed)
        assert result.policy("noisy-expert").real.lengths[i] == trajectory.num_steps
    noisy = result.policy("noisy-expert").real.success
    random_success = result.policy("random").real.success
    assert 0 < sum(random_success) < 12 and sum(noisy) > sum(random_success)  # the three policies differ


def test_injected_reward_errors_move_synthetic_success_by_the_flips() -> None:
    tasks = corridor_tasks(6)
    for name in NAMES:
        synthetic = PerturbedEnv(real_env, eps_r=0.5, eps_p=0.0, max_steps=MAX_STEPS, seed=11)
        result = policy_fidelity(real_env, synthetic, tasks, makers([name]), episodes=16, seed=0, batch_size=8)
        synthetic.close()
        comparison = result.policy(name)
        flips = synthetic.stats.reward_errors
        assert flips["success_scored_0"] + flips["failure_scored_1"] > 0
        # the episodes are the real ones (reward errors do not change what the agent sees), the outcomes flipped
        assert comparison.real.lengths == comparison.synthetic.lengths
        expected = (flips["success_scored_0"] - flips["failure_scored_1"]) / 16
        assert comparison.gap("success").mean == pytest.approx(expected, abs=1e-12)
        flipped = [r != s for r, s in zip(comparison.real.success, comparison.synthetic.success, strict=True)]
        assert sum(flipped) == flips["success_scored_0"] + flips["failure_scored_1"]
        differences = [
            float(r) - float(s) for r, s in zip(comparison.real.success, comparison.synthetic.success, strict=True)
        ]
        assert comparison.gap("success") == mean_interval(differences)


def test_every_error_rate_1_turns_every_expert_success_into_a_failure() -> None:
    tasks = corridor_tasks(4)
    synthetic = PerturbedEnv(real_env, eps_r=1.0, max_steps=MAX_STEPS, seed=0)
    result = policy_fidelity(real_env, synthetic, tasks, makers(["expert"]), episodes=8)
    synthetic.close()
    expert = result.policy("expert")
    assert expert.real.success == [True] * 8 and expert.synthetic.success == [False] * 8
    gap = expert.gap("success")
    assert (gap.mean, gap.low, gap.high) == (1.0, 1.0, 1.0)
    assert result.as_dict()["policies"]["expert"]["success_gap_within_target"] is False
    assert "| expert | 8 | 1.000 / 0.000 | +1.000 [+1.000, +1.000] | no |" in result.markdown()


# -- the audit: the experience model's synthetic env ------------------------------------------------------------
class ReplayingExperienceModel:
    """Answers each query by replaying its episode in a real corridor: the real env's answer, exactly.

    ``seeds`` gives each task's episode seed; ``flip_success`` reports every success as a failure; ``never_done``
    lets episodes go on after the real one ended (the state after it unchanged).
    """

    def __init__(self, seeds: dict[str, int], *, flip_success: bool = False, never_done: bool = False) -> None:
        self.seeds = seeds
        self.flip_success = flip_success
        self.never_done = never_done

    def predict(self, queries: Sequence[ExperienceQuery]) -> list[ExperiencePrediction]:
        return [self._answer(query) for query in queries]

    def _answer(self, query: ExperienceQuery) -> ExperiencePrediction:
        env = ScriptedEnv(max_steps=None)
        env.reset(query.task, self.seeds.get(query.task.id, query.task.seed))
        for step in query.history:
            if env.done:
                break
            env.step(step.action)
        if env.done:  # the real episode ended in the history: nothing changes any more
            return ExperiencePrediction(reasoning="over", next_state=query.state, reward=0.0, done=False)
        result = env.step(query.action)
        success = bool(result.success) and not self.flip_success
        done = result.done and not self.never_done
        return ExperiencePrediction(
            reasoning="replayed in the real corridor",
            next_state=result.state,
            reward=1.0 if success else 0.0,
            done=done,
            success=success if done else None,
        )


def _audit(model: Any, tasks: list[Task], tmp_path: Path, names: Sequence[str] = NAMES) -> Any:
    setup = PolicyFidelitySetup(real_env=real_env, policies=makers(names), tasks=tasks, episodes=len(tasks), seed=50)
    return audit_experience_model(
        model,
        collect(2, offset=100),
        options=PromptOptions(history_window=MAX_STEPS + 1, max_retrieved=0),
        ablations=ABLATIONS[:1],
        open_loop_episodes=0,
        output_dir=tmp_path,
        permutations=10,
        progress=False,
        policy_fidelity=setup,
    )


def test_the_audit_reports_policy_fidelity_of_an_exact_experience_model(tmp_path: Path) -> None:
    tasks = corridor_tasks(10)
    seeds = {task.id: 50 + i for i, task in enumerate(tasks)}
    report = _audit(ReplayingExperienceModel(seeds), tasks, tmp_path)
    fidelity = report.policy_fidelity
    assert fidelity is not None and fidelity.max_steps == MAX_STEPS
    for comparison in fidelity.policies:
        assert comparison.real == comparison.synthetic
        assert comparison.gap("success").mean == 0.0 and comparison.gap("length").high == 0.0
    saved = json.loads((tmp_path / "audit.json").read_text())
    block = saved["policy_fidelity"]
    assert "teacher_forced" in saved["full"] and block["success_gap_target"] == 0.05
    assert set(block["policies"]) == set(NAMES) and block["tasks"] == 10 and block["max_steps"] == MAX_STEPS
    expert = block["policies"]["expert"]
    assert expert["success"]["real"]["mean"] == 1.0 and expert["success"]["gap"] == {
        "mean": 0.0,
        "low": 0.0,
        "high": 0.0,
        "n": 10,
    }
    assert expert["success_gap_within_target"] is True and len(expert["pairs"]) == 10
    markdown = (tmp_path / "audit.md").read_text()
    assert "Policy-level fidelity" in markdown and "| noisy-expert | 10 |" in markdown


def test_the_audit_measures_a_success_gap_when_the_model_misreports_rewards(tmp_path: Path) -> None:
    tasks = corridor_tasks(10)
    seeds = {task.id: 50 + i for i, task in enumerate(tasks)}
    report = _audit(ReplayingExperienceModel(seeds, flip_success=True), tasks, tmp_path)
    assert report.policy_fidelity is not None
    for comparison in report.policy_fidelity.policies:
        assert comparison.synthetic.success == [False] * 10
        assert comparison.real.lengths == comparison.synthetic.lengths
        assert comparison.gap("success").mean == pytest.approx(sum(comparison.real.success) / 10)
    assert report.policy_fidelity.policy("expert").gap("success").mean == 1.0


def test_an_expert_whose_real_episode_ended_is_counted_unguided(tmp_path: Path) -> None:
    tasks = corridor_tasks(4)
    seeds = {task.id: 50 + i for i, task in enumerate(tasks)}
    report = _audit(ReplayingExperienceModel(seeds, never_done=True), tasks, tmp_path, names=["expert"])
    assert report.policy_fidelity is not None
    expert = report.policy_fidelity.policy("expert")
    assert expert.synthetic.success == [False] * 4 and expert.synthetic.lengths == [MAX_STEPS] * 4
    # after the real win the expert has no plan: every later synthetic step is counted
    assert expert.unguided_steps == sum(MAX_STEPS - length for length in expert.real.lengths) > 0
    assert "Synthetic steps an expert took after its real episode had ended: expert" in report.markdown()


# -- bad input ----------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_the_reason() -> None:
    tasks = corridor_tasks(2)
    synthetic = PerturbedEnv(real_env, max_steps=MAX_STEPS)
    with pytest.raises(ConfigError, match="at least one task"):
        policy_fidelity(real_env, synthetic, [], makers())
    with pytest.raises(ConfigError, match="at least one policy"):
        policy_fidelity(real_env, synthetic, tasks, {})
    with pytest.raises(ConfigError, match="episodes must be >= 1"):
        policy_fidelity(real_env, synthetic, tasks, makers(), episodes=0)
    with pytest.raises(ConfigError, match="policy 'expert': expected a function"):
        policy_fidelity(real_env, synthetic, tasks, {"expert": "expert"})  # type: ignore[dict-item]
    longer = PerturbedEnv(real_env, max_steps=MAX_STEPS + 4)
    with pytest.raises(ConfigError, match=r"step limit \(10\) differs from the real env's \(6\)"):
        policy_fidelity(real_env, longer, tasks, makers())
    unlimited = BatchedSyntheticEnv(ReplayingExperienceModel({}))
    with pytest.raises(ConfigError, match="needs a step limit"):
        policy_fidelity(lambda: ScriptedEnv(max_steps=None), unlimited, tasks, makers())
    with pytest.raises(ConfigError, match="unknown policy 'expret'; named policies: expert, random, noisy-expert"):
        policy_fidelity(real_env, synthetic, tasks, makers(["expret"]))
    with pytest.raises(KeyError, match="no policy 'greedy'"):
        policy_fidelity(real_env, synthetic, tasks, makers(["random"]), episodes=2).policy("greedy")


def test_distinct_tasks_keeps_the_first_of_each() -> None:
    held_out = collect(3) + collect(2)
    assert [t.id for t in distinct_tasks(held_out)] == ["t0", "t1", "t2"]


# -- real TextWorld -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_textworld_at_zero_error_has_no_gap(tmp_path: Path) -> None:
    textworld = pytest.importorskip("dg_envs.textworld")
    settings = {"world_size": 3, "nb_objects": 4, "quest_length": 2}
    tasks = textworld.textworld_tasks("custom", count=4, seed=5, settings=settings, cache_dir=tmp_path / "games")
    make = functools.partial(textworld.TextWorldEnv, max_steps=8)
    synthetic = PerturbedEnv(make, max_steps=8, seed=2)
    result = policy_fidelity(make, synthetic, tasks, makers(), episodes=8, seed=7, batch_size=4)
    synthetic.close()
    for comparison in result.policies:
        assert comparison.real == comparison.synthetic, comparison.name
        assert comparison.gap("success").high == 0.0 and comparison.gap("length").low == 0.0
    assert result.policy("expert").real.success == [True] * 8
    assert sum(result.policy("random").real.success) < 8
