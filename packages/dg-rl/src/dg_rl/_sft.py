"""Behaviour cloning (SFT) on expert demonstrations: the optional warm start of an RL run."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import torch

from dg_core import PolicyRequest, Trajectory
from dg_rl._policy import LMPolicy
from dg_rl._scoring import pack_rows, reduce_scores, score_completions

__all__ = ["behaviour_cloning", "demonstrations"]


def demonstrations(
    trajectories: Iterable[Trajectory], *, only_successful: bool = True
) -> list[tuple[PolicyRequest, str]]:
    """``(request, expert action)`` pairs from recorded episodes (the history as the policy would see it)."""
    pairs = []
    for trajectory in trajectories:
        if only_successful and not trajectory.success:
            continue
        for index, step in enumerate(trajectory.steps):
            request = PolicyRequest(task=trajectory.task, history=trajectory.steps[:index], state=step.state)
            pairs.append((request, step.action.text))
    return pairs


def behaviour_cloning(
    policy: LMPolicy,
    pairs: Sequence[tuple[PolicyRequest, str]],
    *,
    epochs: int = 3,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``policy.model`` to reproduce the expert's actions; returns the mean loss of each epoch.

    Choose mode minimises the cross-entropy of the expert's action among the available actions (the
    policy's own distribution); generate mode minimises the token NLL of the action text and its eos.
    """
    model = policy.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    history: list[float] = []
    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[start : start + batch_size]]
            loss = _choose_loss(policy, chunk) if policy.mode == "choose" else _token_loss(policy, chunk)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / max(1, len(losses)))
    policy.after_update()  # a sampler with its own copy of the weights gets the cloned ones
    return history


def _choose_loss(policy: LMPolicy, chunk: Sequence[tuple[PolicyRequest, str]]) -> torch.Tensor:
    prompts, actions, owners, targets = [], [], [], []
    for index, (request, expert) in enumerate(chunk):
        prompt, _ = policy.encode_prompt(request)
        options = request.state.available_actions or (expert,)
        for option in options:
            prompts.append(prompt)
            actions.append(policy.encode_action(option)[0])
            owners.append(index)
        targets.append(options.index(expert) if expert in options else 0)
    rows = pack_rows(prompts, actions, pad_id=policy.pad_id, device=policy.device)
    token_logprobs = score_completions(policy.model, rows).logprobs
    sums = reduce_scores(token_logprobs, rows.completion_lengths, policy.score_reduction) / policy.temperature
    loss = sums.new_zeros(())
    offset = 0
    for index, target in enumerate(targets):
        count = owners.count(index)
        loss = loss - torch.log_softmax(sums[offset : offset + count], 0)[target]
        offset += count
    return loss / len(chunk)


def _token_loss(policy: LMPolicy, chunk: Sequence[tuple[PolicyRequest, str]]) -> torch.Tensor:
    prompts = [policy.encode_prompt(request)[0] for request, _ in chunk]
    actions = [policy.encode_action(expert)[0] for _, expert in chunk]
    rows = pack_rows(prompts, actions, pad_id=policy.pad_id, device=policy.device)
    scores = score_completions(policy.model, rows)
    return -(scores.logprobs.sum() / scores.mask.sum())
