"""Every command with the pretrained SmolLM2-135M-Instruct (PyPI wheel): fit (LoRA), audit, real GRPO, eval,
collect (zero-shot and trained), real PPO (LoRA), synthetic GRPO (full fine-tuning) and s2r.

Sized for 2 CPU cores: a handful of scripted-corridor transitions, short budgets. What is asserted is that the
pretrained path is the same path as the tiny one (chat prompts in training and inference alike, merged LoRA
weights, policy directories), not how good a 135M model is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dg_apps.cli import main
from dg_apps.models import load_expmodel
from dg_core import ExperienceQuery, read_trajectories
from dg_expmodel import PromptOptions, RuleBasedAnnotator, examples_from_trajectories
from dg_replay import ReplayBuffer
from tests.conftest import SCRIPTED_ENV, dg

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]

SMALL_ENV = [*SCRIPTED_ENV, "--set", "env.games=6"]

ONE_TASK_ENV = [*SCRIPTED_ENV, "--set", "env.games=1", "--set", "env.max_steps=3"]
"""A panel of one train task (``corridor-3-0``) and short episodes: the least a pretrained policy can play."""

SHORT_EPISODES = ["--set", "env.max_steps=2", "--set", "synthetic.max_steps=1"]
"""Real episodes of at most 2 steps (the least that can win), synthetic ones of 1."""
ONE_STEP = ["--set", "algorithm.steps=1", "--set", "algorithm.tasks_per_step=1", "--set", "algorithm.group_size=2",
            "--set", "algorithm.updates_per_batch=1"]  # fmt: skip
"""One rollout batch (one task, two episodes), one optimiser step."""


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
        # Inference continues the answer's prefilled opening: the training prompt plus the start of its target.
        assert example.response.startswith("<reasoning>")
        assert rendered == example.prompt + "<reasoning>"
        assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n<reasoning>")
    finally:
        bundle.buffer.close()


def test_audit_of_the_pretrained_experience_model(workspace: Path, smollm2_expmodel: Path, small_data: Path) -> None:
    out = workspace / "pretrained-audit"
    metrics = dg(
        "expmodel", "audit",
        "--set", f"expmodel={smollm2_expmodel}", "--set", f"held_out=[{small_data}]",
        "--set", "max_episodes=2", "--set", "open_loop_episodes=1", "--set", "ablations=false",
        "--set", "policy_fidelity.episodes=0",  # SmolLM2 simulating 3 x 16 episodes: past the test's timeout
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


def _checkpoint(run: Path) -> dict[str, Any]:
    """The run's Lightning checkpoint (tensors memory-mapped: the test reads shapes and a few values)."""
    checkpoint: dict[str, Any] = torch.load(
        run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True
    )
    return checkpoint


def _assert_llama_policy_dir(folder: Path, **settings: object) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"  # the pretrained SmolLM2, merged: a plain Hugging Face directory
    assert not list(folder.glob("adapter_*"))
    saved: dict[str, Any] = json.loads((folder / "policy.json").read_text())
    assert saved["model"] == str(folder) and saved["lora"] is False and saved["mode"] == "choose"
    for key, value in settings.items():
        assert saved[key] == value, key
    return config


@pytest.fixture(scope="module")
def ppo_run(workspace: Path) -> Path:
    out = workspace / "pretrained-train-ppo"
    dg(
        "train", *ONE_TASK_ENV, "--set", "where=real", "--set", "policy.model=smollm2", "--set", "policy.lora=true",
        "--set", "policy.max_turn_tokens=16", "--set", "algorithm.name=ppo", *ONE_STEP,
        "--set", "algorithm.learning_rate=1e-4", "--set", "curriculum.enabled=false", "--output", str(out),
    )  # fmt: skip
    return out


