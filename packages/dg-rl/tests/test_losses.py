"""Loss maths on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from dg_core import ConfigError
from dg_rl import GRPOLoss, PPOLoss, aggregate, gae, group_advantages, kl_k3


def test_group_advantages_mean_and_std() -> None:
    returns = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    centred = group_advantages(returns, groups, scale_by_std=False)
    assert torch.allclose(centred, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0]))
    scaled = group_advantages(returns, groups, eps=0.0 + 1e-12)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # unbiased std of group 0
    assert scaled[0].item() == pytest.approx(0.75 / std, rel=1e-5)
    assert scaled[1].item() == pytest.approx(-0.25 / std, rel=1e-5)
    assert scaled[4].item() == 0.0 and scaled[5].item() == 0.0  # equal returns: no signal, finite


def test_group_advantages_groups_need_not_be_contiguous() -> None:
    returns = torch.tensor([2.0, 5.0, 4.0, 1.0])
    groups = torch.tensor([7, 3, 7, 3])
    assert torch.allclose(group_advantages(returns, groups, scale_by_std=False), torch.tensor([-1.0, 2.0, 1.0, -2.0]))


def test_kl_k3_is_zero_at_equality_and_matches_formula() -> None:
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.0, -1.5])
    kl = kl_k3(logp, ref)
    assert kl[0].item() == 0.0
    assert kl[1].item() == pytest.approx(math.exp(0.5) - 0.5 - 1)


def test_aggregate_token_vs_sequence() -> None:
    values = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token").item() == pytest.approx((1 + 3 + 2) / 3)
    assert aggregate(values, mask, "sequence").item() == pytest.approx((2.0 + 2.0) / 2)
    with pytest.raises(ConfigError):
        aggregate(values, mask, "episode")  # type: ignore[arg-type]


def test_grpo_loss_clipped_ratio_by_hand() -> None:
    # Unit 0: ratio e^0.5=1.6487 with A=+1 -> clipped at 1.2. Unit 1: ratio e^-0.5=0.6065 with A=+1 -> unclipped.
    # Episode 2 (A=-1): ratio e^-0.5 -> min(-0.6065, -0.8) = -0.8 (clipped); masked unit ignored.
    logprobs = torch.tensor([[-0.5, -1.5], [-1.5, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss = GRPOLoss(clip_low=0.2, kl_coef=0.0)
    out = loss(logprobs, old, advantages, mask)
    expected = (-1.2 - math.exp(-0.5) + 0.8) / 3
    assert out["loss_policy"].item() == pytest.approx(expected, rel=1e-5)
    assert out["clip_fraction"].item() == pytest.approx(2 / 3)
    assert "loss_kl" not in out
    out["loss_policy"].backward()
    assert logprobs.grad is not None
    # Clipped units get no gradient; the unclipped one gets -A * ratio / 3.
    assert logprobs.grad[0, 0].item() == 0.0
    assert logprobs.grad[0, 1].item() == pytest.approx(-math.exp(-0.5) / 3, rel=1e-5)
    assert logprobs.grad[1, 0].item() == 0.0 and logprobs.grad[1, 1].item() == 0.0


def test_grpo_loss_sequence_aggregation_and_kl() -> None:
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    old = logprobs.clone()
    ref = torch.tensor([[-1.0, -1.0, -0.5], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    advantages = torch.tensor([0.5, 2.0])
    loss = GRPOLoss(kl_coef=0.1, aggregation="sequence")
    out = loss(logprobs, old, advantages, mask, ref)
    assert out["loss_policy"].item() == pytest.approx((-0.5 + -2.0) / 2)  # ratio 1: -A per episode
    kl_a = (math.exp(0.5) - 0.5 - 1) / 3
    kl_b = math.exp(1.0) - 1.0 - 1
    assert out["kl"].item() == pytest.approx((kl_a + kl_b) / 2, rel=1e-5)
    assert out["loss_kl"].item() == pytest.approx(0.1 * (kl_a + kl_b) / 2, rel=1e-5)
    with pytest.raises(ConfigError, match="ref_logprobs"):
        loss(logprobs, old, advantages, mask)


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.1, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.7
    d1 = 0.0 + 0.9 * 0.7 - 0.6
    d0 = 0.0 + 0.9 * 0.6 - 0.5
    a2, a1 = d2, d1 + 0.45 * d2
    a0 = d0 + 0.45 * a1
    assert torch.allclose(advantages[0], torch.tensor([a0, a1, a2]), atol=1e-6)
    e1 = 0.0 - 0.1  # last real turn of episode 2: next value is 0
    e0 = 0.0 + 0.9 * 0.1 - 0.2 + 0.45 * e1
    assert torch.allclose(advantages[1], torch.tensor([e0, e1, 0.0]), atol=1e-6)
    assert torch.allclose(returns, (advantages + values) * mask)


def test_ppo_loss_terms_by_hand() -> None:
    logprobs = torch.tensor([[-1.0, -2.0]])
    old = torch.tensor([[-1.0, -2.0]])
    advantages = torch.tensor([[1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[1.0]], requires_grad=True)
    old_values = torch.tensor([[0.5]])
    returns = torch.tensor([[2.0]])
    entropy = torch.tensor([[0.3, 0.5]])
    loss = PPOLoss(clip=0.2, value_clip=0.2, value_coef=0.5, entropy_coef=0.1)
    out = loss(logprobs, old, advantages, mask, values, old_values, returns, torch.ones(1, 1), entropy)
    assert out["loss_policy"].item() == pytest.approx((-1.0 + 2.0) / 2)
    # Unclipped error (1-2)^2 = 1; clipped value 0.7 -> (0.7-2)^2 = 1.69; max 1.69, * 0.5 * coef 0.5.
    assert out["loss_value"].item() == pytest.approx(0.5 * 0.5 * 1.69)
    assert out["loss_entropy"].item() == pytest.approx(-0.1 * 0.4)
    assert out["entropy"].item() == pytest.approx(0.4)
    no_clip = PPOLoss(value_clip=None, value_coef=1.0)(
        logprobs, old, advantages, mask, values, old_values, returns, torch.ones(1, 1)
    )
    assert no_clip["loss_value"].item() == pytest.approx(0.5)
    assert "loss_entropy" not in no_clip


def test_loss_modules_refuse_unknown_aggregation() -> None:
    with pytest.raises(ConfigError):
        GRPOLoss(aggregation="turn")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PPOLoss(aggregation="turn")  # type: ignore[arg-type]
