"""A Lightning data module fed by the rollout engine: every batch is a fresh collection of episodes."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from dg_core import ConfigError, Task
from dg_rl._batch import RolloutBatch, build_batch
from dg_rl._rollout import RolloutEngine, Rollouts, RolloutStats

__all__ = ["RolloutDataModule", "TaskSource"]


@runtime_checkable
class TaskSource(Protocol):
    """Where a curriculum plugs in: it picks each batch's tasks and hears back each task's group rewards.

    dg-curriculum's ``Curriculum`` is one (dg-rl does not import it).
    """

    def next_batch(self, size: int) -> list[Task]:
        """The ``size`` tasks to roll out next."""
        ...

    def report(self, task_id: str, group_rewards: Sequence[float]) -> float:
        """The returns of one task's group of episodes."""
        ...


class _RolloutStream(IterableDataset[RolloutBatch]):
    def __init__(self, source: RolloutDataModule) -> None:
        self.source = source

    def __iter__(self) -> Iterator[RolloutBatch]:
        while not self.source.finished():
            batch = self.source.next_batch()
            for _ in range(self.source.updates_per_batch):
                yield batch


class RolloutDataModule(L.LightningDataModule):
    """Collects ``tasks_per_step`` tasks x ``group_size`` episodes with the current policy per batch.

    Under DDP every rank plays its own slice of the tasks drawn for a step (the draw is the same on every
    rank), so ranks train on different episodes. The step training has reached is saved in checkpoints, so
    a resumed run continues the task sequence where it stopped (a batch collected ahead is collected again).

    Args:
        engine: The rollout engine (its policy wraps the model being trained).
        tasks: Training tasks, drawn uniformly per step (ignored when ``task_source`` is given).
        tasks_per_step: Tasks per rank per batch.
        updates_per_batch: Optimiser steps taken on each collected batch (ratios move off 1 after the first).
        seed: Seed of the task draw and of the episodes of tasks without their own seed.
        task_source: A curriculum that picks the tasks of every batch and receives each task's group returns
            after collection. Under DDP each rank asks its own source (the draw is not shared).
        on_batch: Called with each collected batch's rollouts (for counters, logs, replay writes).
        max_batches: Collect at most this many batches in all (set it to the run's ``max_steps`` divided by
            ``updates_per_batch``): the loader collects one batch ahead of training, so without it the run's
            last collection is never trained on.
        stop_when: Asked before every collection; once it returns True nothing more is collected and the
            trainer is told to stop (a real-transition budget: no transition is collected past it).
    """

    def __init__(
        self,
        engine: RolloutEngine,
        tasks: Sequence[Task] = (),
        *,
        tasks_per_step: int = 4,
        updates_per_batch: int = 1,
        seed: int = 0,
        task_source: TaskSource | None = None,
        on_batch: Callable[[Rollouts], object] | None = None,
        max_batches: int | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        if max_batches is not None and max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1, got {max_batches}")
        if not tasks and task_source is None:
            raise ConfigError("RolloutDataModule needs at least one task (or a task_source)")
        if tasks_per_step < 1 or updates_per_batch < 1:
            raise ConfigError("tasks_per_step and updates_per_batch must be >= 1")
        self.engine = engine
        self.tasks = list(tasks)
        self.tasks_per_step = tasks_per_step
        self.updates_per_batch = updates_per_batch
        self.seed = seed
        self.task_source = task_source
        self.on_batch = on_batch
        self.max_batches = max_batches
        self.stop_when = stop_when
        self.step = 0
        self.consumed = 0
        self.last_stats: RolloutStats | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def draw_tasks(self, step: int) -> list[Task]:
        """This rank's tasks for ``step``."""
        if self.task_source is not None:
            return list(self.task_source.next_batch(self.tasks_per_step))
        rank, world = self._rank()
        rng = random.Random(f"{self.seed}-{step}")
        needed = self.tasks_per_step * world
        if needed <= len(self.tasks):
            drawn = rng.sample(self.tasks, needed)
        else:
            drawn = [rng.choice(self.tasks) for _ in range(needed)]
        return drawn[rank * self.tasks_per_step : (rank + 1) * self.tasks_per_step]

    def finished(self) -> bool:
        """Whether no more batches will be collected (``max_batches`` reached or ``stop_when`` says so)."""
        done = (self.max_batches is not None and self.step >= self.max_batches) or (
            self.stop_when is not None and bool(self.stop_when())
        )
        trainer = getattr(self, "trainer", None)
        if done and trainer is not None:
            trainer.should_stop = True  # an exhausted stream must not start an empty epoch after another
        return done

    def next_batch(self) -> RolloutBatch:
        """Collect the next batch with the current policy."""
        tasks = self.draw_tasks(self.step)
        policy = self.engine.policy
        rollouts = self.engine.collect(tasks, seed=self.seed * 1_000_003 + self.step * 1_009)
        if self.task_source is not None:
            size = rollouts.group_size
            for start in range(0, len(rollouts.episodes), size):
                group = rollouts.episodes[start : start + size]
                self.task_source.report(group[0].task.id, [episode.episode_return for episode in group])
        if self.on_batch is not None:
            self.on_batch(rollouts)
        batch = build_batch(rollouts, mode=policy.mode, pad_id=policy.pad_id)
        batch["batch_id"] = torch.tensor(self.step, dtype=torch.long)
        self.last_stats = rollouts.stats
        self.step += 1
        return batch

    def train_dataloader(self) -> DataLoader[RolloutBatch]:
        """An endless stream of rollout batches (bound the run with ``Trainer(max_steps=...)``)."""
        return DataLoader(_RolloutStream(self), batch_size=None, num_workers=0)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note which batch training has reached (the loader collects one batch ahead)."""
        self.consumed = int(batch["batch_id"]) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the first batch step training has not reached yet."""
        return {"step": self.consumed, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint's step."""
        self.step = self.consumed = int(state_dict["step"])
