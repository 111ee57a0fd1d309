"""Tiny models built locally: a byte-level BPE tokenizer trained on a run's own text and a small Qwen2.

Machines without a model hub train a tokenizer on the episodes they collected and build a model from a
config; tests, the fast demo and CPU-only users run these. There is exactly one builder of each, used by
the policy and the experience model alike (two copies once drifted in special-token order, padding side
and seeding).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "tiny_causal_lm", "train_bpe_tokenizer"]

PAD_TOKEN = "<|pad|>"
"""Padding token of tokenizers trained here (id 0)."""
EOS_TOKEN = "<|endoftext|>"
"""End-of-sequence token of tokenizers trained here (id 1; also the bos token)."""


def train_bpe_tokenizer(
    corpus: Iterable[str],
    *,
    vocab_size: int = 512,
    min_frequency: int = 2,
    extra_tokens: Sequence[str] = (),
    padding_side: str = "right",
) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus`` (any text encodes: there is no unknown symbol).

    Args:
        corpus: Texts to learn merges from (task instructions, observations, actions, responses).
        vocab_size: Target vocabulary size, including the 256 byte symbols and the special tokens.
        min_frequency: Minimum pair count for a merge.
        extra_tokens: Added as whole tokens after training (the experience model's response tags).
        padding_side: ``"right"`` or ``"left"`` (it is not saved with the tokenizer: loaders set it again).

    Returns:
        A ``PreTrainedTokenizerFast`` with pad ``<|pad|>`` (id 0) and eos = bos ``<|endoftext|>`` (id 1).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN
    )
    if extra_tokens:
        fast.add_tokens(list(extra_tokens))
    fast.padding_side = padding_side
    return fast


def tiny_causal_lm(
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
) -> Any:
    """A small Qwen2 causal LM for ``tokenizer``, initialised deterministically from ``seed``.

    The global torch random state is left as it was.

    Args:
        tokenizer: Fixes the vocabulary size and the special token ids.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads (key/value heads alike).
        intermediate_size: MLP width; ``4 * hidden_size`` when ``None``.
        max_positions: Longest sequence (prompt and completion) the model accepts.
        seed: Seed of the weight initialisation.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model