def test_real_lora_ppo_trains_the_adapters_and_the_value_head(ppo_run: Path) -> None:
    metrics = json.loads((ppo_run / "metrics.json").read_text())
    assert (metrics["where"], metrics["algorithm"]) == ("real", "ppo")
    assert metrics["optimizer_steps"] == metrics["rollout_batches"] == 1 and metrics["episodes"] == 2
    (batch,) = metrics["rollout_history"]
    assert 2 <= metrics["real_transitions"] == batch["turns"] <= 2 * 3  # two episodes of at most 3 steps
    assert metrics["synthetic_transitions"] == 0
    assert "train/loss_value" in metrics["last_metrics"] and "train/value_mean" in metrics["last_metrics"]
    config = _assert_llama_policy_dir(ppo_run / "policy", max_turn_tokens=16)
    checkpoint = _checkpoint(ppo_run)
    assert checkpoint["global_step"] == 1
    state = checkpoint["state_dict"]
    # dg-rl's PPOModule: a linear value head on the hidden state, zero-initialised, trained with the policy.
    head = state["value_head.weight"]
    assert head.shape == (1, config["hidden_size"]) and state["value_head.bias"].shape == (1,)
    adapters = [key for key in state if ".lora_" in key]
    assert len(adapters) == config["num_hidden_layers"] * 4 * 2  # A and B of q, k, v, o in every layer
    optimizer = checkpoint["optimizer_states"][0]
    params = optimizer["param_groups"][0]["params"]
    assert len(params) == len(adapters) + 2  # only the adapters and the value head train
    head_weight, head_bias = (optimizer["state"][index] for index in params[-2:])
    assert head_weight["exp_avg"].shape == head.shape and head_bias["exp_avg"].shape == (1,)
    assert float(head_weight["step"]) == float(head_bias["step"]) == 1.0
    # With a reward in the batch the value targets are non-zero and the head moves off zero; without, it cannot.
    assert bool(head.any()) == (batch["mean_return"] > 0)


