"""Thin LightningModules around the GRPO and PPO losses: score the batch, call the loss, sum ``loss_*``."""

from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from dg_rl._batch import RolloutBatch, packed_rows, scatter_units, stats_keys
from dg_rl._losses import GRPOLoss, PPOLoss, gae, group_advantages
from dg_rl._policy import LMPolicy
from dg_rl._units import UnitScores, score_units

__all__ = ["GRPOModule", "PPOModule", "frozen_reference"]


def frozen_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (the reference policy of the KL term)."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


class _PolicyModule(L.LightningModule):
    def __init__(self, policy: LMPolicy, *, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        self.policy = policy
        self.model = policy.model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self._step_started = 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.learning_rate, weight_decay=self.weight_decay)

    def _score(self, batch: RolloutBatch, *, with_hidden: bool = False) -> UnitScores:
        return score_units(
            self.model,
            batch,
            mode=self.policy.mode,
            temperature=self.policy.temperature,
            score_reduction=self.policy.score_reduction,
            with_entropy=True,
            with_hidden=with_hidden,
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_started
        tokens = float(packed_rows(batch).tokens())
        self.log("train/tokens_per_s", tokens / max(elapsed, 1e-9), batch_size=1)

    def _log_all(self, batch: RolloutBatch, terms: dict[str, Tensor], scores: UnitScores, advantages: Tensor) -> Tensor:
        total = torch.stack([value for key, value in terms.items() if key.startswith("loss_")]).sum()
        episodes = int(batch["episode_return"].shape[0])
        metrics: dict[str, float | Tensor] = {f"train/{key}": value.detach() for key, value in terms.items()}
        metrics["train/loss"] = total.detach()
        if scores.entropy is not None and "train/entropy" not in metrics:
            mask = batch["unit_mask"]
            metrics["train/entropy"] = ((scores.entropy * mask).sum() / mask.sum()).detach()
        metrics["train/advantage_mean"] = advantages.mean().detach()
        metrics["train/advantage_std"] = advantages.std(unbiased=False).detach()
        metrics["train/advantage_abs_max"] = advantages.abs().max().detach()
        for key, value in zip(stats_keys(), batch["stats"].tolist(), strict=True):
            metrics[f"rollout/{key}"] = float(value)
        self.log_dict(metrics, batch_size=episodes)
        return total


class GRPOModule(_PolicyModule):
    """GRPO on rollout batches: group-normalised episode returns as the advantage of every unit.

    Args:
        policy: The LM policy (its model is trained in place, so the next rollouts use the update).
        loss: The GRPO loss module.
        reference: Frozen reference model for the KL term; a frozen copy of the policy model when
            ``None`` and ``loss.kl_coef > 0`` (a peft model uses itself with adapters disabled).
        scale_by_std: Divide advantages by the group's standard deviation.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        policy: LMPolicy,
        *,
        loss: GRPOLoss | None = None,
        reference: nn.Module | None = None,
        scale_by_std: bool = True,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(policy, learning_rate=learning_rate, weight_decay=weight_decay)
        self.loss = loss or GRPOLoss()
        self.scale_by_std = scale_by_std
        self._adapter_reference = reference is None and hasattr(self.model, "disable_adapter")
        if reference is None and self.loss.kl_coef > 0 and not self._adapter_reference:
            reference = frozen_reference(self.model)
        # Kept out of the module tree: not trained, not checkpointed, moved to the device by hand.
        self._reference: tuple[nn.Module, ...] = (reference,) if reference is not None else ()

    def on_fit_start(self) -> None:
        for reference in self._reference:
            reference.to(self.device)

    def _reference_context(self) -> AbstractContextManager[Any]:
        if self._adapter_reference:
            context: AbstractContextManager[Any] = self.model.disable_adapter()  # type: ignore[operator]
            return context
        return nullcontext()

    def reference_logprobs(self, batch: RolloutBatch) -> Tensor:
        """Log-probs of the batch's units under the reference policy."""
        model = self._reference[0] if self._reference else self.model
        with torch.no_grad(), self._reference_context():
            return score_units(
                model,
                batch,
                mode=self.policy.mode,
                temperature=self.policy.temperature,
                score_reduction=self.policy.score_reduction,
            ).logprobs

    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        scores = self._score(batch)
        advantages = group_advantages(batch["episode_return"], batch["episode_group"], scale_by_std=self.scale_by_std)
        reference = self.reference_logprobs(batch) if self.loss.kl_coef > 0 else None
        terms = self.loss(scores.logprobs, batch["old_logprobs"], advantages, batch["unit_mask"], reference)
        return self._log_all(batch, terms, scores, advantages)


class PPOModule(_PolicyModule):
    """PPO on rollout batches: a value head on the last prompt token of each turn, GAE over turns.

    Args:
        policy: The LM policy.
        loss: The PPO loss module.
        gamma: Discount over turns.
        lam: GAE lambda.
        normalize_advantages: Whiten advantages over the batch's turns.
        learning_rate: AdamW learning rate (policy and value head).
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        policy: LMPolicy,
        *,
        loss: PPOLoss | None = None,
        gamma: float = 1.0,
        lam: float = 0.95,
        normalize_advantages: bool = True,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(policy, learning_rate=learning_rate, weight_decay=weight_decay)
        self.loss = loss or PPOLoss()
        self.gamma = gamma
        self.lam = lam
        self.normalize_advantages = normalize_advantages
        config: Any = getattr(self.model, "config")  # noqa: B009 - any transformers model has one
        hidden = int(config.hidden_size)
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self._cache: tuple[int, Tensor, Tensor, Tensor] | None = None

    def _turn_table(self, batch: RolloutBatch, values: Tensor) -> Tensor:
        episodes = int(batch["episode_return"].shape[0])
        turns = int(batch["turn_col"].max().item()) + 1
        table = values.new_zeros((episodes, turns))
        return table.index_put((batch["turn_episode"], batch["turn_col"]), values)

    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        scores = self._score(batch, with_hidden=True)
        assert scores.turn_hidden is not None
        values = self._turn_table(batch, self.value_head(scores.turn_hidden.float()).squeeze(-1))
        turn_mask = self._turn_table(batch, torch.ones_like(batch["turn_reward"]))
        batch_id = int(batch["batch_id"]) if "batch_id" in batch else -1
        if self._cache is None or self._cache[0] != batch_id or batch_id < 0:
            # Old values, advantages and returns are fixed at the first update on a batch.
            old_values = values.detach()
            rewards = self._turn_table(batch, batch["turn_reward"])
            turn_adv, returns = gae(rewards, old_values, turn_mask, gamma=self.gamma, lam=self.lam)
            if self.normalize_advantages:
                real = turn_mask.bool()
                mean, std = turn_adv[real].mean(), turn_adv[real].std(unbiased=False)
                turn_adv = torch.where(real, (turn_adv - mean) / (std + 1e-6), torch.zeros_like(turn_adv))
            self._cache = (batch_id, old_values, turn_adv, returns)
        _, old_values, turn_adv, returns = self._cache
        flat_adv = turn_adv[batch["turn_episode"], batch["turn_col"]][batch["unit_turn"]]
        unit_adv = scatter_units(flat_adv, batch, *batch["unit_mask"].shape)
        terms = self.loss(
            scores.logprobs,
            batch["old_logprobs"],
            unit_adv,
            batch["unit_mask"],
            values,
            old_values,
            returns,
            turn_mask,
            scores.entropy,
        )
        return self._log_all(batch, terms, scores, turn_adv[turn_mask.bool()])
