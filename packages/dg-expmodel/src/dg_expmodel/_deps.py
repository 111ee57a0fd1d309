"""Lazy imports of the heavy optional dependencies, failing with the exact install command."""

from __future__ import annotations

from types import ModuleType

from dg_core import require

_DIST = "dg-expmodel"


def transformers_module() -> ModuleType:
    """``transformers`` (extra ``hf``)."""
    require("torch", distribution=_DIST, extra="hf", purpose="Hugging Face experience models")
    return require("transformers", distribution=_DIST, extra="hf", purpose="Hugging Face experience models")


def tokenizers_module() -> ModuleType:
    """``tokenizers`` (extra ``hf``)."""
    return require("tokenizers", distribution=_DIST, extra="hf", purpose="Training a tokenizer")


def lightning_module() -> ModuleType:
    """``lightning`` (extra ``train``)."""
    return require("lightning", distribution=_DIST, extra="train", purpose="Experience-model SFT")


def vllm_module() -> ModuleType:
    """``vllm`` (extra ``gpu``; GPU machines only)."""
    return require("vllm", distribution=_DIST, extra="gpu", purpose="The vLLM inference backend")


def models_module() -> ModuleType:
    """``dg_models``, where every model comes from (extra ``hf``)."""
    transformers_module()
    return require("dg_models", distribution=_DIST, extra="hf", purpose="Hugging Face experience models")