def test_collect_plays_smollm2_zero_shot_and_trained(
    workspace: Path, ppo_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for policy, name, episodes, policy_id in (
        ("smollm2", "zero-shot", 2, "smollm2"),
        (str(ppo_run), "trained", 1, ppo_run.name),
    ):
        out = workspace / f"pretrained-collect-{name}"
        metrics = dg(
            "collect", *ONE_TASK_ENV, "--set", f"policy={policy}", "--set", f"episodes_per_task={episodes}",
            "--output", str(out),
        )  # fmt: skip
        trajectories = list(read_trajectories(out / "trajectories.jsonl"))
        assert metrics["tasks"] == 1 and metrics["failed_episodes"] == 0
        assert metrics["episodes"] == metrics["new_episodes"] == len(trajectories) == episodes
        assert [t.task.id for t in trajectories] == ["corridor-3-0"] * episodes
        assert metrics["steps"] == sum(t.num_steps for t in trajectories) > 0
        assert metrics["success_rate"] == sum(t.success for t in trajectories) / episodes
        for trajectory in trajectories:
            assert trajectory.policy_id == policy_id
            # choose mode: every action is one the env offered
            assert all(step.action.text in (step.state.available_actions or ()) for step in trajectory.steps)
    bad = ["collect", *ONE_TASK_ENV, "--no-progress", "--output"]
    assert main([*bad, str(workspace / "pretrained-collect-bad-policy"), "--set", "policy=no-such-policy"]) == 2
    error = capsys.readouterr().err
    assert "policy: 'no-such-policy' is neither one of expert, random, noisy-expert nor a model" in error
    assert "Traceback" not in error
    assert main([*bad, str(workspace / "pretrained-collect-bad-workers"), "--set", "policy=smollm2",
                 "--set", "workers=2"]) == 2  # fmt: skip
    assert "workers: a model policy ('smollm2') plays in this process" in capsys.readouterr().err


def test_synthetic_grpo_fine_tunes_all_of_smollm2_against_a_tiny_experience_model(
    workspace: Path, expmodel_run: Path, expert_data: Path
) -> None:
    out = workspace / "pretrained-train-synthetic-full"
    # kl_coef=0 here and in s2r: no reference policy to score (a frozen copy of all 135M weights when fully
    # fine-tuned); the real GRPO test above keeps the KL term (LoRA: the adapters disabled are the reference)
    metrics = dg(
        "train", *SCRIPTED_ENV, *SHORT_EPISODES, "--set", "policy.model=smollm2", "--set", "policy.lora=false",
        "--set", f"expmodel={expmodel_run}", "--set", f"data=[{expert_data}]", *ONE_STEP,
        "--set", "algorithm.learning_rate=1e-6", "--set", "algorithm.kl_coef=0", "--set", "synthetic.max_new_tokens=48",
        "--output", str(out),
    )  # fmt: skip
    assert (metrics["where"], metrics["algorithm"]) == ("synthetic", "grpo")
    assert metrics["optimizer_steps"] == metrics["rollout_batches"] == 1 and metrics["episodes"] == 2
    (batch,) = metrics["rollout_history"]
    assert metrics["real_transitions"] == 0
    assert metrics["synthetic_transitions"] == batch["turns"] == 2  # two one-step episodes
    assert metrics["expmodel"]["queries"] >= metrics["synthetic_transitions"]
    # Written back (identical ones once), except the failure placeholders of unparseable answers (the tiny
    # experience model's usual answer at 48 tokens): those are counted, never stored.
    withheld = metrics["replay"]["placeholders_withheld"]
    assert withheld == metrics["expmodel"]["parse_failures"]
    with ReplayBuffer.open(out / "replay", read_only=True) as buffer:
        stored = buffer.stats().by_source.get("synthetic", 0)
    assert stored <= metrics["synthetic_transitions"] - withheld and (stored > 0 or withheld == 2)
    config = _assert_llama_policy_dir(out / "policy")
    checkpoint = _checkpoint(out)
    assert checkpoint["global_step"] == 1
    state = checkpoint["state_dict"]
    assert not [key for key in state if "lora_" in key]
    # full fine-tuning: AdamW holds a state for every weight of the model (the tied output embedding is the input
    # one), and nothing else trains
    weights = [key for key in state if key.startswith("model.") and state[key].is_floating_point()]
    optimizer = checkpoint["optimizer_states"][0]
    params = optimizer["param_groups"][0]["params"]
    assert len(params) == len(optimizer["state"]) == len(weights) - int(config["tie_word_embeddings"]) > 200
    assert all(float(optimizer["state"][index]["step"]) == 1.0 for index in params)


def test_s2r_with_a_smollm2_lora_policy_stops_the_real_phase_at_its_budget(
    workspace: Path, expmodel_run: Path, expert_data: Path
) -> None:
    out = workspace / "pretrained-s2r"
    prefix = [arg if arg == "--set" else f"train.{arg}" for arg in (*SCRIPTED_ENV, *SHORT_EPISODES, *ONE_STEP)]
    metrics = dg(
        "s2r", *prefix, "--set", "train.policy.model=smollm2", "--set", "train.policy.lora=true",
        "--set", f"train.expmodel={expmodel_run}", "--set", f"train.data=[{expert_data}]",
        "--set", "train.algorithm.learning_rate=1e-4", "--set", "train.algorithm.kl_coef=0",
        "--set", "train.synthetic.max_new_tokens=48", "--set", "real_steps=3", "--set", "real_budget=2",
        "--output", str(out),
    )  # fmt: skip
    synthetic = json.loads((out / "synthetic" / "metrics.json").read_text())
    real = json.loads((out / "real" / "metrics.json").read_text())
    assert synthetic["optimizer_steps"] == metrics["synthetic"]["optimizer_steps"] == 1
    assert synthetic["real_transitions"] == 0 and metrics["synthetic"]["synthetic_transitions"] > 0
    assert real["optimizer_steps"] == metrics["real"]["optimizer_steps"] == 1
    assert real["synthetic_transitions"] == 0
    # The first batch (two real episodes, at least one step each) spends the budget of 2: it is trained on, and
    # nothing more is collected although real_steps allowed 3 batches.
    assert real["rollout_batches"] == 1
    assert 2 <= metrics["real"]["real_transitions"] == real["real_transitions"] <= 2 * 2
    assert synthetic["synthetic_transitions"] == 2
    synthetic_config = yaml.safe_load((out / "synthetic" / "config.yaml").read_text())
    real_config = yaml.safe_load((out / "real" / "config.yaml").read_text())
    assert (synthetic_config["policy"]["model"], synthetic_config["policy"]["lora"]) == ("smollm2", True)
    assert (real_config["policy"]["model"], real_config["real_budget"]) == (str(out / "synthetic" / "policy"), 2)
    config = _assert_llama_policy_dir(out / "synthetic" / "policy")
    _assert_llama_policy_dir(out / "real" / "policy")
    assert real_config["policy"]["lora"] is True  # the real phase trains new adapters on the merged policy
    for phase in ("synthetic", "real"):  # each phase trained LoRA adapters only
        checkpoint = _checkpoint(out / phase)
        adapters = [key for key in checkpoint["state_dict"] if ".lora_" in key]
        assert len(adapters) == config["num_hidden_layers"] * 4 * 2
        assert len(checkpoint["optimizer_states"][0]["param_groups"][0]["params"]) == len(adapters)
    assert metrics["policy"] == str(out / "real" / "policy")
