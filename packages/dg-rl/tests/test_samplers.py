"""Rollout samplers: the conformance suite on the transformers sampler, the policy's weight-sync hooks, and what
of the vLLM sampler can be checked on a machine without vLLM."""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from dg_core import ConfigError, EnvPool, MissingExtraError
from dg_core.testing import ScriptedEnv
from dg_rl import (
    GRPOModule,
    LMPolicy,
    RolloutDataModule,
    RolloutEngine,
    Sample,
    TransformersSampler,
    VLLMOutputError,
    VLLMSampler,
    apply_lora,
)
from dg_rl._scoring import score_unshared
from dg_rl._vllm import (
    check_settings,
    completion_logprobs,
    lora_rank_for,
    reduce_token_logprobs,
    samples_from_outputs,
)
from dg_rl.testing import RolloutSamplerConformance
from tests.conftest import corridor_tasks


class TestTransformersSampler(RolloutSamplerConformance):
    @pytest.fixture
    def model(self, make_model: Callable[..., Qwen2ForCausalLM]) -> nn.Module:
        return make_model(0)

    @pytest.fixture
    def sampler(self, model: nn.Module) -> TransformersSampler:
        return TransformersSampler(model, pad_id=0, score_batch_rows=4)  # 4 rows: scores come in chunks


# -- the suite has teeth: three samplers with the mistakes it exists to catch fail it ---------------------------


class MissesUpdates(TransformersSampler):
    """Samples a copy of the weights it was built with and ignores syncs (an engine nobody pushes weights to)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(copy.deepcopy(model), pad_id=0)

    def _sync_weights(self, model: nn.Module) -> None:
        pass


class ReportsRawLogprobs(TransformersSampler):
    """Samples at the temperature but reports temperature-1 log-probs (vLLM's default ``raw_logprobs`` mode)."""

    def _sample(self, prompts: list[list[int]], max_new_tokens: list[int], **options: Any) -> list[Sample]:
        samples = super()._sample(prompts, max_new_tokens, **options)
        raw = score_unshared(self.model, prompts, [s.token_ids for s in samples], pad_id=0).logprobs
        return [
            Sample(token_ids=s.token_ids, logprobs=raw[i, : len(s.token_ids)].tolist(), stopped=s.stopped)
            for i, s in enumerate(samples)
        ]


class DropsStopTokens(TransformersSampler):
    """Leaves the stop token out of the ids (what the loss would then never see)."""

    def _sample(self, prompts: list[list[int]], max_new_tokens: list[int], **options: Any) -> list[Sample]:
        samples = super()._sample(prompts, max_new_tokens, **options)
        return [
            Sample(token_ids=s.token_ids[:-1], logprobs=s.logprobs[:-1], stopped=True) if s.stopped else s
            for s in samples
        ]


def test_the_conformance_suite_fails_samplers_with_known_mistakes(
    make_model: Callable[..., Qwen2ForCausalLM],
) -> None:
    suite = TestTransformersSampler()
    model = make_model(0)
    vocab = int(model.config.vocab_size)
    ids = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (3 + index,), generator=ids).tolist() for index in range(6)]
    suite.test_sync_after_an_update_samples_the_new_weights(TransformersSampler(model, pad_id=0), model, prompts)
    with pytest.raises(AssertionError):
        suite.test_sync_after_an_update_samples_the_new_weights(MissesUpdates(model), model, prompts)
    suite.test_logprobs_are_the_models_own(ReportsRawLogprobs(model, pad_id=0), model, prompts, 1.0)  # same at T=1
    with pytest.raises(AssertionError):
        suite.test_logprobs_are_the_models_own(ReportsRawLogprobs(model, pad_id=0), model, prompts, 0.7)
    suite.test_stop_tokens_end_completions(TransformersSampler(model, pad_id=0), prompts)
    with pytest.raises(AssertionError):
        suite.test_stop_tokens_end_completions(DropsStopTokens(model, pad_id=0), prompts)


class CountingSampler(TransformersSampler):
    """The transformers sampler, counting the weight syncs and memory releases the policy and trainer ask for."""

    def __init__(self, model: nn.Module, *, pad_id: int) -> None:
        super().__init__(model, pad_id=pad_id)
        self.syncs = 0
        self.releases = 0

    def _sync_weights(self, model: nn.Module) -> None:
        self.syncs += 1
        super()._sync_weights(model)

    def release_memory(self) -> None:
        self.releases += 1


