"""The pretrained SmolLM2-135M-Instruct as a policy: chat prompts, exact log-probs, ids unchanged, LoRA GRPO."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dg_core import EnvPool, PolicyRequest
from dg_core.testing import ScriptedEnv
from dg_models import load_model
from dg_rl import GRPOLoss, LMPolicy, PromptFormat, RolloutEngine, apply_lora, build_batch, score_units
from tests.conftest import corridor_tasks

pytestmark = [pytest.mark.pretrained, pytest.mark.slow]


@pytest.fixture(scope="module")
def smollm2() -> Any:
    torch.set_num_threads(2)
    return load_model("smollm2")


def _engine(policy: LMPolicy, group_size: int, max_steps: int) -> RolloutEngine:
    return RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=max_steps)), group_size=group_size)


def test_chat_prompt_holds_history_as_turns(smollm2: Any) -> None:
    policy = LMPolicy(smollm2.model, smollm2.tokenizer, prompt_format=PromptFormat(history_turns=2))
    assert policy.chat
    env = ScriptedEnv(max_steps=6)
    task = corridor_tasks(1)[0]
    first = env.reset(task)
    action = env.expert_action()
    result = env.step(action)
    history = env.history
    assert len(history) == 1
    request = PolicyRequest(task=task, history=history, state=result.state)
    ids, cut = policy.encode_prompt(request)
    assert not cut
    text = smollm2.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are an agent in a text environment.")
    assert text.endswith("<|im_start|>assistant\n")
    assert f"<|im_start|>user\nTask: {task.instruction}\n{first.text}" in text
    assert f"<|im_start|>assistant\n{action}<|im_end|>\n<|im_start|>user\n{result.state.text}" in text
    # An action is an assistant turn: its ids end with the end-of-turn token the template writes.
    action_ids, _ = policy.encode_action(action)
    assert smollm2.tokenizer.decode(action_ids) == f"{action}<|im_end|>"


def test_choose_mode_logprobs_are_exact(smollm2: Any) -> None:
    policy = LMPolicy(smollm2.model, smollm2.tokenizer, prompt_format=PromptFormat(history_turns=1), seed=3)
    rollouts = _engine(policy, group_size=2, max_steps=3).collect(corridor_tasks(2))
    batch = build_batch(rollouts, mode="choose", pad_id=policy.pad_id)
    rescored = score_units(policy.model, batch, mode="choose", temperature=1.0)
    assert torch.allclose(rescored.logprobs * batch["unit_mask"], batch["old_logprobs"], atol=1e-4)
    for episode in rollouts.episodes:
        for turn in episode.turns:
            decision = turn.decision
            assert decision.completion_ids[-1] == smollm2.tokenizer.convert_tokens_to_ids("<|im_end|>")
            # The recorded choice log-prob equals a from-scratch forward of prompt + each candidate.
            scores = []
            for candidate in decision.candidates:
                ids = torch.tensor([decision.prompt_ids + candidate])
                with torch.no_grad():
                    log_dist = torch.log_softmax(policy.model(ids).logits[0].float(), -1)
                start = len(decision.prompt_ids)
                token_logprobs = [float(log_dist[start - 1 + i, t]) for i, t in enumerate(candidate)]
                scores.append(sum(token_logprobs) / len(token_logprobs))
            expected = torch.log_softmax(torch.tensor(scores), 0)[decision.chosen]
            assert decision.logprobs[0] == pytest.approx(float(expected), abs=1e-4)


def test_generate_mode_ids_reach_the_loss_unchanged_and_lora_grpo_steps(smollm2: Any) -> None:
    model = apply_lora(smollm2.model)
    policy = LMPolicy(model, smollm2.tokenizer, mode="generate", max_turn_tokens=8, temperature=1.0, seed=0)
    rollouts = _engine(policy, group_size=2, max_steps=2).collect(corridor_tasks(1))
    batch = build_batch(rollouts, mode="generate", pad_id=policy.pad_id)
    assert int(batch["unit_mask"].sum()) == rollouts.stats.policy_tokens
    rescored = score_units(policy.model, batch, mode="generate", temperature=policy.temperature)
    assert torch.allclose(rescored.logprobs * batch["unit_mask"], batch["old_logprobs"], atol=1e-3)
    # One LoRA update moves only the adapters.
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert 0 < sum(p.numel() for p in trainable) < 0.05 * sum(p.numel() for p in model.parameters())
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scores = score_units(model, batch, mode="generate", temperature=1.0)
    advantages = torch.tensor([1.0, -1.0])  # two episodes: one reinforced, one discouraged
    losses = GRPOLoss(kl_coef=0.0)(scores.logprobs, batch["old_logprobs"], advantages, batch["unit_mask"])
    total = sum(value for key, value in losses.items() if key.startswith("loss_"))
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    moved = sum(not torch.equal(a, b.detach()) for a, b in zip(before, trainable, strict=True))
    assert moved > 0
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
