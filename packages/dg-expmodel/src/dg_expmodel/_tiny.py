"""The experience model's defaults for the tiny models that :mod:`dg_models` builds.

Any ``AutoModelForCausalLM`` works in dg; these exist so tests, the demo and CPU-only users can train an
experience model end to end offline. The builders themselves live in ``dg_models`` (one copy for the policy
and the experience model); what is specific here is the response tags added as whole tokens and left
padding for batched generation.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dg_expmodel._deps import models_module
from dg_expmodel._format import RESPONSE_TAGS

FORMAT_TOKENS = tuple(token for tag in RESPONSE_TAGS for token in (f"<{tag}>", f"</{tag}>"))
"""The response tags, added as whole tokens so the format costs one token per tag."""


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` with the response tags as whole tokens (left padding)."""
    return models_module().train_bpe_tokenizer(
        texts, vocab_size=vocab_size, min_frequency=min_frequency, extra_tokens=FORMAT_TOKENS, padding_side="left"
    )


def load_tokenizer(path: str | Path, *, padding_side: str = "left") -> Any:
    """Load a tokenizer directory (``padding_side`` is not saved: it is set here)."""
    return models_module().load_tokenizer(path, padding_side=padding_side)


def tiny_causal_lm(
    tokenizer: Any,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 2048,
    seed: int = 0,
) -> Any:
    """A freshly initialised Qwen2-architecture causal LM sized for CPU training."""
    return models_module().tiny_causal_lm(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_positions=max_positions,
        seed=seed,
    )
