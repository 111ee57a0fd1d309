"""``dg train``'s counting parts under DDP on two CPU processes: the real dg-curriculum ``Curriculum`` behind
``CurriculumSource`` picks the tasks, ``RunCounters`` counts real transitions against a budget, dg-rl's data
module and GRPO module train. Run by ``test_ddp_curriculum.py`` through ``torchrun --standalone --nproc_per_node 2``;
each rank writes what it saw to ``OUT/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dg_apps.training import CurriculumSource, RunCounters
from dg_core import EnvPool, Task
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_curriculum import Curriculum, SelectionConfig, TaskPool
from dg_rl import GRPOLoss, GRPOModule, LMPolicy, RolloutDataModule, RolloutEngine, tiny_causal_lm, train_bpe_tokenizer

BUDGET = 40
MAX_STEPS = 6
TASKS_PER_STEP = 2
SELECTION = SelectionConfig(temperature=0.1, generated_share=0.5)


def make_tasks() -> list[Task]:
    return [scripted_task(f"t{i}", rooms=3, goal_item=ITEMS[i % len(ITEMS)], seed=i) for i in range(10)]


def make_curriculum() -> Curriculum:
    pool = TaskPool()
    pool.add_many(make_tasks())
    return Curriculum(pool, SELECTION, seed=0)


class Record(L.Callback):
    def __init__(self, out: Path, data: RolloutDataModule, source: CurriculumSource, counters: RunCounters) -> None:
        self.out = out
        self.data = data
        self.source = source
        self.counters = counters
        self.draws: list[list[str]] = []
        self.groups: list[list[tuple[str, list[float]]]] = []
        self.local_turns: list[int] = []

    def on_batch(self, rollouts: Any) -> None:
        size = rollouts.group_size
        episodes = rollouts.episodes
        self.groups.append(
            [
                (episodes[start].task.id, [e.episode_return for e in episodes[start : start + size]])
                for start in range(0, len(episodes), size)
            ]
        )
        self.local_turns.append(int(rollouts.stats.turns))
        self.draws.append([task.id for task in self.data.last_draw])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "draws": self.draws,
            "groups": self.groups,
            "local_turns": self.local_turns,
            "source_state": self.source.state_dict(),
            "counters": self.counters.state_dict(),
            "resyncs": self.data.task_source_resyncs,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tasks = make_tasks()
    corpus = [t.instruction for t in tasks] + ["Room 1 of 3. You see: a gold coin.", "go east | go west | look"]
    tokenizer = train_bpe_tokenizer(corpus * 4, vocab_size=300)
    policy = LMPolicy(tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0), tokenizer, seed=0)
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=3)), group_size=2)
    source = CurriculumSource(make_curriculum(), grow_every=0, parents=0, variations=0)
    counters = RunCounters(real=True, budget=BUDGET)
    records: list[Record] = []
    data = RolloutDataModule(
        engine,
        tasks,
        tasks_per_step=TASKS_PER_STEP,
        task_source=source,
        on_batch=lambda rollouts: records[0].on_batch(rollouts),
        on_stats=counters.on_batch,
        stop_when=lambda: counters.spent,
    )
    records.append(Record(out, data, source, counters))
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=MAX_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counters, records[0]],
    )
    trainer.fit(GRPOModule(policy, loss=GRPOLoss(kl_coef=0.0), learning_rate=1e-2), datamodule=data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
