"""The real pretrained SmolLM2-135M-Instruct from its PyPI wheel: conversion, reuse, chat template, bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from dg_models import CONVERTED_META, ModelLoadError, convert_gguf, load_model, resolve_source
from dg_models.__main__ import main

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]


def test_smollm2_loads_converted_once_with_its_chat_template(smollm2_file: Path) -> None:
    loaded = load_model("smollm2")
    assert loaded.kind == "pretrained"
    directory = Path(loaded.location)
    meta = json.loads((directory / CONVERTED_META).read_text())
    assert meta["architecture"] == "llama"
    assert meta["tensors"] == 272
    assert meta["bytes"] == smollm2_file.stat().st_size
    assert sorted(p.name for p in directory.glob("*.safetensors")) == ["model.safetensors"]
    assert loaded.model.config.model_type == "llama"
    assert sum(p.numel() for p in loaded.model.parameters()) == 134_515_008
    tokenizer = loaded.tokenizer
    assert loaded.chat
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    # The same file resolves to the same directory without converting again.
    stamp = (directory / CONVERTED_META).stat().st_mtime_ns
    assert resolve_source(str(smollm2_file)) == ("gguf", str(directory))
    assert (directory / CONVERTED_META).stat().st_mtime_ns == stamp


def test_smollm2_answers_sensibly_greedy(smollm2_file: Path) -> None:
    loaded = load_model("smollm2")
    tokenizer = loaded.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer with one word."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_truncated_gguf_is_a_clear_error(smollm2_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_file.open("rb") as source, cut.open("wb") as target:
        target.write(source.read(smollm2_file.stat().st_size // 2))
    with pytest.raises(ModelLoadError, match="corrupt or truncated GGUF file"):
        convert_gguf(cut, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_unfinished_folders_are_never_taken_for_a_converted_model(smollm2_file: Path, tmp_path: Path) -> None:
    directory = Path(resolve_source("smollm2")[1])
    cache = tmp_path / "cache"
    # What a killed conversion can leave (its staging folder), and a folder someone else half-copied.
    (cache / f".{directory.name}.tmp-1").mkdir(parents=True)
    shutil.copytree(directory, cache / directory.name, ignore=shutil.ignore_patterns(CONVERTED_META))
    (cache / directory.name / "model.safetensors").write_bytes(b"half")
    converted = convert_gguf(smollm2_file, cache_dir=cache, progress=False)
    assert converted == cache / directory.name
    assert (converted / CONVERTED_META).is_file()
    size = (directory / "model.safetensors").stat().st_size
    assert (converted / "model.safetensors").stat().st_size == size
    assert not list(cache.glob(f".{directory.name}.tmp-{os.getpid()}"))
    assert main(["list"]) == 0


def test_an_unchanged_file_is_not_checked_or_hashed_again(
    smollm2_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dg_models._gguf as gguf_module

    directory = Path(resolve_source("smollm2")[1])
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / directory.name).symlink_to(directory)  # the converted model, without copying 0.5 GB
    copy = tmp_path / smollm2_file.name
    shutil.copyfile(smollm2_file, copy)
    assert convert_gguf(copy, cache_dir=cache, progress=False) == cache / directory.name
    stamps = json.loads((cache / "gguf-stamps.json").read_text())
    assert stamps[str(copy.resolve())]["bytes"] == copy.stat().st_size
    assert stamps[str(copy.resolve())]["sha256"].startswith(directory.name.rsplit("-", 1)[1])

    def refuse(*args: object) -> None:
        raise AssertionError("checked or hashed again")

    monkeypatch.setattr(gguf_module, "check_gguf", refuse)
    monkeypatch.setattr(gguf_module, "_sha256", refuse)
    assert convert_gguf(copy, cache_dir=cache, progress=False) == cache / directory.name
    # A file changed since (here only its modification time) is checked again.
    status = copy.stat()
    os.utime(copy, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="checked or hashed again"):
        convert_gguf(copy, cache_dir=cache, progress=False)
    # An unreadable index only costs the check: it is rewritten.
    monkeypatch.undo()
    (cache / "gguf-stamps.json").write_text("{not json")
    assert convert_gguf(copy, cache_dir=cache, progress=False) == cache / directory.name
    assert str(copy.resolve()) in json.loads((cache / "gguf-stamps.json").read_text())
