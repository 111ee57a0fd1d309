"""Rollout engine: token-level records, masking, budgets and never crashing on model output."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from dg_core import EnvPool, Policy, play_episode
from dg_core.testing import ScriptedEnv
from dg_rl import LMPolicy, RolloutEngine, build_batch, packed_rows, parse_action, score_completions, score_units
from tests.conftest import corridor_tasks


def engine_for(policy: LMPolicy, *, group_size: int = 2, max_steps: int = 6, **kwargs: int) -> RolloutEngine:
    return RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=max_steps)), group_size=group_size, **kwargs)


def test_parse_action() -> None:
    actions = ("go east", "take gold coin")
    assert parse_action("  Take  GOLD coin \nmore", actions) == "take gold coin"
    assert parse_action("\n\ngo east", actions) == "go east"
    assert parse_action("fly away", actions) is None
    assert parse_action("", actions) is None
    assert parse_action(" say hello \n", None) == "say hello"


def test_lm_policy_is_a_dg_policy_and_plays_an_episode(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    assert isinstance(policy, Policy)
    trajectory = play_episode(ScriptedEnv(max_steps=5), policy, corridor_tasks(1)[0])
    assert trajectory.policy_id == "lm"
    assert 1 <= trajectory.num_steps <= 5
    assert all(step.action.text in (step.state.available_actions or ()) for step in trajectory.steps)


def test_choose_mode_records_exact_logprobs(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    rollouts = engine_for(policy, group_size=3).collect(corridor_tasks(2))
    assert len(rollouts.episodes) == 6
    assert [e.group for e in rollouts.episodes] == [0, 0, 0, 1, 1, 1]
    assert {e.seed for e in rollouts.episodes[:3]} == {rollouts.episodes[0].seed}
    for episode in rollouts.episodes:
        for turn in episode.turns:
            d = turn.decision
            # The chosen candidate's ids are the completion; its log-prob is a log-softmax over candidates.
            assert d.completion_ids == d.candidates[d.chosen]
            assert d.completion_ids[-1] == policy.eos_id
            assert d.logprobs[0] <= 0.0
            scores = policy.candidate_scores([d.prompt_ids] * len(d.candidates), d.candidates)
            expected = torch.log_softmax(scores / policy.temperature, 0)[d.chosen]
            assert d.logprobs[0] == pytest.approx(float(expected), abs=1e-5)
    batch = build_batch(rollouts, mode="choose", pad_id=policy.pad_id)
    rescored = score_units(policy.model, batch, mode="choose", temperature=1.0)
    assert torch.allclose(rescored.logprobs * batch["unit_mask"], batch["old_logprobs"], atol=1e-5)
    assert int(batch["unit_mask"].sum()) == rollouts.stats.turns


def test_generate_mode_ids_reach_the_loss_unchanged(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("generate", max_turn_tokens=6)
    rollouts = engine_for(policy, group_size=2, max_steps=3).collect(corridor_tasks(2))
    batch = build_batch(rollouts, mode="generate", pad_id=policy.pad_id)
    row = 0
    for episode in rollouts.episodes:
        for turn in episode.turns:
            d = turn.decision
            prompt = batch["prompt_ids"][batch["row_prompt"][row]]
            prompt_mask = batch["prompt_mask"][batch["row_prompt"][row]]
            assert prompt[prompt_mask.bool()].tolist() == d.prompt_ids  # left-padded, stored once per prompt
            assert batch["completion_ids"][row, : len(d.completion_ids)].tolist() == d.completion_ids
            assert int(batch["completion_lengths"][row]) == len(d.completion_ids)
            row += 1
    # Episodes of a group start from the same state: their first prompts are stored once.
    assert batch["prompt_ids"].shape[0] < row
    # Exactly the generated tokens are units; their recorded log-probs match a fresh forward pass.
    assert int(batch["unit_mask"].sum()) == rollouts.stats.policy_tokens
    rescored = score_units(policy.model, batch, mode="generate", temperature=policy.temperature)
    assert torch.allclose(rescored.logprobs * batch["unit_mask"], batch["old_logprobs"], atol=1e-4)


def test_only_completion_tokens_carry_gradient(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("generate", max_turn_tokens=4)
    rollouts = engine_for(policy, group_size=2, max_steps=2).collect(corridor_tasks(1))
    batch = build_batch(rollouts, mode="generate", pad_id=policy.pad_id)
    projected: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        projected.append(output)

    handle = policy.model.get_output_embeddings().register_forward_hook(keep)
    try:
        scores = score_completions(policy.model, packed_rows(batch))
        scores.logprobs.sum().backward()
    finally:
        handle.remove()
    prompt_logits, completion_logits = projected
    # Of the prompt positions only the last (it predicts the first policy token) is projected to the vocabulary
    # at all, and gets gradient: no prompt token is ever a target.
    prompt_grad = prompt_logits.grad
    assert prompt_grad is not None
    last_positions = sorted({int(length) - 1 for length in batch["prompt_mask"].sum(1)})
    assert prompt_grad.shape[1] == len(last_positions)
    for prompt in range(prompt_grad.shape[0]):
        per_position = prompt_grad[prompt].abs().sum(-1)
        column = last_positions.index(int(batch["prompt_mask"][prompt].sum()) - 1)
        assert per_position[column] > 0
        assert per_position.sum().item() == per_position[column].item()
    grad = completion_logits.grad
    assert grad is not None
    lengths = batch["completion_lengths"]
    for row in range(grad.shape[0]):
        per_position = grad[row].abs().sum(-1)
        # Completion logit j predicts token j + 1: real up to length - 1, padding after.
        real = int(lengths[row]) - 1
        assert (per_position[:real] > 0).all()
        assert per_position[real:].sum().item() == 0.0


def test_unparseable_output_is_counted_and_answered_as_invalid(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("generate", max_turn_tokens=5)  # an untrained model writes gibberish
    rollouts = engine_for(policy, group_size=2, max_steps=3).collect(corridor_tasks(2))
    stats = rollouts.stats
    assert stats.unparseable > 0
    assert stats.invalid_actions >= stats.unparseable
    unparsed = [t for e in rollouts.episodes for t in e.turns if not t.decision.parsed]
    assert all(t.invalid_action and t.reward == 0.0 for t in unparsed)
    assert all(t.decision.action.raw is not None for t in unparsed)


def test_turn_and_episode_budgets_are_counted(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("generate", max_turn_tokens=3)
    rollouts = engine_for(policy, group_size=2, max_steps=20, max_episode_tokens=7).collect(corridor_tasks(2))
    stats = rollouts.stats
    for episode in rollouts.episodes:
        assert episode.policy_tokens <= 7
        assert all(len(t.decision.completion_ids) <= 3 for t in episode.turns)
    truncated = [e for e in rollouts.episodes if e.budget_truncated]
    assert stats.episode_budget_truncations == len(truncated) > 0
    assert stats.turn_truncations == sum(t.decision.turn_truncated for e in rollouts.episodes for t in e.turns) > 0
    trajectory = truncated[0].trajectory(policy_id="lm")
    assert trajectory.steps[-1].truncated and not trajectory.success


def test_choose_mode_turn_budget_truncates_candidates(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose", max_turn_tokens=2)
    rollouts = engine_for(policy, group_size=1, max_steps=2).collect(corridor_tasks(1))
    assert rollouts.stats.turn_truncations == rollouts.stats.turns > 0
    assert all(len(c) <= 2 for e in rollouts.episodes for t in e.turns for c in t.decision.candidates)


def test_prompt_budget_drops_history_then_cuts(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose", max_prompt_tokens=40)
    rollouts = engine_for(policy, group_size=1, max_steps=4).collect(corridor_tasks(2, rooms=5))
    assert rollouts.stats.prompt_truncations > 0
    assert all(len(t.decision.prompt_ids) <= 40 for e in rollouts.episodes for t in e.turns)
