"""One loader for every model source: a short name, a ``.gguf`` file, a Hugging Face directory, a hub id.

Weights are read as safetensors only (a directory holding only pickled ``.bin`` weights is refused: nothing we
did not write is unpickled). Tokenizers of local directories load through ``PreTrainedTokenizerFast`` when a
``tokenizer.json`` is there (``AutoTokenizer`` may swap the pre-tokenizer of a ``qwen2`` checkpoint and change
the ids), and their padding side, which is not saved, is set on every load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from dg_core import ConfigError
from dg_models._errors import ModelLoadError
from dg_models._gguf import convert_gguf
from dg_models._pretrained import PRETRAINED, pretrained_file

__all__ = [
    "DType",
    "LoadedModel",
    "SourceKind",
    "load_causal_lm",
    "load_model",
    "load_tokenizer",
    "resolve_dtype",
    "resolve_source",
    "save_model",
]

DType = Literal["auto", "float32", "bfloat16", "float16"]
SourceKind = Literal["pretrained", "gguf", "directory", "hub"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` is bfloat16 on a CUDA device that supports it and float32 elsewhere (CPU)."""
    if dtype == "auto":
        kind = torch.device(device).type
        if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"dtype: unknown {dtype!r}; allowed: auto, {', '.join(_DTYPES)}") from None


def resolve_source(source: str | Path, *, cache_dir: str | Path | None = None) -> tuple[SourceKind, str]:
    """What ``source`` names and the directory (or hub id) to load it from; converts GGUF files on first use."""
    text = str(source)
    if text in PRETRAINED:
        return "pretrained", str(convert_gguf(pretrained_file(text), cache_dir=cache_dir))
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        return "gguf", str(convert_gguf(path, cache_dir=cache_dir))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
        if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
            pickled = sorted(p.name for p in path.glob("*.bin"))
            detail = f" (only pickled weights: {', '.join(pickled)}; dg never unpickles them)" if pickled else ""
            raise ModelLoadError(f"{path} holds no safetensors weights{detail}")
        return "directory", str(path)
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local:
        known = ", ".join(sorted(PRETRAINED))
        raise ModelLoadError(
            f"model {text!r} not found: give a Hugging Face directory, a .gguf file, a hub id (org/name) "
            f"or a pretrained short name ({known})"
        )
    return "hub", text


def load_tokenizer(path: str | Path, *, padding_side: str = "right") -> Any:
    """Load the tokenizer of a local directory (or hub id); pad token falls back to eos."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    local = Path(path)
    try:
        if (local / "tokenizer.json").is_file():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(local))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:  # ValueError: a config.json without model_type, a corrupt tokenizer.json
        raise ModelLoadError(f"no tokenizer could be loaded from {path}: {error}") from error
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, *, dtype: str = "float32", device: str | torch.device = "cpu") -> Any:
    """Load a causal LM (safetensors only) from a local directory or hub id, in ``dtype`` on ``device``."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    model: Any
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=True, dtype=resolve_dtype(dtype, device)
        )
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"no causal LM could be loaded from {path}: {error}") from error
    except SafetensorError as error:  # a weights file cut short (a copy or a save interrupted) or overwritten
        raise ModelLoadError(
            f"the safetensors weights in {path} are unreadable (truncated or corrupt: {error}); copy or save them again"
        ) from error
    return model.to(torch.device(device))


@dataclass
class LoadedModel:
    """A model, its tokenizer and where they came from."""

    model: Any
    """The ``AutoModelForCausalLM`` (eval mode, on the requested device and dtype)."""
    tokenizer: Any
    """Its tokenizer (pad token set; padding side as requested)."""
    kind: SourceKind
    """What the source named."""
    location: str
    """The directory the weights were read from (the converted one for GGUF), or the hub id."""

    @property
    def chat(self) -> bool:
        """Whether the tokenizer has a chat template (an instruct model)."""
        return bool(getattr(self.tokenizer, "chat_template", None))


def load_model(
    source: str | Path,
    *,
    dtype: str = "auto",
    device: str | torch.device = "cpu",
    padding_side: str = "right",
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer from any source dg knows.

    Args:
        source: A pretrained short name (``"smollm2"``), a ``.gguf`` file, a Hugging Face directory, or a hub
            id (``org/name``; needs hub access, which these machines lack).
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: Where the weights go.
        padding_side: Of the tokenizer.
        cache_dir: Where GGUF files are converted to (default ``$DG_MODEL_CACHE`` or ``~/.cache/dg/models``).
    """
    kind, location = resolve_source(source, cache_dir=cache_dir)
    model = load_causal_lm(location, dtype=dtype, device=device)
    model.eval()
    tokenizer = load_tokenizer(location, padding_side=padding_side)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise ModelLoadError(f"{location}: the tokenizer has more tokens than the model has embeddings")
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, location=location)


def save_model(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Save ``model`` (safetensors; a peft model is merged first) and ``tokenizer`` into the directory ``path``."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    return target
