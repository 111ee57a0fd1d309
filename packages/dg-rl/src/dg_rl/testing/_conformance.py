"""The conformance suite every :class:`~dg_rl.RolloutSampler` passes.

Use it by subclassing and supplying two fixtures: the policy model (the suite changes its weights, so give a
fresh one per test) and the sampler built over it::

    class TestMySampler(RolloutSamplerConformance):
        @pytest.fixture
        def model(self):
            return tiny_causal_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=2)

        @pytest.fixture
        def sampler(self, model):
            return MySampler(model)

Every log-prob a sampler reports is checked against the model's own ``log_softmax(logits / temperature)`` of
the sampled id, recomputed by a plain forward pass over each full row (``dg_rl._scoring.score_unshared``).
Class attributes tune it: ``logprob_atol`` (an engine in bfloat16 needs a looser one than the float32
default), ``temperature``, ``max_new_tokens``, ``prompt_count``. A GPU user runs it against ``VLLMSampler`` the
same way.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from dg_core import ConfigError
from dg_rl._sampler import RolloutSampler, Sample
from dg_rl._scoring import reduce_scores, score_unshared


def _vocab_size(model: nn.Module) -> int:
    config: Any = getattr(model, "config")  # noqa: B009 - every transformers model has one
    return int(config.vocab_size)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class RolloutSamplerConformance:
    """Contract tests for a rollout sampler (see the module docstring)."""

    logprob_atol: float = 1e-4
    temperature: float = 0.8
    max_new_tokens: int = 6
    prompt_count: int = 6

    @pytest.fixture
    def model(self) -> nn.Module:  # pragma: no cover - always overridden
        raise NotImplementedError("subclasses of RolloutSamplerConformance provide a model fixture")

    @pytest.fixture
    def sampler(self, model: nn.Module) -> RolloutSampler:  # pragma: no cover - always overridden
        raise NotImplementedError("subclasses of RolloutSamplerConformance provide a sampler fixture")

    @pytest.fixture
    def prompts(self, model: nn.Module) -> list[list[int]]:
        """Seeded random prompts of 2 to 9 ids (two share their ids, as a GRPO group does)."""
        ids = _generator(1234)
        vocab = _vocab_size(model)
        prompts = [
            torch.randint(0, vocab, (2 + index % 8,), generator=ids).tolist() for index in range(self.prompt_count)
        ]
        prompts[-1] = list(prompts[0])
        return prompts

    def _sample(self, sampler: RolloutSampler, prompts: list[list[int]], seed: int, **options: Any) -> list[Sample]:
        options.setdefault("temperature", self.temperature)
        options.setdefault("stop_token_ids", ())
        budgets = options.pop("max_new_tokens", [self.max_new_tokens] * len(prompts))
        return sampler.sample(prompts, budgets, generator=_generator(seed), **options)

    def _reference(
        self, model: nn.Module, prompts: list[list[int]], samples: list[Sample], temperature: float
    ) -> list[list[float]]:
        """The model's own log-prob of every sampled id (a full forward per row, nothing shared)."""
        rows = [(prompt, sample.token_ids) for prompt, sample in zip(prompts, samples, strict=True) if sample.token_ids]
        if not rows:
            return [[] for _ in samples]
        scores = score_unshared(
            model, [p for p, _ in rows], [c for _, c in rows], pad_id=0, temperature=temperature
        ).logprobs.cpu()
        values = iter(scores.tolist())
        return [next(values)[: len(sample.token_ids)] if sample.token_ids else [] for sample in samples]

    def _assert_close(self, got: list[list[float]], want: list[list[float]]) -> None:
        assert [len(row) for row in got] == [len(row) for row in want]
        flat_got = torch.tensor([value for row in got for value in row], dtype=torch.float64)
        flat_want = torch.tensor([value for row in want for value in row], dtype=torch.float64)
        torch.testing.assert_close(flat_got, flat_want, atol=self.logprob_atol, rtol=0.0)

    # -- sampling -------------------------------------------------------------------------------
    def test_ids_are_in_the_vocabulary_and_within_budget(
        self, sampler: RolloutSampler, model: nn.Module, prompts: list[list[int]]
    ) -> None:
        budgets = [index % (self.max_new_tokens + 1) for index in range(len(prompts))]
        samples = self._sample(sampler, prompts, 0, max_new_tokens=budgets)
        vocab = _vocab_size(model)
        assert len(samples) == len(prompts)
        for sample, budget in zip(samples, budgets, strict=True):
            # No stop tokens: every completion runs to its budget (0 gives an empty one).
            assert len(sample.token_ids) == budget
            assert len(sample.logprobs) == budget
            assert not sample.stopped
            assert all(0 <= token < vocab for token in sample.token_ids)
            assert all(value <= 0.0 for value in sample.logprobs)

    @pytest.mark.parametrize("temperature", [1.0, 0.7])
    def test_logprobs_are_the_models_own(
        self, sampler: RolloutSampler, model: nn.Module, prompts: list[list[int]], temperature: float
    ) -> None:
        samples = self._sample(sampler, prompts, 1, temperature=temperature)
        reference = self._reference(model, prompts, samples, temperature)
        self._assert_close([sample.logprobs for sample in samples], reference)

    def test_stop_tokens_end_completions(self, sampler: RolloutSampler, prompts: list[list[int]]) -> None:
        free = self._sample(sampler, prompts, 2)
        seconds = {sample.token_ids[1] for sample in free}
        firsts = {sample.token_ids[0] for sample in free} - seconds
        # The same seed samples the same ids until a completion stops, so each stops at its first stop id (kept).
        for stops in (seconds, firsts):
            stopped = self._sample(sampler, prompts, 2, stop_token_ids=sorted(stops))
            for loose, sample in zip(free, stopped, strict=True):
                cut = next((index + 1 for index, token in enumerate(loose.token_ids) if token in stops), None)
                assert sample.stopped == (cut is not None)
                assert sample.token_ids == loose.token_ids[:cut]
                assert len(sample.logprobs) == len(sample.token_ids)
            if stops is seconds:  # every completion holds a second-token id by its second token
                assert all(sample.stopped and len(sample.token_ids) <= 2 for sample in stopped)

    def test_same_seed_same_samples(self, sampler: RolloutSampler, prompts: list[list[int]]) -> None:
        one = self._sample(sampler, prompts, 3)
        two = self._sample(sampler, prompts, 3)
        other = self._sample(sampler, prompts, 4)
        assert [s.token_ids for s in one] == [s.token_ids for s in two]
        self._assert_close([s.logprobs for s in one], [s.logprobs for s in two])
        assert [s.token_ids for s in one] != [s.token_ids for s in other]

    def test_sync_after_an_update_samples_the_new_weights(
        self, sampler: RolloutSampler, model: nn.Module, prompts: list[list[int]]
    ) -> None:
        sampler.sync_weights(model)
        before = copy.deepcopy(model)
        noise = _generator(5)
        with torch.no_grad():  # an "update": every weight moved by a seeded step of its own scale
            for param in model.parameters():
                step = torch.randn(param.shape, generator=noise).to(param.device, param.dtype)
                param.add_(step * (param.detach().float().std().clamp(min=1e-3) * 0.5).to(param.dtype))
        sampler.release_memory()
        sampler.sync_weights(model)
        samples = self._sample(sampler, prompts, 6)
        behaviour = [sample.logprobs for sample in samples]
        self._assert_close(behaviour, self._reference(model, prompts, samples, self.temperature))
        stale = self._reference(before, prompts, samples, self.temperature)
        gap = max(abs(a - b) for got, old in zip(behaviour, stale, strict=True) for a, b in zip(got, old, strict=True))
        assert gap > 100 * self.logprob_atol  # the old weights would have given other log-probs

    # -- scoring --------------------------------------------------------------------------------
    @pytest.mark.parametrize("reduction", ["mean", "sum"])
    def test_scores_are_the_models_own(
        self, sampler: RolloutSampler, model: nn.Module, prompts: list[list[int]], reduction: str
    ) -> None:
        completions = [sample.token_ids for sample in self._sample(sampler, prompts, 7, temperature=1.0)]
        got = sampler.score(prompts, completions, reduction=reduction)
        reference = score_unshared(model, prompts, completions, pad_id=0).logprobs.cpu()
        lengths = torch.tensor([len(c) for c in completions])
        want = reduce_scores(reference, lengths, reduction)
        assert got.dtype == torch.float32 and got.shape == (len(prompts),)
        torch.testing.assert_close(got, want.float(), atol=self.logprob_atol * self.max_new_tokens, rtol=0.0)

    # -- arguments ------------------------------------------------------------------------------
    def test_bad_arguments_are_named(self, sampler: RolloutSampler, prompts: list[list[int]]) -> None:
        generator = _generator(0)
        with pytest.raises(ConfigError, match="token budgets"):
            sampler.sample(prompts, [1], temperature=1.0, stop_token_ids=(), generator=generator)
        with pytest.raises(ConfigError, match=">= 0"):
            sampler.sample(prompts[:1], [-1], temperature=1.0, stop_token_ids=(), generator=generator)
        with pytest.raises(ConfigError, match="temperature"):
            sampler.sample(prompts[:1], [1], temperature=0.0, stop_token_ids=(), generator=generator)
        with pytest.raises(ConfigError, match="at least one token"):
            sampler.sample([[]], [1], temperature=1.0, stop_token_ids=(), generator=generator)
        with pytest.raises(ConfigError, match="reduction"):
            sampler.score(prompts[:1], [[1]], reduction="max")
        with pytest.raises(ConfigError, match="completions"):
            sampler.score(prompts, [[1]], reduction="mean")
        assert sampler.sample([], [], temperature=1.0, stop_token_ids=(), generator=generator) == []
