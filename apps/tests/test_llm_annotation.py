"""`dg expmodel fit` with `annotator: llm`: the checked annotator's wiring, metrics, summary and resume.

The annotator here is a tiny model saved as a Hugging Face directory (any model source works the same way): it
writes noise, so every answer is rejected and replaced by the rule annotator's trace. The pretrained SmolLM2 is
exercised by dg-expmodel's tests and by `benchmarks/expmodel/annotator.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_core import read_trajectories
from tests.conftest import TINY_EXPMODEL, dg


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, expert_data: Path) -> Path:
    from dg_models import save_model, tiny_causal_lm, train_bpe_tokenizer

    texts = [s.next_state.text for t in read_trajectories(expert_data) for s in t.steps]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    model = tiny_causal_lm(tokenizer, hidden_size=16, num_layers=1, num_heads=2, max_positions=1024)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("teacher") / "model")


def test_fit_with_llm_annotator_falls_back_counts_and_resumes(
    workspace: Path, expert_data: Path, teacher_dir: Path
) -> None:
    from dg_expmodel import step_key

    out = workspace / "expmodel-llm"
    argv = [
        "expmodel", "fit", *TINY_EXPMODEL, "--set", f"data=[{expert_data}]", "--set", "expmodel.annotator=llm",
        "--set", f"expmodel.annotator_model={teacher_dir}", "--set", "expmodel.annotator_max_new_tokens=8",
        "--output", str(out),
    ]  # fmt: skip
    metrics = dg(*argv)
    distinct = {step_key(s) for t in read_trajectories(expert_data) for s in t.steps}
    annotation = metrics["annotator"]
    assert (annotation["kind"], annotation["model"]) == ("llm", str(teacher_dir))
    assert annotation["transitions"] == annotation["generated"] == len(distinct) and annotation["cached"] == 0
    # Noise is rejected: every trace is the rule annotator's, mostly for running into the 8-token cap.
    assert annotation["fallbacks"] == len(distinct) == sum(annotation["rejects"].values())
    assert set(annotation["rejects"]) == {"empty", "degenerate", "contradicts_outcome", "copies_outcome"}
    assert annotation["accepted"] == 0 and annotation["seconds_per_generated"] > 0
    assert 0 <= annotation["raw_copy_rate"] <= 1 and annotation["final_copy_rate"] > 0.5  # rule traces list changes
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert {r["key"] for r in records} == distinct and all(r["reason"] for r in records)
    summary = (out / "summary.md").read_text()
    assert (
        f"{len(distinct)} generated, 0 from `annotations.jsonl`; {len(distinct)} replaced by the rule annotator"
        in summary
    )

    # The interrupted run resumes its annotations from the cache: the same decisions, nothing generated.
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    resumed = dg(*argv)["annotator"]
    assert resumed["generated"] == 0 and resumed["cached"] == len(distinct)
    assert resumed["rejects"] == annotation["rejects"] and resumed["seconds_per_generated"] is None
    assert "nothing generated" in (out / "summary.md").read_text()
