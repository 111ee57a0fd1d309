"""The prepared GPU check (issue 19 item 6): dg's training and sampling paths on one accelerator, in one go.

For two llama-architecture models built from a config (random weights; the numbers are throughput, not
quality) it measures, each phase time-boxed and written out as soon as it finishes:

- ``generate``: tokens/s of dg-rl's transformers sampler (``LMPolicy.decide`` in generate mode with its default
  ``TransformersSampler``) at batch 64, with bf16 weights and with fp32 weights (what a policy trained under
  ``bf16-mixed`` samples with: Lightning's autocast covers the training step, not the rollouts collected before it);
  beside it, one token step's draw timed alone both ways: the CPU ``torch.multinomial`` the sampler used before
  issue 19's fix (``cpu_draw_s_per_step``) and the inverse-CDF draw on the device it uses now
  (``device_draw_s_per_step``);
- ``grpo``: GRPO update tokens/s through ``GRPOModule`` + ``RolloutDataModule`` under a Lightning ``Trainer``
  (``bf16-mixed`` on CUDA): prompt + completion tokens of the batch per second of ``training_step`` (scoring,
  reference scoring, backward, AdamW), beside the rollout collection's own generation tokens/s;
- ``sft``: experience-model SFT tokens/s of dg-expmodel's ``ExperienceModelSFT`` under a ``Trainer`` set up as
  ``fit_experience_model`` sets it up (``bf16-mixed``, gradient clipping, ``deterministic=True``);
- ``synthetic_grpo_step``: one GRPO step end to end on the smaller model: the policy acts in a
  ``BatchedSyntheticEnv`` whose experience model is ``NearestExperienceModel`` over a ``ReplayBuffer`` seeded with
  real scripted-world transitions, and ``GRPOModule`` takes one update on what it played.

Each phase builds its own model (same seed, same weights: the bf16 ones are the fp32 ones rounded), so an error
(out of memory, say) or the memory of one phase stays in its own row. Peak memory is
``torch.cuda.max_memory_allocated`` per phase (reset at each phase's start). On CPU (``--device
cpu``) it is the process's peak RSS so far (not per phase). The shapes: ``smollm2-135m`` (hidden 576, 30 layers,
9 heads, 3 kv heads, MLP 1536, vocab 49152, tied embeddings) and ``llama-3.2-1b`` (hidden 2048, 16 layers, 32
heads, 8 kv heads, MLP 8192, vocab 128256, tied). No pretrained tokenizer is available on the device machine: a
byte-level BPE tokenizer is trained on the scripted world's text (dg-models' ``train_bpe_tokenizer``); the
model's vocabulary keeps the shape's size, so the LM head and softmax cost what they cost for the real model,
and sampled ids past the tokenizer's vocabulary decode to nothing.

``--size tiny --device cpu`` runs every phase on two tiny shapes in well under a minute (tested in CI); the
default ``--size full --device cuda`` is what ``benchmarks/gpu/run.sh`` runs on the device machine.

    python benchmarks/gpu/check.py [--device cuda|cpu] [--size full|tiny] [--out DIR] [--budget-s 380]
        [--shapes smollm2-135m ...] [--phases generate grpo sft synthetic_grpo_step]

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` (default ``benchmarks/results``) after every phase.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dg_core import EnvPool, PolicyRequest, RandomPolicy, Task, Trajectory, play_episode
from dg_core.testing import ITEMS, ScriptedEnv, ScriptedPolicy, scripted_task
from dg_expmodel import (
    BatchedSyntheticEnv,
    ExperienceModelSFT,
    NearestExperienceModel,
    PromptOptions,
    ReplayRetriever,
    RuleBasedAnnotator,
    examples_from_trajectories,
    tokenize_examples,
    with_initial_state,
)
from dg_expmodel._sft import Batches  # the batching fit_experience_model uses (length-grouped, shuffled)
from dg_replay import HashingEncoder, ReplayBuffer
from dg_rl import (
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    PromptFormat,
    RolloutDataModule,
    RolloutEngine,
    packed_rows,
    train_bpe_tokenizer,
)
from dg_rl._scoring import draw_tokens  # the sampler's per-step draw, timed alone

RESULTS = Path(__file__).resolve().parents[1] / "results"
GEN_BATCH = 64
SCHEMA = 1


@dataclass(frozen=True)
class Shape:
    """A llama-architecture model shape (``LlamaConfig`` fields)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int = 4096


