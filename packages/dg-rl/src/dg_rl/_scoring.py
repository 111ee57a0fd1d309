"""Exact log-probabilities of completions under a causal LM, and sampling with a KV cache.

Both take token ids and return per-token values aligned to the completion, so the ids a policy
produced reach the loss unchanged: nothing is decoded and re-tokenized on the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import transformers
from packaging.version import Version
from torch import Tensor, nn

__all__ = [
    "CompletionScores",
    "PackedRows",
    "draw_tokens",
    "pack_rows",
    "place_rows",
    "prompt_chunks",
    "reduce_scores",
    "sample_completions",
    "score_candidates",
    "score_completions",
    "score_completions_chunked",
    "score_unshared",
    "select_prompts",
]

# Attention implementations that take a custom 4D mask as given (others get ``score_completions``).
_TREE_ATTENTION = ("sdpa", "eager")


@cache
def _cache_keyword() -> str:
    """The forward keyword of the KV cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
    return "cache" if Version(transformers.__version__) >= Version("5.24") else "past_key_values"


def _with_cache(past: Any) -> dict[str, Any]:
    """Forward keyword arguments that hand ``past`` (a cache object or ``None``) to the model."""
    return {_cache_keyword(): past, "use_cache": True}


def _cache_of(outputs: Any) -> Any:
    """The KV cache a forward pass returned, whichever name this transformers version gives it."""
    return getattr(outputs, _cache_keyword())


@dataclass
class CompletionScores:
    """Per-token values of a batch of completions, right-padded to the longest completion."""

    logprobs: Tensor
    """``[rows, completion_len]`` log-probability of each completion token."""
    mask: Tensor
    """``[rows, completion_len]`` 1.0 on real completion tokens, 0.0 on padding."""
    entropy: Tensor | None
    """``[rows, completion_len]`` entropy of the next-token distribution, when asked for."""
    prompt_hidden: Tensor | None
    """``[rows, hidden]`` last-layer hidden state at the last prompt token, when asked for."""


@dataclass
class PackedRows:
    """``prompt + completion`` rows with each distinct prompt stored (and run through the model) once."""

    prompt_ids: Tensor
    """``[prompts, prompt_width]`` distinct prompts, right-padded."""
    prompt_mask: Tensor
    """``[prompts, prompt_width]`` 1 on real prompt tokens."""
    row_prompt: Tensor
    """``[rows]`` index of each row's prompt."""
    completion_ids: Tensor
    """``[rows, completion_width]`` completions, right-padded."""
    completion_lengths: Tensor
    """``[rows]`` number of completion tokens of each row."""

    def tokens(self) -> int:
        """Prompt plus completion tokens over all rows (a prompt counts once per row that reads it)."""
        return int((self.prompt_mask.sum(1)[self.row_prompt] + self.completion_lengths).sum())


