"""Train a policy with two CPU processes (gloo) under DDP or FSDP2 and record what each rank saw and ended with.

``python fsdp_train.py OUT STRATEGY VARIANT``: STRATEGY is ``ddp`` or ``fsdp`` (:class:`dg_rl.FSDP2Strategy`);
VARIANT is ``grpo`` (full fine-tune, frozen-copy KL reference, choose mode), ``grpo-lora`` (peft adapters, the
adapter-disabled model as reference, choose mode; each rank initialises its adapters differently) or ``ppo``
(value head, generate mode, micro-batches). Run by
``test_fsdp.py``; Lightning's launcher starts rank 1 by re-running this file with the same arguments.

Per rank it writes ``rank<r>.json``: for every batch the behaviour log-probs recorded during collection, the same
units re-scored by a plain (unsharded) copy of the gathered weights, and how many forwards the policy ran during
collection and during the update; rank 0 also writes ``initial.safetensors`` and ``weights.safetensors``, the full
weights before and after training.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors.torch import save_file
from torch import nn

from dg_core import EnvPool
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_rl import (
    FSDP2Strategy,
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    PPOModule,
    PromptFormat,
    RolloutDataModule,
    RolloutEngine,
    apply_lora,
    full_state_dict,
    score_units,
    tiny_causal_lm,
    train_bpe_tokenizer,
)


class Record(L.Callback):
    def __init__(self, out: Path, make_plain: Any, policy: LMPolicy) -> None:
        self.out = out
        self.make_plain = make_plain
        self.policy = policy
        self.steps: list[dict[str, Any]] = []
        self.forwards = 0
        self.adam_steps: list[int] = []
        policy.model.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: Any) -> None:
        self.forwards += 1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        # The batch was just collected (data module hook) with the weights the model holds now.
        plain = self.make_plain()
        plain.load_state_dict(full_state_dict(self.policy.model))
        rescored = score_units(
            plain,
            batch,
            mode=self.policy.mode,
            temperature=self.policy.temperature,
            score_reduction=self.policy.score_reduction,
        ).logprobs
        mask = batch["unit_mask"].bool()
        self.steps.append(
            {
                "old_logprobs": batch["old_logprobs"][mask].tolist(),
                "rescored": rescored[mask].tolist(),
                "collection_forwards": self.forwards,
                "sharded": type(next(self.policy.model.parameters())).__name__ == "DTensor",
            }
        )
        self.forwards = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.steps[-1]["update_forwards"] = self.forwards
        self.forwards = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = full_state_dict(pl_module)
        optimizer: Any = trainer.optimizers[0]
        self.adam_steps = sorted({int(entry["step"]) for entry in optimizer.state.values() if "step" in entry})
        if trainer.global_rank == 0:
            save_file(state, str(self.out / "initial.safetensors"))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = full_state_dict(pl_module)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "backend": str(torch.distributed.get_backend()),
            "strategy": type(trainer.strategy).__name__,
            "global_step": trainer.global_step,
            "adam_steps_at_start": self.adam_steps,
            "steps": self.steps,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
        if trainer.global_rank == 0:
            save_file(state, str(self.out / "weights.safetensors"))


def main(out: Path, strategy_name: str, variant: str, max_steps: int = 3, resume: str | None = None) -> None:
    torch.set_num_threads(1)
    # Corridors of 2 to 5 rooms: prompts of different lengths, so ranks score different numbers of micro-batches.
    tasks = [scripted_task(f"t{i}", rooms=2 + i % 4, goal_item=ITEMS[i % len(ITEMS)], seed=i) for i in range(8)]
    corpus = [t.instruction for t in tasks] + ["Room 1 of 3. You see: a gold coin.", "go east | go west | look"]
    tokenizer = train_bpe_tokenizer(corpus * 4, vocab_size=300)
    lora = variant == "grpo-lora"

    def make_plain() -> nn.Module:
        model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        return apply_lora(model, rank=4, alpha=8) if lora else model

    # Each rank initialises its LoRA adapters from its own random state: both strategies must train rank 0's.
    torch.manual_seed(1000 + int(os.environ.get("LOCAL_RANK", "0")))
    model = make_plain()
    if lora:  # adapters that start away from zero, so the adapter-disabled reference differs from the policy
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.uniform_(-0.05, 0.05)
    mode = "generate" if lora else "choose"
    policy = LMPolicy(
        model, tokenizer, mode=mode, seed=0, max_turn_tokens=6, prompt_format=PromptFormat(history_turns=1)
    )
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2)
    data = RolloutDataModule(engine, tasks, tasks_per_step=2, seed=0)
    module: L.LightningModule
    if variant == "ppo":
        module = PPOModule(policy, learning_rate=1e-2, micro_batch_tokens=400)
    else:
        module = GRPOModule(policy, loss=GRPOLoss(kl_coef=0.1), learning_rate=1e-2)
    strategy: Any = FSDP2Strategy() if strategy_name == "fsdp" else "ddp"
    trainer = L.Trainer(
        accelerator="cpu",
        strategy=strategy,
        devices=2,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out, make_plain, policy)],
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    trainer.save_checkpoint(out / "last.ckpt")  # every rank takes part (FSDP gathers the shards)


if __name__ == "__main__":
    # OUT STRATEGY VARIANT [MAX_STEPS [CHECKPOINT to resume from]]
    main(
        Path(sys.argv[1]),
        sys.argv[2],
        sys.argv[3],
        int(sys.argv[4]) if len(sys.argv) > 4 else 3,
        sys.argv[5] if len(sys.argv) > 5 else None,
    )
