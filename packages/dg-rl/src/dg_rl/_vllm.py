"""The vLLM rollout sampler: a vLLM engine colocated with the trainer, sent the weights after each update.

Written against vLLM 0.22.1's documented offline API (``pip install "dg-rl[gpu]"``, which pins it) and
**never run**: vLLM needs CUDA and cannot be installed on the machines dg is developed and tested on. What
is tested there: the settings are validated, a missing vLLM is named with the install command, a CPU-only
machine is refused, and vLLM-shaped outputs (plain objects with ``RequestOutput``'s documented attributes)
are converted into samples and scores. The conformance suite of ``dg_rl.testing`` is what a GPU user runs
against it.

How it is used (facts of vLLM 0.22.1 this relies on):

- ``vllm.LLM(model=dir, skip_tokenizer_init=True, logprobs_mode="processed_logprobs",
  distributed_executor_backend="external_launcher", generation_config="vllm", ...)``: prompts are token ids
  (``vllm.inputs.TokensPrompt``) and nothing is detokenised; behaviour log-probs are those of the distribution
  sampled from (after temperature), which is what the losses score; the engine runs in this process, so its
  model is reachable for weight pushes; the model directory's generation defaults are not applied.
- ``SamplingParams(temperature=T, top_p=1.0, max_tokens=budget, stop_token_ids=..., seed=s, logprobs=0,
  detokenize=False)``: ``logprobs=0`` returns the sampled token's log-prob at each position
  (``CompletionOutput.logprobs[i][token_ids[i]].logprob``); a sampled stop token is kept in ``token_ids``.
- Choose mode: ``SamplingParams(max_tokens=1, prompt_logprobs=0)`` on ``prompt + candidate`` gives each
  candidate token's log-prob (``RequestOutput.prompt_logprobs``). Prompt logprob requests are not served from
  the prefix cache, so each candidate re-reads its prompt (the transformers sampler shares it).
- Full fine-tuning: ``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(pairs)``
  with the trainer's parameter names (the path TRL's colocated GRPO uses), then ``llm.reset_prefix_cache()``.
- LoRA (a peft policy): the engine holds the base weights, ``enable_lora=True``; after each update the adapter
  is saved (``save_pretrained``) to a new directory and requests carry a new ``LoRARequest(name, id, path)``;
  the previous adapter is dropped with ``llm.llm_engine.remove_lora(id)``.
- Colocated memory: ``gpu_memory_utilization`` bounds the engine's share of the device; with
  ``enable_sleep_mode=True`` the engine sleeps (``llm.sleep(level=...)``) while the trainer updates and wakes
  (``llm.wake_up(tags=["weights"])`` before weights are pushed, ``["kv_cache"]`` before sampling). Level 1
  keeps the weights in host memory; level 2 discards them, and the sampler re-pushes the whole model after
  waking (full fine-tuning only: a LoRA engine's base weights are not re-sent).
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from packaging.version import Version
from torch import nn

from dg_core import ConfigError, DGError, require
from dg_rl._sampler import RolloutSampler, Sample
from dg_rl._scoring import reduce_scores

__all__ = ["VLLM_VERSION", "VLLMOutputError", "VLLMSampler"]

VLLM_VERSION = "0.22.1"
"""The vLLM release this sampler is written against (the ``gpu`` extra pins it)."""

DTYPES = ("auto", "bfloat16", "float16", "float32")
# max_lora_rank values vLLM accepts; an adapter's rank is rounded up to the next one.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Engine arguments the sampler sets itself: it relies on their values.
OWNED_ENGINE_ARGS = frozenset(
    {
        "model",
        "skip_tokenizer_init",
        "logprobs_mode",
        "distributed_executor_backend",
        "generation_config",
        "enable_lora",
        "max_lora_rank",
        "max_loras",
        "enable_sleep_mode",
        "gpu_memory_utilization",
        "dtype",
        "seed",
    }
)
# Prefixes that wrappers (activation checkpointing, torch.compile) put into parameter names.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


class VLLMOutputError(DGError, RuntimeError):
    """vLLM answered something the sampler cannot turn into samples (missing or non-finite log-probs...)."""


def check_settings(
    *,
    gpu_memory_utilization: float,
    enable_sleep_mode: bool,
    sleep_level: int,
    dtype: str,
    max_model_len: int | None,
    lora: bool,
    engine_kwargs: Mapping[str, Any],
) -> None:
    """Raise :class:`~dg_core.ConfigError` naming the first bad setting of a :class:`VLLMSampler`."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ConfigError(f"vLLM sampler: gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if sleep_level not in (1, 2):
        raise ConfigError(f"vLLM sampler: sleep_level must be 1 or 2, got {sleep_level}")
    if sleep_level == 2 and not enable_sleep_mode:
        raise ConfigError("vLLM sampler: sleep_level=2 needs enable_sleep_mode=True")
    if sleep_level == 2 and lora:
        raise ConfigError(
            "vLLM sampler: sleep_level=2 discards the engine's weights, and a LoRA policy sends only its adapter "
            "after an update, so the base weights would be lost; use sleep_level=1 (weights kept in host memory)"
        )
    if dtype not in DTYPES:
        raise ConfigError(f"vLLM sampler: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_model_len is not None and max_model_len < 1:
        raise ConfigError(f"vLLM sampler: max_model_len must be positive, got {max_model_len}")
    owned = sorted(OWNED_ENGINE_ARGS & set(engine_kwargs))
    if owned:
        raise ConfigError(
            f"vLLM sampler: engine_kwargs sets {', '.join(owned)}, which the sampler sets itself "
            "(pass them as VLLMSampler arguments, or leave them to it)"
        )


def lora_rank_for(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ConfigError(f"vLLM sampler: LoRA rank {rank} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})")


def samples_from_outputs(outputs: Sequence[Any], stop_token_ids: Sequence[int]) -> list[Sample]:
    """Samples from ``LLM.generate``'s ``RequestOutput`` list (one completion each, ``logprobs=0``).

    The ids are taken as the engine sampled them and each log-prob is the one the engine reported for that id;
    anything missing or not finite is an error, never a guess.
    """
    stops = set(stop_token_ids)
    samples = []
    for index, output in enumerate(outputs):
        completion = output.outputs[0]
        ids = [int(token) for token in completion.token_ids]
        if completion.finish_reason not in ("stop", "length"):
            raise VLLMOutputError(f"request {index}: finished as {completion.finish_reason!r}, not stop or length")
        if completion.logprobs is None or len(completion.logprobs) != len(ids):
            have = "none" if completion.logprobs is None else len(completion.logprobs)
            raise VLLMOutputError(f"request {index}: {len(ids)} sampled ids but {have} log-prob positions")
        values = [
            _logprob_of(entry, token, f"request {index}, token {position}")
            for position, (token, entry) in enumerate(zip(ids, completion.logprobs, strict=True))
        ]
        samples.append(Sample(token_ids=ids, logprobs=values, stopped=bool(ids) and ids[-1] in stops))
    return samples


def completion_logprobs(
    outputs: Sequence[Any], prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
) -> list[list[float]]:
    """Each completion's token log-probs from the ``prompt_logprobs`` of requests on ``prompt + completion``."""
    rows = []
    for index, (output, prompt, completion) in enumerate(zip(outputs, prompts, completions, strict=True)):
        given = output.prompt_logprobs
        if given is None or len(given) != len(prompt) + len(completion):
            have = "none" if given is None else len(given)
            raise VLLMOutputError(
                f"request {index}: {len(prompt) + len(completion)} prompt positions but {have} prompt log-probs"
            )
        rows.append(
            [
                _logprob_of(given[len(prompt) + offset], token, f"request {index}, candidate token {offset}")
                for offset, token in enumerate(completion)
            ]
        )
    return rows


def _logprob_of(entry: Mapping[int, Any] | None, token: int, where: str) -> float:
    if entry is None or token not in entry:
        raise VLLMOutputError(f"{where}: no log-prob for the sampled id {token}")
    value = float(entry[token].logprob)
    if not math.isfinite(value):
        raise VLLMOutputError(f"{where}: log-prob of id {token} is {value}")
    return value


def engine_weight_names(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every trainable-model weight under the checkpoint names vLLM's ``load_weights`` reads.

    Wrapper prefixes are removed; a sharded (DTensor) parameter is gathered whole.
    """
    for name, param in model.named_parameters():
        clean = name
        for prefix in _WRAPPER_PREFIXES:
            clean = clean.replace(prefix, "")
        tensor = param.detach()
        full = getattr(tensor, "full_tensor", None)
        yield clean, (full() if callable(full) else tensor)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights of a peft model (adapters left out, ``base_layer`` names restored), each tensor
    once (tied weights are written once; the config ties them again)."""
    base: nn.Module = cast(Any, model).get_base_model() if hasattr(model, "get_base_model") else model
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        pointer = tensor.data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        state[name.replace(".base_layer", "")] = tensor.detach().to("cpu").contiguous()
    return state


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _launcher_environment() -> None:
    """The torch.distributed variables vLLM's ``external_launcher`` reads, where the launcher set none."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(torch.cuda.current_device()))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


class VLLMSampler(RolloutSampler):
    """Samples with a vLLM engine colocated with the trainer (``pip install "dg-rl[gpu]"``; CUDA only).

    **Unverified**: written against vLLM 0.22.1's documented API and never run (see the module docstring for
    the calls it makes). The engine is built from ``model``'s current weights; a peft (LoRA) model gives an
    engine with its base weights and the adapter sent per update, any other model gets all its weights pushed
    per update. Give the sampler to :class:`~dg_rl.LMPolicy` (``sampler=``); the policy sends the weights
    before it samples after an update.

    Args:
        model: The policy model being trained.
        model_dir: A directory (or hub id) vLLM loads the architecture and initial weights from: the base model
            for a LoRA policy. ``None``: ``model``'s weights are written to a temporary directory first.
        dtype: Engine dtype (``"auto"`` reads the model config).
        gpu_memory_utilization: Share of the device's memory the engine may take (weights, activations, KV
            cache); the trainer needs the rest.
        enable_sleep_mode: Sleep while the trainer updates (``release_memory``) and wake to sample.
        sleep_level: 1 keeps the weights in host memory while asleep; 2 discards them (full fine-tuning only:
            the whole model is pushed again on waking).
        max_model_len: Longest prompt + completion the engine serves (``None``: the model config's).
        enforce_eager: Run without CUDA graphs (slower; quicker start, less memory).
        seed: Engine seed (each request also carries a seed drawn from the policy's generator).
        engine_kwargs: Further ``vllm.LLM`` arguments (``tensor_parallel_size``, ``max_num_seqs``...), not the
            ones the sampler sets.
        work_dir: Where model and adapter directories are written (a temporary directory by default).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        model_dir: str | Path | None = None,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        seed: int = 0,
        engine_kwargs: Mapping[str, Any] | None = None,
        work_dir: str | Path | None = None,
    ) -> None:
        extra = dict(engine_kwargs or {})
        self._lora = _is_peft(model)
        check_settings(
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            sleep_level=sleep_level,
            dtype=dtype,
            max_model_len=max_model_len,
            lora=self._lora,
            engine_kwargs=extra,
        )
        lora_rank = lora_rank_for(int(cast(Any, model).peft_config["default"].r)) if self._lora else 0
        self._vllm = require("vllm", distribution="dg-rl", extra="gpu", purpose="The vLLM rollout sampler")
        self._tokens_prompt: Any = importlib.import_module("vllm.inputs").TokensPrompt
        self._lora_request_class: Any = importlib.import_module("vllm.lora.request").LoRARequest
        installed = Version(Version(str(self._vllm.__version__)).base_version)
        if installed.release[:2] != Version(VLLM_VERSION).release[:2]:
            warnings.warn(
                f"dg-rl's VLLMSampler is written against vLLM {VLLM_VERSION}; vLLM {installed} is installed "
                f'and its engine internals (weight pushes) may differ: pip install "dg-rl[gpu]"',
                stacklevel=2,
            )
        if not torch.cuda.is_available():
            raise ConfigError("vLLM sampler: no CUDA device; vLLM runs on GPUs only (use the transformers sampler)")
        self._owns_work_dir = work_dir is None
        self._work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="dg-vllm-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        source = str(model_dir) if model_dir is not None else str(self._write_model(model))
        _launcher_environment()
        arguments: dict[str, Any] = {
            "model": source,
            "dtype": dtype,
            "seed": seed,
            "gpu_memory_utilization": gpu_memory_utilization,
            "enable_sleep_mode": enable_sleep_mode,
            "skip_tokenizer_init": True,
            "logprobs_mode": "processed_logprobs",
            "distributed_executor_backend": "external_launcher",
            "generation_config": "vllm",
            "enforce_eager": enforce_eager,
            **({"max_model_len": max_model_len} if max_model_len is not None else {}),
            **({"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1} if self._lora else {}),
            **extra,
        }
        self._llm = self._vllm.LLM(**arguments)
        self._sleep_level = sleep_level
        self._sleep_mode = enable_sleep_mode
        self._asleep: set[str] = set()
        self._weights_lost = False
        self._model: nn.Module | None = None
        self._adapter_version = 0
        self._lora_request: Any = None

    @property
    def lora(self) -> bool:
        """Whether only a LoRA adapter is sent after each update."""
        return self._lora

    def _write_model(self, model: nn.Module) -> Path:
        from safetensors.torch import save_file

        target = self._work_dir / "model"
        target.mkdir(parents=True, exist_ok=True)
        base: Any = cast(Any, model).get_base_model() if self._lora else model
        base.config.save_pretrained(str(target))
        save_file(base_state_dict(model), str(target / "model.safetensors"), metadata={"format": "pt"})
        return target

    def _wake(self, tag: str) -> None:
        if tag in self._asleep:
            self._llm.wake_up(tags=[tag])
            self._asleep.discard(tag)

    def _ready(self) -> None:
        """Weights and KV cache on the device, the weights re-pushed if a level-2 sleep discarded them."""
        self._wake("weights")
        if self._weights_lost:
            if self._model is None:  # pragma: no cover - release_memory only sleeps after a sync
                raise VLLMOutputError("the engine's weights were discarded before any were sent")
            self._push(self._model)
        self._wake("kv_cache")

    def _push(self, model: nn.Module) -> None:
        if self._lora:
            self._push_adapter(model)
        else:
            engine_model = self._llm.llm_engine.model_executor.driver_worker.model_runner.model
            engine_model.load_weights(engine_weight_names(model))
        self._weights_lost = False
        self._llm.reset_prefix_cache()

    def _push_adapter(self, model: nn.Module) -> None:
        self._adapter_version += 1
        path = self._work_dir / f"adapter-{self._adapter_version}"
        cast(Any, model).save_pretrained(str(path))
        previous = self._lora_request
        self._lora_request = self._lora_request_class(
            lora_name=f"dg-policy-{self._adapter_version}", lora_int_id=self._adapter_version, lora_path=str(path)
        )
        if previous is not None:
            self._llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def _sync_weights(self, model: nn.Module) -> None:
        # Sends the weights (or the LoRA adapter); the KV cache may stay asleep until the next sample.
        if _is_peft(model) != self._lora:
            raise ConfigError(
                "vLLM sampler: the engine was built for a LoRA policy and this model is not, or the reverse"
            )
        self._model = model
        self._wake("weights")
        with torch.no_grad():
            self._push(model)

    def release_memory(self) -> None:
        """Put the engine to sleep (``enable_sleep_mode``) until the next sample or score."""
        if not self._sleep_mode or self._asleep == {"weights", "kv_cache"}:
            return
        for tag in sorted(self._asleep):  # half awake (weights pushed, nothing sampled since): wake, then sleep
            self._wake(tag)
        self._llm.sleep(level=self._sleep_level)
        self._asleep = {"weights", "kv_cache"}
        self._weights_lost = self._sleep_level == 2

    def _sample(
        self,
        prompts: list[list[int]],
        max_new_tokens: list[int],
        *,
        temperature: float,
        stop_token_ids: tuple[int, ...],
        generator: torch.Generator,
    ) -> list[Sample]:
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator).tolist()
        asked = [index for index, budget in enumerate(max_new_tokens) if budget > 0]  # vLLM needs max_tokens >= 1
        samples = [Sample(token_ids=[], logprobs=[], stopped=False) for _ in prompts]
        if not asked:
            return samples
        self._ready()
        params = [
            self._vllm.SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                max_tokens=max_new_tokens[index],
                stop_token_ids=list(stop_token_ids),
                seed=int(seeds[index]),
                logprobs=0,
                detokenize=False,
            )
            for index in asked
        ]
        outputs = self._llm.generate(
            [self._tokens_prompt(prompt_token_ids=prompts[index]) for index in asked],
            params,
            use_tqdm=False,
            lora_request=self._lora_request,
        )
        for index, sample in zip(asked, samples_from_outputs(outputs, stop_token_ids), strict=True):
            samples[index] = sample
        return samples

    def _score(self, prompts: list[list[int]], completions: list[list[int]], reduction: str) -> torch.Tensor:
        self._ready()
        params = self._vllm.SamplingParams(n=1, temperature=1.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self._llm.generate(
            [self._tokens_prompt(prompt_token_ids=p + c) for p, c in zip(prompts, completions, strict=True)],
            params,
            use_tqdm=False,
            lora_request=self._lora_request,
        )
        return reduce_token_logprobs(completion_logprobs(outputs, prompts, completions), reduction)

    def close(self) -> None:
        """Drop the engine and the directories the sampler wrote."""
        self._llm = cast(Any, None)
        if self._owns_work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)


def reduce_token_logprobs(rows: Sequence[Sequence[float]], reduction: str) -> torch.Tensor:
    """Per-row ``"mean"`` or ``"sum"`` of token log-probs, as :func:`~dg_rl.reduce_scores` reduces them."""
    width = max(1, max((len(row) for row in rows), default=1))
    values = torch.zeros((len(rows), width), dtype=torch.float32)
    for index, row in enumerate(rows):
        values[index, : len(row)] = torch.tensor(list(row), dtype=torch.float32)
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    return reduce_scores(values, lengths, reduction).float()
