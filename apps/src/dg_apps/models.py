"""Building, saving and loading the two models: the agent's policy and the experience model.

A *policy directory* is a Hugging Face directory (safetensors + tokenizer) plus ``policy.json`` (its action
mode and prompt settings). An *experience-model run* (``dg expmodel fit``) holds ``model/`` (Hugging Face),
``replay/`` (the seeded dg-replay buffer) and ``expmodel.json`` (prompt options and inference settings).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from dg_apps.config import ExpModelConfig, PolicyConfig
from dg_apps.rundir import follower_rank
from dg_core import ConfigError, Task, Trajectory, read_trajectories

__all__ = [
    "ExpModelBundle",
    "annotation_summary",
    "build_policy",
    "fit_expmodel",
    "load_expmodel",
    "load_policy",
    "policy_dir",
    "read_data",
    "save_policy",
]

POLICY_META = "policy.json"
EXPMODEL_META = "expmodel.json"
NEAREST = "nearest"
"""``expmodel.model`` of the non-parametric experience model (dg-expmodel's ``NearestExperienceModel``)."""


def read_data(paths: Sequence[str | Path], *, key: str = "data") -> list[Trajectory]:
    """Read trajectory files (JSONL / Parquet) listed under the config key ``key``; errors name the file and line."""
    out: list[Trajectory] = []
    for path in paths:
        folder = Path(path)
        if not folder.exists():
            raise ConfigError(f"{key}: trajectory file {path} not found")
        if folder.is_dir():
            inside = sorted(
                str(file) for pattern in ("*.jsonl", "*.parquet") for file in folder.glob(pattern) if file.is_file()
            )
            hint = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
            raise ConfigError(
                f"{key}: {path} is a folder, not a trajectory file; list the .jsonl / .parquet files{hint}"
            )
        out.extend(read_trajectories(path))
    return out


def _policy_corpus(trajectories: Iterable[Trajectory], tasks: Iterable[Task]) -> list[str]:
    """A tiny policy's tokenizer corpus: dg-rl's, so `python -m dg_rl fit` builds the same tiny policy."""
    from dg_rl.cli import policy_corpus

    return policy_corpus(trajectories, tasks)


def _find_policy_dir(path: Path) -> Path | None:
    return next((candidate for candidate in (path, path / "policy") if (candidate / POLICY_META).exists()), None)


def policy_dir(path: str | Path) -> Path:
    """A policy directory: ``path`` itself or ``path/policy`` (a ``dg train`` run directory)."""
    path = Path(path)
    found = _find_policy_dir(path)
    if found is not None:
        return found
    raise ConfigError(f"{path} is not a policy directory (no {POLICY_META}; `dg train` writes RUN/policy)")


def _lm_policy(
    model: Any, tokenizer: Any, config: PolicyConfig, seed: int, policy_id: str, *, sampler: Any = None
) -> Any:
    from dg_rl import LMPolicy, PromptFormat

    return LMPolicy(
        model,
        tokenizer,
        mode=config.mode,
        temperature=config.temperature,
        prompt_format=PromptFormat(history_turns=config.history_turns),
        max_turn_tokens=config.max_turn_tokens,
        max_prompt_tokens=config.max_prompt_tokens,
        policy_id=policy_id,
        seed=seed,
        chat=config.chat,
        sampler=sampler,
    )


def rollout_sampler(model: Any, config: PolicyConfig, seed: int) -> Any:
    """The sampler ``config.sampler`` names for ``model``: ``None`` (the policy's transformers sampler) or a
    ``dg_rl.VLLMSampler`` (GPU only; written against vLLM 0.22.1 and never run)."""
    if config.sampler != "vllm":
        return None
    from dg_rl import VLLMSampler

    return VLLMSampler(
        model,
        dtype=config.vllm.dtype,
        gpu_memory_utilization=config.vllm.gpu_memory_utilization,
        enable_sleep_mode=config.vllm.enable_sleep_mode,
        sleep_level=config.vllm.sleep_level,
        max_model_len=config.vllm.max_model_len,
        seed=seed,
    )


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_lm(source: str | Path, *, dtype: str = "auto", padding_side: str = "right") -> tuple[Any, Any]:
    """Model and tokenizer of any source ``dg_models`` knows, its errors as ``dg: error:`` lines."""
    from dg_models import ModelLoadError, load_model

    try:
        loaded = load_model(source, dtype=dtype, device=_device(), padding_side=padding_side)
    except ModelLoadError as error:
        raise ConfigError(str(error)) from error
    tensors = list(loaded.model.parameters())  # tied weights once
    broken = sum(1 for tensor in tensors if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
    if broken:
        raise ConfigError(
            f"{source}: {broken} of {len(tensors)} weight tensors hold NaN or infinite values (written by a training "
            "run that diverged); use a policy saved before that, or train again with a lower learning rate"
        )
    return loaded.model, loaded.tokenizer


def build_policy(
    config: PolicyConfig,
    *,
    trajectories: Sequence[Trajectory] = (),
    tasks: Sequence[Task] = (),
    seed: int = 0,
    policy_id: str = "lm",
) -> Any:
    """The policy of ``config``: tiny (tokenizer trained on ``trajectories``), a pretrained short name, a
    ``.gguf`` file, a policy directory, or a Hugging Face directory / hub id."""
    from dg_rl import apply_lora, tiny_causal_lm, train_bpe_tokenizer

    model: Any
    if config.model == "tiny":
        if not trajectories:
            raise ConfigError(
                "policy.model: 'tiny' trains its tokenizer on real trajectories; give data: [trajectory files]"
            )
        tokenizer = train_bpe_tokenizer(_policy_corpus(trajectories, tasks), vocab_size=config.vocab_size)
        torch.manual_seed(seed)
        model = tiny_causal_lm(
            tokenizer,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            seed=seed,
        )
    else:
        source: str | Path = config.model
        local = Path(config.model)
        if local.is_dir() and ((local / POLICY_META).exists() or (local / "policy").exists()):
            source = policy_dir(local)
        model, tokenizer = load_lm(source, dtype=config.dtype)
        model.train()  # loaded in eval mode; this policy is about to be trained
    if config.lora:
        model = apply_lora(model)
    return _lm_policy(model, tokenizer, config, seed, policy_id, sampler=rollout_sampler(model, config, seed))


def save_policy(policy: Any, config: PolicyConfig, path: str | Path) -> Path:
    """Write a policy directory (merged weights when LoRA was used)."""
    from dg_rl import save_model

    path = Path(path)
    save_model(policy.model, policy.tokenizer, path)
    meta = config.model_copy(update={"model": str(path), "lora": False}).model_dump(mode="json")
    (path / POLICY_META).write_text(json.dumps(meta, indent=2))
    return path


def load_policy(
    path: str | Path, *, seed: int = 0, policy_id: str | None = None, sampler: PolicyConfig | None = None
) -> Any:
    """Load a policy directory (or a ``dg train`` run directory) with the settings it was saved with.

    ``sampler``: the policy settings whose ``sampler`` to use (a resumed ``dg train`` run's); ``None`` samples in
    this process (transformers), whatever the policy was trained with.

    Any other model source (``smollm2``, a ``.gguf`` file, a Hugging Face directory) is a zero-shot policy
    with the default settings (choose mode, no history, mean log-prob scores; chat prompts for instruct models).
    """
    folder = _find_policy_dir(Path(path))
    if folder is None and (Path(path) / "run.json").is_file():
        raise ConfigError(
            f"{path} is a dg run directory without a policy (no policy/{POLICY_META}): a `dg train` run writes "
            f"policy/ when it finishes (continue it with `dg resume {path}`); other commands write none"
        )
    if folder is None:
        zero_shot = PolicyConfig(model=str(path))
        model, tokenizer = load_lm(path, dtype=zero_shot.dtype)
        return _lm_policy(model, tokenizer, zero_shot, seed, policy_id or Path(path).name)
    config = PolicyConfig.model_validate(json.loads((folder / POLICY_META).read_text()))
    model, tokenizer = load_lm(folder, dtype=config.dtype)
    chosen = rollout_sampler(model, sampler, seed) if sampler is not None else None
    return _lm_policy(model, tokenizer, config, seed, policy_id or folder.parent.name, sampler=chosen)


class ExpModelBundle:
    """A trained experience model with its replay buffer and prompt settings, ready for a synthetic env."""

    def __init__(self, model: Any, buffer: Any, options: Any, settings: dict[str, Any]) -> None:
        self.model = model
        self.buffer = buffer
        self.options = options
        self.settings = settings

    @property
    def backend(self) -> Any:
        """The generation backend (the task generator reuses it); ``None`` for the non-parametric model."""
        return getattr(self.model, "backend", None)


def _encoder(name: str) -> Any:
    from dg_replay import HashingEncoder, minilm_encoder

    return HashingEncoder(dim=384) if name == "hashing" else minilm_encoder()


class _Annotated:
    """Traces written beforehand, served by transition (the annotator's model may be freed by then)."""

    def __init__(self, traces: dict[str, str]) -> None:
        self.traces = traces

    def annotate(self, steps: Sequence[Any]) -> list[str]:
        from dg_expmodel import step_key

        return [self.traces[step_key(step)] for step in steps]


class _LazyBackend:
    """A transformers backend whose model is loaded on the first request only (a resumed run may need none)."""

    def __init__(self, config: ExpModelConfig, loaded: tuple[Any, Any] | None) -> None:
        self.config = config
        self.loaded = loaded
        self._backend: Any = None

    def _get(self) -> Any:
        from dg_expmodel import TransformersBackend

        if self._backend is None:
            model, tokenizer = self.loaded or load_lm(
                self.config.annotator_source, dtype=self.config.dtype, padding_side="left"
            )
            model.eval()
            self._backend = TransformersBackend(model, tokenizer)
        return self._backend

    @property
    def chat(self) -> bool:
        return bool(self._get().chat)

    def complete(self, prompts: Sequence[Any], sampling: Any) -> list[Any]:
        return list(self._get().complete(prompts, sampling))


def annotation_summary(annotator: Any, steps: Sequence[Any], traces: Sequence[str]) -> dict[str, Any]:
    """The ``annotator`` metrics of a fit: for ``llm``, :meth:`dg_expmodel.LLMAnnotator.summary` (transitions,
    generated, cached, fallbacks and rejects by reason, outcome-copy rates of the raw and final traces, seconds per
    generated transition); for ``rule``, the transitions and the outcome-copy rate of their traces."""
    from dg_expmodel import LLMAnnotator, copies_outcome, step_key

    if isinstance(annotator, LLMAnnotator):
        return annotator.summary()
    distinct = {step_key(step): (step, trace) for step, trace in zip(steps, traces, strict=True)}
    copies = sum(copies_outcome(trace, step) for step, trace in distinct.values())
    return {"kind": "rule", "transitions": len(distinct), "final_copy_rate": copies / max(1, len(distinct))}


def _annotate_with_rules(steps: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    from dg_expmodel import RuleBasedAnnotator

    annotator = RuleBasedAnnotator()
    return annotator, annotation_summary(annotator, steps, annotator.annotate(steps))


def _annotate_with_llm(
    config: ExpModelConfig, steps: Sequence[Any], output: Path, *, loaded: tuple[Any, Any] | None
) -> tuple[Any, dict[str, Any]]:
    """Annotate every step with the checked LLM annotator (all at once, in full batches); free its model unless
    ``loaded`` (the experience model itself) was given."""
    import gc

    from dg_expmodel import LLMAnnotator, step_key

    backend = _LazyBackend(config, loaded)
    annotator = LLMAnnotator(backend, output / "annotations.jsonl", max_new_tokens=config.annotator_max_new_tokens)
    traces = annotator.annotate(steps)
    summary = annotation_summary(annotator, steps, traces)
    summary["model"] = config.annotator_source
    del annotator, backend
    gc.collect()
    if loaded is None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return _Annotated({step_key(step): trace for step, trace in zip(steps, traces, strict=True)}), summary


def fit_expmodel(
    config: ExpModelConfig,
    trajectories: Sequence[Trajectory],
    output: Path,
    *,
    trainer: dict[str, Any],
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Seed ``output/replay`` with ``trajectories``, annotate them, fine-tune the model into ``output/model``.

    Resumable: a buffer already seeded is reused, LLM annotations are read back from ``output/annotations.jsonl``,
    training continues from its last checkpoint. The returned metrics hold an ``annotator`` dict (see
    :func:`annotation_summary`).
    """
    import functools

    from dg_expmodel import (
        LoraSettings,
        PromptOptions,
        ReplayRetriever,
        examples_from_trajectories,
        fit_experience_model,
        tiny_causal_lm,
        train_tokenizer,
    )
    from dg_replay import ReplayBuffer

    if not trajectories:
        raise ConfigError("data: no trajectories to train the experience model on")
    allowed = {"accelerator", "devices", "strategy", "precision"}
    unknown = sorted(set(trainer) - allowed)
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]}: not used by `dg expmodel fit`; allowed: {', '.join(sorted(allowed))}")
    replay_dir = output / "replay"
    follower = follower_rank() != 0  # a rank > 0 of a multi-process fit: it reads what rank 0 wrote, writes nothing
    if follower:  # rank 0 seeded and saved the buffer before training started this rank
        buffer = ReplayBuffer.open(replay_dir, read_only=True)
    elif (replay_dir / "manifest.json").exists():  # seeded and saved by an earlier (interrupted) call
        buffer = ReplayBuffer.open(replay_dir)
    else:
        if replay_dir.exists():
            shutil.rmtree(replay_dir)
        buffer = ReplayBuffer.create(replay_dir, encoder=_encoder(config.encoder))
        buffer.add_trajectories(trajectories)
        buffer.save()
    options = PromptOptions(
        history_window=config.history_window, max_retrieved=config.top_k, reasoning=config.reasoning
    )
    if config.model == NEAREST:  # non-parametric: the seeded buffer is the whole model
        stats = buffer.stats()
        buffer.close()
        nearest: dict[str, Any] = {
            "kind": NEAREST,
            "options": options.model_dump(mode="json"),
            "outcome_head": _outcome_head(config),
        }
        (output / EXPMODEL_META).write_text(json.dumps(nearest, indent=2))
        return {
            "kind": NEAREST,
            "examples": 0,
            "dropped_examples": 0,
            "fit_metrics": {},
            "resumed_from": None,
            "replay_transitions": stats.total,
            "trajectories": len(trajectories),
            "annotator": {},
        }
    retrieve = None
    if config.top_k > 0:
        retrieve = functools.partial(ReplayRetriever(buffer, exclude_self=True).for_step, k=config.top_k)
    model: Any = None
    tokenizer: Any = None
    lora = None
    steps = [step for trajectory in trajectories for step in trajectory.steps]
    # The annotator's own model is loaded, used and freed before the experience model is loaded; a model that
    # is both annotator and experience model is loaded once. Without reasoning no trace is trained on: no LLM.
    llm = config.annotator == "llm" and config.reasoning
    shared = llm and config.model != "tiny" and config.annotator_source == config.model
    annotator: Any = None
    annotation: dict[str, Any] = {}
    if llm and not shared:
        annotator, annotation = _annotate_with_llm(config, steps, output, loaded=None)
    if config.model != "tiny":
        # Loaded first: an instruct model's chat template renders the training prompts, exactly as the
        # inference backend will render them.
        model, tokenizer = load_lm(config.model, dtype=config.dtype, padding_side="left")
        lora = LoraSettings()  # a pretrained experience model is fitted with LoRA (dg does not shard this fit)
    if shared:
        annotator, annotation = _annotate_with_llm(config, steps, output, loaded=(model, tokenizer))
    elif not llm:
        annotator, annotation = _annotate_with_rules(steps)
    if model is not None:
        model.train()  # loaded in eval mode; it is about to be fine-tuned
    examples = examples_from_trajectories(
        trajectories, annotator, options=options, retrieve=retrieve, tokenizer=tokenizer
    )
    if config.model == "tiny":
        tokenizer = train_tokenizer([e.prompt + e.response for e in examples], vocab_size=config.vocab_size)
        model = tiny_causal_lm(
            tokenizer,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            max_positions=config.max_length,
            seed=seed,
        )
    chat = bool(getattr(tokenizer, "chat_template", None))
    fit = fit_experience_model(
        model,
        tokenizer,
        examples,
        output_dir=output / "train",
        max_epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        max_length=config.max_length,
        lora=lora,
        seed=seed,
        progress=progress,
        resume=True,
        **trainer,
    )
    stats = buffer.stats()
    buffer.close()
    if not follower:  # rank 0 writes the run's model and settings
        _write_expmodel(config, fit.model_dir, output, options, chat)
    return {
        "examples": fit.examples,
        "dropped_examples": fit.dropped,
        "fit_metrics": fit.metrics,
        "resumed_from": fit.resumed_from,
        "replay_transitions": stats.total,
        "trajectories": len(trajectories),
        "annotator": annotation,
    }


def _write_expmodel(config: ExpModelConfig, fitted: Path, output: Path, options: Any, chat: bool) -> None:
    """``output/model`` (a copy of the fitted Hugging Face directory) and ``output/expmodel.json``."""
    model_dir = output / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(fitted, model_dir)
    settings = {
        "options": options.model_dump(mode="json"),
        "max_new_tokens": config.max_new_tokens,
        "retries": config.retries,
        "backend": config.backend,
        "chat": chat,
        "dtype": config.dtype,
        "base_url": config.base_url,
        "served_model": config.served_model,
        "vllm": config.vllm,
        "outcome_head": _outcome_head(config),
        "exact_first": config.exact_first,
    }
    (output / EXPMODEL_META).write_text(json.dumps(settings, indent=2))


def _outcome_head(config: ExpModelConfig) -> dict[str, Any] | None:
    """``expmodel.json``'s ``outcome_head``: dg-expmodel's ``load_experience_run`` wraps the model in the head."""
    return config.outcome_head.model_dump(mode="json") if config.outcome_head is not None else None


def load_expmodel(
    run: str | Path,
    *,
    replay: str | Path | None = None,
    read_only: bool = False,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    top_k: int | None = None,
    history_window: int | None = None,
) -> ExpModelBundle:
    """Load a ``dg expmodel fit`` run: model behind its backend, replay buffer (``replay`` overrides its path).

    dg-expmodel's ``load_experience_run`` reads the run (the ``synthetic`` env of ``python -m dg_rl fit`` loads it
    the same way); the backend is :func:`make_backend`'s, which refuses NaN weights with dg's message.
    """
    import functools

    from dg_expmodel import load_experience_run

    run = Path(run)
    if not (run / EXPMODEL_META).exists():
        raise ConfigError(f"expmodel: {run} is not a `dg expmodel fit` run (no {EXPMODEL_META})")
    loaded = load_experience_run(
        run,
        replay=replay,
        read_only=read_only,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        history_window=history_window,
        backend=functools.partial(make_backend, batch_size=batch_size),
    )
    return ExpModelBundle(loaded.model, loaded.buffer, loaded.options, loaded.settings)


def make_backend(settings: dict[str, Any], model_dir: Path, *, batch_size: int = 32) -> Any:
    """The inference backend named in an experience-model run's settings, rendering prompts as training did."""
    from dg_expmodel import OpenAICompatibleBackend, TransformersBackend, VLLMBackend

    kind = settings.get("backend", "transformers")
    chat = bool(settings.get("chat", False))  # runs written before chat prompts were recorded trained on plain text
    if kind == "transformers":
        model, tokenizer = load_lm(model_dir, dtype=str(settings.get("dtype", "auto")), padding_side="left")
        return TransformersBackend(model, tokenizer, chat=chat, batch_size=batch_size)
    if kind == "vllm":
        return VLLMBackend(str(model_dir), chat=chat, **settings.get("vllm", {}))
    if kind == "openai":
        if not settings.get("base_url") or not settings.get("served_model"):
            raise ConfigError("expmodel.backend 'openai' needs expmodel.base_url and expmodel.served_model")
        return OpenAICompatibleBackend(settings["base_url"], settings["served_model"], chat=chat)
    raise ConfigError(f"expmodel.backend: unknown {kind!r}; allowed: transformers, vllm, openai")
