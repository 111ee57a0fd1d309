from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dg_core import ConfigError
from dg_expmodel import (
    RuleBasedAnnotator,
    TransformersBackend,
    examples_from_trajectories,
    fit_experience_model,
    tiny_causal_lm,
    tokenize_examples,
)
from dg_expmodel._sft import IGNORE_INDEX, Batches, collate, length_grouped_batches
from tests.conftest import OPTIONS, collect


def test_prompt_tokens_are_masked(tokenizer: Any, trajectories: list) -> None:  # type: ignore[type-arg]
    examples = examples_from_trajectories(trajectories[:2], RuleBasedAnnotator(), options=OPTIONS)
    features = tokenize_examples(examples, tokenizer, max_length=2048)
    for example, feature in zip(examples, features, strict=True):
        response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labelled = [label for label in feature["labels"] if label != IGNORE_INDEX]
        assert labelled == response_ids
        assert feature["input_ids"][-len(response_ids) :] == response_ids
    short = tokenize_examples(examples, tokenizer, max_length=120)
    assert all(len(f["input_ids"]) <= 120 for f in short)
    assert len(tokenize_examples(examples, tokenizer, max_length=20)) == 0  # responses never fit: dropped


def test_batches_group_lengths_and_pad_with_masks() -> None:
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    batches = length_grouped_batches(lengths, 2, seed=1)
    assert sorted(i for batch in batches for i in batch) == list(range(8))
    assert all(abs(lengths[b[0]] - lengths[b[-1]]) <= 3 for b in batches)
    batch = collate(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}], pad_token_id=0
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_fit_lowers_loss_saves_hf_and_resumes(tokenizer: Any, trajectories: list, tmp_path: Path) -> None:  # type: ignore[type-arg]
    annotator = RuleBasedAnnotator()
    train = examples_from_trajectories(trajectories[:30], annotator, options=OPTIONS)
    val = examples_from_trajectories(collect(6, offset=500), annotator, options=OPTIONS)
    model = tiny_causal_lm(tokenizer, hidden_size=64, num_layers=2, num_heads=2, max_positions=1024)
    first = fit_experience_model(
        model,
        tokenizer,
        train,
        val_examples=val,
        output_dir=tmp_path,
        max_epochs=1,
        batch_size=16,
        learning_rate=3e-3,
        progress=False,
    )
    assert first.resumed_from is None and first.examples == len(train) and first.dropped == 0
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "model" / "model.safetensors").exists()
    second = fit_experience_model(
        model,
        tokenizer,
        train,
        val_examples=val,
        output_dir=tmp_path,
        max_epochs=3,
        batch_size=16,
        learning_rate=3e-3,
        progress=False,
    )
    assert second.resumed_from == str(tmp_path / "checkpoints" / "last.ckpt")
    assert second.metrics["val/loss"] < first.metrics["val/loss"]
    metrics_csv = (tmp_path / "logs").rglob("metrics.csv")
    epochs = {line.split(",")[0] for path in metrics_csv for line in path.read_text().splitlines()[1:]}
    assert epochs  # one CSV log across the resumed run
    # The saved Hugging Face directory holds exactly the trained weights: its validation loss is the logged one.
    backend = TransformersBackend.from_pretrained(second.model_dir)
    features = tokenize_examples(val, backend.tokenizer, max_length=1024)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in Batches(features, 16, backend.tokenizer.pad_token_id, seed=0, shuffle=False):
            loss = backend.model(**batch).loss
            total += float(loss) * batch["input_ids"].shape[0]
            count += batch["input_ids"].shape[0]
    assert total / count == pytest.approx(second.metrics["val/loss"], abs=1e-4)


def test_fit_refuses_empty_data(tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one training example"):
        fit_experience_model(None, tokenizer, [], output_dir=tmp_path)


class _Payload:
    """Pickles to a call that writes a marker file: what a crafted checkpoint would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "ran"))  # type: ignore[return-value]


def test_a_crafted_checkpoint_is_refused_not_run(
    tokenizer: Any, trajectories: list[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    marker = tmp_path / "payload-ran"
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # the environment cannot switch the check off
    train = examples_from_trajectories(trajectories[:4], RuleBasedAnnotator(), options=OPTIONS)
    model = tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=2, max_positions=1024)
    with pytest.raises(pickle.UnpicklingError):
        fit_experience_model(model, tokenizer, train, output_dir=tmp_path, max_epochs=1, progress=False)
    assert not marker.exists()
