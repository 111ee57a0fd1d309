from __future__ import annotations

from typing import Any

import pytest

from dg_core import RandomPolicy, Trajectory, play_episode
from dg_core.testing import ITEMS, ScriptedEnv, ScriptedPolicy, scripted_task
from dg_expmodel import PromptOptions, RuleBasedAnnotator, examples_from_trajectories, tiny_causal_lm, train_tokenizer

OPTIONS = PromptOptions(history_window=2, max_retrieved=2)


def collect(count: int, *, offset: int = 0) -> list[Trajectory]:
    """Real episodes of the scripted corridor world: expert and random alternately."""
    env = ScriptedEnv(max_steps=10)
    out = []
    for i in range(offset, offset + count):
        task = scripted_task(f"t{i}", rooms=2 + i % 3, goal_item=ITEMS[i % 4], seed=i)
        policy = ScriptedPolicy(lambda _r: env.expert_action(), policy_id="expert") if i % 2 == 0 else RandomPolicy(i)
        out.append(play_episode(env, policy, task))
    return out


@pytest.fixture(scope="session")
def trajectories() -> list[Trajectory]:
    return collect(40)


@pytest.fixture(scope="session")
def tokenizer(trajectories: list[Trajectory]) -> Any:
    examples = examples_from_trajectories(trajectories, RuleBasedAnnotator(), options=OPTIONS)
    return train_tokenizer([e.prompt + e.response for e in examples], vocab_size=768)


@pytest.fixture
def tiny_model(tokenizer: Any) -> Any:
    model = tiny_causal_lm(tokenizer, hidden_size=64, num_layers=2, num_heads=2, max_positions=1024)
    model.eval()
    return model
