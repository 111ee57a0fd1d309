"""Tiny models and tokenizers built locally: a byte-level BPE tokenizer and a small Qwen2 causal LM.

Machines without hub access train a tokenizer on the episodes they collected and build a model from a
config. Tokenizers are saved and loaded with ``PreTrainedTokenizerFast`` (``AutoTokenizer`` may swap the
pre-tokenizer of a ``qwen2`` checkpoint and change the ids). Weights are saved as safetensors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "load_causal_lm",
    "load_tokenizer",
    "save_model",
    "tiny_causal_lm",
    "train_bpe_tokenizer",
]

PAD_TOKEN = "<|pad|>"
"""Padding token of tokenizers trained here."""
EOS_TOKEN = "<|endoftext|>"
"""End-of-sequence token of tokenizers trained here; a policy's action ends with it."""


def train_bpe_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = 512, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` (any text never fails to encode).

    Args:
        corpus: Texts to learn merges from (task instructions, observations, actions).
        vocab_size: Target vocabulary size including the 256 byte symbols and special tokens.
        min_frequency: Minimum pair count for a merge.

    Returns:
        A fast tokenizer with ``pad_token`` and ``eos_token`` set and right padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN
    )
    fast.padding_side = "right"
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` (never through ``AutoTokenizer``)."""
    tokenizer: PreTrainedTokenizerFast = PreTrainedTokenizerFast.from_pretrained(str(path))
    tokenizer.padding_side = "right"  # not saved with the tokenizer
    return tokenizer


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A small Qwen2 causal LM for ``tokenizer``, initialised deterministically from ``seed``.

    Args:
        tokenizer: Fixes the vocabulary size and the special token ids.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads (key/value heads alike).
        intermediate_size: MLP width; ``4 * hidden_size`` when ``None``.
        max_positions: Longest sequence (prompt and completion) the model accepts.
        seed: Seed of the weight initialisation.
    """
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
        bos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` into the directory ``path``."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target


def load_causal_lm(path: str | Path) -> PreTrainedModel:
    """Load any causal LM that ``AutoModelForCausalLM`` reads from a local directory or hub id."""
    from transformers import AutoModelForCausalLM

    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)
    return model
