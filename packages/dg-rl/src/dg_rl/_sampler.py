"""Rollout samplers: what turns prompt token ids into sampled completions with their behaviour log-probs.

:class:`~dg_rl.LMPolicy` renders prompts, parses actions and draws choose-mode choices; a
:class:`RolloutSampler` does the model work underneath: sample completions (generate mode) and score candidate
completions (choose mode). :class:`TransformersSampler` runs the live training module in this process (the
default; it runs everywhere). ``dg_rl.VLLMSampler`` runs a vLLM engine beside the trainer and is sent the
weights after each update (GPU machines only; see the package README for what of it has run).

Both sample from exactly the distribution the losses score, ``softmax(logits / temperature)`` over the whole
vocabulary: no top-k, no top-p. A truncated distribution would give behaviour log-probs that the loss (which
re-scores the ids under the full softmax) does not reproduce, and the importance ratios of GRPO / PPO would be
off by the truncation from the first update on. The token ids a sampler returns go to the loss unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dg_core import ConfigError
from dg_rl._scoring import pack_rows, reduce_scores, sample_completions, score_candidates

__all__ = ["RolloutSampler", "Sample", "TransformersSampler"]

_REDUCTIONS = ("mean", "sum")


@dataclass
class Sample:
    """One sampled completion."""

    token_ids: list[int]
    """The sampled ids, ending with the stop token that ended it (if one did)."""
    logprobs: list[float]
    """Behaviour log-probability of each sampled id under ``softmax(logits / temperature)``."""
    stopped: bool
    """Ended at a stop token; ``False`` when the completion ran to its token budget."""


class RolloutSampler(ABC):
    """Samples completions of token-id prompts and scores candidate completions, for one policy model.

    Public methods validate their arguments and call the ``_sample`` / ``_score`` hooks that samplers implement.
    ``sync_weights(model)`` is called by :class:`~dg_rl.LMPolicy` before it samples or scores after the weights of
    ``model`` changed (``LMPolicy.after_update``, which the Lightning modules call after every optimiser step):
    a sampler that keeps its own copy of the weights (vLLM) reloads them there. ``release_memory`` is called when
    training takes over the accelerator (before each update); a sampler with nothing to free does nothing.
    """

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        temperature: float,
        stop_token_ids: Sequence[int],
        generator: torch.Generator,
    ) -> list[Sample]:
        """Sample one completion per prompt.

        Args:
            prompts: Token ids of each prompt (at least one id each).
            max_new_tokens: Token budget of each completion (0 gives an empty completion).
            temperature: Logits are divided by it; positive.
            stop_token_ids: A completion ends at the first of these it samples (kept as its last id).
            generator: Seeded CPU generator the sampling draws from (or derives engine seeds from), so that a
                seeded policy samples the same completions and a checkpoint can restore its state.
        """
        if len(prompts) != len(max_new_tokens):
            raise ConfigError(f"sample: {len(prompts)} prompts but {len(max_new_tokens)} token budgets")
        if any(budget < 0 for budget in max_new_tokens):
            raise ConfigError(f"sample: token budgets must be >= 0, got {list(max_new_tokens)}")
        if not temperature > 0:
            raise ConfigError(f"sample: temperature must be positive, got {temperature}")
        if any(len(prompt) == 0 for prompt in prompts):
            raise ConfigError("sample: every prompt needs at least one token id")
        if not prompts:
            return []
        return self._sample(
            [list(prompt) for prompt in prompts],
            [int(budget) for budget in max_new_tokens],
            temperature=float(temperature),
            stop_token_ids=tuple(int(token) for token in stop_token_ids),
            generator=generator,
        )

    def score(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *, reduction: str
    ) -> torch.Tensor:
        """Score of each ``completions[i]`` after ``prompts[i]``: the ``"mean"`` or ``"sum"`` of its token
        log-probs (temperature 1), float32 on the CPU (choose mode's candidate scores)."""
        if len(prompts) != len(completions):
            raise ConfigError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        if reduction not in _REDUCTIONS:
            raise ConfigError(f"score: reduction must be 'mean' or 'sum', got {reduction!r}")
        if any(len(prompt) == 0 for prompt in prompts):
            raise ConfigError("score: every prompt needs at least one token id")
        if any(len(completion) == 0 for completion in completions):
            raise ConfigError("score: every completion needs at least one token id")
        if not prompts:
            return torch.zeros(0, dtype=torch.float32)
        return self._score([list(p) for p in prompts], [list(c) for c in completions], reduction)

    @abstractmethod
    def _sample(
        self,
        prompts: list[list[int]],
        max_new_tokens: list[int],
        *,
        temperature: float,
        stop_token_ids: tuple[int, ...],
        generator: torch.Generator,
    ) -> list[Sample]:
        """Validated :meth:`sample`."""

    @abstractmethod
    def _score(self, prompts: list[list[int]], completions: list[list[int]], reduction: str) -> torch.Tensor:
        """Validated :meth:`score`."""

    synced_model: nn.Module | None = None
    """The module whose weights were last sent (``None`` before the first :meth:`sync_weights`)."""

    def sync_weights(self, model: nn.Module) -> None:
        """Sample from ``model``'s current weights from now on."""
        self._sync_weights(model)
        self.synced_model = model

    @abstractmethod
    def _sync_weights(self, model: nn.Module) -> None:
        """:meth:`sync_weights`'s work: bind the module, or copy its weights into the engine."""

    def release_memory(self) -> None:  # noqa: B027 - optional hook, a no-op unless the sampler holds memory
        """Free accelerator memory the sampler holds between collections (training runs next)."""


class TransformersSampler(RolloutSampler):
    """Samples with the live training module in this process (transformers forward passes with a KV cache).

    Sampling is token by token from the full softmax, drawn on the model's device with one uniform per row from
    the given CPU generator (:func:`~dg_rl.sample_completions`); choose-mode scores share each prompt's KV cache
    among its candidates (:func:`~dg_rl.score_candidates`). ``sync_weights`` only binds the module: the sampler
    reads the weights being trained, so every update is seen at once.

    Args:
        model: The causal LM being trained (it may be wrapped by peft).
        pad_id: The tokenizer's pad token id.
        score_batch_rows: Most ``prompt + candidate`` rows scored in one forward pass.
    """

    def __init__(self, model: nn.Module, *, pad_id: int, score_batch_rows: int = 256) -> None:
        if score_batch_rows < 1:
            raise ConfigError(f"score_batch_rows must be positive, got {score_batch_rows}")
        self.model = model
        self.pad_id = pad_id
        self.score_batch_rows = score_batch_rows

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def _sample(
        self,
        prompts: list[list[int]],
        max_new_tokens: list[int],
        *,
        temperature: float,
        stop_token_ids: tuple[int, ...],
        generator: torch.Generator,
    ) -> list[Sample]:
        tokens, logprobs = sample_completions(
            self.model,
            prompts,
            max_new_tokens,
            stop_token_ids=stop_token_ids,
            pad_id=self.pad_id,
            temperature=temperature,
            generator=generator,
        )
        stops = set(stop_token_ids)
        return [
            Sample(token_ids=ids, logprobs=values, stopped=bool(ids) and ids[-1] in stops)
            for ids, values in zip(tokens, logprobs, strict=True)
        ]

    @torch.no_grad()
    def _score(self, prompts: list[list[int]], completions: list[list[int]], reduction: str) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), self.score_batch_rows):
            chunk = slice(start, start + self.score_batch_rows)
            rows = pack_rows(prompts[chunk], completions[chunk], pad_id=self.pad_id, device=self.device)
            scores = score_candidates(self.model, rows)  # each prompt's KV cache shared by its candidates
            out.append(reduce_scores(scores.logprobs, rows.completion_lengths, reduction).float().cpu())
        return torch.cat(out)

    def _sync_weights(self, model: nn.Module) -> None:
        # Binding is the whole sync: the sampler reads the parameters as they are trained (no copy).
        self.model = model
