from __future__ import annotations

import random
from collections import Counter

import pytest

from dg_core import ConfigError
from dg_curriculum import SelectionConfig, group_reward_variance, select_batch, weighted_sample


@pytest.mark.parametrize(
    ("rewards", "variance"),
    [([1, 0, 1, 0], 0.25), ([1, 1, 1], 0.0), ([0.5, 1.5], 0.25), ([1], 0.0), ([], 0.0), ([1, 0, 0, 0], 0.1875)],
)
def test_group_reward_variance(rewards: list[float], variance: float) -> None:
    assert group_reward_variance(rewards) == pytest.approx(variance)


def test_binary_variance_is_p_times_one_minus_p() -> None:
    for successes in range(9):
        rewards = [1.0] * successes + [0.0] * (8 - successes)
        p = successes / 8
        assert group_reward_variance(rewards) == pytest.approx(p * (1 - p))


def test_temperature_zero_takes_the_top_scores() -> None:
    ids = [f"t{i}" for i in range(6)]
    scores = [0.0, 0.25, 0.1, 0.2, 0.05, 0.15]
    assert weighted_sample(ids, scores, 3, temperature=0, rng=random.Random(0)) == ["t1", "t3", "t5"]


def test_temperature_sharpens_and_flattens() -> None:
    ids = ["low", "high"]
    scores = [0.0, 0.25]
    counts = {}
    for temperature in (0.05, 100.0):
        rng = random.Random(1)
        counts[temperature] = Counter(
            weighted_sample(ids, scores, 1, temperature=temperature, rng=rng)[0] for _ in range(4000)
        )
    # exp(0.25 / 0.05) = e^5: "high" is drawn with probability e^5 / (1 + e^5) ~ 0.993
    assert counts[0.05]["high"] / 4000 == pytest.approx(0.9933, abs=0.01)
    assert counts[100.0]["high"] / 4000 == pytest.approx(0.5006, abs=0.03)


def test_lambda_caps_generated_share_and_seeds_have_a_minimum() -> None:
    seeds = {f"s{i}": 0.0 for i in range(10)}
    generated = {f"g{i}": 0.25 for i in range(10)}  # far more informative, yet capped
    rng = random.Random(2)
    batch = select_batch(seeds, generated, 8, SelectionConfig(generated_share=0.25, temperature=0.01), rng)
    assert sum(tid.startswith("g") for tid in batch) == 2 and len(set(batch)) == 8
    batch = select_batch(
        seeds, generated, 8, SelectionConfig(generated_share=1.0, min_seed_tasks=3, temperature=0.01), rng
    )
    assert sum(tid.startswith("s") for tid in batch) == 3
    batch = select_batch(seeds, generated, 8, SelectionConfig(generated_share=0.0), rng)
    assert all(tid.startswith("s") for tid in batch)


def test_top_fraction_restricts_candidates() -> None:
    seeds = {f"s{i}": i / 100 for i in range(10)}
    rng = random.Random(3)
    for _ in range(20):
        batch = select_batch(seeds, {}, 3, SelectionConfig(top_fraction=0.3, temperature=1.0), rng)
        assert set(batch) == {"s7", "s8", "s9"}


def test_small_pools_repeat_seeds_and_keep_lambda() -> None:
    batch = select_batch(
        {"s0": 0.1, "s1": 0.2}, {"g0": 0.25}, 6, SelectionConfig(generated_share=0.5), random.Random(4)
    )
    assert len(batch) == 6
    assert batch.count("g0") == 1 and batch.count("s0") + batch.count("s1") == 5
    only_generated = select_batch({}, {"g0": 0.1}, 3, SelectionConfig(generated_share=0.5), random.Random(5))
    assert only_generated == ["g0"] * 3


def test_bad_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        SelectionConfig(temperature=-1)
    with pytest.raises(ConfigError, match=r"generated_share \(lambda\) must be in \[0, 1\]"):
        SelectionConfig(generated_share=1.5)
    with pytest.raises(ConfigError, match="top_fraction"):
        SelectionConfig(top_fraction=0)
    with pytest.raises(ConfigError, match="pool is empty"):
        select_batch({}, {}, 4, SelectionConfig(), random.Random(0))
    with pytest.raises(ConfigError, match="batch size must be >= 1"):
        select_batch({"s": 0.0}, {}, 0, SelectionConfig(), random.Random(0))