SHAPES = {
    # SmolLM2-135M's config; Llama-3.2-1B's without its rope scaling (which changes no cost).
    "smollm2-135m": Shape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152),
    "llama-3.2-1b": Shape(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256),
    "tiny-a": Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024, max_positions=1024),
    "tiny-b": Shape(hidden=96, layers=3, heads=6, kv_heads=2, intermediate=192, vocab=2048, max_positions=1024),
}


@dataclass(frozen=True)
class Plan:
    """How much work each phase does; the full plan is sized to end well inside 8 minutes on one H200."""

    shapes: tuple[str, ...]
    tokenizer_vocab: int
    gen_tokens: int
    """New tokens per row in the generate phase (batch 64); fewer where the warm-up's pace says they would not fit
    in the phase's time cap."""
    grpo_tasks: int
    grpo_group: int
    grpo_turn_tokens: int
    grpo_turns: int
    """Scripted-world step limit: policy turns per episode."""
    grpo_warmup: int
    grpo_steps: int
    """Measured GRPO updates (at most; fewer when the phase's time cap is reached)."""
    micro_batch_tokens: int
    sft_batch: int
    sft_max_length: int
    sft_warmup: int
    sft_steps: int
    synthetic_tasks: int
    synthetic_group: int
    synthetic_turns: int
    phase_cap_s: dict[str, float] = field(default_factory=dict)


PLANS = {
    "full": Plan(
        shapes=("smollm2-135m", "llama-3.2-1b"),
        tokenizer_vocab=4096,
        gen_tokens=128,
        grpo_tasks=8,
        grpo_group=8,
        grpo_turn_tokens=32,
        grpo_turns=2,
        grpo_warmup=1,
        grpo_steps=4,
        micro_batch_tokens=8192,
        sft_batch=32,
        sft_max_length=1024,
        sft_warmup=2,
        sft_steps=10,
        synthetic_tasks=4,
        synthetic_group=8,
        synthetic_turns=6,
        phase_cap_s={"generate": 45.0, "grpo": 80.0, "sft": 60.0, "synthetic_grpo_step": 60.0},
    ),
    "tiny": Plan(
        shapes=("tiny-a", "tiny-b"),
        tokenizer_vocab=512,
        gen_tokens=8,
        grpo_tasks=2,
        grpo_group=4,
        grpo_turn_tokens=8,
        grpo_turns=2,
        grpo_warmup=1,
        grpo_steps=1,
        micro_batch_tokens=512,
        sft_batch=4,
        sft_max_length=512,
        sft_warmup=1,
        sft_steps=2,
        synthetic_tasks=2,
        synthetic_group=8,
        synthetic_turns=6,
        phase_cap_s={"generate": 30.0, "grpo": 30.0, "sft": 30.0, "synthetic_grpo_step": 30.0},
    ),
}

PROMPT_FORMAT = PromptFormat(history_turns=2)
SFT_OPTIONS = PromptOptions(history_window=2, max_retrieved=0)


# ---------------------------------------------------------------------------------------------------------------
# Data: the scripted corridor world (dg-core's real, dependency-free environment)


def scripted_tasks(count: int, *, rooms: int | None = None, offset: int = 0) -> list[Task]:
    return [
        scripted_task(
            f"gpu{i}", rooms=rooms if rooms is not None else 2 + i % 3, goal_item=ITEMS[i % len(ITEMS)], seed=i
        )
        for i in range(offset, offset + count)
    ]


