"""Experience-model run directories, and the synthetic env of one as a registered env (``synthetic``).

A run directory (written by ``dg expmodel fit`` or ``python -m dg_expmodel fit``) holds ``model/`` (a Hugging
Face directory), ``replay/`` (the dg-replay buffer seeded with the real trajectories) and ``expmodel.json``
(prompt options and inference settings). Two optional settings wrap the loaded model: ``outcome_head``
(``{"k": 1, "action_weight": 0.5}``: a separate reward / done head, :class:`~dg_expmodel.OutcomeHeadModel`, built
from the buffer's real transitions) and ``exact_first`` (``true``: a query whose identical real transition was
retrieved gets that transition's outcome, :class:`~dg_expmodel.ExactFirstModel`). dg-expmodel registers
:func:`synthetic_env` in dg-core's env registry as ``synthetic`` (entry point group ``dg.envs``), so a trainer
that knows only env names, such as ``python -m dg_rl fit``, trains in it:
``make_env("synthetic", run="runs/expmodel", replay="runs/x/replay")``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_core import ConfigError
from dg_expmodel._backends import OpenAICompatibleBackend, Sampling, TransformersBackend, VLLMBackend
from dg_expmodel._deps import models_module
from dg_expmodel._format import PromptOptions
from dg_expmodel._model import LLMExperienceModel
from dg_expmodel._nearest import ExactFirstModel, NearestExperienceModel
from dg_expmodel._outcome_head import OutcomeHead, OutcomeHeadModel
from dg_expmodel._replay import ReplayRetriever, ReplayWriteBack
from dg_expmodel._synthetic import BatchedSyntheticEnv, IrreversibleMode

__all__ = ["RUN_SETTINGS", "ExperienceRun", "RunSyntheticEnv", "load_experience_run", "synthetic_env"]

RUN_SETTINGS = "expmodel.json"
"""The settings file of a run directory."""
NEAREST = "nearest"
"""``kind`` of the settings of the non-parametric model (no ``model/``)."""


@dataclass
class ExperienceRun:
    """A loaded run: the experience model behind its backend, its replay buffer, prompt options and settings."""

    model: Any
    buffer: Any
    options: PromptOptions
    settings: dict[str, Any]


def _backend(settings: dict[str, Any], model_dir: Path, batch_size: int) -> Any:
    kind = settings.get("backend", "transformers")
    chat = bool(settings.get("chat", False))
    if kind == "transformers":
        import torch

        loaded = models_module().load_model(
            model_dir,
            dtype=str(settings.get("dtype", "auto")),
            device="cuda" if torch.cuda.is_available() else "cpu",
            padding_side="left",
        )
        return TransformersBackend(loaded.model, loaded.tokenizer, chat=chat, batch_size=batch_size)
    if kind == "vllm":
        return VLLMBackend(str(model_dir), chat=chat, **settings.get("vllm", {}))
    if kind == "openai":
        if not settings.get("base_url") or not settings.get("served_model"):
            raise ConfigError(f"{RUN_SETTINGS}: backend 'openai' needs base_url and served_model")
        return OpenAICompatibleBackend(settings["base_url"], settings["served_model"], chat=chat)
    raise ConfigError(f"{RUN_SETTINGS}: unknown backend {kind!r}; allowed: transformers, vllm, openai")


def load_experience_run(
    run: str | Path,
    *,
    replay: str | Path | None = None,
    read_only: bool = False,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    top_k: int | None = None,
    history_window: int | None = None,
    backend: Callable[[dict[str, Any], Path], Any] | None = None,
) -> ExperienceRun:
    """Load a run directory; ``replay`` opens another copy of its buffer, the other arguments override settings.

    ``backend(settings, model_dir)`` builds the generation backend (default: the one ``settings["backend"]``
    names, loaded through dg-models; ``dg`` passes its own, which also refuses NaN weights).
    """
    from dg_replay import ReplayBuffer

    run = Path(run)
    settings_file = run / RUN_SETTINGS
    if not settings_file.is_file():
        what = "no such directory" if not run.exists() else f"no {RUN_SETTINGS}"
        raise ConfigError(f"run: {run} is not an experience-model run directory ({what})")
    settings: dict[str, Any] = json.loads(settings_file.read_text())
    updates: dict[str, int] = {}
    if top_k is not None:
        updates["max_retrieved"] = top_k
    if history_window is not None:
        updates["history_window"] = history_window
    options = PromptOptions.model_validate(settings["options"]).model_copy(update=updates)
    model: Any
    if settings.get("kind") == NEAREST:
        model = NearestExperienceModel(options)
    else:
        sampling = Sampling(max_new_tokens=max_new_tokens or int(settings["max_new_tokens"]))
        generation = backend(settings, run / "model") if backend else _backend(settings, run / "model", batch_size)
        model = LLMExperienceModel(generation, options=options, sampling=sampling, retries=int(settings["retries"]))
    buffer = ReplayBuffer.open(replay or run / "replay", read_only=read_only)
    head = settings.get("outcome_head")
    if head is not None:
        if not isinstance(head, dict) or set(head) - {"k", "action_weight"}:
            buffer.close()
            raise ConfigError(
                f"{settings_file}: outcome_head must be null or a mapping with k and action_weight, got {head!r}"
            )
        model = OutcomeHeadModel(model, OutcomeHead.from_buffer(buffer, **head))
    if settings.get("exact_first"):  # outermost: an exact match is copied, outcome included
        model = ExactFirstModel(model)
    return ExperienceRun(model=model, buffer=buffer, options=options, settings=settings)


def copy_replay(run: Path, target: Path) -> None:
    """The run's replay buffer copied to ``target`` (through a temporary folder renamed when complete)."""
    source = run / "replay"
    if not source.is_dir():
        raise ConfigError(f"run: {run} holds no replay/ folder (not an experience-model run directory)")
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, partial)
    os.replace(partial, target)


