"""The task pool: seed tasks and generated variations with lineage, deduplicated, persisted atomically."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dg_core import ConfigError, DGError, Task

POOL_FORMAT = 1
_WORD = re.compile(r"[a-z0-9]+")


def normalize_instruction(text: str) -> str:
    """Lower-case words only: what two instructions must share to count as the same task."""
    return " ".join(_WORD.findall(text.lower()))


def world_key(task: Task) -> str:
    """What fixes a task's world: the environment, its config and its seed."""
    return json.dumps([task.env_id, task.config, task.seed], sort_keys=True, default=str)


class PoolFileError(DGError, ValueError):
    """A pool file that cannot be read, naming the file and what is wrong."""


@dataclass
class TaskRecord:
    """A task in the pool with what the curriculum learned about it."""

    task: Task
    reports: int = 0
    """How many groups of rollouts were reported."""
    last_rewards: list[float] = field(default_factory=list)
    """Rewards of the latest reported group."""
    variance: float | None = None
    """Group reward variance of the latest report (``None`` until played)."""
    mean_reward: float | None = None
    """Mean reward of the latest report."""


class TaskPool:
    """Seed tasks and generated variations, deduplicated by normalized text and (optionally) embeddings.

    Args:
        encoder: Optional embedder (``encode(texts) -> rows``, e.g. a dg-replay encoder) for near-duplicates.
        near_duplicate_threshold: Cosine similarity at or above which a new instruction duplicates one in
            the pool (only with an encoder).
    """

    def __init__(self, *, encoder: Any = None, near_duplicate_threshold: float = 0.95) -> None:
        self.encoder = encoder
        self.threshold = near_duplicate_threshold
        self.records: dict[str, TaskRecord] = {}
        self._normalized: dict[tuple[str, str], str] = {}
        self._embeddings: list[np.ndarray] = []
        self._embedded_ids: list[str] = []

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.records

    def get(self, task_id: str) -> TaskRecord:
        """The record of ``task_id`` (``KeyError`` naming it otherwise)."""
        try:
            return self.records[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r} in the pool") from None

    def duplicate_of(self, task: Task) -> str | None:
        """Id of a pooled task that ``task`` duplicates, if any.

        Two tasks are duplicates when they live in the same world (environment, config and seed) and their
        instructions match after normalisation or, with an encoder, are near-identical in embedding space.
        The same instruction over two different games is two tasks.
        """
        world = world_key(task)
        found = self._normalized.get((world, normalize_instruction(task.instruction)))
        if found is not None:
            return found
        rows = [i for i, tid in enumerate(self._embedded_ids) if world_key(self.records[tid].task) == world]
        if self.encoder is not None and rows:
            vector = self._embed([task.instruction])[0]
            similarities = np.stack([self._embeddings[i] for i in rows]) @ vector
            best = int(np.argmax(similarities))
            if float(similarities[best]) >= self.threshold:
                return self._embedded_ids[rows[best]]
        return None

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(self.encoder.encode(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalized: np.ndarray = vectors / np.maximum(norms, 1e-12)
        return normalized

    def add(self, task: Task) -> bool:
        """Add a task; returns False (and keeps the pool unchanged) for an id or instruction already present."""
        if task.id in self.records or self.duplicate_of(task) is not None:
            return False
        if task.parent_id is not None and task.parent_id not in self.records:
            raise ConfigError(f"task {task.id!r} names parent {task.parent_id!r}, which is not in the pool")
        self.records[task.id] = TaskRecord(task=task)
        self._normalized[(world_key(task), normalize_instruction(task.instruction))] = task.id
        if self.encoder is not None:
            self._embeddings.append(self._embed([task.instruction])[0])
            self._embedded_ids.append(task.id)
        return True

    def add_many(self, tasks: Iterable[Task]) -> int:
        """Add tasks in order; returns how many were new."""
        return sum(self.add(task) for task in tasks)

    @property
    def seed_ids(self) -> list[str]:
        """Tasks from the real environment (generation 0)."""
        return [tid for tid, record in self.records.items() if record.task.generation == 0]

    @property
    def generated_ids(self) -> list[str]:
        """Generated variations (generation >= 1)."""
        return [tid for tid, record in self.records.items() if record.task.generation > 0]

    def size_by_generation(self) -> dict[int, int]:
        """How many tasks each generation holds."""
        return dict(sorted(Counter(r.task.generation for r in self.records.values()).items()))

    def lineage(self, task_id: str) -> list[str]:
        """Ids from the seed task down to ``task_id``."""
        chain = [task_id]
        while (parent := self.get(chain[-1]).task.parent_id) is not None:
            chain.append(parent)
        return chain[::-1]

    # -- persistence -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The pool as JSON-able data (tasks, lineage and reported statistics): what :meth:`save` writes."""
        return {
            "format": POOL_FORMAT,
            "tasks": [
                {
                    "task": record.task.model_dump(mode="json"),
                    "reports": record.reports,
                    "last_rewards": record.last_rewards,
                    "variance": record.variance,
                    "mean_reward": record.mean_reward,
                }
                for record in self.records.values()
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the pool as JSON atomically (a kill during save leaves the previous file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".saving")
        with staging.open("w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> TaskPool:
        """Read a pool written by :meth:`save` (encoder settings as in the constructor)."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PoolFileError(f"{path}: not a task pool file ({error})") from error
        return cls.from_dict(payload, origin=str(path), **kwargs)

    @classmethod
    def from_dict(cls, payload: Any, *, origin: str = "pool data", **kwargs: Any) -> TaskPool:
        """A pool from :meth:`to_dict`'s data; errors name ``origin`` (a file, a checkpoint) and the entry."""
        if not isinstance(payload, dict) or payload.get("format") != POOL_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else None
            raise PoolFileError(f"{origin}: unsupported pool format {found!r}; this dg-curriculum reads {POOL_FORMAT}")
        pool = cls(**kwargs)
        for number, entry in enumerate(payload.get("tasks", []), start=1):
            try:
                task = Task.model_validate(entry["task"])
                pool.records[task.id] = TaskRecord(
                    task=task,
                    reports=int(entry["reports"]),
                    last_rewards=[float(r) for r in entry["last_rewards"]],
                    variance=entry["variance"],
                    mean_reward=entry["mean_reward"],
                )
            except (KeyError, TypeError, ValueError) as error:
                raise PoolFileError(f"{origin}: task entry {number} is malformed ({error})") from error
            pool._normalized[(world_key(task), normalize_instruction(task.instruction))] = task.id
        if pool.encoder is not None and pool.records:
            ids = list(pool.records)
            vectors = pool._embed([pool.records[i].task.instruction for i in ids])
            pool._embeddings = list(vectors)
            pool._embedded_ids = ids
        return pool
