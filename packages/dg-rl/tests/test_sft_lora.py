"""Behaviour cloning warm start, and LoRA policies with the adapter-free model as KL reference."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch

from dg_core import EnvPool
from dg_core.testing import ScriptedEnv
from dg_rl import (
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    RolloutDataModule,
    RolloutEngine,
    apply_lora,
    behaviour_cloning,
    demonstrations,
)
from tests.conftest import corridor_tasks


def expert_episodes(count: int) -> list:  # type: ignore[type-arg]
    env = ScriptedEnv(max_steps=10)
    out = []
    for task in corridor_tasks(count):
        env.reset(task)
        while not env.done:
            env.step(env.expert_action())
        out.append(env.trajectory(policy_id="expert"))
    return out


def test_behaviour_cloning_raises_the_expert_action_probability(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    pairs = demonstrations(expert_episodes(6))
    assert pairs and all(action in (request.state.available_actions or ()) for request, action in pairs)

    def expert_logprob() -> float:
        total = 0.0
        for request, action in pairs:
            prompt, _ = policy.encode_prompt(request)
            options = list(request.state.available_actions or ())
            candidates = [policy.encode_action(option)[0] for option in options]
            scores = policy.candidate_scores([prompt] * len(options), candidates)
            total += float(torch.log_softmax(scores, 0)[options.index(action)])
        return total / len(pairs)

    before = expert_logprob()
    losses = behaviour_cloning(policy, pairs, epochs=3, learning_rate=3e-3)
    assert losses[-1] < losses[0]
    assert expert_logprob() > before + 0.1


def test_lora_policy_trains_only_adapters(make_policy: Callable[..., LMPolicy]) -> None:
    base = make_policy("choose")
    model = apply_lora(base.model, rank=4, alpha=8)
    policy = LMPolicy(model, base.tokenizer, mode="choose", prompt_format=base.prompt_format)
    module = GRPOModule(policy, loss=GRPOLoss(kl_coef=0.1), learning_rate=1e-2)
    assert module._reference == ()  # the reference is the model with adapters disabled, no copy
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=4)
    data = RolloutDataModule(engine, corridor_tasks(4), tasks_per_step=2, updates_per_batch=2)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    assert frozen and all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert float(trainer.callback_metrics["train/kl"]) >= 0.0
