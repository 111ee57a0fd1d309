"""The token sampler's draw (``draw_tokens``: seeded CPU uniforms, inverse CDF on the model's device) and its
prefill (``sample_completions`` asks for the last position's logits only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from transformers import Qwen2ForCausalLM

from dg_rl import sample_completions
from dg_rl._scoring import _inverse_cdf, draw_tokens, score_unshared

# -- the draw -------------------------------------------------------------------------------------------------


def _log(probabilities: list[float]) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


def _reference_draw(log_dist: torch.Tensor, uniforms: torch.Tensor) -> list[int]:
    """Inverse CDF by hand, in Python floats: the first id whose cumulative probability exceeds ``u * total``."""
    out = []
    for row, u in zip(log_dist.exp().double().tolist(), uniforms.tolist(), strict=True):
        cumulative = 0.0
        partial = [cumulative := cumulative + p for p in row]
        out.append(next(index for index, value in enumerate(partial) if value > u * cumulative))
    return out


def test_the_draw_is_the_inverse_cdf_of_the_generators_uniforms() -> None:
    weights = torch.rand((32, 50), generator=torch.Generator().manual_seed(3)) ** 4  # uneven, with tiny ones
    weights[:, ::7] = 0.0
    log_dist = torch.log_softmax(weights.log() * 2.0, dim=-1)
    drawn = draw_tokens(log_dist, torch.Generator().manual_seed(11))
    uniforms = torch.rand(32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert drawn.dtype == torch.long and drawn.shape == (32,)
    assert drawn.tolist() == _reference_draw(log_dist, uniforms)
    assert all(index % 7 != 0 for index in drawn.tolist())


def test_same_generator_state_same_ids_and_another_seed_other_ids() -> None:
    log_dist = torch.log_softmax(torch.randn((64, 1000), generator=torch.Generator().manual_seed(0)), dim=-1)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    first = draw_tokens(log_dist, generator)
    second = draw_tokens(log_dist, generator)  # the generator moved on: another draw
    generator.set_state(state)
    assert torch.equal(draw_tokens(log_dist, generator), first)
    assert torch.equal(draw_tokens(log_dist, torch.Generator().manual_seed(5)), first)
    assert not torch.equal(second, first)
    assert not torch.equal(draw_tokens(log_dist, torch.Generator().manual_seed(6)), first)
    # One uniform per row is all the draw takes from the generator.
    generator.set_state(state)
    torch.rand(64, generator=generator, dtype=torch.float64)
    assert torch.equal(draw_tokens(log_dist, generator), second)


def test_the_draw_follows_the_distribution() -> None:
    probabilities = [0.4, 0.25, 0.0, 0.2, 0.1, 0.05, 0.0]
    draws = 20_000
    generator = torch.Generator().manual_seed(0)
    # Many calls of 500 rows: the frequencies over consecutive draws of one generator, as the sampling loop makes them.
    ids = torch.cat([draw_tokens(_log(probabilities).expand(500, -1), generator) for _ in range(draws // 500)])
    counts = torch.bincount(ids, minlength=len(probabilities)).tolist()
    assert counts[2] == 0 and counts[6] == 0
    chi_square = sum((counts[i] - draws * p) ** 2 / (draws * p) for i, p in enumerate(probabilities) if p > 0)
    assert chi_square < 18.47  # 4 degrees of freedom, p = 0.001 (deterministic: the seed is fixed)
    for count, p in zip(counts, probabilities, strict=True):
        assert abs(count / draws - p) < 0.012


def _chi_square_critical(degrees: int, z: float = 3.09) -> float:
    """The chi-square value exceeded with probability ~0.001 (Wilson-Hilferty; ``z`` is the normal's 0.999 point)."""
    h = 2.0 / (9.0 * degrees)
    return degrees * (1.0 - h + z * math.sqrt(h)) ** 3


def test_a_random_distribution_over_a_large_vocabulary_is_followed() -> None:
    vocab, rows, rounds = 4096, 256, 40
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(1)) * 3.0
    log_dist = torch.log_softmax(logits, dim=-1).expand(rows, -1)
    generator = torch.Generator().manual_seed(2)
    ids = torch.cat([draw_tokens(log_dist, generator) for _ in range(rounds)])
    draws = rows * rounds
    expected = (log_dist[0].double().exp() * draws).tolist()
    counts = torch.bincount(ids, minlength=vocab).tolist()
    # Tokens in order of probability, pooled into bins of at least 1/30 of the draws each (the last bin may be less).
    bins: list[tuple[float, float]] = []
    want, got = 0.0, 0.0
    for index in sorted(range(vocab), key=lambda i: -expected[i]):
        want, got = want + expected[index], got + counts[index]
        if want >= draws / 30:
            bins.append((want, got))
            want, got = 0.0, 0.0
    bins.append((want, got))
    assert len(bins) >= 10
    chi_square = sum((o - e) ** 2 / e for e, o in bins)
    assert chi_square < _chi_square_critical(len(bins) - 1)
    # The known values: 18.47 for 4 degrees of freedom, 43.82 for 19.
    assert _chi_square_critical(4) == pytest.approx(18.47, rel=0.03)
    assert _chi_square_critical(19) == pytest.approx(43.82, rel=0.01)


