"""Choose-mode scoring with a shared prompt cache: the same log-probs as running every row in full."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

from dg_core import PolicyRequest
from dg_core.testing import ScriptedEnv
from dg_rl import LMPolicy, PackedRows, pack_rows, score_completions
from dg_rl._scoring import score_candidates, score_unshared
from tests.conftest import corridor_tasks

TOLERANCE = 1e-5


def tiny_llama(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as SmolLM2 has
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return LlamaForCausalLM(config)


def random_rows(vocab: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rows of 5 prompts of 3-40 tokens: one with a single candidate, one with single-token candidates only,
    the others with 2-7 candidates of 1-9 tokens; rows of different prompts interleaved."""
    rng = random.Random(seed)
    rows: list[tuple[list[int], list[int]]] = []
    for index, count in enumerate((1, 4, 3, 7, 2)):
        prompt = [rng.randrange(2, vocab) for _ in range(rng.randint(3, 40))]
        longest = 1 if index == 1 else 9
        rows += [(prompt, [rng.randrange(2, vocab) for _ in range(rng.randint(1, longest))]) for _ in range(count)]
    rng.shuffle(rows)
    return [prompt for prompt, _ in rows], [completion for _, completion in rows]


def flat_logprobs(logprobs: torch.Tensor, completions: list[list[int]]) -> torch.Tensor:
    return torch.cat([logprobs[row, : len(ids)] for row, ids in enumerate(completions)])


@pytest.fixture(params=["qwen2", "llama"])
def model(request: pytest.FixtureRequest, make_model: Callable[..., Qwen2ForCausalLM], tokenizer: Any) -> Any:
    built: Any = make_model(0) if request.param == "qwen2" else tiny_llama(tokenizer)
    return built.eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_logprobs_equal_naive_and_pack_rows(
    model: Any, tokenizer: PreTrainedTokenizerFast, attention: str, temperature: float
) -> None:
    model.set_attn_implementation(attention)
    for seed in range(3):
        prompts, completions = random_rows(len(tokenizer), seed)
        rows = pack_rows(prompts, completions, pad_id=int(tokenizer.pad_token_id), device=torch.device("cpu"))
        naive = score_unshared(model, prompts, completions, pad_id=int(tokenizer.pad_token_id), temperature=temperature)
        shared = score_candidates(model, rows, temperature=temperature)
        with torch.no_grad():
            packed = score_completions(model, rows, temperature=temperature)
        expected = flat_logprobs(naive.logprobs, completions)
        assert torch.equal(shared.mask, packed.mask)
        assert torch.allclose(flat_logprobs(shared.logprobs, completions), expected, atol=TOLERANCE, rtol=0)
        assert torch.allclose(flat_logprobs(packed.logprobs, completions), expected, atol=TOLERANCE, rtol=0)
        assert float(shared.logprobs[shared.mask == 0].abs().sum()) == 0.0
        assert bool((expected < 0).all())


def test_single_token_candidates_and_a_single_candidate(model: Any, tokenizer: PreTrainedTokenizerFast) -> None:
    pad = int(tokenizer.pad_token_id)
    cases = [
        ([[5, 6, 7]], [[9]]),  # one prompt, one single-token candidate: no tree forward at all
        ([[5, 6, 7], [5, 6, 7], [8, 9]], [[9], [10], [11]]),
        ([[5, 6, 7, 8, 9, 10]], [[11, 12, 13, 14]]),  # one multi-token candidate
    ]
    for prompts, completions in cases:
        rows = pack_rows(prompts, completions, pad_id=pad, device=torch.device("cpu"))
        shared = score_candidates(model, rows).logprobs
        naive = score_unshared(model, prompts, completions, pad_id=pad).logprobs
        assert shared.shape == naive.shape
        assert torch.allclose(shared, naive, atol=TOLERANCE, rtol=0)


def requests() -> list[PolicyRequest]:
    env = ScriptedEnv()
    return [PolicyRequest(task=task, state=env.reset(task)) for task in corridor_tasks(6, rooms=4)]


def test_choose_policy_decides_alike_with_either_scorer(
    make_policy: Callable[..., LMPolicy], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_policy = make_policy("choose", seed=3, score_batch_rows=7)  # chunks split some prompts' candidates
    shared = [shared_policy.decide(requests()) for _ in range(4)]

    def pack_rows_scores(model: torch.nn.Module, rows: PackedRows, **kwargs: Any) -> Any:
        return score_completions(model, rows, **kwargs)

    monkeypatch.setattr("dg_rl._sampler.score_candidates", pack_rows_scores)
    packed_policy = make_policy("choose", seed=3, score_batch_rows=7)
    packed = [packed_policy.decide(requests()) for _ in range(4)]
    for shared_round, packed_round in zip(shared, packed, strict=True):
        for one, other in zip(shared_round, packed_round, strict=True):
            assert one.chosen == other.chosen
            assert one.completion_ids == other.completion_ids
            assert one.logprobs == pytest.approx(other.logprobs, abs=TOLERANCE)
            assert len(one.candidates) > 1
