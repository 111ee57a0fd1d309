"""Swappable policies of the buffer: which synthetic transitions to evict, and how to sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dg_core import ConfigError, Source
from dg_replay._filters import ReplayFilter
from dg_replay._storage import SQLiteStorage

__all__ = [
    "EvictionPolicy",
    "FIFOEviction",
    "KeepAll",
    "ReservoirEviction",
    "Sampler",
    "UniformSampler",
]


@runtime_checkable
class EvictionPolicy(Protocol):
    """Chooses synthetic transitions to delete after a batch was stored; real ones are always kept."""

    def evictions(self, storage: SQLiteStorage, new_keys: Sequence[int], rng: np.random.Generator) -> list[int]:
        """Keys to delete, given the keys of the synthetic transitions just stored (oldest first)."""
        ...


class KeepAll:
    """Never evict."""

    def evictions(self, storage: SQLiteStorage, new_keys: Sequence[int], rng: np.random.Generator) -> list[int]:
        """Nothing."""
        return []


class FIFOEviction:
    """Keep at most ``capacity`` synthetic transitions: the oldest go first."""

    def __init__(self, capacity: int) -> None:
        """Args:
        capacity: Synthetic transitions kept (real ones are not counted and never evicted).
        """
        if capacity < 0:
            raise ConfigError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity

    def evictions(self, storage: SQLiteStorage, new_keys: Sequence[int], rng: np.random.Generator) -> list[int]:
        """The oldest synthetic keys beyond ``capacity``."""
        excess = storage.count(ReplayFilter(source=Source.SYNTHETIC.value)) - self.capacity
        return storage.oldest(Source.SYNTHETIC, excess) if excess > 0 else []


class ReservoirEviction:
    """Keep a uniform random sample of ``capacity`` synthetic transitions out of all ever offered.

    Algorithm R: the n-th synthetic transition is kept with probability ``capacity / n``, replacing a
    kept one chosen uniformly. ``n`` lives in the storage, so it continues across processes.
    """

    SEEN_KEY = "reservoir_seen"

    def __init__(self, capacity: int) -> None:
        """Args:
        capacity: Synthetic transitions kept.
        """
        if capacity < 1:
            raise ConfigError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity

    def evictions(self, storage: SQLiteStorage, new_keys: Sequence[int], rng: np.random.Generator) -> list[int]:
        """New keys that lose the draw, and kept keys that new ones replace."""
        seen = int(storage.meta(self.SEEN_KEY) or 0)
        new = [int(key) for key in new_keys]
        new_set = set(new)
        stored = storage.keys(ReplayFilter(source=Source.SYNTHETIC.value))
        # The reservoir as it was before this batch: every stored synthetic key that is not new.
        reservoir = [int(key) for key in stored if int(key) not in new_set]
        evicted: list[int] = []
        for key in new:
            seen += 1
            if len(reservoir) < self.capacity:
                reservoir.append(key)
                continue
            slot = int(rng.integers(0, seen))
            if slot < self.capacity:
                evicted.append(reservoir[slot])
                reservoir[slot] = key
            else:
                evicted.append(key)
        storage.set_meta(self.SEEN_KEY, str(seen))
        return evicted


@runtime_checkable
class Sampler(Protocol):
    """Chooses keys to sample among the stored transitions passing a filter."""

    def sample(
        self, storage: SQLiteStorage, count: int, filters: ReplayFilter | None, rng: np.random.Generator
    ) -> NDArray[np.int64]:
        """Up to ``count`` keys."""
        ...


class UniformSampler:
    """Uniformly at random, without replacement unless ``replace``."""

    def __init__(self, *, replace: bool = False) -> None:
        """Args:
        replace: Draw with replacement (then ``count`` may exceed the number stored).
        """
        self.replace = replace

    def sample(
        self, storage: SQLiteStorage, count: int, filters: ReplayFilter | None, rng: np.random.Generator
    ) -> NDArray[np.int64]:
        """Up to ``count`` keys, uniformly."""
        keys = storage.keys(filters)
        if len(keys) == 0 or count <= 0:
            return np.zeros(0, dtype=np.int64)
        if self.replace:
            return np.asarray(rng.choice(keys, size=count, replace=True), dtype=np.int64)
        return np.asarray(rng.choice(keys, size=min(count, len(keys)), replace=False), dtype=np.int64)
