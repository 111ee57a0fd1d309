"""GRPO and PPO losses as standalone modules returning named terms.

Each ``forward`` returns a dict: the ``loss_*`` terms (the trainer sums exactly those) and detached
diagnostics (``kl``, ``clip_fraction``, ``ratio_mean``, ``entropy``...). Inputs are laid out
``[episodes, units]`` with a ``mask`` of real units; a unit is a generated token or one action choice.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from dg_core import ConfigError

__all__ = ["Aggregation", "GRPOLoss", "PPOLoss", "aggregate", "gae", "group_advantages", "kl_k3"]

Aggregation = Literal["token", "sequence"]


def group_advantages(returns: Tensor, groups: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO advantages: each return minus its group's mean, divided by the group's std if asked.

    Args:
        returns: ``[episodes]`` episode returns.
        groups: ``[episodes]`` group id of each episode (episodes of one task share it).
        scale_by_std: Divide by the group's (unbiased) standard deviation plus ``eps``.
        eps: Keeps groups of equal returns finite (their advantages are 0).
    """
    unique: tuple[Tensor, Tensor, Tensor] = torch.unique(groups, return_inverse=True, return_counts=True)
    _, inverse, counts = unique
    sums = torch.zeros(len(counts), dtype=returns.dtype, device=returns.device).index_add(0, inverse, returns)
    means = sums / counts.to(returns.dtype)
    centred = returns - means[inverse]
    if not scale_by_std:
        return centred
    squares = torch.zeros_like(means).index_add(0, inverse, centred**2)
    dof = (counts - 1).clamp(min=1).to(returns.dtype)
    std = (squares / dof).sqrt()
    return centred / (std[inverse] + eps)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-unit estimate of KL(policy || reference): ``exp(r - p) - (r - p) - 1`` (non-negative, unbiased)."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def aggregate(values: Tensor, mask: Tensor, how: Aggregation) -> Tensor:
    """Average ``values`` over masked units: all units alike (``token``) or per episode first (``sequence``)."""
    if how == "token":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if how == "sequence":
        per_episode = (values * mask).sum(1) / mask.sum(1).clamp(min=1)
        has_units = (mask.sum(1) > 0).to(values.dtype)
        return (per_episode * has_units).sum() / has_units.sum().clamp(min=1)
    raise ConfigError(f"aggregation must be 'token' or 'sequence', got {how!r}")


def _clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    was_clipped = ((ratio * advantages) > (clipped * advantages)).to(logprobs.dtype)
    return loss, ratio, was_clipped


