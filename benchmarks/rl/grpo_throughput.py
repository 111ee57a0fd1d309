"""Tokens/s of one GRPO update: dg-rl's GRPOModule vs TRL's GRPOTrainer, same tiny model, prompts, group size.

Both sides run the whole update on CPU: sample ``group_size`` completions of up to ``max_completion``
tokens for each of ``prompts`` prompts (full softmax at temperature 1), reward them, score them under the
policy and a frozen reference (KL coefficient ``beta``), and take one AdamW step. dg-rl plays the prompts as
one-turn episodes of the scripted corridor world through its rollout engine and Lightning ``Trainer``; TRL
gets the very same prompt texts and a reward function with the environment's rule (1 for taking the goal).
Tokens are prompt + completion tokens of all ``prompts * group_size`` samples (TRL's ``num_input_tokens_seen``
definition). The first update of each run is warm-up; the median of the others is reported, the best of
``--rounds`` alternating rounds. Prints a table, writes ``benchmarks/results/rl_grpo_throughput.json``.

    python benchmarks/rl/grpo_throughput.py [--prompts 8] [--group-size 8] [--max-completion 16] [--steps 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from dg_core import EnvPool, PolicyRequest, Task
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_rl import (
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    PromptFormat,
    RolloutDataModule,
    RolloutEngine,
    packed_rows,
    parse_action,
    save_model,
    tiny_causal_lm,
    train_bpe_tokenizer,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROMPT_FORMAT = PromptFormat(history_turns=0)


def prompt_tasks(count: int) -> list[Task]:
    return [scripted_task(f"p{i}", rooms=3, goal_item=ITEMS[i % len(ITEMS)], seed=i) for i in range(count)]


def rendered_prompts(tasks: list[Task]) -> list[dict[str, str]]:
    env = ScriptedEnv(max_steps=1)
    rows = []
    for task in tasks:
        state = env.reset(task)
        text = PROMPT_FORMAT.render(PolicyRequest(task=task, state=state))
        rows.append(
            {
                "prompt": text,
                "actions": "|".join(state.available_actions or ()),
                "goal": f"take {task.config['goal_item']}",
            }
        )
    return rows


def ours(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> dict[str, Any]:
    policy = LMPolicy(
        model, tokenizer, mode="generate", prompt_format=PROMPT_FORMAT, max_turn_tokens=args.max_completion
    )
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=1)), group_size=args.group_size)
    data = RolloutDataModule(engine, prompt_tasks(args.prompts), tasks_per_step=args.prompts)
    module = GRPOModule(policy, loss=GRPOLoss(kl_coef=args.beta, aggregation="sequence"), learning_rate=1e-4)
    marks: list[tuple[float, int]] = []

    class Clock(L.Callback):
        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
        ) -> None:
            marks.append((time.perf_counter(), packed_rows(batch).tokens()))

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, datamodule=data)
    return summarize(marks)


def trl(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = rendered_prompts(prompt_tasks(args.prompts))
    dataset = Dataset.from_list(rows)

    def env_reward(
        prompts: list[str], completions: list[str], actions: list[str], goal: list[str], **_: Any
    ) -> list[float]:
        return [
            float(parse_action(text, tuple(options.split("|"))) == target)
            for text, options, target in zip(completions, actions, goal, strict=True)
        ]

    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, _args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as output_dir:
        # TRL builds its reference model from the policy's path: hand it the same weights on disk.
        model_dir = save_model(model, tokenizer, Path(output_dir) / "policy")
        config = GRPOConfig(
            output_dir=output_dir,
            use_cpu=True,
            per_device_train_batch_size=args.prompts * args.group_size,
            num_generations=args.group_size,
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=args.max_completion,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            beta=args.beta,
            loss_type="grpo",
            learning_rate=1e-4,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            bf16=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=str(model_dir),
            reward_funcs=[env_reward],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        started = time.perf_counter()
        trainer.train()
        marks.insert(0, (started, 0))
    # TRL counts cumulatively: turn it into per-step tokens like ours.
    per_step = [(t, marks[i + 1][1] - marks[i][1]) for i, (t, _) in enumerate(marks[1:])]
    return summarize([(marks[i + 1][0], tokens) for i, (_, tokens) in enumerate(per_step)])


def summarize(marks: list[tuple[float, int]]) -> dict[str, Any]:
    """Per-update seconds and tokens from (end time, tokens) marks; the first update is warm-up."""
    steps = [(marks[i][0] - marks[i - 1][0], marks[i][1]) for i in range(1, len(marks))]
    rates = [tokens / seconds for seconds, tokens in steps]
    return {
        "updates_measured": len(steps),
        "median_seconds": statistics.median(s for s, _ in steps),
        "median_tokens": statistics.median(t for _, t in steps),
        "tokens_per_s": statistics.median(rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-completion", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    texts = [row["prompt"] for row in rendered_prompts(prompt_tasks(64))]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=512)
    base = tiny_causal_lm(tokenizer, hidden_size=args.hidden, num_layers=2, seed=0)
    runs: dict[str, list[dict[str, Any]]] = {"dg_rl": [], "trl": []}
    for _ in range(args.rounds):  # alternate, so machine noise hits both alike
        runs["trl"].append(trl(copy.deepcopy(base), tokenizer, args))
        runs["dg_rl"].append(ours(copy.deepcopy(base), tokenizer, args))
    best = {name: max(results, key=lambda r: r["tokens_per_s"]) for name, results in runs.items()}
    ratio = best["dg_rl"]["tokens_per_s"] / best["trl"]["tokens_per_s"]
    params = sum(p.numel() for p in base.parameters())
    print(
        f"\nGRPO update, {args.prompts} prompts x {args.group_size} completions <= {args.max_completion} tokens, "
        f"{params / 1e6:.2f}M-param Qwen2, beta={args.beta}, {args.threads} threads"
    )
    print(f"{'trainer':8} {'tokens/update':>14} {'s/update':>9} {'tokens/s':>9}")
    for name, result in best.items():
        print(f"{name:8} {result['median_tokens']:14.0f} {result['median_seconds']:9.3f} {result['tokens_per_s']:9.0f}")
    print(f"dg_rl / trl = {ratio:.2f}x (target >= 1.5x)")
    import trl as trl_module

    report = {
        "config": vars(args),
        "model_parameters": params,
        "runs": runs,
        "best": best,
        "ratio_dg_rl_over_trl": ratio,
        "versions": {"torch": torch.__version__, "trl": trl_module.__version__, "python": platform.python_version()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rl_grpo_throughput.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
