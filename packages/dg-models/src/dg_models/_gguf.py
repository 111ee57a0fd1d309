"""GGUF files, converted once into a Hugging Face safetensors directory.

transformers dequantises a GGUF file on every load (about 25 s for SmolLM2-135M on 2 cores) and the result
cannot be saved as it is, nor read by LoRA tooling or vLLM. The first load converts it into a directory of
float32 safetensors plus the tokenizer and chat template; every later load reads that directory (under a
second). The directory is keyed by the file's content hash and written into a temporary folder that is
renamed into place, so a killed conversion leaves nothing half-written behind.

Checking and hashing the file costs seconds per load (the GGUF reader walks every tensor); once a file has been
converted, its size, modification time and hash are remembered in ``gguf-stamps.json`` beside the converted
directories, and a later load of the unchanged file goes straight to its directory. A file whose size or
modification time changed is checked and hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from dg_core import require
from dg_models._errors import ModelLoadError

__all__ = ["CONVERTED_META", "check_gguf", "convert_gguf", "default_cache_dir"]

CONVERTED_META = "dg-model.json"
"""Written last into a converted directory: its presence means the conversion finished."""
_MAGIC = b"GGUF"


def default_cache_dir() -> Path:
    """Where converted models live: ``$DG_MODEL_CACHE``, else ``$XDG_CACHE_HOME/dg/models``, else ``~/.cache``."""
    if os.environ.get("DG_MODEL_CACHE"):
        return Path(os.environ["DG_MODEL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dg" / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> dict[str, Any]:
    """Read the header and tensor table of a GGUF file; a corrupt or truncated file is a :class:`ModelLoadError`.

    Returns:
        The architecture, tensor count and whether a chat template is embedded.
    """
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} not found")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != _MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it starts with {magic!r}, not {_MAGIC!r})")
    gguf = require("gguf", distribution="dg-models", extra="gguf", purpose="reading .gguf model files")
    try:
        reader = gguf.GGUFReader(str(path))
        # Every tensor's data must lie inside the file; the reader maps them lazily.
        size = path.stat().st_size
        for tensor in reader.tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                raise ValueError(f"tensor {tensor.name} ends past the end of the file")
        architecture = reader.fields["general.architecture"]
        arch = bytes(architecture.parts[architecture.data[0]]).decode()
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(
            f"{path} is a corrupt or truncated GGUF file ({type(error).__name__}: {error}); "
            "reinstall or download it again"
        ) from error
    has_template = "tokenizer.chat_template" in reader.fields
    return {"architecture": arch, "tensors": len(reader.tensors), "chat_template": has_template}


def convert_gguf(path: str | Path, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The converted directory of the GGUF file ``path``, converting it on first use.

    Args:
        path: The ``.gguf`` file.
        cache_dir: Parent of converted directories (default :func:`default_cache_dir`).
        progress: Show transformers' progress bar while dequantising.

    Returns:
        A Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer, chat template).
    """
    source = Path(path).resolve()
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    known = _stamped(target, source)
    if known is not None:
        return known
    header = check_gguf(source)
    digest = _sha256(source)
    directory = target / f"{source.stem}-{digest[:12]}"
    if (directory / CONVERTED_META).is_file():
        _stamp(target, source, digest)
        return directory
    transformers = require("transformers", distribution="dg-models", extra="gguf", purpose="loading GGUF files")
    require("accelerate", distribution="dg-models", extra="gguf", purpose="loading GGUF files")
    import torch

    target.mkdir(parents=True, exist_ok=True)
    staging = target / f".{directory.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    verbosity = transformers.logging.get_verbosity()
    if not progress:
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=torch.float32
        )
        # The weights are dequantised already; what marks the model "quantized" only blocks saving it.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelLoadError(f"converting {source} failed ({type(error).__name__}: {error})") from error
    finally:
        if not progress:
            transformers.logging.set_verbosity(verbosity)
            transformers.utils.logging.enable_progress_bar()
    meta = {"source": str(source), "sha256": digest, "bytes": source.stat().st_size, **header}
    (staging / CONVERTED_META).write_text(json.dumps(meta, indent=2))
    if directory.exists() and not (directory / CONVERTED_META).is_file():
        shutil.rmtree(directory)  # not written by this function (it renames only finished folders)
    try:
        staging.rename(directory)
    except OSError:  # another process finished the same conversion first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        if not (directory / CONVERTED_META).is_file():
            raise
    _stamp(target, source, digest)
    return directory


_STAMPS = "gguf-stamps.json"


def _file_stamp(source: Path) -> dict[str, int]:
    status = source.stat()
    return {"bytes": status.st_size, "mtime_ns": status.st_mtime_ns}


def _read_stamps(target: Path) -> dict[str, Any]:
    try:
        stamps = json.loads((target / _STAMPS).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: every file is checked again and the index rewritten
    return stamps if isinstance(stamps, dict) else {}


def _stamped(target: Path, source: Path) -> Path | None:
    """The converted directory of ``source`` if it was converted (or found) before and has not changed since."""
    entry = _read_stamps(target).get(str(source))
    if not isinstance(entry, dict) or not source.is_file():
        return None
    if {k: entry.get(k) for k in ("bytes", "mtime_ns")} != _file_stamp(source):
        return None
    directory = target / f"{source.stem}-{str(entry.get('sha256', ''))[:12]}"
    return directory if (directory / CONVERTED_META).is_file() else None


def _stamp(target: Path, source: Path, digest: str) -> None:
    """Remember ``source``'s size, modification time and hash (written to a temporary file, then renamed)."""
    stamps = _read_stamps(target)
    stamps[str(source)] = {**_file_stamp(source), "sha256": digest}
    temporary = target / f".{_STAMPS}.tmp-{os.getpid()}"
    try:
        temporary.write_text(json.dumps(stamps, indent=1))
        temporary.replace(target / _STAMPS)
    except OSError:
        temporary.unlink(missing_ok=True)  # a read-only cache: loads stay correct, only slower