class RunSyntheticEnv(BatchedSyntheticEnv):
    """The synthetic env of a run directory; closing it saves (when writable) and closes its replay buffer."""

    def __init__(self, run: ExperienceRun, **kwargs: Any) -> None:
        super().__init__(run.model, **kwargs)
        self.run = run

    def _close(self) -> None:
        super()._close()
        if not self.run.buffer.read_only:
            self.run.buffer.save()
        self.run.buffer.close()


def synthetic_env(
    run: str,
    *,
    replay: str | None = None,
    write_back: bool = False,
    env_ids: Sequence[str] | None = None,
    max_steps: int | None = 30,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    top_k: int | None = None,
    history_window: int | None = None,
    irreversible: IrreversibleMode = "allow",
    irreversible_penalty: float = 1.0,
) -> RunSyntheticEnv:
    """The synthetic env of the experience-model run directory ``run`` (registered as ``synthetic``).

    Episodes start from the initial state their task carries (``Task.metadata["initial_state"]``).

    Args:
        run: A ``dg expmodel fit`` / ``python -m dg_expmodel fit`` directory.
        replay: This run's own copy of the replay buffer, copied from ``run/replay`` when the folder does not exist
            yet (``None``: the run's buffer itself, opened read-only).
        write_back: Store the synthetic transitions in ``replay`` (which must then be given: the fitted run's own
            buffer is never written).
        env_ids: The real envs the model was trained on (recorded in the synthetic trajectories).
        max_steps: Step limit of an episode.
        batch_size: Prompts per generation call of the transformers backend.
        max_new_tokens: Override of the run's generation length.
        top_k: Override of the retrieved real transitions in each prompt.
        history_window: Override of the history turns in each prompt.
        irreversible: What an irreversible action does (``allow``, ``penalize``, ``end``).
        irreversible_penalty: The ``penalize`` mode's reward penalty.
    """
    folder = Path(run)
    if write_back and replay is None:
        raise ConfigError(
            "synthetic: write_back stores synthetic transitions in a replay buffer: give replay (a folder for this "
            "run's copy of the buffer; the experience model's own buffer is never written)"
        )
    if replay is not None and not Path(replay).exists():
        copy_replay(folder, Path(replay))
    loaded = load_experience_run(
        folder,
        replay=replay,
        read_only=replay is None,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        history_window=history_window,
    )
    retrieved = loaded.options.max_retrieved
    return RunSyntheticEnv(
        loaded,
        retriever=ReplayRetriever(loaded.buffer) if retrieved > 0 else None,
        top_k=retrieved,
        history_window=loaded.options.history_window,
        write_back=ReplayWriteBack(loaded.buffer) if write_back else None,
        env_ids=env_ids,
        max_steps=max_steps,
        irreversible=irreversible,
        irreversible_penalty=irreversible_penalty,
    )
