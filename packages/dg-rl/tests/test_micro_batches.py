"""Micro-batched updates: a batch scored a group of prompts at a time gets the gradient of the whole batch."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from dg_core import EnvPool
from dg_core.testing import ScriptedEnv
from dg_rl import GRPOLoss, GRPOModule, LMPolicy, PPOLoss, PPOModule, RolloutBatch, RolloutEngine, build_batch
from dg_rl._batch import packed_rows
from dg_rl._scoring import prompt_chunks, score_completions, score_completions_chunked, select_prompts
from tests.conftest import corridor_tasks


def rollout_batch(policy: LMPolicy, *, seed: int = 0) -> RolloutBatch:
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=4, max_episode_tokens=64)
    rollouts = engine.collect(corridor_tasks(2, offset=seed), seed=seed)
    return build_batch(rollouts, mode=policy.mode, pad_id=policy.pad_id)


class GradientsAtStep(Callback):
    """Keeps the gradients the optimiser is about to apply."""

    def __init__(self) -> None:
        self.gradients: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.gradients = {
            name: parameter.grad.detach().clone()
            for name, parameter in pl_module.named_parameters()
            if parameter.grad is not None
        }


def one_step_gradients(module: L.LightningModule, batch: RolloutBatch) -> dict[str, torch.Tensor]:
    capture = GradientsAtStep()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[capture],
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    assert capture.gradients
    return capture.gradients


def test_prompt_chunks_keep_each_prompt_whole_and_respect_the_budget(make_policy: Callable[..., LMPolicy]) -> None:
    rows = packed_rows(rollout_batch(make_policy("choose")))
    prompt_cost = rows.prompt_mask.sum(1).index_add(0, rows.row_prompt, rows.completion_lengths)
    budget = int(prompt_cost.max()) + 5
    groups = prompt_chunks(rows, budget)
    assert torch.equal(torch.cat(groups), torch.arange(rows.prompt_ids.shape[0]))
    assert len(groups) > 1
    for group in groups:
        assert len(group) == 1 or int(prompt_cost[group].sum()) <= budget
    # A budget below one prompt's cost still scores every prompt, one per group.
    assert [len(group) for group in prompt_chunks(rows, 1)] == [1] * rows.prompt_ids.shape[0]
    with pytest.raises(ValueError, match="positive"):
        prompt_chunks(rows, 0)


@pytest.mark.parametrize("mode", ["choose", "generate"])
def test_chunked_scores_equal_one_pass(make_policy: Callable[..., LMPolicy], mode: str) -> None:
    policy = make_policy(mode, max_turn_tokens=6)
    rows = packed_rows(rollout_batch(policy))
    with torch.no_grad():
        whole = score_completions(policy.model, rows, with_entropy=True, with_prompt_hidden=True)
    chunked = score_completions_chunked(policy.model, rows, max_tokens=60, with_entropy=True, with_prompt_hidden=True)
    assert len(prompt_chunks(rows, 60)) > 2
    torch.testing.assert_close(chunked.logprobs, whole.logprobs, atol=1e-5, rtol=1e-5)
    assert torch.equal(chunked.mask, whole.mask)
    assert chunked.entropy is not None and whole.entropy is not None
    torch.testing.assert_close(chunked.entropy, whole.entropy, atol=1e-5, rtol=1e-5)
    assert chunked.prompt_hidden is not None and whole.prompt_hidden is not None
    torch.testing.assert_close(chunked.prompt_hidden, whole.prompt_hidden, atol=1e-5, rtol=1e-5)
    subset, row_index = select_prompts(rows, torch.tensor([1]))
    assert torch.equal(row_index, (rows.row_prompt == 1).nonzero().squeeze(1))
    assert subset.prompt_ids.shape[0] == 1 and int(subset.row_prompt.max()) == 0


@pytest.mark.parametrize(
    ("algorithm", "mode"), [("grpo", "choose"), ("grpo", "generate"), ("ppo", "choose"), ("ppo", "generate")]
)
def test_micro_batched_update_has_the_gradient_of_the_whole_batch(
    make_policy: Callable[..., LMPolicy], algorithm: str, mode: str
) -> None:
    policy = make_policy(mode, max_turn_tokens=6, temperature=1.3)
    batch = rollout_batch(policy, seed=3)
    # Returns that differ within each group (and turn rewards for PPO): non-zero advantages, so a real policy
    # gradient beside the KL and entropy terms (a random tiny policy rarely wins in 4 steps).
    episodes = batch["episode_return"].shape[0]
    batch["episode_return"] = torch.tensor([float(index % 3 == 0) for index in range(episodes)])
    batch["turn_reward"] = torch.linspace(0.0, 1.0, batch["turn_reward"].shape[0])

    def module(micro_batch_tokens: int | None) -> L.LightningModule:
        twin = copy.copy(policy)
        twin.model = copy.deepcopy(policy.model)
        if algorithm == "grpo":
            return GRPOModule(
                twin, loss=GRPOLoss(kl_coef=0.1), learning_rate=1e-3, micro_batch_tokens=micro_batch_tokens
            )
        return PPOModule(
            twin, loss=PPOLoss(entropy_coef=0.05), learning_rate=1e-3, micro_batch_tokens=micro_batch_tokens
        )

    whole = one_step_gradients(module(None), batch)
    assert len(prompt_chunks(packed_rows(batch), 60)) > 2
    chunked = one_step_gradients(module(60), batch)
    assert whole.keys() == chunked.keys()
    largest = max(float(gradient.abs().max()) for gradient in whole.values())
    assert largest > 1e-4
    for name, gradient in whole.items():
        torch.testing.assert_close(chunked[name], gradient, atol=1e-5 * max(largest, 1.0), rtol=1e-4, msg=name)


def test_micro_batch_tokens_must_be_positive(make_policy: Callable[..., LMPolicy]) -> None:
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        GRPOModule(make_policy("choose"), micro_batch_tokens=0)
