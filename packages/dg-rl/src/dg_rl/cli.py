"""``python -m dg_rl fit --config run.yaml``: GRPO / PPO from a YAML file, through Lightning's ``LightningCLI``.

The config has the three sections of any LightningCLI run:

- ``data`` (:class:`RolloutData`): the environment (any name in dg-core's registry, with its keyword
  options), the task file, the policy (:class:`PolicySpec`: where its model comes from, as a ``class_path``, and
  how it acts) and the batch shape. It builds the :class:`~dg_rl.LMPolicy`, the env and the
  :class:`~dg_rl.RolloutEngine` and is a :class:`~dg_rl.RolloutDataModule`.
- ``model``: the algorithm, a ``class_path`` to :class:`~dg_rl.GRPOModule` (default) or :class:`~dg_rl.PPOModule`
  with its ``init_args`` (the loss is a ``class_path`` too). Its ``policy`` argument is not configured: it is the
  data module's policy, linked when the classes are instantiated, so the module trains the model that plays.
- ``trainer``: ``lightning.Trainer`` arguments. ``data.max_batches`` is linked from ``trainer.max_steps`` and
  ``data.updates_per_batch`` (no batch is collected that training would not use).

The resolved config is saved as ``config.yaml`` in the trainer's log directory, beside its ``checkpoints/``
folder (``<default_root_dir>/lightning_logs/version_N/``), and into every ``ModelCheckpoint``'s folder too. When
training ends the policy is saved in the log directory as a Hugging Face directory (``policy/``: safetensors and
tokenizer; LoRA merged).

dg-rl never imports dg-expmodel: a synthetic environment is one more registered name (dg-expmodel registers
``synthetic``, built from a ``dg expmodel fit`` / ``python -m dg_expmodel fit`` directory).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from pydantic import ValidationError

from dg_core import BatchedEnv, ConfigError, DGError, Env, EnvPool, Task, Trajectory, make_env, read_trajectories
from dg_models import DType, ModelLoadError, load_model, save_model, tiny_causal_lm, train_bpe_tokenizer
from dg_rl._data import RolloutDataModule
from dg_rl._lightning import GRPOModule, _PolicyModule
from dg_rl._lora import apply_lora
from dg_rl._policy import ActionMode, LMPolicy, ScoreReduction
from dg_rl._prompt import PromptFormat
from dg_rl._rollout import RolloutEngine
from dg_rl._sharding import full_state_dict, sharded_modules

__all__ = [
    "ModelSource",
    "PolicySpec",
    "PretrainedModel",
    "RolloutData",
    "TinyModel",
    "main",
    "policy_corpus",
    "read_task_file",
]


def policy_corpus(trajectories: Iterable[Trajectory], tasks: Iterable[Task]) -> list[str]:
    """The texts a tiny policy's tokenizer is trained on: task instructions, then every state, action and
    action list of ``trajectories`` (``dg train`` builds its tiny policies from the same corpus)."""
    texts: list[str] = [task.instruction for task in tasks]
    for trajectory in trajectories:
        texts.append(trajectory.task.instruction)
        for step in trajectory.steps:
            texts += [step.state.text, step.next_state.text, step.action.text]
            texts.append(" | ".join(step.state.available_actions or ()))
    return texts


def read_task_file(path: str | Path, *, split: str | None = None) -> list[Task]:
    """Tasks of a JSONL file (one dg-core ``Task`` per line; ``dg tasks`` writes them), those of ``split`` only
    when it is given; errors name the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.tasks: task file {path} not found (JSONL, one dg-core Task per line)")
    tasks: list[Task] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            tasks.append(Task.model_validate_json(line))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(line)"
            raise ConfigError(f"data.tasks: {path}:{number}: field {field}: {first['msg']}") from None
    if split is not None:
        splits = sorted({task.split for task in tasks if task.split})
        tasks = [task for task in tasks if task.split == split]
        if not tasks:
            raise ConfigError(f"data.split: {path} has no {split!r} tasks (its splits: {', '.join(splits) or 'none'})")
    if not tasks:
        raise ConfigError(f"data.tasks: {path} holds no tasks")
    return tasks


