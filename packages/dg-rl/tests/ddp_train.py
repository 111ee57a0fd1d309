"""Train GRPO under ``Trainer(strategy="ddp", devices=2)`` on CPU (gloo); each rank writes what it saw.

Run as a script by ``test_ddp.py``: Lightning's DDP launcher starts rank 1 by re-running this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from dg_core import EnvPool
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_rl import GRPOLoss, GRPOModule, LMPolicy, RolloutDataModule, RolloutEngine, tiny_causal_lm, train_bpe_tokenizer


class Record(L.Callback):
    def __init__(self, out: Path, data: RolloutDataModule) -> None:
        self.out = out
        self.data = data
        self.tasks: list[list[str]] = []
        self.grad_sums: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, idx: int) -> None:
        self.tasks.append([task.id for task in self.data.draw_tasks(int(batch["batch_id"]))])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: object) -> None:
        grads = [p.grad.detach().abs().sum() for p in pl_module.parameters() if p.grad is not None]
        self.grad_sums.append(float(torch.stack(grads).sum()) if grads else 0.0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "backend": str(torch.distributed.get_backend()),
            "global_step": trainer.global_step,
            "param_sum": float(params.double().sum()),
            "param_abs_sum": float(params.double().abs().sum()),
            "tasks": self.tasks,
            "grad_sums": self.grad_sums,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tasks = [scripted_task(f"t{i}", rooms=3, goal_item=ITEMS[i % len(ITEMS)], seed=i) for i in range(8)]
    corpus = [t.instruction for t in tasks] + ["Room 1 of 3. You see: a gold coin.", "go east | go west | look"]
    tokenizer = train_bpe_tokenizer(corpus * 4, vocab_size=300)
    model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    policy = LMPolicy(model, tokenizer, mode="choose", seed=0)
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=3)), group_size=2)
    data = RolloutDataModule(engine, tasks, tasks_per_step=2, seed=0)
    module = GRPOModule(policy, loss=GRPOLoss(kl_coef=0.1), learning_rate=1e-2)
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out, data)],
    )
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