def test_policy_syncs_its_sampler_once_per_update(
    make_model: Callable[..., Qwen2ForCausalLM], tokenizer: PreTrainedTokenizerFast
) -> None:
    model = make_model(0)
    sampler = CountingSampler(model, pad_id=int(tokenizer.pad_token_id))
    policy = LMPolicy(model, tokenizer, mode="generate", max_turn_tokens=4, sampler=sampler)
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2)
    engine.collect(corridor_tasks(2))
    assert sampler.syncs == 1  # before the first decision only, not per turn
    policy.after_update()
    assert sampler.syncs == 1  # lazily: at the next decision
    engine.collect(corridor_tasks(2))
    assert sampler.syncs == 2
    twin = copy.copy(policy)  # shares the sampler, as the micro-batch tests' twins do
    twin.model = make_model(1)  # another module: the sampler is bound to it before it samples for the twin...
    twin.candidate_scores([[5, 6]], [[7]])
    assert sampler.syncs == 3 and sampler.model is twin.model
    policy.candidate_scores([[5, 6]], [[7]])  # ...and back to the policy's before it samples for the policy
    assert sampler.syncs == 4 and sampler.model is policy.model


def test_training_syncs_after_each_optimiser_step_and_frees_memory_before_it(
    make_model: Callable[..., Qwen2ForCausalLM], tokenizer: PreTrainedTokenizerFast, tmp_path: Any
) -> None:
    model = make_model(0)
    sampler = CountingSampler(model, pad_id=int(tokenizer.pad_token_id))
    policy = LMPolicy(model, tokenizer, mode="choose", sampler=sampler)
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2, max_turns=3)
    data = RolloutDataModule(engine, corridor_tasks(4), tasks_per_step=2, max_batches=3)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(GRPOModule(policy, learning_rate=1e-3), datamodule=data)
    # Three batches collected: before the first, and once after each of the two updates that preceded the
    # second and third collections; the last update is synced when the policy next decides.
    assert sampler.syncs == 3
    assert sampler.releases == 3  # once before each update
    policy.decide([])
    assert sampler.syncs == 3  # nothing to decide, nothing synced


# -- the vLLM sampler: only what runs without vLLM ------------------------------------------------------------
# vLLM needs CUDA and cannot be installed on the machines dg is tested on, so the sampler itself never runs
# here. These tests check its settings, its missing-dependency error and the pure conversion of vLLM's
# documented output shapes (RequestOutput.outputs[0].token_ids / .logprobs / .finish_reason and
# RequestOutput.prompt_logprobs, with Logprob(.logprob)) built as plain objects: a conversion test, not a
# stand-in for the engine. A GPU user runs dg_rl.testing.RolloutSamplerConformance against VLLMSampler.


def _logprob(value: float) -> SimpleNamespace:
    return SimpleNamespace(logprob=value, rank=1, decoded_token=None)


def _request_output(ids: list[int], logprobs: list[dict[int, float]] | None, finish: str) -> SimpleNamespace:
    entries = None if logprobs is None else [{k: _logprob(v) for k, v in entry.items()} for entry in logprobs]
    completion = SimpleNamespace(token_ids=ids, logprobs=entries, finish_reason=finish, text="")
    return SimpleNamespace(outputs=[completion], prompt_logprobs=None)


def test_vllm_outputs_become_samples_with_the_engines_ids_and_logprobs() -> None:
    outputs = [
        # logprobs=0 gives the sampled id's entry, and a top-1 entry when the sampled id was not the most likely
        _request_output([7, 3, 2], [{7: -0.5}, {3: -1.25, 9: -0.1}, {2: -0.75}], "stop"),
        _request_output([4, 4], [{4: -2.0}, {4: -0.03125}], "length"),
    ]
    samples = samples_from_outputs(outputs, stop_token_ids=[2])
    assert [s.token_ids for s in samples] == [[7, 3, 2], [4, 4]]
    assert [s.logprobs for s in samples] == [[-0.5, -1.25, -0.75], [-2.0, -0.03125]]
    assert [s.stopped for s in samples] == [True, False]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (_request_output([7], None, "stop"), "1 sampled ids but none"),
        (_request_output([7, 8], [{7: -0.5}], "length"), "2 sampled ids but 1"),
        (_request_output([7], [{9: -0.5}], "length"), "no log-prob for the sampled id 7"),
        (_request_output([7], [{7: float("nan")}], "length"), "log-prob of id 7 is nan"),
        (_request_output([7], [{7: -0.5}], "abort"), "finished as 'abort'"),
    ],
)
def test_vllm_outputs_that_lack_logprobs_are_refused(output: SimpleNamespace, message: str) -> None:
    with pytest.raises(VLLMOutputError, match=message):
        samples_from_outputs([output], stop_token_ids=[2])