def real_episodes(tasks: list[Task], *, random_per_task: int) -> list[Trajectory]:
    """Real scripted-world episodes: the expert once and ``random_per_task`` random players per task."""
    env = ScriptedEnv(max_steps=10)
    expert = ScriptedPolicy(lambda _request: env.expert_action(), policy_id="expert")
    out = []
    for index, task in enumerate(tasks):
        out.append(play_episode(env, expert, task))
        out.extend(play_episode(env, RandomPolicy(seed=index * 100 + k), task) for k in range(random_per_task))
    return out


def policy_requests(count: int) -> list[PolicyRequest]:
    env = ScriptedEnv(max_steps=10)
    return [PolicyRequest(task=task, state=env.reset(task)) for task in scripted_tasks(count)]


# ---------------------------------------------------------------------------------------------------------------
# Models


def build_model(
    shape: Shape, tokenizer: Any, device: torch.device, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Any:
    """A llama-architecture causal LM with random weights, created directly on ``device`` in ``dtype`` (the same
    weights, rounded, for every dtype of one seed)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=max(shape.vocab, len(tokenizer)),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# Measuring


class Device:
    """The device under test: synchronisation and peak memory."""

    def __init__(self, name: str) -> None:
        if name == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
        self.torch = torch.device("cuda:0" if name == "cuda" else "cpu")
        self.is_cuda = name == "cuda"
        self.accelerator = "gpu" if self.is_cuda else "cpu"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats()

    def memory(self) -> dict[str, Any]:
        if self.is_cuda:
            return {
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
                "memory_kind": "torch.cuda.max_memory_allocated during the phase",
            }
        return {
            "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_reserved_gib": None,
            "memory_kind": "process peak RSS so far (CPU run; not per phase)",
        }

    def describe(self) -> dict[str, Any]:
        if self.is_cuda:
            props = torch.cuda.get_device_properties(0)
            return {
                "kind": "cuda",
                "name": props.name,
                "total_memory_gib": props.total_memory / 2**30,
                "capability": f"{props.major}.{props.minor}",
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def trainer_kwargs(device: Device, precision: str, max_steps: int, callbacks: list[L.Callback]) -> dict[str, Any]:
    return {
        "accelerator": device.accelerator,
        "devices": 1,
        "precision": precision,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }


class StepClock(L.Callback):
    """Seconds and tokens of every training step (synchronised), and a stop once the phase's time is up.

    For rollout batches it also reads the data module's collection stats of the batch (generation during the run).
    """

    def __init__(
        self, device: Device, *, warmup: int, deadline: float, tokens: Callable[[Any], int], data: Any = None
    ) -> None:
        self.device = device
        self.warmup = warmup
        self.deadline = deadline
        self.tokens = tokens
        self.data = data
        self.steps: list[dict[str, float]] = []
        self._start = 0.0
        self._rollout: dict[str, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        stats = getattr(self.data, "last_stats", None)
        self._rollout = (
            {
                "rollout_s": stats.seconds,
                "rollout_policy_tokens": float(stats.policy_tokens),
                "rollout_prompt_tokens": float(stats.prompt_tokens),
            }
            if stats is not None
            else {}
        )
        self.device.sync()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.device.sync()
        seconds = time.perf_counter() - self._start
        self.steps.append({"seconds": seconds, "tokens": float(self.tokens(batch)), **self._rollout})
        if len(self.steps) > self.warmup and time.perf_counter() > self.deadline:
            trainer.should_stop = True

    def measured(self) -> list[dict[str, float]]:
        if len(self.steps) <= self.warmup:
            raise RuntimeError(f"only {len(self.steps)} step(s) ran, none after the {self.warmup} warm-up step(s)")
        return self.steps[self.warmup :]


def finite_metric(trainer: L.Trainer, key: str) -> float:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else math.nan


# ---------------------------------------------------------------------------------------------------------------
# Phases: each builds its own model (so a failure or the memory of one stays in its row) and returns its fields


@dataclass(frozen=True)
class Context:
    """What every phase shares."""

    plan: Plan
    device: Device
    precision: str
    tokenizer: Any
    examples: list[Any]
    """Experience-model SFT examples of the scripted world."""


def phase_generate(ctx: Context, shape: Shape, dtype: torch.dtype, deadline: float) -> dict[str, Any]:
    plan, device = ctx.plan, ctx.device
    model = build_model(shape, ctx.tokenizer, device.torch, dtype=dtype)
    policy = LMPolicy(
        model, ctx.tokenizer, mode="generate", prompt_format=PROMPT_FORMAT, max_turn_tokens=plan.gen_tokens, seed=0
    )
    requests = policy_requests(GEN_BATCH)
    warmup_tokens = min(4, plan.gen_tokens)
    started = time.perf_counter()
    policy.decide(requests, max_new_tokens=[warmup_tokens] * len(requests))  # warm-up: kernels, allocator
    device.sync()
    per_step = (time.perf_counter() - started) / warmup_tokens  # prefill included: an overestimate
    # One decide call cannot be stopped: fewer new tokens than planned where the plan would overrun the phase.
    affordable = int(0.8 * (deadline - time.perf_counter()) / per_step)
    budget = max(min(8, plan.gen_tokens), min(plan.gen_tokens, affordable))
    started = time.perf_counter()
    decisions = policy.decide(requests, max_new_tokens=[budget] * len(requests))
    device.sync()
    seconds = time.perf_counter() - started
    new_tokens = sum(len(decision.completion_ids) for decision in decisions)
    return {
        "batch": GEN_BATCH,
        "tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_s": new_tokens / seconds,
        "seconds_per_step": seconds / budget,
        "cpu_draw_s_per_step": cpu_draw_seconds(int(model.config.vocab_size)),
        "device_draw_s_per_step": device_draw_seconds(int(model.config.vocab_size), device),
        "prompt_tokens_mean": sum(len(d.prompt_ids) for d in decisions) / len(decisions),
        "max_new_tokens": budget,
        "planned_new_tokens": plan.gen_tokens,
        "rows_stopped_at_eos": sum(1 for d in decisions if not d.turn_truncated),
        "sampler": type(getattr(policy, "sampler", None)).__name__,
        "what": "LMPolicy(mode='generate').decide with its default sampler: new tokens / s (one call)",
    }


def cpu_draw_seconds(vocab: int, repeats: int = 3) -> float:
    """Seconds of one token step's draw as dg-rl's transformers sampler made it before issue 19's fix:
    ``torch.multinomial`` over the full vocabulary of all 64 rows, on the CPU with a seeded generator (the step
    also moved the 64 x vocab matrix there, not timed here). For reading ``seconds_per_step`` beside
    ``device_draw_s_per_step``, the draw it makes now."""
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(GEN_BATCH, vocab, generator=generator), dim=-1)
    torch.multinomial(probabilities, 1, generator=generator)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.multinomial(probabilities, 1, generator=generator)
    return (time.perf_counter() - started) / repeats


def device_draw_seconds(vocab: int, device: Device, repeats: int = 10) -> float:
    """Seconds of one token step's draw as the sampler makes it now (``dg_rl._scoring.draw_tokens``: 64 uniforms
    from a seeded CPU generator, inverse CDF over the full vocabulary on the device), synchronised, from the
    float32 log-softmax matrix on the device."""
    generator = torch.Generator().manual_seed(0)
    log_dist = torch.log_softmax(torch.randn(GEN_BATCH, vocab, generator=generator), dim=-1).to(device.torch)
    draw_tokens(log_dist, generator)
    device.sync()
    started = time.perf_counter()
    for _ in range(repeats):
        draw_tokens(log_dist, generator)
    device.sync()
    return (time.perf_counter() - started) / repeats


def phase_grpo(ctx: Context, shape: Shape, deadline: float) -> dict[str, Any]:
    plan, device = ctx.plan, ctx.device
    model = build_model(shape, ctx.tokenizer, device.torch)
    policy = LMPolicy(
        model,
        ctx.tokenizer,
        mode="generate",
        prompt_format=PROMPT_FORMAT,
        max_turn_tokens=plan.grpo_turn_tokens,
        seed=0,
    )
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=plan.grpo_turns)), group_size=plan.grpo_group)
    total = plan.grpo_warmup + plan.grpo_steps
    data = RolloutDataModule(
        engine, scripted_tasks(4 * plan.grpo_tasks), tasks_per_step=plan.grpo_tasks, max_batches=total
    )
    loss = GRPOLoss()
    module = GRPOModule(policy, loss=loss, learning_rate=1e-6, micro_batch_tokens=plan.micro_batch_tokens)
    clock = StepClock(
        device, warmup=plan.grpo_warmup, deadline=deadline, tokens=lambda batch: packed_rows(batch).tokens(), data=data
    )
    trainer = L.Trainer(**trainer_kwargs(device, ctx.precision, total, [clock]))
    trainer.fit(module, datamodule=data)
    steps = clock.measured()
    seconds = sum(step["seconds"] for step in steps)
    tokens = sum(step["tokens"] for step in steps)
    rollout_s = sum(step.get("rollout_s", 0.0) for step in steps)
    rollout_tokens = sum(step.get("rollout_policy_tokens", 0.0) for step in steps)
    result = {
        "batch": plan.grpo_tasks * plan.grpo_group,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "updates_measured": len(steps),
        "tokens_per_update": tokens / len(steps),
        "seconds_per_update": seconds / len(steps),
        "rollout_generation_tokens_per_s": rollout_tokens / rollout_s if rollout_s > 0 else None,
        "rollout_seconds_per_batch": rollout_s / len(steps),
        "loss": finite_metric(trainer, "train/loss"),
        "kl_coef": loss.kl_coef,
        "sampler": type(getattr(policy, "sampler", None)).__name__,
        "micro_batch_tokens": plan.micro_batch_tokens,
        "turns_per_episode": plan.grpo_turns,
        "max_turn_tokens": plan.grpo_turn_tokens,
        "what": (
            f"GRPOModule training_step (score, reference score, backward, AdamW) on {plan.grpo_tasks} tasks x "
            f"{plan.grpo_group} episodes of the scripted world: prompt + completion tokens / s; the rollouts "
            "before each step are timed apart (rollout_*)"
        ),
    }
    return result


def phase_sft(ctx: Context, shape: Shape, deadline: float) -> dict[str, Any]:
    plan, device = ctx.plan, ctx.device
    model = build_model(shape, ctx.tokenizer, device.torch, seed=1)
    features = tokenize_examples(ctx.examples, ctx.tokenizer, max_length=plan.sft_max_length)
    batches = Batches(features, plan.sft_batch, ctx.tokenizer.pad_token_id, seed=0, shuffle=True)
    total = plan.sft_warmup + plan.sft_steps
    notes: list[str] = []
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    cublas_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    result: dict[str, Any] = {}
    for deterministic in (True, False):  # fit_experience_model's setting first, then without it if it fails
        module = ExperienceModelSFT(model, learning_rate=1e-5)
        clock = StepClock(
            device, warmup=plan.sft_warmup, deadline=deadline, tokens=lambda b: int(b["attention_mask"].sum())
        )
        trainer = L.Trainer(
            **trainer_kwargs(device, ctx.precision, total, [clock]),
            max_epochs=1000,
            gradient_clip_val=1.0,
            deterministic=deterministic,
        )
        try:
            trainer.fit(module, train_dataloaders=batches)
        except RuntimeError as error:
            if not deterministic or "determinis" not in str(error).lower():
                raise
            notes.append(f"deterministic=True (fit_experience_model's setting) failed: {str(error)[:300]}")
            continue
        finally:
            # Lightning leaves torch's deterministic mode switched on process-wide: put it back for later phases.
            torch.use_deterministic_algorithms(deterministic_before)
            if cublas_before is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
            else:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas_before
        steps = clock.measured()
        seconds = sum(step["seconds"] for step in steps)
        tokens = sum(step["tokens"] for step in steps)
        result = {
            "batch": plan.sft_batch,
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "steps_measured": len(steps),
            "tokens_per_step": tokens / len(steps),
            "examples": len(features),
            "loss": finite_metric(trainer, "train/loss"),
            "deterministic": deterministic,
            "what": (
                "ExperienceModelSFT training step (forward, masked CE, backward, clip, AdamW) on scripted-world "
                "experience-model examples: non-pad tokens / s"
            ),
        }
        break
    if notes:
        result["notes"] = notes
    return result


def phase_synthetic(ctx: Context, shape: Shape, deadline: float) -> dict[str, Any]:
    plan, device = ctx.plan, ctx.device
    model = build_model(shape, ctx.tokenizer, device.torch, seed=2)
    tasks = scripted_tasks(plan.synthetic_tasks, rooms=2, offset=1000)
    real = real_episodes(tasks, random_per_task=8)
    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=256))
    added = buffer.add_trajectories(real)
    expmodel = NearestExperienceModel(PromptOptions(max_retrieved=3))
    env = BatchedSyntheticEnv(
        expmodel, retriever=ReplayRetriever(buffer), top_k=3, history_window=2, max_steps=plan.synthetic_turns
    )
    reset = ScriptedEnv()
    start_tasks = [with_initial_state(task, reset.reset(task, seed=task.seed)) for task in tasks]
    policy = LMPolicy(model, ctx.tokenizer, mode="choose", prompt_format=PROMPT_FORMAT, seed=0)
    engine = RolloutEngine(policy, env, group_size=plan.synthetic_group)
    data = RolloutDataModule(engine, start_tasks, tasks_per_step=plan.synthetic_tasks, max_batches=1)
    module = GRPOModule(policy, learning_rate=1e-4, micro_batch_tokens=plan.micro_batch_tokens)
    watched = next(p for p in model.parameters() if p.requires_grad)
    before = watched.detach().float().clone()
    clock = StepClock(device, warmup=0, deadline=deadline, tokens=lambda batch: packed_rows(batch).tokens(), data=data)
    started = time.perf_counter()
    trainer = L.Trainer(**trainer_kwargs(device, ctx.precision, 1, [clock]))
    trainer.fit(module, datamodule=data)
    device.sync()
    wall = time.perf_counter() - started
    (step,) = clock.measured()
    stats = data.last_stats
    assert stats is not None
    episodes = env.trajectories()
    returns: dict[str, set[float]] = {}
    for episode in episodes:
        returns.setdefault(episode.task.id, set()).add(episode.return_)
    result = {
        "batch": plan.synthetic_tasks * plan.synthetic_group,
        "tokens": step["tokens"],
        "seconds": step["seconds"],
        "tokens_per_s": step["tokens"] / step["seconds"],
        "wall_s": wall,
        "rollout_s": stats.seconds,
        "loss": finite_metric(trainer, "train/loss"),
        "weights_changed": bool((watched.detach().float() - before).abs().max() > 0),
        "policy_on": str(watched.device),
        "episodes": stats.episodes,
        "synthetic_steps": sum(episode.num_steps for episode in episodes),
        "success_rate": stats.success_rate,
        "mean_return": stats.mean_return,
        "groups_with_reward_spread": sum(1 for values in returns.values() if len(values) > 1),
        "expmodel": "NearestExperienceModel",
        "expmodel_queries": expmodel.stats.queries,
        "expmodel_matched": expmodel.matched,
        "expmodel_fallbacks": expmodel.fallbacks,
        "replay_real_transitions": len(added.keys),
        "what": (
            "one GRPO step: choose-mode policy plays BatchedSyntheticEnv (nearest experience model over a replay "
            "buffer of real scripted transitions), GRPOModule updates on it; tokens / s of the update"
        ),
    }
    return result


# ---------------------------------------------------------------------------------------------------------------
# The run


class Report:
    """The results so far, rewritten to JSON and Markdown after every phase."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {**header, "complete": False, "phases": []}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> None:
        self.data["phases"].append(row)
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - STARTED
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def _number(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    device = data["device"]
    versions = ", ".join(f"{name} {version}" for name, version in data["versions"].items())
    state = "complete" if data["complete"] else "PARTIAL (the run stopped or is still running)"
    lines = [
        f"# dg GPU check ({data['size']} size, {state})",
        "",
        f"Device: {device['kind']} {device['name']}. {versions}. dg commit: {data['commit']}. "
        f"Started {data['started_utc']}, {data.get('elapsed_s', 0):.0f} s so far.",
        f"Tokenizer: {data['tokenizer']}. Models: random weights, llama architecture, built from a config.",
        "",
        "| phase | model | params | dtype | batch | device | tokens/s | tokens | s | peak mem GiB | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["phases"]:
        status = row["status"] if row["status"] != "error" else f"error: {row.get('error', '')[:120]}"
        lines.append(
            f"| {row['phase']} | {row['model']} | {_number(row.get('parameters'))} | {row['dtype']} | "
            f"{row.get('batch', '-')} | {row['device']} | {_number(row.get('tokens_per_s'))} | "
            f"{_number(row.get('tokens'))} | {_number(row.get('seconds'), 2)} | "
            f"{_number(row.get('peak_memory_gib'), 2)} | {status} |"
        )
    lines += ["", "Per phase (JSON has every field):", ""]
    for row in data["phases"]:
        extra = {
            key: row[key]
            for key in (
                "sampler",
                "max_new_tokens",
                "seconds_per_step",
                "cpu_draw_s_per_step",
                "device_draw_s_per_step",
                "rollout_generation_tokens_per_s",
                "rollout_seconds_per_batch",
                "seconds_per_update",
                "tokens_per_update",
                "tokens_per_step",
                "loss",
                "weights_changed",
                "groups_with_reward_spread",
                "expmodel_matched",
                "expmodel_fallbacks",
                "success_rate",
                "notes",
            )
            if key in row
        }
        if extra:
            lines.append(f"- {row['phase']} / {row['model']}: {json.dumps(extra, default=str)}")
    memory_kinds = sorted({row["memory_kind"] for row in data["phases"] if row.get("memory_kind")})
    lines += ["", f"Peak memory: {'; '.join(memory_kinds) or '-'}.", ""]
    return "\n".join(lines)


STARTED = time.perf_counter()


def run_phase(
    report: Report,
    device: Device,
    budget_s: float,
    cap_s: float,
    labels: dict[str, Any],
    body: Callable[[float], dict[str, Any]],
) -> dict[str, Any]:
    """Run one phase under its time cap (and the run's budget), record its row whatever happens."""
    row: dict[str, Any] = {**labels, "device": str(device.torch)}
    left = budget_s - (time.perf_counter() - STARTED)
    if left < min(cap_s, 20.0):
        row.update(status="skipped", error=f"run budget: {left:.0f} s left of {budget_s:.0f} s")
        report.add(row)
        return row
    gc.collect()
    if device.is_cuda:
        torch.cuda.empty_cache()
    device.reset_peak()
    started = time.perf_counter()
    try:
        row.update(body(started + min(cap_s, left)))
        row["status"] = "ok"
    except Exception as error:  # one phase's failure (out of memory, say) must not lose the others
        row.update(status="error", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-4000:])
    row["phase_wall_s"] = time.perf_counter() - started
    row.update(device.memory())
    print(
        f"[{time.perf_counter() - STARTED:6.1f}s] {row['phase']:>20} {row['model']:>13} {row['dtype']:>10}: "
        f"{row['status']} {_number(row.get('tokens_per_s'))} tokens/s, peak {_number(row.get('peak_memory_gib'), 2)} "
        "GiB" + (f" ({row['error'][:200]})" if row["status"] != "ok" else ""),
        flush=True,
    )
    report.add(row)
    gc.collect()
    if device.is_cuda:
        torch.cuda.empty_cache()
    return row


PHASES = ("generate", "grpo", "sft", "synthetic_grpo_step")


def check_shape(
    ctx: Context, report: Report, budget_s: float, name: str, *, phases: set[str], synthetic_step: bool
) -> None:
    """The chosen phases for one model shape (the end-to-end synthetic step only where ``synthetic_step``)."""
    shape = SHAPES[name]
    meta = build_model(shape, ctx.tokenizer, torch.device("meta"))  # the parameter count, without memory
    base = {"model": name, "shape": asdict(shape), "parameters": parameter_count(meta)}
    caps = ctx.plan.phase_cap_s

    def phase(phase_name: str, dtype: str, body: Callable[[float], dict[str, Any]]) -> None:
        if phase_name in phases:
            labels = {**base, "phase": phase_name, "dtype": dtype}
            run_phase(report, ctx.device, budget_s, caps[phase_name], labels, body)

    for dtype, dtype_name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        phase("generate", f"{dtype_name} weights", partial(phase_generate, ctx, shape, dtype))
    # SFT (seconds) before GRPO (its rollouts are the slow part), so a run short of time loses the least.
    phase("sft", ctx.precision, partial(phase_sft, ctx, shape))
    phase("grpo", ctx.precision, partial(phase_grpo, ctx, shape))
    if synthetic_step:
        phase("synthetic_grpo_step", ctx.precision, partial(phase_synthetic, ctx, shape))


def versions() -> dict[str, str]:
    import lightning
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    out["lightning"] = lightning.__version__
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        out["peft"] = "not installed"
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    out["float32_matmul_precision"] = torch.get_float32_matmul_precision()  # left at torch's default, as dg does
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--size", choices=tuple(PLANS), default="full")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--budget-s", type=float, default=380.0, help="start no phase after this many seconds")
    parser.add_argument("--precision", default=None, help="Lightning precision (default: bf16-mixed on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--commit", default=os.environ.get("DG_COMMIT", "unknown"))
    parser.add_argument(
        "--shapes", nargs="+", choices=tuple(SHAPES), default=None, help="instead of the size's two shapes"
    )
    parser.add_argument(
        "--phases", nargs="+", choices=PHASES, default=list(PHASES), help="a subset (to rerun one, say)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = Device(args.device)
    plan = PLANS[args.size]
    precision = args.precision or ("bf16-mixed" if device.is_cuda else "32-true")
    L.seed_everything(0, verbose=False)

    corpus_episodes = real_episodes(scripted_tasks(48), random_per_task=1)
    examples = examples_from_trajectories(corpus_episodes, RuleBasedAnnotator(), options=SFT_OPTIONS)
    requests = policy_requests(GEN_BATCH)
    corpus = [example.prompt + example.response for example in examples]
    corpus += [PROMPT_FORMAT.render(request) for request in requests]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=plan.tokenizer_vocab)
    report = Report(
        args.out,
        {
            "schema": SCHEMA,
            "size": args.size,
            "commit": args.commit,
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": device.describe(),
            "versions": versions(),
            "precision": precision,
            "budget_s": args.budget_s,
            "plan": asdict(plan),
            "tokenizer": f"byte-level BPE trained on the scripted world's text, {len(tokenizer)} tokens",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        },
    )
    print(f"dg GPU check: {args.size} on {report.data['device']['name']}; writing {args.out}/gpu_check.*", flush=True)

    ctx = Context(plan=plan, device=device, precision=precision, tokenizer=tokenizer, examples=examples)
    shapes = args.shapes or list(plan.shapes)
    for index, shape_name in enumerate(shapes):
        check_shape(ctx, report, args.budget_s, shape_name, phases=set(args.phases), synthetic_step=index == 0)
    report.data["complete"] = True
    report.data["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    report.write()
    failed = [f"{row['phase']}/{row['model']}/{row['dtype']}" for row in report.data["phases"] if row["status"] != "ok"]
    print(f"done in {time.perf_counter() - STARTED:.0f} s; not ok: {', '.join(failed) or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
