"""Tiny models for machines without a model hub: a byte-level BPE tokenizer trained on our own corpus
and a small Qwen2-architecture causal LM built from a config.

Any ``AutoModelForCausalLM`` checkpoint works in dg; these exist so tests, the demo and CPU-only users can
train an experience model end to end offline. Tokenizers are saved and loaded with
``PreTrainedTokenizerFast`` (``AutoTokenizer`` may swap the pre-tokenizer of a ``qwen2`` checkpoint and
change the ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dg_expmodel._deps import tokenizers_module, transformers_module
from dg_expmodel._format import RESPONSE_TAGS

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
FORMAT_TOKENS = tuple(token for tag in RESPONSE_TAGS for token in (f"<{tag}>", f"</{tag}>"))
"""The response tags, added as whole tokens so the format costs one token per tag."""


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048, min_frequency: int = 2) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``; returns a ``PreTrainedTokenizerFast``.

    Byte-level BPE never meets an unknown character, so text outside the corpus still round-trips.
    """
    tokenizers = tokenizers_module()
    transformers = transformers_module()
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, bos_token=EOS_TOKEN
    )
    fast.add_tokens(list(FORMAT_TOKENS))
    fast.padding_side = "left"
    return fast


def load_tokenizer(path: str | Path, *, padding_side: str = "left") -> Any:
    """Load a tokenizer directory with ``PreTrainedTokenizerFast`` (``padding_side`` is not saved: set here)."""
    transformers = transformers_module()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
    transformers = transformers_module()
    import torch

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.Qwen2ForCausalLM(config)
