"""Re-score a :class:`RolloutBatch` under a model: per-unit log-probs, entropies and turn hidden states."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dg_rl._batch import RolloutBatch, packed_rows, scatter_units
from dg_rl._scoring import CompletionScores, reduce_scores, score_completions, score_completions_chunked

__all__ = ["UnitScores", "score_units", "units_from_rows"]


@dataclass
class UnitScores:
    """Per-unit values laid out ``[episodes, units]``."""

    logprobs: Tensor
    """Log-probability of each unit (a generated token, or the choice of an action)."""
    entropy: Tensor | None
    """Entropy of the distribution each unit was drawn from."""
    turn_hidden: Tensor | None
    """``[turns, hidden]`` hidden state at the last prompt token of each turn."""


def score_units(
    model: nn.Module,
    batch: RolloutBatch,
    *,
    mode: str,
    temperature: float,
    score_reduction: str = "mean",
    with_entropy: bool = False,
    with_hidden: bool = False,
    max_tokens: int | None = None,
) -> UnitScores:
    """Score ``batch`` under ``model`` exactly as the policy sampled it.

    Choose mode: each candidate's score (mean or sum of its token log-probs), divided by the
    temperature, is normalised over the candidates of its turn; a unit's log-prob is that of the chosen
    candidate. Generate mode: the log-prob of each generated token at the temperature.

    ``max_tokens`` scores the rows a group of prompts at a time, without gradients (for reference and
    behaviour log-probs of batches too large for one pass).
    """
    rows = packed_rows(batch)
    row_temperature = 1.0 if mode == "choose" else temperature
    row_entropy = with_entropy and mode != "choose"
    if max_tokens is None:
        scores = score_completions(
            model, rows, temperature=row_temperature, with_entropy=row_entropy, with_prompt_hidden=with_hidden
        )
    else:
        scores = score_completions_chunked(
            model,
            rows,
            max_tokens=max_tokens,
            temperature=row_temperature,
            with_entropy=row_entropy,
            with_prompt_hidden=with_hidden,
        )
    return units_from_rows(
        scores,
        batch,
        mode=mode,
        temperature=temperature,
        score_reduction=score_reduction,
        with_entropy=with_entropy,
        with_hidden=with_hidden,
    )


def units_from_rows(
    scores: CompletionScores,
    batch: RolloutBatch,
    *,
    mode: str,
    temperature: float,
    score_reduction: str = "mean",
    with_entropy: bool = False,
    with_hidden: bool = False,
) -> UnitScores:
    """Per-unit values from the per-row scores of ``batch``'s scoring rows (see :func:`score_units`)."""
    episodes, units = batch["unit_mask"].shape
    entropy_flat: Tensor | None = None
    if mode == "choose":
        turns = batch["turn_chosen"].shape[0]
        slots = int(batch["row_slot"].max().item()) + 1
        row_scores = reduce_scores(scores.logprobs, batch["completion_lengths"], score_reduction) / temperature
        table = row_scores.new_full((turns, slots), float("-inf"))
        table = table.index_put((batch["row_turn"], batch["row_slot"]), row_scores)
        log_dist = torch.log_softmax(table, dim=1)
        chosen = log_dist.gather(1, batch["turn_chosen"].unsqueeze(1)).squeeze(1)
        flat = chosen[batch["unit_row"]]
        if with_entropy:
            # Empty slots hold -inf: zero them before multiplying, or 0 * -inf poisons the gradient.
            finite_log = log_dist.masked_fill(torch.isinf(log_dist), 0.0)
            entropy_flat = -(log_dist.exp() * finite_log).sum(1)[batch["unit_row"]]
    else:
        flat = scores.logprobs[batch["unit_row"], batch["unit_token"]]
        if with_entropy and scores.entropy is not None:
            entropy_flat = scores.entropy[batch["unit_row"], batch["unit_token"]]
    turn_hidden = None
    if with_hidden and scores.prompt_hidden is not None:
        turn_hidden = scores.prompt_hidden[batch["turn_value_row"]]
    return UnitScores(
        logprobs=scatter_units(flat, batch, episodes, units),
        entropy=scatter_units(entropy_flat, batch, episodes, units) if entropy_flat is not None else None,
        turn_hidden=turn_hidden,
    )
