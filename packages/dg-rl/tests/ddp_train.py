"""Train GRPO under ``Trainer(strategy="ddp", devices=2)`` on CPU (gloo); each rank writes what it saw.

Run as a script by ``test_ddp.py``, either directly (Lightning's DDP launcher starts rank 1 by re-running this
file) or through ``torchrun --standalone --nproc_per_node 2`` (as a multi-node job would be launched; Lightning
then reads the ranks torchrun gives). ``python ddp_train.py OUT [uniform|source|divergent]``:

- ``uniform``: tasks drawn uniformly (a seed shared by the ranks), 3 steps;
- ``source``: a stateful task source (:class:`SpreadSource`) picks the tasks, and a real-transition budget of
  ``BUDGET`` turns, counted across ranks with ``on_stats``, stops the run before ``MAX_STEPS``;
- ``divergent``: as ``source``, but rank 1's source starts from another seed (it draws differently at the first
  step, and must be brought back to rank 0's state).
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dg_core import EnvPool, Task
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_rl import (
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    RolloutDataModule,
    RolloutEngine,
    Rollouts,
    RolloutStats,
    tiny_causal_lm,
    train_bpe_tokenizer,
)

BUDGET = 40
"""Real turns (over both ranks) after which the ``source`` runs stop collecting."""
MAX_STEPS = 6
TASKS_PER_STEP = 2


def make_tasks() -> list[Task]:
    return [scripted_task(f"t{i}", rooms=3, goal_item=ITEMS[i % len(ITEMS)], seed=i) for i in range(8)]


class SpreadSource:
    """A deterministic task source with state (dg-rl's ``TaskSource`` protocol): the tasks whose latest group
    returns spread most come first, unplayed tasks before all, ties broken by its own seeded random stream."""

    def __init__(self, tasks: Sequence[Task], seed: int) -> None:
        self.tasks = {task.id: task for task in tasks}
        self.rng = random.Random(seed)
        self.spread: dict[str, float] = {}
        self.reports: dict[str, list[list[float]]] = {}

    def next_batch(self, size: int) -> list[Task]:
        keys = {tid: (self.spread.get(tid, 2.0), self.rng.random()) for tid in sorted(self.tasks)}
        order = sorted(keys, key=lambda tid: keys[tid], reverse=True)
        return [self.tasks[tid] for tid in order[:size]]

    def report(self, task_id: str, group_rewards: Sequence[float]) -> float:
        rewards = [float(r) for r in group_rewards]
        self.spread[task_id] = max(rewards) - min(rewards)
        self.reports.setdefault(task_id, []).append(rewards)
        return self.spread[task_id]

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "spread": dict(self.spread), "reports": dict(self.reports)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
        self.spread = dict(state["spread"])
        self.reports = {tid: [list(group) for group in groups] for tid, groups in state["reports"].items()}


class Record(L.Callback):
    def __init__(self, out: Path, data: RolloutDataModule, source: SpreadSource | None) -> None:
        self.out = out
        self.data = data
        self.source = source
        self.draws: list[list[str]] = []
        self.tasks: list[list[str]] = []
        self.groups: list[list[tuple[str, list[float]]]] = []
        self.local_stats: list[dict[str, float]] = []
        self.global_stats: list[dict[str, float]] = []
        self.grad_sums: list[float] = []
        self.local_loss: list[float] = []
        self.logged: list[dict[str, float]] = []

    def on_batch(self, rollouts: Rollouts) -> None:
        size = rollouts.group_size
        self.groups.append(
            [
                (rollouts.episodes[start].task.id, [e.episode_return for e in rollouts.episodes[start : start + size]])
                for start in range(0, len(rollouts.episodes), size)
            ]
        )
        stats = rollouts.stats
        successes = sum(e.success for e in rollouts.episodes)
        self.local_stats.append({"episodes": stats.episodes, "turns": stats.turns, "successes": successes})

    def on_stats(self, stats: RolloutStats) -> None:
        self.global_stats.append({"episodes": stats.episodes, "turns": stats.turns, "success_rate": stats.success_rate})

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, idx: int) -> None:
        self.draws.append([task.id for task in self.data.last_draw])
        self.tasks.append([task.id for task in self.data.last_tasks])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: object) -> None:
        grads = [p.grad.detach().abs().sum() for p in pl_module.parameters() if p.grad is not None]
        self.grad_sums.append(float(torch.stack(grads).sum()) if grads else 0.0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: dict, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.local_loss.append(float(loss))
        keys = ("train/loss", "rollout/success_rate", "rollout/turns", "rollout/episodes")
        self.logged.append({key: float(trainer.callback_metrics[key]) for key in keys})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "backend": str(torch.distributed.get_backend()),
            "global_step": trainer.global_step,
            "param_sum": float(params.double().sum()),
            "param_abs_sum": float(params.double().abs().sum()),
            "draws": self.draws,
            "tasks": self.tasks,
            "groups": self.groups,
            "local_stats": self.local_stats,
            "global_stats": self.global_stats,
            "grad_sums": self.grad_sums,
            "local_loss": self.local_loss,
            "logged": self.logged,
            "resyncs": self.data.task_source_resyncs,
            "source_state": self.source.state_dict() if self.source is not None else None,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    tasks = make_tasks()
    corpus = [t.instruction for t in tasks] + ["Room 1 of 3. You see: a gold coin.", "go east | go west | look"]
    tokenizer = train_bpe_tokenizer(corpus * 4, vocab_size=300)
    model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    policy = LMPolicy(model, tokenizer, mode="choose", seed=0)
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=3)), group_size=2)
    source = None
    spent: list[int] = []
    if mode != "uniform":
        # The trainer is not up yet: the launcher's rank comes from the environment (torchrun or Lightning's).
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
        source = SpreadSource(tasks, seed=0 if mode == "source" or rank == 0 else 1)
    module = GRPOModule(policy, loss=GRPOLoss(kl_coef=0.1), learning_rate=1e-2)
    data: RolloutDataModule
    record_holder: list[Record] = []
    data = RolloutDataModule(
        engine,
        tasks,
        tasks_per_step=TASKS_PER_STEP,
        seed=0,
        task_source=source,
        on_batch=lambda rollouts: record_holder[0].on_batch(rollouts),
        on_stats=lambda stats: (spent.append(stats.turns), record_holder[0].on_stats(stats)),
        stop_when=(lambda: sum(spent) >= BUDGET) if mode != "uniform" else None,
    )
    record = Record(out, data, source)
    record_holder.append(record)
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=3 if mode == "uniform" else MAX_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "uniform")
