"""A Lightning data module fed by the rollout engine: every batch is a fresh collection of episodes."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from dg_core import ConfigError, Task
from dg_rl._batch import RolloutBatch, build_batch, stats_keys
from dg_rl._rollout import RolloutEngine, Rollouts, RolloutStats

__all__ = ["RolloutDataModule", "TaskSource"]

TICKET_KEY = "collect_batch"


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


class _RolloutStream(IterableDataset[dict[str, Any]]):
    """Tickets, not batches: Lightning's loader fetches one item ahead of training, so collecting here would play
    every batch with the weights of one update earlier and leave its transitions in counters, curriculum and
    replay before the checkpoint of the step before. The data module collects a ticket's batch when training
    reaches it (``on_before_batch_transfer``)."""

    def __init__(self, source: RolloutDataModule) -> None:
        self.source = source

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while not self.source.finished():
            step = self.source.step
            self.source.step += 1
            for repeat in range(self.source.updates_per_batch):
                yield {TICKET_KEY: step, "repeat": repeat}


class RolloutDataModule(L.LightningDataModule):
    """Collects ``tasks_per_step`` tasks x ``group_size`` episodes with the current policy per batch.

    A batch is collected when training reaches it (the loader only hands out tickets ahead), so every batch is
    played by the latest weights, and a checkpoint is one consistent cut: the step, the task source's state and
    the random state are saved with it, and a resumed run continues exactly where the checkpointed one was.

    Under a distributed strategy (DDP, FSDP; any launcher) the run is rank-correct:

    - **one draw per step**: ``tasks_per_step x world_size`` tasks are drawn for the whole step and rank ``r``
      plays the ``r``-th slice. Uniform draws come from a seed shared by all ranks. With a ``task_source``,
      every rank asks its own source (the sources hold the same state, so they draw the same) and rank 0's
      draw is broadcast and played; if any rank's draw or source state (a digest of ``state_dict()``) differs
      from rank 0's (a generator that sampled differently), rank 0's state is broadcast and loaded
      (``task_source_resyncs`` counts it), so the sources never drift apart.
    - **every rank hears every group**: the group returns of all ranks are gathered and reported, in rank
      order, to every rank's source, so each source holds what one process fed the whole step would hold, and
      rank 0's checkpoint of it is complete.
    - **one global count**: ``on_stats`` receives the step's statistics summed over all ranks (the same on
      every rank), so a budget counted there is global; ``stop_when``'s answer is combined across ranks (any
      rank that says stop stops all), so no rank waits alone at a collective. ``batch["stats"]`` holds the
      global statistics too, so ``rollout/*`` logs are over all ranks.

    Args:
        engine: The rollout engine (its policy wraps the model being trained).
        tasks: Training tasks, drawn uniformly per step (ignored when ``task_source`` is given).
        tasks_per_step: Tasks per rank per batch.
        updates_per_batch: Optimiser steps taken on each collected batch (ratios move off 1 after the first).
        seed: Seed of the task draw and of the episodes of tasks without their own seed.
        task_source: A curriculum that picks the tasks of every batch and receives each task's group returns
            after collection (of every rank, see above). If it has ``state_dict`` / ``load_state_dict``, its
            state travels in checkpoints (and keeps the ranks' sources identical).
        on_batch: Called with each collected batch's rollouts, this rank's episodes only (replay writes, logs).
        max_batches: Collect at most this many batches in all (the run's ``max_steps`` divided by
            ``updates_per_batch``).
        stop_when: Asked before every collection; once it returns True nothing more is collected and the
            trainer is told to stop (a real-transition budget: no transition is collected past it). Count the
            budget in ``on_stats`` to count every rank's transitions.
        on_stats: Called with each collection's statistics over all ranks (counts summed, rates over all
            episodes, ``seconds`` the slowest rank's); the same values on every rank. Without a distributed
            strategy these are the batch's own statistics.
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
        on_stats: Callable[[RolloutStats], object] | None = None,
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
        self.on_stats = on_stats
        self.step = 0
        self.consumed = 0
        self.last_stats: RolloutStats | None = None
        """This rank's statistics of the latest collection."""
        self.last_global_stats: RolloutStats | None = None
        """The latest collection's statistics over all ranks (what ``on_stats`` received)."""
        self.last_draw: list[Task] = []
        """Every task drawn for the latest collected step, in rank order (the same on every rank)."""
        self.last_tasks: list[Task] = []
        """This rank's slice of ``last_draw``."""
        self.task_source_resyncs = 0
        """Steps at which some rank's task source drew differently from rank 0's or held another state (rank 0's
        draw is played; a source with ``state_dict`` / ``load_state_dict`` is given rank 0's state)."""
        self._collected: tuple[int, RolloutBatch] | None = None
        self._pending_rng: dict[str, Any] | None = None

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _strategy(self) -> Any:
        """The trainer's strategy when this process is one of several ranks (``None`` otherwise)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or int(trainer.world_size) < 2:
            return None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        return trainer.strategy

    def draw_tasks(self, step: int) -> list[Task]:
        """This rank's tasks for ``step`` (the whole step's draw is kept in ``last_draw``).

        With a ``task_source`` this asks the source (which moves it on), and under a distributed strategy it is a
        collective: every rank must call it for the same step.
        """
        rank, world = self._rank()
        if self.task_source is not None:
            drawn = self._source_draw(self.task_source, world)
        else:
            rng = random.Random(f"{self.seed}-{step}")
            needed = self.tasks_per_step * world
            if needed <= len(self.tasks):
                drawn = rng.sample(self.tasks, needed)
            else:
                drawn = [rng.choice(self.tasks) for _ in range(needed)]
        self.last_draw = drawn
        self.last_tasks = drawn[rank * self.tasks_per_step : (rank + 1) * self.tasks_per_step]
        return list(self.last_tasks)

    def _source_draw(self, source: TaskSource, world: int) -> list[Task]:
        """The step's tasks from the task source: rank 0's draw, with every rank's source kept in rank 0's state."""
        needed = self.tasks_per_step * world
        drawn = list(source.next_batch(needed))
        if len(drawn) != needed:
            raise ConfigError(
                f"the task source returned {len(drawn)} tasks when asked for {needed} "
                f"(tasks_per_step {self.tasks_per_step} x {world} ranks)"
            )
        strategy = self._strategy()
        if strategy is None:
            return drawn
        get_state = getattr(source, "state_dict", None)
        digest = _digest(get_state()) if callable(get_state) else None
        leader_drawn, leader_digest = strategy.broadcast((drawn, digest), src=0)
        same = drawn == leader_drawn and digest == leader_digest
        if not bool(strategy.reduce_boolean_decision(same, all=True)):
            # A source drew differently somewhere (e.g. a task generator that sampled another variation):
            # every rank continues from rank 0's state.
            set_state = getattr(source, "load_state_dict", None)
            if callable(get_state) and callable(set_state):
                leader_state = strategy.broadcast(get_state() if self._rank()[0] == 0 else None, src=0)
                if self._rank()[0] != 0:
                    set_state(leader_state)
            self.task_source_resyncs += 1
        return list(leader_drawn)

    def finished(self) -> bool:
        """Whether no more batches will be collected (``max_batches`` reached or ``stop_when`` says so)."""
        done = (self.max_batches is not None and self.step >= self.max_batches) or self._stop_asked()
        trainer = getattr(self, "trainer", None)
        if done and trainer is not None:
            trainer.should_stop = True  # an exhausted stream must not start an empty epoch after another
        return done

    def _stop_asked(self) -> bool:
        """``stop_when``'s answer, the same on every rank (any rank that says stop stops all)."""
        if self.stop_when is None:
            return False
        stop = bool(self.stop_when())
        strategy = self._strategy()
        return bool(strategy.reduce_boolean_decision(stop, all=False)) if strategy is not None else stop

    def next_batch(self) -> RolloutBatch:
        """Collect the next batch with the current policy (outside a trainer: tests, scripts)."""
        batch = self._collect(self.step)
        self.step += 1
        return batch

    def _collect(self, step: int) -> RolloutBatch:
        if self._pending_rng is not None:  # a resumed run: the random state the checkpointed run had here
            _set_rng_state(self._pending_rng, getattr(self.engine.policy, "generator", None))
            self._pending_rng = None
        tasks = self.draw_tasks(step)
        policy = self.engine.policy
        rollouts = self.engine.collect(tasks, seed=self.seed * 1_000_003 + step * 1_009)
        size = rollouts.group_size
        groups = [
            (rollouts.episodes[start].task.id, [e.episode_return for e in rollouts.episodes[start : start + size]])
            for start in range(0, len(rollouts.episodes), size)
        ]
        totals = _totals(rollouts)
        strategy = self._strategy()
        if strategy is not None:  # one gather: every rank's groups and counts, in rank order
            parts: list[Any] = [None] * int(strategy.world_size)
            torch.distributed.all_gather_object(parts, (groups, totals))
            groups = [group for part_groups, _ in parts for group in part_groups]
            global_stats = _sum_stats([part_totals for _, part_totals in parts])
        else:
            global_stats = rollouts.stats
        if self.task_source is not None:
            for task_id, rewards in groups:
                self.task_source.report(task_id, rewards)
        if self.on_batch is not None:
            self.on_batch(rollouts)
        if self.on_stats is not None:
            self.on_stats(global_stats)
        batch = build_batch(rollouts, mode=policy.mode, pad_id=policy.pad_id)
        batch["batch_id"] = torch.tensor(step, dtype=torch.long)
        batch["stats"] = torch.tensor([global_stats.as_dict()[key] for key in stats_keys()], dtype=torch.float64)
        self.last_stats = rollouts.stats
        self.last_global_stats = global_stats
        return batch

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """An endless stream of batch tickets (bound the run with ``Trainer(max_steps=...)``): each ticket's
        batch is collected when training reaches it, with the weights of every update before it."""
        return DataLoader(_RolloutStream(self), batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Collect the batch of a ticket the loader fetched ahead, now that training has reached it."""
        if not (isinstance(batch, dict) and TICKET_KEY in batch):
            return batch
        step = int(batch[TICKET_KEY])
        if self._collected is None or self._collected[0] != step:
            if self._stop_asked():
                # Issued before the last collection spent the budget: nothing is collected for it.
                trainer = getattr(self, "trainer", None)
                if trainer is not None:
                    trainer.should_stop = True
                raise StopIteration
            self._collected = (step, self._collect(step))
        self.consumed = step + 1
        return self._collected[1]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the first batch step not collected yet, the task source's state (when it has
        ``state_dict``) and the random state the next collection starts from. Collection happens when training
        reaches a batch, so at a checkpoint every collected batch has been trained on and nothing else was
        collected: a resumed run plays exactly what the uninterrupted run would have."""
        sampler = getattr(self.engine.policy, "generator", None)
        state: dict[str, Any] = {"step": self.consumed, "seed": self.seed, "rng": _rng_state(sampler)}
        source_state = getattr(self.task_source, "state_dict", None)
        if callable(source_state):
            state["task_source"] = source_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a checkpoint's step (the random state is restored at the next collection, so that
        nothing Lightning draws while it sets up the loader shifts it)."""
        self.step = self.consumed = int(state_dict["step"])
        self._collected = None
        self._pending_rng = state_dict.get("rng")
        if "task_source" in state_dict:
            load = getattr(self.task_source, "load_state_dict", None)
            if not callable(load):
                raise ConfigError("the checkpoint holds a task source's state, but this run's task source takes none")
            load(state_dict["task_source"])


def _rng_state(sampler: torch.Generator | None) -> dict[str, Any]:
    """The random states a collection draws from: the policy's sampling generator, torch's and Python's."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if isinstance(sampler, torch.Generator):
        state["policy"] = sampler.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], sampler: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    if "policy" in state and isinstance(sampler, torch.Generator):
        sampler.set_state(state["policy"])
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_NOT_SUMMED = ("success_rate", "mean_return", "seconds")
_SUMMED = tuple(field.name for field in fields(RolloutStats) if field.name not in _NOT_SUMMED)
"""The counts of :class:`RolloutStats`: a step's total is the sum over ranks."""


def _totals(rollouts: Rollouts) -> dict[str, float]:
    """What one rank contributes to the step's statistics: its counts, successes, return sum and seconds."""
    stats = rollouts.stats
    totals: dict[str, float] = {name: float(getattr(stats, name)) for name in _SUMMED}
    totals["successes"] = float(sum(episode.success for episode in rollouts.episodes))
    totals["return_sum"] = float(sum(episode.episode_return for episode in rollouts.episodes))
    totals["seconds"] = float(stats.seconds)
    return totals


def _sum_stats(parts: Sequence[dict[str, float]]) -> RolloutStats:
    """The step's statistics over all ranks (summed in rank order, so every rank computes the same values)."""
    counts = {name: int(sum(part[name] for part in parts)) for name in _SUMMED}
    episodes = counts["episodes"]
    successes = sum(part["successes"] for part in parts)
    return_sum = sum(part["return_sum"] for part in parts)
    stats = RolloutStats(**counts)
    stats.success_rate = successes / episodes if episodes else 0.0
    stats.mean_return = return_sum / episodes if episodes else 0.0
    stats.seconds = max(part["seconds"] for part in parts)
    return stats


def _digest(state: Any) -> str:
    """A short fingerprint of a task source's state (JSON-able data, as a checkpoint keeps it)."""
    text = json.dumps(state, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