def test_vllm_prompt_logprobs_become_candidate_scores() -> None:
    # prompt [5, 6] + candidate [8, 2]: prompt_logprobs has one entry per position, None for the first.
    first = SimpleNamespace(
        outputs=[], prompt_logprobs=[None, {6: _logprob(-3.0)}, {8: _logprob(-1.0)}, {2: _logprob(-0.5)}]
    )
    second = SimpleNamespace(outputs=[], prompt_logprobs=[None, {6: _logprob(-3.0)}, {9: _logprob(-2.5)}])
    rows = completion_logprobs([first, second], [[5, 6], [5, 6]], [[8, 2], [9]])
    assert rows == [[-1.0, -0.5], [-2.5]]
    assert reduce_token_logprobs(rows, "mean").tolist() == [-0.75, -2.5]
    assert reduce_token_logprobs(rows, "sum").tolist() == [-1.5, -2.5]
    with pytest.raises(VLLMOutputError, match="4 prompt positions but 3"):
        completion_logprobs([second], [[5, 6]], [[9, 1]])


def _settings(**changes: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "gpu_memory_utilization": 0.3,
        "enable_sleep_mode": False,
        "sleep_level": 1,
        "dtype": "bfloat16",
        "max_model_len": None,
        "lora": False,
        "engine_kwargs": {},
    }
    settings.update(changes)
    return settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gpu_memory_utilization": 0.0}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"sleep_level": 3, "enable_sleep_mode": True}, "sleep_level must be 1 or 2"),
        ({"sleep_level": 2}, "sleep_level=2 needs enable_sleep_mode=True"),
        ({"sleep_level": 2, "enable_sleep_mode": True, "lora": True}, "base weights would be lost"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"max_model_len": 0}, "max_model_len must be positive"),
        ({"engine_kwargs": {"logprobs_mode": "raw_logprobs", "seed": 1}}, "engine_kwargs sets logprobs_mode, seed"),
    ],
)
def test_vllm_settings_are_validated(changes: dict[str, Any], message: str) -> None:
    check_settings(**_settings())
    check_settings(**_settings(sleep_level=2, enable_sleep_mode=True))
    with pytest.raises(ConfigError, match=message):
        check_settings(**_settings(**changes))


def test_vllm_lora_rank_is_rounded_up_to_one_vllm_accepts() -> None:
    assert [lora_rank_for(rank) for rank in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ConfigError, match="above vLLM's largest"):
        lora_rank_for(1024)


def test_vllm_sampler_without_vllm_names_the_install_command(
    make_model: Callable[..., Qwen2ForCausalLM],
) -> None:
    with pytest.raises(MissingExtraError, match=r'pip install "dg-rl\[gpu\]"'):
        VLLMSampler(make_model(0))
    # Bad settings are named before the import is tried; a LoRA policy cannot sleep at level 2.
    lora = apply_lora(make_model(0), rank=4)
    with pytest.raises(ConfigError, match="base weights would be lost"):
        VLLMSampler(lora, enable_sleep_mode=True, sleep_level=2)


def test_vllm_weights_are_sent_under_checkpoint_names(make_model: Callable[..., Qwen2ForCausalLM]) -> None:
    from dg_rl._vllm import base_state_dict, engine_weight_names

    model = make_model(0)
    names = dict(engine_weight_names(model))
    assert names.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(names[name], param) for name, param in model.named_parameters())
    lora = apply_lora(make_model(0), rank=4)
    base = base_state_dict(lora)
    # The adapters are left out and the wrapped layers keep their checkpoint names, each tensor once.
    plain = make_model(0).state_dict()
    distinct = {name for name in plain if name != "lm_head.weight" or not model.config.tie_word_embeddings}
    assert set(base) == distinct
    assert all(torch.equal(base[name], plain[name]) for name in base)