class ModelSource:
    """Where the policy's model comes from (``data.policy.model``): :class:`TinyModel` or :class:`PretrainedModel`."""

    def build(self, tasks: Sequence[Task], seed: int) -> tuple[Any, Any]:
        """The model (train mode) and its tokenizer."""
        raise NotImplementedError  # each source defines it


class TinyModel(ModelSource):
    """A tiny Qwen2 built from a config, its byte-level BPE tokenizer trained on the tasks and ``data``.

    Args:
        data: Trajectory files (JSONL / Parquet) whose texts the tokenizer learns, after the tasks' instructions
            (the corpus of :func:`policy_corpus`); empty: the instructions only.
        hidden_size: Width of the model.
        num_layers: Transformer layers.
        num_heads: Attention heads.
        vocab_size: Tokenizer vocabulary.
    """

    def __init__(
        self,
        data: list[str] | None = None,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        vocab_size: int = 1024,
    ) -> None:
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads)):
            if value < 1:
                raise ConfigError(f"data.policy.model.{name}: must be >= 1, got {value}")
        if hidden_size % num_heads:
            raise ConfigError(
                f"data.policy.model.hidden_size: {hidden_size} is not a multiple of num_heads ({num_heads})"
            )
        if vocab_size < 300:
            raise ConfigError(f"data.policy.model.vocab_size: must be >= 300 (bytes and specials), got {vocab_size}")
        self.data = list(data or [])
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.vocab_size = vocab_size

    def build(self, tasks: Sequence[Task], seed: int) -> tuple[Any, Any]:
        trajectories: list[Trajectory] = []
        for path in self.data:
            if not Path(path).is_file():
                raise ConfigError(f"data.policy.model.data: trajectory file {path} not found")
            trajectories.extend(read_trajectories(path))
        tokenizer = train_bpe_tokenizer(policy_corpus(trajectories, tasks), vocab_size=self.vocab_size)
        torch.manual_seed(seed)
        model = tiny_causal_lm(
            tokenizer, hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads, seed=seed
        )
        return model, tokenizer


class PretrainedModel(ModelSource):
    """A model ``dg_models.load_model`` loads: a short name (``smollm2``), a ``.gguf`` file, a Hugging Face
    directory (a ``policy/`` a run saved) or a hub id.

    Args:
        source: The model source.
        dtype: ``auto`` (float32 on CPU, bfloat16 on a GPU that has it), ``float32``, ``bfloat16``, ``float16``.
    """

    def __init__(self, source: str, dtype: DType = "auto") -> None:
        if not source.strip():
            raise ConfigError("data.policy.model.source: give a model source (smollm2, a .gguf file, a directory)")
        self.source = source
        self.dtype = dtype

    def build(self, tasks: Sequence[Task], seed: int) -> tuple[Any, Any]:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            loaded = load_model(self.source, dtype=self.dtype, device=device)
        except ModelLoadError as error:
            raise ConfigError(f"data.policy.model: {error}") from error
        loaded.model.train()  # loaded in eval mode; it is about to be trained
        return loaded.model, loaded.tokenizer


@dataclass
class PolicySpec:
    """The policy: its model and how it acts (:class:`~dg_rl.LMPolicy`'s settings)."""

    model: ModelSource | str = "tiny"
    """A :class:`TinyModel` / :class:`PretrainedModel` (``class_path`` + ``init_args``), or a string: ``tiny``
    (a :class:`TinyModel` with its defaults) or any model source (a :class:`PretrainedModel` of it)."""
    mode: ActionMode = "choose"
    """``choose`` scores each available action; ``generate`` writes the action text."""
    temperature: float = 1.0
    history_turns: int = 0
    """Earlier turns shown in the prompt."""
    max_turn_tokens: int = 32
    max_prompt_tokens: int = 512
    score_reduction: ScoreReduction = "mean"
    chat: bool | None = None
    """Prompts through the tokenizer's chat template; ``None``: whenever it has one."""
    lora: bool = False
    """Train LoRA adapters only (``pip install "dg-rl[lora]"``)."""

    def source(self) -> ModelSource:
        """The model source, a string resolved."""
        if isinstance(self.model, ModelSource):
            return self.model
        return TinyModel() if self.model == "tiny" else PretrainedModel(self.model)