def test_zero_probability_tokens_are_never_drawn() -> None:
    rows = [
        [0.0, 0.5, 0.5, 0.0],  # zeros at both ends
        [0.0, 0.0, 0.0, 1.0],  # all mass on the last id
        [1.0, 0.0, 0.0, 0.0],  # all mass on the first id
        [0.0, 1.0, 0.0, 0.0],
        [1e-30, 0.0, 1.0, 0.0],  # a float32-representable tiny probability next to zeros
    ]
    log_dist = torch.stack([_log(row) for row in rows])
    masked = torch.log_softmax(torch.tensor([[1.0, -math.inf, 2.0, -math.inf]]), dim=-1)  # logits masked to -inf
    log_dist = torch.cat([log_dist, masked])
    generator = torch.Generator().manual_seed(0)
    ids = torch.stack([draw_tokens(log_dist, generator) for _ in range(2000)])
    support = log_dist.exp() > 0
    assert bool(support.gather(1, ids.t()).all())
    assert ids[:, 1].eq(3).all() and ids[:, 2].eq(0).all() and ids[:, 3].eq(1).all()
    assert set(ids[:, 0].tolist()) == {1, 2} and set(ids[:, 5].tolist()) == {0, 2}
    # The extreme uniforms: 0 and the largest double below 1 (where u * total may round up to the total).
    below_one = math.nextafter(1.0, 0.0)
    for u, want in ((0.0, [1, 3, 0, 1, 0, 0]), (below_one, [2, 3, 0, 1, 2, 2])):
        uniforms = torch.full((len(rows) + 1,), u, dtype=torch.float64)
        assert _inverse_cdf(log_dist, uniforms).tolist() == want


def test_rows_without_probability_mass_are_named() -> None:
    log_dist = torch.log_softmax(torch.tensor([[0.0, 1.0], [math.nan, 1.0], [0.0, 0.0]]), dim=-1)
    with pytest.raises(ValueError, match=r"rows \[1\] have no finite positive probability mass"):
        draw_tokens(log_dist, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"must be \[rows, vocab\]"):
        draw_tokens(log_dist[0], torch.Generator().manual_seed(0))


# -- the sampling loop ----------------------------------------------------------------------------------------


class FullLogits(nn.Module):
    """The model without ``logits_to_keep``: every call returns logits at every position (the former prefill);
    records the sequence length of the logits of each call."""

    def __init__(self, model: nn.Module, *, keep_argument: bool) -> None:
        super().__init__()
        self.model = model
        self.keep_argument = keep_argument
        self.logit_lengths: list[int] = []
        self.input_lengths: list[int] = []

    def forward(self, **kwargs: Any) -> Any:
        if not self.keep_argument:
            kwargs.pop("logits_to_keep")
        outputs = self.model(**kwargs)
        self.input_lengths.append(int(kwargs["input_ids"].shape[1]))
        self.logit_lengths.append(int(outputs.logits.shape[1]))
        return outputs


def _prompts(vocab: int) -> list[list[int]]:
    ids = torch.Generator().manual_seed(7)
    return [torch.randint(1, vocab, (3 + 2 * index,), generator=ids).tolist() for index in range(6)]


def test_prefill_with_the_last_logits_only_samples_what_full_logits_sampled(
    make_model: Callable[..., Qwen2ForCausalLM],
) -> None:
    model = make_model(0)
    prompts = _prompts(int(model.config.vocab_size))
    budgets = [5, 1, 8, 0, 8, 3]
    full = FullLogits(model, keep_argument=False)
    last = FullLogits(model, keep_argument=True)
    want = sample_completions(
        full, prompts, budgets, pad_id=0, temperature=0.9, generator=torch.Generator().manual_seed(3)
    )
    got = sample_completions(
        last, prompts, budgets, pad_id=0, temperature=0.9, generator=torch.Generator().manual_seed(3)
    )
    width = max(len(p) for p in prompts)
    assert full.input_lengths[0] == width and full.logit_lengths[0] == width  # the reference computed every position
    assert last.input_lengths[0] == width and last.logit_lengths == [1] * len(last.logit_lengths)
    assert got[0] == want[0]
    assert [len(ids) for ids in got[0]] == budgets
    flat_got = torch.tensor([v for row in got[1] for v in row], dtype=torch.float64)
    flat_want = torch.tensor([v for row in want[1] for v in row], dtype=torch.float64)
    torch.testing.assert_close(flat_got, flat_want, atol=1e-5, rtol=0.0)


def test_sampled_logprobs_are_the_teacher_forced_ones_and_seeds_decide_the_ids(
    make_model: Callable[..., Qwen2ForCausalLM],
) -> None:
    model = make_model(1)
    prompts = _prompts(int(model.config.vocab_size))
    budgets = [6] * len(prompts)

    def sample(seed: int) -> tuple[list[list[int]], list[list[float]]]:
        return sample_completions(
            model, prompts, budgets, pad_id=0, temperature=0.7, generator=torch.Generator().manual_seed(seed)
        )

    ids, logprobs = sample(0)
    assert sample(0) == (ids, logprobs)  # the same seed: the same ids and the very same values
    assert sample(1)[0] != ids
    rescored = score_unshared(model, prompts, ids, pad_id=0, temperature=0.7).logprobs
    torch.testing.assert_close(torch.tensor(logprobs), rescored, atol=1e-5, rtol=0.0)