def pack_rows(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, pad_id: int, device: torch.device
) -> PackedRows:
    """Pack ``prompt + completion`` rows, storing each distinct prompt once (rows of a group share it)."""
    index: dict[tuple[int, ...], int] = {}
    row_prompt = [index.setdefault(tuple(prompt), len(index)) for prompt in prompts]
    distinct = list(index)
    prompt_width = max(len(p) for p in distinct)
    prompt_ids = torch.full((len(distinct), prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for row, prompt in enumerate(distinct):
        if not prompt:
            raise ValueError("every row needs at least one prompt token")
        # Right padding: with left padding the pad positions would attend to nothing, and their
        # (unused) outputs would send NaN gradients into the weights.
        prompt_ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, : len(prompt)] = 1
    completion_width = max(1, max(len(c) for c in completions))
    completion_ids = torch.full((len(completions), completion_width), pad_id, dtype=torch.long)
    for row, completion in enumerate(completions):
        completion_ids[row, : len(completion)] = torch.tensor(list(completion), dtype=torch.long)
    return PackedRows(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        row_prompt=torch.tensor(row_prompt, dtype=torch.long, device=device),
        completion_ids=completion_ids.to(device),
        completion_lengths=torch.tensor([len(c) for c in completions], dtype=torch.long, device=device),
    )


def score_completions(
    model: nn.Module,
    rows: PackedRows,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_prompt_hidden: bool = False,
) -> CompletionScores:
    """Log-probabilities of the completion tokens of packed rows, reading each distinct prompt once.

    The prompts run first with a KV cache, which every row of a prompt shares; the completions run on top
    of it. Only the logits at each prompt's last token (which predict the first policy token) are read:
    prompt tokens are never targets, so they never carry loss. Gradients flow through the shared prompt
    states.

    Args:
        model: A causal LM that takes and returns a KV cache (``cache`` / ``past_key_values``).
        rows: From :func:`pack_rows`.
        temperature: Logits are divided by it (the sampling distribution of the policy).
        with_entropy: Also return the entropy of each next-token distribution.
        with_prompt_hidden: Also return the last-layer hidden state at each row's last prompt token.
    """
    lengths = rows.prompt_mask.sum(1)
    last = lengths - 1
    # Logits only at each prompt's last token: a full-vocabulary head over every prompt token is the largest
    # tensor of the pass (prompts x prompt tokens x vocabulary; 49k words for SmolLM2) and none of it is read.
    keep, last_kept = torch.unique(last, return_inverse=True)
    prefix = model(
        input_ids=rows.prompt_ids,
        attention_mask=rows.prompt_mask,
        use_cache=True,
        output_hidden_states=with_prompt_hidden,
        logits_to_keep=keep,
    )
    distinct = torch.arange(rows.prompt_ids.shape[0], device=rows.prompt_ids.device)
    kv_cache = _cache_of(prefix)
    kv_cache.batch_select_indices(rows.row_prompt)  # one copy of its prompt's keys / values per row
    width = rows.completion_ids.shape[1]
    offsets = torch.arange(width, device=rows.completion_ids.device)
    mask = (offsets.unsqueeze(0) < rows.completion_lengths.unsqueeze(1)).float()
    first_logits = prefix.logits[distinct, last_kept][rows.row_prompt].unsqueeze(1)
    if width > 1:
        attention = torch.cat([rows.prompt_mask[rows.row_prompt], mask.long()], dim=1)
        completion = model(
            input_ids=rows.completion_ids[:, :-1],
            attention_mask=attention[:, :-1],
            position_ids=lengths[rows.row_prompt].unsqueeze(1) + offsets[:-1].unsqueeze(0),
            **_with_cache(kv_cache),
        )
        logits = torch.cat([first_logits, completion.logits], dim=1)
    else:
        logits = first_logits
    log_dist = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = log_dist.gather(-1, rows.completion_ids.unsqueeze(-1)).squeeze(-1) * mask
    entropy = None
    if with_entropy:
        entropy = -(log_dist.exp() * log_dist).sum(-1) * mask
    prompt_hidden = None
    if with_prompt_hidden:
        prompt_hidden = prefix.hidden_states[-1][distinct, last][rows.row_prompt]
    return CompletionScores(logprobs=logprobs, mask=mask, entropy=entropy, prompt_hidden=prompt_hidden)


def prompt_chunks(rows: PackedRows, max_tokens: int) -> list[Tensor]:
    """Consecutive groups of prompt indices whose tokens (each prompt once, plus every completion of its rows)
    stay within ``max_tokens``; a prompt over the budget on its own is a group of one.

    All rows of a prompt fall in the same group, so every candidate of a choose-mode turn is scored together.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    prompt_tokens = rows.prompt_mask.sum(1)
    cost = prompt_tokens.clone().index_add_(0, rows.row_prompt, rows.completion_lengths)
    groups: list[Tensor] = []
    start, used = 0, 0
    for index, tokens in enumerate(cost.tolist()):
        if index > start and used + tokens > max_tokens:
            groups.append(torch.arange(start, index, device=rows.prompt_ids.device))
            start, used = index, 0
        used += tokens
    groups.append(torch.arange(start, len(cost), device=rows.prompt_ids.device))
    return groups


def select_prompts(rows: PackedRows, prompts: Tensor) -> tuple[PackedRows, Tensor]:
    """The rows of ``prompts`` only (trimmed to their own widths), and their indices in ``rows``."""
    row_index = torch.isin(rows.row_prompt, prompts).nonzero().squeeze(1)
    renumber = torch.full((rows.prompt_ids.shape[0],), -1, dtype=torch.long, device=rows.prompt_ids.device)
    renumber[prompts] = torch.arange(len(prompts), device=rows.prompt_ids.device)
    prompt_width = int(rows.prompt_mask[prompts].sum(1).max())
    lengths = rows.completion_lengths[row_index]
    completion_width = max(1, int(lengths.max()))
    subset = PackedRows(
        prompt_ids=rows.prompt_ids[prompts, :prompt_width],
        prompt_mask=rows.prompt_mask[prompts, :prompt_width],
        row_prompt=renumber[rows.row_prompt[row_index]],
        completion_ids=rows.completion_ids[row_index, :completion_width],
        completion_lengths=lengths,
    )
    return subset, row_index


def _place(full: Tensor | None, part: Tensor | None, row_index: Tensor) -> Tensor | None:
    """``full`` with the rows ``row_index`` replaced by ``part`` (right-padded to ``full``'s width)."""
    if full is None or part is None:
        return None
    if part.dim() == 2 and part.shape[1] < full.shape[1]:
        part = torch.nn.functional.pad(part, (0, full.shape[1] - part.shape[1]))
    return full.index_put((row_index,), part.to(full.dtype))


def place_rows(full: CompletionScores, part: CompletionScores, row_index: Tensor) -> CompletionScores:
    """``full`` with the rows ``row_index`` taken from ``part``, the scores of :func:`select_prompts`' subset.

    Gradients flow through ``part`` only when ``full`` is detached: the chunked update of the Lightning modules
    re-scores one group of prompts at a time this way.
    """
    logprobs = _place(full.logprobs, part.logprobs, row_index)
    mask = _place(full.mask, part.mask, row_index)
    assert logprobs is not None and mask is not None
    return CompletionScores(
        logprobs=logprobs,
        mask=mask,
        entropy=_place(full.entropy, part.entropy, row_index),
        prompt_hidden=_place(full.prompt_hidden, part.prompt_hidden, row_index),
    )


def score_completions_chunked(
    model: nn.Module,
    rows: PackedRows,
    *,
    max_tokens: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_prompt_hidden: bool = False,
) -> CompletionScores:
    """:func:`score_completions` one group of :func:`prompt_chunks` at a time, without gradients: memory is
    bounded by ``max_tokens`` whatever the batch, and the values equal one pass over all rows (float tolerance)."""
    width = rows.completion_ids.shape[1]
    count = rows.completion_ids.shape[0]
    device = rows.completion_ids.device
    full: CompletionScores | None = None
    with torch.no_grad():
        for prompts in prompt_chunks(rows, max_tokens):
            subset, row_index = select_prompts(rows, prompts)
            part = score_completions(
                model,
                subset,
                temperature=temperature,
                with_entropy=with_entropy,
                with_prompt_hidden=with_prompt_hidden,
            )
            if full is None:
                zeros = torch.zeros((count, width), dtype=torch.float32, device=device)
                hidden = None
                if part.prompt_hidden is not None:
                    hidden = part.prompt_hidden.new_zeros((count, part.prompt_hidden.shape[1]))
                full = CompletionScores(
                    logprobs=zeros,
                    mask=zeros.clone(),
                    entropy=zeros.clone() if part.entropy is not None else None,
                    prompt_hidden=hidden,
                )
            full = place_rows(full, part, row_index)
    assert full is not None
    return full


@torch.no_grad()
def score_candidates(model: nn.Module, rows: PackedRows, *, temperature: float = 1.0) -> CompletionScores:
    """Log-probabilities of packed completions with each prompt's KV cache shared, not copied (no gradients).

    Equal to :func:`score_completions` (and to running every ``prompt + completion`` row in full) within
    float tolerance, for scoring many candidates of few prompts, as choose mode does. The distinct prompts
    run once; then all completions of one prompt run as *one* sequence after it ("tree attention"): a 4D
    mask lets each completion token see its prompt and the earlier tokens of its own completion only, and
    position ids restart at the prompt length for each completion. The prompt cache is read by every
    completion of its prompt instead of being copied once per row, and completions are not padded to the
    longest one. Only ``sdpa`` and ``eager`` attention take such a mask; other implementations fall back to
    :func:`score_completions`.

    Args:
        model: A causal LM that takes a KV cache and a 4D attention mask (Llama, Qwen2 and their kin).
        rows: From :func:`pack_rows` (right-padded prompts).
        temperature: Logits are divided by it.
    """
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation not in _TREE_ATTENTION:
        return score_completions(model, rows, temperature=temperature)
    device = rows.prompt_ids.device
    prompts, prompt_width = rows.prompt_ids.shape
    count, width = rows.completion_ids.shape
    lengths = rows.prompt_mask.sum(1)
    # Logits only at each prompt's last token (a full-vocabulary head over every prompt token is costly).
    keep, last = torch.unique(lengths - 1, return_inverse=True)
    prefix = model(input_ids=rows.prompt_ids, attention_mask=rows.prompt_mask, use_cache=True, logits_to_keep=keep)
    offsets = torch.arange(width, device=device)
    mask = (offsets.unsqueeze(0) < rows.completion_lengths.unsqueeze(1)).float()
    first = prefix.logits[torch.arange(prompts, device=device), last].float()
    logprobs = torch.zeros((count, width), dtype=torch.float32, device=device)
    logprobs[:, 0] = _token_logprobs(first[rows.row_prompt], rows.completion_ids[:, 0], temperature)
    # Every completion token but the last is fed; its output predicts the next one.
    fed = (rows.completion_lengths - 1).clamp(min=0)
    if int(fed.max()) > 0:
        # Slot of each completion's first fed token in its prompt's tree: fed tokens of earlier rows of that prompt.
        order = torch.argsort(rows.row_prompt, stable=True)
        ends = torch.zeros(count, dtype=torch.long, device=device)
        ends[order] = fed[order].cumsum(0)
        group_end = torch.zeros(prompts, dtype=torch.long, device=device).scatter_reduce(
            0, rows.row_prompt, ends, reduce="amax"
        )
        tree_lengths = torch.zeros(prompts, dtype=torch.long, device=device).index_add_(0, rows.row_prompt, fed)
        starts = ends - fed - (group_end - tree_lengths)[rows.row_prompt]
        row, offset = torch.nonzero(offsets[:-1].unsqueeze(0) < fed.unsqueeze(1), as_tuple=True)
        owner_prompt = rows.row_prompt[row]
        slot = starts[row] + offset
        tree_width = int(tree_lengths.max())
        slots = torch.arange(tree_width, device=device)
        tree_ids = torch.full((prompts, tree_width), int(rows.completion_ids[0, 0]), device=device)
        tree_ids[owner_prompt, slot] = rows.completion_ids[row, offset]
        positions = lengths.unsqueeze(1).repeat(1, tree_width)
        positions[owner_prompt, slot] = lengths[owner_prompt] + offset
        # A padding slot is its own one-token completion: it sees the prompt and itself, so no row of the
        # mask is empty (an empty row is NaN in attention and spreads through the padding's keys).
        owner = (count + slots).unsqueeze(0).repeat(prompts, 1)
        owner[owner_prompt, slot] = row
        depth = torch.zeros((prompts, tree_width), dtype=torch.long, device=device)
        depth[owner_prompt, slot] = offset
        sees_tree = (owner.unsqueeze(2) == owner.unsqueeze(1)) & (depth.unsqueeze(1) <= depth.unsqueeze(2))
        sees_prompt = rows.prompt_mask.bool().unsqueeze(1).expand(prompts, tree_width, prompt_width)
        allowed = torch.cat([sees_prompt, sees_tree], dim=2).unsqueeze(1)
        attention: Tensor = allowed
        if implementation == "eager":  # eager attention adds the mask to its scores
            dtype = next(model.parameters()).dtype
            attention = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        tree = model(
            input_ids=tree_ids,
            attention_mask=attention,
            position_ids=positions,
            **_with_cache(_cache_of(prefix)),
        )
        logprobs[row, offset + 1] = _token_logprobs(
            tree.logits[owner_prompt, slot].float(), rows.completion_ids[row, offset + 1], temperature
        )
    return CompletionScores(logprobs=logprobs * mask, mask=mask, entropy=None, prompt_hidden=None)


def _token_logprobs(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """``log_softmax(logits / temperature)`` at ``targets``, one per row of ``logits``."""
    scaled = logits / temperature if temperature != 1.0 else logits
    return scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


@torch.no_grad()
def score_unshared(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_id: int,
    temperature: float = 1.0,
) -> CompletionScores:
    """Reference scorer: every ``prompt + completion`` row runs in full, sharing nothing (no gradients).

    What the shared-prompt scorers are checked against and measured beside; it costs a prompt forward per row.
    """
    device = next(model.parameters()).device
    width = max(1, max(len(c) for c in completions))
    full = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    ids = torch.full((len(prompts), full), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        ids[row, : len(prompt) + len(completion)] = torch.tensor([*prompt, *completion], dtype=torch.long)
        attention[row, : len(prompt) + len(completion)] = 1
    # Logits only where some row predicts a completion token: rows sharing a prompt need just ``width`` of them.
    first = min(len(p) for p in prompts) - 1
    keep = torch.arange(first, full - 1, device=device)
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device), logits_to_keep=keep).logits
    logprobs = torch.zeros((len(prompts), width), dtype=torch.float32, device=device)
    mask = torch.zeros_like(logprobs)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if completion:
            start = len(prompt) - 1 - first
            predicting = logits[row, start : start + len(completion)].float()
            targets = torch.tensor(list(completion), dtype=torch.long, device=device)
            logprobs[row, : len(completion)] = _token_logprobs(predicting, targets, temperature)
            mask[row, : len(completion)] = 1.0
    return CompletionScores(logprobs=logprobs, mask=mask, entropy=None, prompt_hidden=None)


def reduce_scores(logprobs: Tensor, lengths: Tensor, reduction: str) -> Tensor:
    """Per-row action score from masked token log-probs: their ``"sum"`` or their ``"mean"``."""
    total = logprobs.sum(1)
    if reduction == "sum":
        return total
    return total / lengths.clamp(min=1).to(total.dtype)


def draw_tokens(log_dist: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One id per row of ``log_dist`` (``[rows, vocab]`` log-probabilities), drawn on ``log_dist``'s device.

    Inverse-CDF sampling: ``rows`` uniforms in ``[0, 1)`` come from ``generator`` (a CPU generator, or torch's
    global one when ``None``) and only they cross to the device; there each row's probabilities are summed up in
    float64 and the uniform, scaled by the row's total, is looked up with ``searchsorted``. The same generator
    state gives the same ids on the same device (CPU or accelerator), and a token of probability zero is never
    drawn (its cumulative sum equals its predecessor's, so no uniform falls in its interval). This replaces a
    ``torch.multinomial`` on the CPU, which moved the whole ``rows x vocab`` matrix to the host every step.

    Raises:
        ValueError: A row whose probabilities do not sum to a positive finite number (NaN / inf logits).
    """
    if log_dist.dim() != 2:
        raise ValueError(f"draw_tokens: log_dist must be [rows, vocab], got shape {tuple(log_dist.shape)}")
    uniforms = torch.rand((log_dist.shape[0],), generator=generator, dtype=torch.float64)
    return _inverse_cdf(log_dist, uniforms)


def _inverse_cdf(log_dist: Tensor, uniforms: Tensor) -> Tensor:
    """The id of each row of ``log_dist`` whose cumulative-probability interval holds ``uniforms[row]`` in
    ``[0, 1)`` (scaled by the row's total): :func:`draw_tokens` given its uniforms."""
    vocab = log_dist.shape[1]
    cumulative = log_dist.exp().cumsum(dim=-1, dtype=torch.float64)
    total = cumulative[:, -1:]
    bad = ~(torch.isfinite(total) & (total > 0)).squeeze(1)
    if bool(bad.any()):
        raise ValueError(
            f"draw_tokens: rows {bad.nonzero().flatten().tolist()} have no finite positive probability mass "
            "(non-finite logits?)"
        )
    # Strictly below the total, so the last interval of positive probability is the highest one reachable even
    # when ``u * total`` rounds up to ``total``.
    below_total = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(uniforms.to(log_dist.device, torch.float64).unsqueeze(1) * total, below_total)
    chosen = torch.searchsorted(cumulative, target, right=True).squeeze(1)
    return chosen.clamp_(max=vocab - 1)


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    *,
    pad_id: int,
    eos_id: int | None = None,
    stop_token_ids: Sequence[int] = (),
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[list[float]]]:
    """Sample completions token by token with a KV cache, from the full softmax (no top-k / top-p).

    Each row stops at ``eos_id`` or any of ``stop_token_ids`` (kept as its last token), or after its own
    ``max_new_tokens``. Every step draws with :func:`draw_tokens` on the model's device (one uniform per row
    from ``generator``), and the model is asked for the logits of the last position only (``logits_to_keep=1``).

    Returns:
        The sampled ids of each row and the log-probability of each sampled token.
    """
    device = next(model.parameters()).device
    rows = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: every row's next token is at the end
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention[row, width - len(prompt) :] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    limits = torch.tensor(list(max_new_tokens), device=device)
    stops = torch.tensor(sorted({*stop_token_ids, *(() if eos_id is None else (eos_id,))}), dtype=torch.long)
    stops = stops.to(device)
    running = limits > 0
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    past = None
    step_ids, step_positions = ids, positions
    for step in range(int(limits.max().item()) if rows else 0):
        # Logits at the last position only: the prefill's full head (rows x prompt width x vocabulary) is the
        # largest tensor of the loop and only its last position is read (later steps feed one token anyway).
        outputs = model(
            input_ids=step_ids,
            attention_mask=attention,
            position_ids=step_positions,
            logits_to_keep=1,
            **_with_cache(past),
        )
        past = _cache_of(outputs)
        log_dist = torch.log_softmax(outputs.logits[:, -1].float() / temperature, dim=-1)
        chosen = draw_tokens(log_dist, generator)
        chosen_logprob = log_dist.gather(1, chosen.unsqueeze(1)).squeeze(1)
        # One copy to the host per step (not one per row).
        step_tokens, step_logprobs = chosen.tolist(), chosen_logprob.tolist()
        for row in torch.nonzero(running).flatten().tolist():
            tokens[row].append(step_tokens[row])
            logprobs[row].append(step_logprobs[row])
        running = running & ~torch.isin(chosen, stops) & (limits > step + 1)
        if not bool(running.any()):
            break
        step_ids = torch.where(running, chosen, torch.full_like(chosen, pad_id)).unsqueeze(1)
        attention = torch.cat([attention, running.long().unsqueeze(1)], dim=1)
        step_positions = step_positions[:, -1:] + 1
    return tokens, logprobs