def _make_single(name: str, options: dict[str, Any]) -> Env:
    env = make_env(name, **options)
    if not isinstance(env, Env):
        raise ConfigError(f"data.env: {name!r} built a {type(env).__name__}, expected a single-episode Env")
    return env


def build_env(name: str, options: dict[str, Any]) -> BatchedEnv:
    """The env registered as ``name``: a batched one as it is, a single-episode one in an :class:`EnvPool`."""
    env = make_env(name, **options)
    if isinstance(env, BatchedEnv):
        return env
    env.close()  # the pool builds its own copies (one per episode of the largest batch)
    return EnvPool(functools.partial(_make_single, name, dict(options)))


class RolloutData(RolloutDataModule):
    """The rollout data module built from config values: policy, env, tasks and batch shape.

    Args:
        env: Registered env name (``scripted``; with dg-envs ``textworld``, ``alfworld``...; with dg-expmodel
            ``synthetic``). ``dg envs`` lists them.
        tasks: A task file (JSONL of dg-core ``Task``; ``dg tasks`` writes any panel as one).
        env_options: Keyword arguments of the env's factory (``max_steps``...).
        split: Train on the tasks of this split only (``None``: every task in the file).
        policy: The policy's model and settings.
        group_size: Episodes per task (G of GRPO).
        tasks_per_step: Tasks per batch (per rank).
        updates_per_batch: Optimiser steps on each collected batch.
        max_episode_tokens: Policy-token budget of an episode (``None``: none).
        max_batches: Linked from ``trainer.max_steps`` / ``updates_per_batch``; not set in a config.
        seed: Seed of the model's initialisation, the policy's sampling and the task draws.
    """

    def __init__(
        self,
        env: str,
        tasks: str,
        *,
        env_options: dict[str, Any] | None = None,
        split: str | None = None,
        policy: PolicySpec | None = None,
        group_size: int = 4,
        tasks_per_step: int = 4,
        updates_per_batch: int = 1,
        max_episode_tokens: int | None = 256,
        max_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        spec = policy or PolicySpec()
        panel = read_task_file(tasks, split=split)
        model, tokenizer = spec.source().build(panel, seed)
        if spec.lora:
            model = apply_lora(model)
        lm_policy = LMPolicy(
            model,
            tokenizer,
            mode=spec.mode,
            temperature=spec.temperature,
            prompt_format=PromptFormat(history_turns=spec.history_turns),
            max_turn_tokens=spec.max_turn_tokens,
            max_prompt_tokens=spec.max_prompt_tokens,
            score_reduction=spec.score_reduction,
            chat=spec.chat,
            policy_id=f"{env}-{spec.mode}",
            seed=seed,
        )
        environment = build_env(env, dict(env_options or {}))
        engine = RolloutEngine(lm_policy, environment, group_size=group_size, max_episode_tokens=max_episode_tokens)
        super().__init__(
            engine,
            panel,
            tasks_per_step=tasks_per_step,
            updates_per_batch=updates_per_batch,
            seed=seed,
            max_batches=max_batches,
        )

    @property
    def policy(self) -> LMPolicy:
        """The policy that plays the rollouts (the algorithm module trains its model)."""
        return self.engine.policy

    def teardown(self, stage: str) -> None:
        self.engine.env.close()


def savable_model(model: Any) -> Any:
    """``model`` as ``save_model`` can write it: itself, or after FSDP2 a plain copy of the same architecture (and
    LoRA adapters, when it has them) holding the trained weights gathered from every rank (each rank calls this)."""
    if not sharded_modules(model):
        return model
    from transformers import AutoModelForCausalLM

    state = full_state_dict(model)
    dtype = next(iter(state.values())).dtype
    plain = AutoModelForCausalLM.from_config(model.config, dtype=dtype)  # type: ignore[no-untyped-call]
    if any(".lora_" in name for name in state):
        plain = apply_lora(plain)
    plain.load_state_dict(state)
    return plain


def _batches(max_steps: int, updates_per_batch: int) -> int | None:
    """``trainer.max_steps`` optimiser steps in batches of ``updates_per_batch`` (``None``: no step limit)."""
    if max_steps is None or max_steps < 0:
        return None
    return max(1, -(-max_steps // max(1, updates_per_batch)))


def _checkpoint_dirs(trainer: L.Trainer) -> list[Path]:
    """The folders ``ModelCheckpoint`` callbacks name in the config (Lightning's default, ``None``, is
    ``<log_dir>/checkpoints``, beside the ``config.yaml`` LightningCLI writes)."""
    return [
        Path(callback.dirpath)
        for callback in trainer.callbacks  # type: ignore[attr-defined]
        if isinstance(callback, ModelCheckpoint) and callback.dirpath
    ]


def _default_logger(trainer: dict[str, Any] | None) -> dict[str, Any]:
    """A CSV logger under ``default_root_dir`` where the config names no logger (Lightning's own default would
    look for TensorBoard first, and warn without it)."""
    trainer = trainer or {}
    if trainer.get("logger") not in (None, True):
        return {}
    root = trainer.get("default_root_dir") or "."
    return {"logger": CSVLogger(save_dir=root, name="lightning_logs")}


def _cli_classes() -> tuple[type[Any], type[Any]]:
    try:
        from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
    except ImportError as error:  # jsonargparse missing
        raise ImportError(f'{error}; the dg-rl command line needs: pip install "dg-rl[cli]"') from error
    return LightningCLI, SaveConfigCallback


def _build_cli(args: list[str] | None, run: bool = True) -> Any:
    lightning_cli, save_config_callback = _cli_classes()

    class SaveConfigBesideCheckpoints(save_config_callback):  # type: ignore[misc, valid-type]
        """Writes ``config.yaml`` into the log directory (the parent of Lightning's default ``checkpoints/``)
        and into the folder of every ``ModelCheckpoint``."""

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            # After the checkpoint callbacks' own setup (which warns about a folder that is not empty).
            log_dir = trainer.log_dir  # every rank: reading it broadcasts rank 0's
            if not trainer.is_global_zero:
                return
            for folder in _checkpoint_dirs(trainer):
                if log_dir and folder == Path(log_dir):
                    continue  # written by the base class
                folder.mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config, str(folder / self.config_filename), skip_none=False, overwrite=True, multifile=False
                )

    class PolicyCLI(lightning_cli):  # type: ignore[misc, valid-type]
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments(
                ("trainer.max_steps", "data.updates_per_batch"), "data.max_batches", compute_fn=_batches
            )
            parser.link_arguments("data.policy", "model.init_args.policy", apply_on="instantiate")
            parser.set_defaults({"model": {"class_path": f"{GRPOModule.__module__}.GRPOModule"}})

        def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
            options = {**_default_logger(self._get(self.config_init, "trainer")), **kwargs}
            trainer: L.Trainer = super().instantiate_trainer(**options)
            return trainer

        def after_fit(self) -> None:
            policy = self.datamodule.policy
            model = savable_model(policy.model)  # every rank: gathering FSDP2 shards is collective
            if self.trainer.is_global_zero:  # the folder read without trainer.log_dir, which is collective too
                loggers = self.trainer.loggers
                folder = loggers[0].log_dir if loggers and loggers[0].log_dir else self.trainer.default_root_dir
                save_model(model, policy.tokenizer, Path(folder) / "policy")

    return PolicyCLI(
        model_class=_PolicyModule,
        datamodule_class=RolloutData,
        subclass_mode_model=True,
        auto_configure_optimizers=False,  # each algorithm module makes its own (AdamW, manual optimisation)
        save_config_callback=SaveConfigBesideCheckpoints,
        seed_everything_default=0,
        trainer_defaults={"enable_model_summary": False, "log_every_n_steps": 1},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Run the command line (``args``: the arguments after ``python -m dg_rl``; default ``sys.argv[1:]``).

    A dg error (a missing task file, an unknown env, a model that cannot load) exits with status 2 and one
    ``dg_rl: error:`` line; jsonargparse reports config errors (an unknown key, a wrong type) the same way.
    """
    try:
        _build_cli(args)
    except DGError as error:
        print(f"dg_rl: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
