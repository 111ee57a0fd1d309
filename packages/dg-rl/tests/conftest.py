from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from dg_core import Task
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_rl import LMPolicy, PromptFormat, tiny_causal_lm, train_bpe_tokenizer


def corridor_tasks(count: int, *, offset: int = 0, rooms: int = 3) -> list[Task]:
    return [
        scripted_task(f"t{offset + i}", rooms=rooms, goal_item=ITEMS[(offset + i) % len(ITEMS)], seed=offset + i)
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    env = ScriptedEnv()
    corpus = []
    for task in corridor_tasks(16):
        state = env.reset(task)
        corpus += [task.instruction, state.text, " | ".join(state.available_actions or ())]
        while not env.done:
            state = env.step(env.expert_action()).state
            corpus.append(state.text)
    return train_bpe_tokenizer(corpus, vocab_size=400)


@pytest.fixture
def make_model(tokenizer: PreTrainedTokenizerFast) -> Callable[..., Qwen2ForCausalLM]:
    def make(seed: int = 0) -> Qwen2ForCausalLM:
        torch.manual_seed(seed)
        return tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=seed)

    return make


@pytest.fixture
def make_policy(
    tokenizer: PreTrainedTokenizerFast, make_model: Callable[..., Qwen2ForCausalLM]
) -> Callable[..., LMPolicy]:
    def make(mode: str = "choose", seed: int = 0, **kwargs: object) -> LMPolicy:
        kwargs.setdefault("prompt_format", PromptFormat(history_turns=1))
        return LMPolicy(make_model(seed), tokenizer, mode=mode, seed=seed, **kwargs)  # type: ignore[arg-type]

    return make
