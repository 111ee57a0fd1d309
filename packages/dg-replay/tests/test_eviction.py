from __future__ import annotations

import numpy as np
import pytest

from dg_core import ConfigError, Source
from dg_replay import FIFOEviction, HashingEncoder, ReplayBuffer, ReservoirEviction

from .conftest import make_steps, make_task


def assert_consistent(buffer: ReplayBuffer) -> None:
    assert sorted(buffer.index.keys().tolist()) == buffer.storage.keys().tolist()


def test_fifo_keeps_all_real_and_the_newest_synthetic() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32), eviction=FIFOEviction(capacity=25))
    real = buffer.add(make_steps(40), "real", task=make_task("real"))
    evicted: list[int] = []
    synthetic_keys: list[int] = []
    for batch in range(6):
        result = buffer.add(
            make_steps(10, source=Source.SYNTHETIC, prefix=f"dream{batch}"), "synthetic", task=make_task(f"s{batch}")
        )
        synthetic_keys.extend(key for key in result.keys if key is not None)
        evicted.extend(result.evicted)
    stats = buffer.stats()
    assert stats.by_source == {"real": 40, "synthetic": 25}
    kept = buffer.storage.keys(None).tolist()
    assert set(real.keys) <= set(kept)
    all_synthetic = list(range(41, 101))
    assert [key for key in kept if key > 40] == all_synthetic[-25:]
    assert sorted(evicted) == all_synthetic[:35]
    assert_consistent(buffer)


def test_fifo_batch_larger_than_capacity_keeps_its_tail() -> None:
    buffer = ReplayBuffer(encoder=HashingEncoder(32), eviction=FIFOEviction(capacity=5))
    result = buffer.add(make_steps(12, source=Source.SYNTHETIC), "synthetic", task=make_task())
    assert result.keys == [None] * 7 + list(range(8, 13))
    assert_consistent(buffer)


def test_reservoir_keeps_capacity_and_a_uniform_sample() -> None:
    offered = 2000
    capacity = 200
    inclusion = np.zeros(offered)
    for seed in range(5):
        buffer = ReplayBuffer(encoder=HashingEncoder(16), eviction=ReservoirEviction(capacity), seed=seed)
        buffer.add(make_steps(10), "real", task=make_task("real"))
        for batch in range(offered // 100):
            buffer.add(
                make_steps(100, source=Source.SYNTHETIC, start=batch * 100), "synthetic", task=make_task("dream")
            )
        assert buffer.stats().by_source == {"real": 10, "synthetic": capacity}
        assert buffer.storage.meta("reservoir_seen") == str(offered)
        assert_consistent(buffer)
        kept = buffer.storage.keys(None)
        inclusion[kept[kept > 10] - 11] += 1
    # Each offered step is kept with probability capacity / offered = 0.1: early and late alike.
    first_half, second_half = inclusion[: offered // 2].mean() / 5, inclusion[offered // 2 :].mean() / 5
    assert first_half == pytest.approx(0.1, abs=0.02)
    assert second_half == pytest.approx(0.1, abs=0.02)


def test_capacities_are_validated() -> None:
    with pytest.raises(ConfigError, match="capacity must be >= 0"):
        FIFOEviction(-1)
    with pytest.raises(ConfigError, match="capacity must be >= 1"):
        ReservoirEviction(0)
