"""Thin LightningModules around the GRPO and PPO losses: score the batch, call the loss, sum ``loss_*``.

An update on a batch too large to score in one pass (``micro_batch_tokens``) is still the update of the
whole batch: the losses see every unit at once, through values scored without gradients, and the
gradient of the loss with respect to those values is then pushed through the model one group of prompts
at a time (each group re-scored with gradients). The sum over groups is the full gradient by the chain
rule, for any loss, at the cost of one extra forward pass without gradients.

A step whose loss or gradients are not finite (NaN or infinite: a learning rate far too large, a reward that
overflows) is not taken: the module raises :class:`NonFiniteUpdateError` before the optimiser moves, so the
weights stay those of the last good step and the callbacks of the failed step (checkpoints) never run.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dg_core import ConfigError, DGError
from dg_rl._batch import RolloutBatch, packed_rows, scatter_units, stats_keys
from dg_rl._losses import GRPOLoss, PPOLoss, gae, group_advantages
from dg_rl._policy import LMPolicy
from dg_rl._scoring import (
    CompletionScores,
    PackedRows,
    place_rows,
    prompt_chunks,
    score_completions,
    score_completions_chunked,
    select_prompts,
)
from dg_rl._sharding import (
    average_gradients,
    broadcast_weights,
    full_parameters,
    local_tensor,
    reduce_gradients,
    refuse_unsupported_strategy,
    shard_model,
    shard_module,
    sharded_modules,
)
from dg_rl._units import UnitScores, score_units, units_from_rows

__all__ = ["GRPOModule", "NonFiniteUpdateError", "PPOModule", "frozen_reference"]


class NonFiniteUpdateError(DGError, FloatingPointError):
    """An update whose loss or gradients (or, after the step, weights) are NaN or infinite; training stops.

    ``step`` is the 1-based optimiser step that failed; the weights are those of step ``step - 1`` unless
    ``weights_broken`` (the optimiser step itself overflowed them).
    """

    def __init__(self, message: str, *, step: int, weights_broken: bool = False) -> None:
        super().__init__(message)
        self.step = step
        self.weights_broken = weights_broken


def frozen_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (the reference policy of the KL term)."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


class _PolicyModule(L.LightningModule):
    def __init__(
        self, policy: LMPolicy, *, learning_rate: float, weight_decay: float, micro_batch_tokens: int | None
    ) -> None:
        super().__init__()
        if micro_batch_tokens is not None and micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be positive or None, got {micro_batch_tokens}")
        self.policy = policy
        self.model = policy.model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.micro_batch_tokens = micro_batch_tokens
        # One optimiser step per batch, its gradient accumulated over groups of prompts when the batch is large.
        self.automatic_optimization = False
        self._step_started = 0.0

    def configure_model(self) -> None:
        """Under :class:`~dg_rl.FSDP2Strategy` (a Lightning ``ModelParallelStrategy``): shard the policy with FSDP2."""
        if self._trainer is not None:
            refuse_unsupported_strategy(self._trainer.strategy, type(self).__name__)
        mesh = self._device_mesh
        if mesh is None:
            return
        names = mesh.mesh_dim_names or ()
        if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
            raise ConfigError(
                f"{type(self).__name__}: tensor parallelism (tensor_parallel_size > 1) is not supported; "
                "use dg_rl.FSDP2Strategy(), which shards over every process"
            )
        data_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
        if sharded_modules(self.model):
            return  # configured by an earlier fit
        for trained in (self.model, *self._extra_sharded()):
            broadcast_weights(trained, self.trainer.strategy.root_device)  # rank 0's start, as under DDP
        shard_model(self.model, data_mesh)
        for extra in self._extra_sharded():
            shard_module(extra, data_mesh)

    def _extra_sharded(self) -> list[nn.Module]:
        """Trained modules besides the policy model (PPO's value head), sharded as units of their own."""
        return []

    def _zero_loss(self) -> Tensor:
        """Zero times a one-token forward through the policy (and every extra trained module)."""
        token = torch.full((1, 1), self.policy.pad_id, dtype=torch.long, device=self.device)
        logits: Tensor = self.model(input_ids=token).logits
        return logits.float().sum() * 0.0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.learning_rate, weight_decay=self.weight_decay)

    def _row_options(self, with_hidden: bool) -> dict[str, Any]:
        choose = self.policy.mode == "choose"
        return {
            "temperature": 1.0 if choose else self.policy.temperature,
            "with_entropy": not choose,
            "with_prompt_hidden": with_hidden,
        }

    def _units(self, rows: CompletionScores, batch: RolloutBatch, with_hidden: bool) -> UnitScores:
        return units_from_rows(
            rows,
            batch,
            mode=self.policy.mode,
            temperature=self.policy.temperature,
            score_reduction=self.policy.score_reduction,
            with_entropy=True,
            with_hidden=with_hidden,
        )

    def _score(self, batch: RolloutBatch, *, with_hidden: bool = False) -> UnitScores:
        rows = score_completions(self.model, packed_rows(batch), **self._row_options(with_hidden))
        return self._units(rows, batch, with_hidden)

    def _loss(self, batch: RolloutBatch, scores: UnitScores) -> Tensor:
        """The summed ``loss_*`` terms of ``batch`` given its unit scores (and their logging)."""
        raise NotImplementedError  # each algorithm's module defines it

    _with_hidden = False
    """Whether the loss reads each turn's hidden state (PPO's value head)."""

    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        optimizer: Any = self.optimizers()
        optimizer.zero_grad()
        rows = packed_rows(batch)
        groups = prompt_chunks(rows, self.micro_batch_tokens) if self.micro_batch_tokens is not None else []
        with self._local_passes():
            if len(groups) <= 1:
                total = self._loss(batch, self._score(batch, with_hidden=self._with_hidden))
                self.manual_backward(total)
            else:
                total = self._chunked_backward(batch, rows, groups)
        self._refuse_non_finite(total, optimizer)
        optimizer.step()
        self._check_weights()
        self.policy.after_update()  # the policy's sampler is sent these weights before it next samples
        return total.detach()

    @contextmanager
    def _local_passes(self) -> Iterator[None]:
        """Run an update's passes on this rank alone, then average the gradients over ranks once.

        Ranks score different numbers of micro-batches (their batches differ), so no pass may communicate: under
        DDP the passes run in ``no_sync`` and every trainable gradient is all-reduced afterwards, in one fixed order;
        under FSDP2 they run on the gathered weights and FSDP reduce-scatters once (see ``dg_rl._sharding``).
        Either way the gradient is the mean over ranks, as DDP's own reduction gives.
        """
        ddp = getattr(self._trainer.strategy, "model", None) if self._trainer is not None else None
        with full_parameters(self, accumulate=True) as sharded:
            if isinstance(ddp, DistributedDataParallel):
                with ddp.no_sync():
                    yield
                average_gradients(self._trainable())
            else:
                yield
                if sharded:
                    reduce_gradients([self], self._zero_loss(), self.manual_backward)

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _agreed(self, finite: bool) -> bool:
        """``finite`` on every process (a rank that stops alone would leave the others waiting)."""
        trainer = self._trainer
        return bool(trainer.strategy.reduce_boolean_decision(finite, all=True)) if trainer is not None else finite

    def _refuse_non_finite(self, total: Tensor, optimizer: Any) -> None:
        """Raise :class:`NonFiniteUpdateError` if the loss or a gradient is NaN or infinite (no step taken).

        Under fp16 mixed precision the gradients are left to the gradient scaler, which skips such steps itself.
        """
        loss = float(total.detach().float())
        scaler = getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None)
        grads = [local_tensor(p.grad) for p in self._trainable() if p.grad is not None]
        bad_grads = 0
        if scaler is None and grads:
            flags = torch.stack([torch.isfinite(grad).all() for grad in grads])
            bad_grads = int((~flags).sum())
        if self._agreed(math.isfinite(loss) and bad_grads == 0):
            return
        optimizer.zero_grad()
        step = self.global_step + 1
        problems = []
        if not math.isfinite(loss):
            problems.append(f"the loss is {loss}")
        if bad_grads:
            problems.append(f"{bad_grads} of {len(grads)} gradient tensors hold NaN or infinite values")
        what = " and ".join(problems) or "another process's loss or gradients are not finite"
        raise NonFiniteUpdateError(
            f"{type(self).__name__}: optimiser step {step}: {what}; the step was not taken and training stopped, "
            f"so the weights are those of step {step - 1} and no checkpoint of step {step} was written. "
            f"Lower the learning rate (it is {self.learning_rate:g}) or look at this batch's rewards.",
            step=step,
        )

    def _check_weights(self) -> None:
        """Raise :class:`NonFiniteUpdateError` if the step just taken left a weight NaN or infinite."""
        params = self._trainable()
        if not params:
            return
        bad = int((~torch.stack([torch.isfinite(local_tensor(p.detach())).all() for p in params])).sum())
        if self._agreed(bad == 0):
            return
        step = self.global_step
        raise NonFiniteUpdateError(
            f"{type(self).__name__}: optimiser step {step} turned {bad} of {len(params)} weight tensors NaN or "
            f"infinite from finite gradients (the update overflowed); training stopped and no checkpoint of step "
            f"{step} was written, so the last checkpoint holds the last good weights. Lower the learning rate "
            f"(it is {self.learning_rate:g}).",
            step=step,
            weights_broken=True,
        )

    def _chunked_backward(self, batch: RolloutBatch, rows: PackedRows, groups: list[Tensor]) -> Tensor:
        options = self._row_options(self._with_hidden)
        assert self.micro_batch_tokens is not None
        detached = score_completions_chunked(self.model, rows, max_tokens=self.micro_batch_tokens, **options)
        values = self._units(detached, batch, self._with_hidden)
        leaves = UnitScores(
            logprobs=values.logprobs.detach().requires_grad_(True),
            entropy=values.entropy.detach().requires_grad_(True) if values.entropy is not None else None,
            turn_hidden=values.turn_hidden.detach().requires_grad_(True) if values.turn_hidden is not None else None,
        )
        total = self._loss(batch, leaves)
        self.manual_backward(total)  # d loss / d unit values (and the value head's own gradient)
        pairs = [
            (name, leaf.grad)
            for name, leaf in (
                ("logprobs", leaves.logprobs),
                ("entropy", leaves.entropy),
                ("turn_hidden", leaves.turn_hidden),
            )
            if leaf is not None and leaf.grad is not None
        ]
        for prompts in groups:
            subset, row_index = select_prompts(rows, prompts)
            part = score_completions(self.model, subset, **options)
            units = self._units(place_rows(detached, part, row_index), batch, self._with_hidden)
            surrogate = sum(
                ((getattr(units, name) * grad).sum() for name, grad in pairs), torch.zeros((), device=self.device)
            )
            if surrogate.requires_grad:
                self.manual_backward(surrogate)
        return total

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.policy.release_sampler_memory()  # the batch is collected: a colocated engine may sleep while we train
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
        # The training terms are this rank's: averaged over the ranks. The rollout statistics are already those of
        # every rank's episodes (the data module gathers them), the same on every rank.
        self.log_dict(metrics, batch_size=episodes, sync_dist=True)
        values = batch["stats"].tolist()
        rollout = {f"rollout/{key}": float(value) for key, value in zip(stats_keys(), values, strict=True)}
        self.log_dict(rollout, batch_size=episodes)
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
        micro_batch_tokens: Tokens scored per forward / backward pass (each prompt once plus its completions);
            a larger batch is scored in groups of prompts and its update is still that of the whole batch.
            ``None``: one pass over the whole batch.
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
        micro_batch_tokens: int | None = None,
    ) -> None:
        super().__init__(
            policy, learning_rate=learning_rate, weight_decay=weight_decay, micro_batch_tokens=micro_batch_tokens
        )
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
                max_tokens=self.micro_batch_tokens,
            ).logprobs

    def _loss(self, batch: RolloutBatch, scores: UnitScores) -> Tensor:
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
        micro_batch_tokens: As for :class:`GRPOModule`.
    """

    _with_hidden = True

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
        micro_batch_tokens: int | None = None,
    ) -> None:
        super().__init__(
            policy, learning_rate=learning_rate, weight_decay=weight_decay, micro_batch_tokens=micro_batch_tokens
        )
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

    def _extra_sharded(self) -> list[nn.Module]:
        return [self.value_head]

    def _zero_loss(self) -> Tensor:
        features = torch.zeros((1, self.value_head.in_features), device=self.device)
        value: Tensor = self.value_head(features)
        return super()._zero_loss() + value.sum() * 0.0

    def _turn_table(self, batch: RolloutBatch, values: Tensor) -> Tensor:
        episodes = int(batch["episode_return"].shape[0])
        turns = int(batch["turn_col"].max().item()) + 1
        table = values.new_zeros((episodes, turns))
        return table.index_put((batch["turn_episode"], batch["turn_col"]), values)

    def _loss(self, batch: RolloutBatch, scores: UnitScores) -> Tensor:
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