class GRPOLoss(nn.Module):
    """Group relative policy optimisation: clipped ratio on group-normalised advantages, KL to a reference.

    Args:
        clip_low: Lower clip range (ratio >= 1 - clip_low).
        clip_high: Upper clip range (ratio <= 1 + clip_high); defaults to ``clip_low``.
        kl_coef: Weight of the k3 KL estimate to the reference policy (0 disables it).
        aggregation: ``"token"`` (every unit weighs the same) or ``"sequence"`` (each episode does).
    """

    def __init__(
        self,
        *,
        clip_low: float = 0.2,
        clip_high: float | None = None,
        kl_coef: float = 0.04,
        aggregation: Aggregation = "token",
    ) -> None:
        super().__init__()
        if aggregation not in ("token", "sequence"):
            raise ConfigError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
        self.clip_low = clip_low
        self.clip_high = clip_low if clip_high is None else clip_high
        self.kl_coef = kl_coef
        self.aggregation: Aggregation = aggregation

    def forward(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logprobs: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms and diagnostics.

        Args:
            logprobs: ``[E, U]`` current log-probs (with gradient).
            old_logprobs: ``[E, U]`` behaviour log-probs recorded at rollout time.
            advantages: ``[E]`` per-episode advantages (broadcast to units) or ``[E, U]``.
            mask: ``[E, U]`` 1 on units that carry loss.
            ref_logprobs: ``[E, U]`` reference log-probs; needed when ``kl_coef > 0``.
        """
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1).expand_as(logprobs)
        surrogate, ratio, was_clipped = _clipped_surrogate(
            logprobs, old_logprobs.detach(), advantages.detach(), self.clip_low, self.clip_high
        )
        out = {"loss_policy": aggregate(surrogate, mask, self.aggregation)}
        if self.kl_coef > 0:
            if ref_logprobs is None:
                raise ConfigError("GRPOLoss with kl_coef > 0 needs ref_logprobs")
            kl = kl_k3(logprobs, ref_logprobs.detach())
            kl_mean = aggregate(kl, mask, self.aggregation)
            out["loss_kl"] = self.kl_coef * kl_mean
            out["kl"] = kl_mean.detach()
        out["clip_fraction"] = aggregate(was_clipped, mask, "token").detach()
        out["ratio_mean"] = aggregate(ratio.detach(), mask, "token")
        return out


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over ``[episodes, turns]`` (episodes end after their last turn).

    The value after an episode's last turn is 0 (a terminal or truncated end alike).

    Returns:
        ``(advantages, returns)`` with ``returns = advantages + values``, zero where ``mask`` is 0.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        real = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * real
        advantages[:, t] = running
        next_value = values[:, t] * real
    return advantages, (advantages + values) * mask


class PPOLoss(nn.Module):
    """PPO: clipped policy loss, clipped value loss and an entropy bonus.

    Args:
        clip: Policy ratio clip range.
        value_clip: Value clip range around the old values (``None`` disables value clipping).
        value_coef: Weight of the value loss.
        entropy_coef: Weight of the entropy bonus (the term is ``-entropy_coef * entropy``).
        aggregation: ``"token"`` or ``"sequence"`` aggregation of the policy loss and entropy.
    """

    def __init__(
        self,
        *,
        clip: float = 0.2,
        value_clip: float | None = 0.2,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        aggregation: Aggregation = "token",
    ) -> None:
        super().__init__()
        if aggregation not in ("token", "sequence"):
            raise ConfigError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
        self.clip = clip
        self.value_clip = value_clip
        self.value_coef = value_coef
        self.entropy_coef = entropy_coef
        self.aggregation: Aggregation = aggregation

    def forward(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        values: Tensor,
        old_values: Tensor,
        returns: Tensor,
        value_mask: Tensor,
        entropy: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms and diagnostics.

        Args:
            logprobs: ``[E, U]`` current log-probs.
            old_logprobs: ``[E, U]`` behaviour log-probs.
            advantages: ``[E, U]`` advantages of each unit (its turn's GAE advantage).
            mask: ``[E, U]`` units that carry loss.
            values: ``[E, T]`` current value estimates per turn (with gradient).
            old_values: ``[E, T]`` value estimates at rollout time.
            returns: ``[E, T]`` GAE returns (value targets).
            value_mask: ``[E, T]`` real turns.
            entropy: ``[E, U]`` policy entropy per unit, for the bonus.
        """
        surrogate, ratio, was_clipped = _clipped_surrogate(
            logprobs, old_logprobs.detach(), advantages.detach(), self.clip, self.clip
        )
        out = {"loss_policy": aggregate(surrogate, mask, self.aggregation)}
        value_error = (values - returns.detach()) ** 2
        if self.value_clip is not None:
            clipped_values = old_values.detach() + (values - old_values.detach()).clamp(
                -self.value_clip, self.value_clip
            )
            value_error = torch.max(value_error, (clipped_values - returns.detach()) ** 2)
        value_loss = 0.5 * (value_error * value_mask).sum() / value_mask.sum().clamp(min=1)
        out["loss_value"] = self.value_coef * value_loss
        if entropy is not None:
            entropy_mean = aggregate(entropy, mask, self.aggregation)
            out["loss_entropy"] = -self.entropy_coef * entropy_mean
            out["entropy"] = entropy_mean.detach()
        out["clip_fraction"] = aggregate(was_clipped, mask, "token").detach()
        out["ratio_mean"] = aggregate(ratio.detach(), mask, "token")
        out["value_mean"] = (values.detach() * value_mask).sum() / value_mask.sum().clamp(min=1)
        return out
