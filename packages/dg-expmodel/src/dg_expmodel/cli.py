"""``python -m dg_expmodel fit --config fit.yaml``: fine-tune an experience model through ``LightningCLI``.

The config's sections:

- ``data`` (:class:`ExperienceData`): the run directory, the real trajectory files, the model source (a
  ``class_path``: :class:`TinyModel` or :class:`PretrainedModel`) and the prompt settings. It seeds
  ``<run_dir>/replay`` with the trajectories, labels every transition with the rule-based reasoning annotator,
  builds the examples (each prompt grounded by the ``top_k`` most similar *other* real transitions) and tokenises
  them; it builds the model too (a tiny one's tokenizer is trained on the examples).
- ``model`` (:class:`ExperienceModelFit`): the SFT LightningModule; its ``model`` is linked from the data module.
- ``trainer``: ``lightning.Trainer`` arguments; ``default_root_dir`` is linked from ``data.run_dir``.

When training ends, ``<run_dir>`` is a complete experience-model run (``model/``, ``replay/``,
``expmodel.json``): ``dg train --set expmodel=<run_dir>``, ``dg expmodel audit`` and the ``synthetic`` env of
``python -m dg_rl fit`` take it. The resolved config is ``<run_dir>/lightning_logs/version_N/config.yaml``, beside
that version's ``checkpoints/``.

``dg expmodel fit`` can also annotate with an LLM (``annotator: llm``) and fit the non-parametric ``nearest``
model; this command uses the rule-based annotator and trains a network.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from dg_core import ConfigError, DGError, Trajectory, read_trajectories, require
from dg_expmodel._annotate import RuleBasedAnnotator
from dg_expmodel._deps import models_module
from dg_expmodel._format import PromptOptions
from dg_expmodel._replay import ReplayRetriever
from dg_expmodel._run import RUN_SETTINGS, load_experience_run, synthetic_env
from dg_expmodel._sft import Batches, examples_from_trajectories, tokenize_examples
from dg_expmodel._tiny import tiny_causal_lm, train_tokenizer
from dg_expmodel._train import ExperienceModelSFT, LoraSettings, save_hf_directory

__all__ = [
    "ExperienceData",
    "ExperienceModelFit",
    "ModelSource",
    "PretrainedModel",
    "TinyModel",
    "load_experience_run",
    "main",
    "synthetic_env",
]


class ModelSource:
    """Where the experience model comes from (``data.model``): :class:`TinyModel` or :class:`PretrainedModel`."""

    def tokenizer(self) -> Any:
        """The tokenizer that renders the examples (``None``: trained on them, see :meth:`build`)."""
        return None

    def build(self, texts: list[str], max_length: int, seed: int) -> tuple[Any, Any]:
        """The model (train mode) and its tokenizer; ``texts`` are the examples' prompts and responses."""
        raise NotImplementedError  # each source defines it


class TinyModel(ModelSource):
    """A tiny Qwen2 built from a config; its byte-level BPE tokenizer is trained on the examples.

    Args:
        hidden_size: Width of the model.
        num_layers: Transformer layers.
        num_heads: Attention heads.
        vocab_size: Tokenizer vocabulary.
    """

    def __init__(self, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4, vocab_size: int = 2048):
        if hidden_size < 1 or num_layers < 1 or num_heads < 1 or hidden_size % num_heads:
            raise ConfigError(
                f"data.model: hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads}), "
                f"num_layers ({num_layers}) positive"
            )
        if vocab_size < 300:
            raise ConfigError(f"data.model.vocab_size: must be >= 300 (bytes and specials), got {vocab_size}")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.vocab_size = vocab_size

    def build(self, texts: list[str], max_length: int, seed: int) -> tuple[Any, Any]:
        tokenizer = train_tokenizer(texts, vocab_size=self.vocab_size)
        model = tiny_causal_lm(
            tokenizer,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            max_positions=max_length,
            seed=seed,
        )
        return model, tokenizer


class PretrainedModel(ModelSource):
    """A model ``dg_models`` loads (``smollm2``, a ``.gguf`` file, a Hugging Face directory, a hub id), fine-tuned
    with LoRA adapters unless ``lora`` is off (merged into plain weights in ``model/``).

    Args:
        source: The model source.
        dtype: ``auto`` (float32 on CPU, bfloat16 on a GPU that has it), ``float32``, ``bfloat16``, ``float16``.
        lora: Train LoRA adapters (``pip install "dg-expmodel[lora]"``) instead of every weight.
    """

    def __init__(self, source: str, dtype: str = "auto", lora: bool = True) -> None:
        self.source = source
        self.dtype = dtype
        self.lora = lora
        self._loaded: Any = None

    def _load(self) -> Any:
        if self._loaded is None:
            models = models_module()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                self._loaded = models.load_model(self.source, dtype=self.dtype, device=device, padding_side="left")
            except models.ModelLoadError as error:
                raise ConfigError(f"data.model: {error}") from error
        return self._loaded

    def tokenizer(self) -> Any:
        return self._load().tokenizer

    def build(self, texts: list[str], max_length: int, seed: int) -> tuple[Any, Any]:
        loaded = self._load()
        model = loaded.model
        model.train()  # loaded in eval mode; it is about to be fine-tuned
        if self.lora:
            peft = require("peft", distribution="dg-expmodel", extra="lora", purpose="LoRA fine-tuning")
            settings = LoraSettings()
            config = peft.LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=list(settings.target_modules),
                task_type="CAUSAL_LM",
            )
            model = peft.get_peft_model(model, config)
        return model, loaded.tokenizer


@dataclass
class InferenceSettings:
    """How the fitted model is served when a synthetic env loads the run (written to ``expmodel.json``)."""

    max_new_tokens: int = 320
    retries: int = 0
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    base_url: str | None = None
    """``openai`` backend: the server's URL."""
    served_model: str | None = None
    """``openai`` backend: the model name on the server."""
    vllm: dict[str, Any] | None = None
    """``vllm`` backend: engine arguments."""


def _read(paths: list[str], key: str) -> list[Trajectory]:
    trajectories: list[Trajectory] = []
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"{key}: trajectory file {path} not found")
        trajectories.extend(read_trajectories(path))
    return trajectories


def _encoder(name: str) -> Any:
    from dg_replay import HashingEncoder, minilm_encoder

    return HashingEncoder(dim=384) if name == "hashing" else minilm_encoder()


class ExperienceData(L.LightningDataModule):
    """The SFT examples of an experience model, built from real trajectories into a run directory.

    Args:
        run_dir: The run directory (``replay/``, ``model/``, ``expmodel.json``; the trainer's root directory).
        data: Real trajectory files (JSONL / Parquet).
        val_data: Held-out trajectory files: their examples' loss is ``val/loss`` (retrieval from the training
            buffer). None: no validation.
        model: The model source.
        history_window: Earlier steps shown in each prompt.
        top_k: Retrieved real transitions in each prompt (0: no replay grounding).
        reasoning: Train with reasoning traces (False: the ablation without).
        encoder: Replay keys: ``hashing`` (offline) or ``minilm``.
        batch_size: Examples per optimiser step.
        max_length: Longest example in tokens (longer prompts are cut on the left; a response that does not
            fit drops its example).
        inference: What ``expmodel.json`` says about serving the model.
        seed: Seed of the tiny model's initialisation and the batch order.
    """

    def __init__(
        self,
        run_dir: str,
        data: list[str],
        *,
        val_data: list[str] | None = None,
        model: ModelSource | None = None,
        history_window: int = 2,
        top_k: int = 2,
        reasoning: bool = True,
        encoder: Literal["hashing", "minilm"] = "hashing",
        batch_size: int = 8,
        max_length: int = 2048,
        inference: InferenceSettings | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from dg_replay import ReplayBuffer

        if not data:
            raise ConfigError("data.data: give the real trajectory files (JSONL / Parquet) to learn from")
        if batch_size < 1 or top_k < 0 or history_window < 0:
            raise ConfigError("data: batch_size must be >= 1, top_k and history_window >= 0")
        trajectories = _read(data, "data.data")
        held_out = _read(val_data or [], "data.val_data")
        if not trajectories:
            raise ConfigError(f"data.data: {', '.join(data)} hold no trajectories")
        source = model or TinyModel()
        self.run_dir = Path(run_dir)
        self.inference = inference or InferenceSettings()
        self.options = PromptOptions(history_window=history_window, max_retrieved=top_k, reasoning=reasoning)
        replay_dir = self.run_dir / "replay"
        if (replay_dir / "manifest.json").exists():
            raise ConfigError(f"data.run_dir: {self.run_dir} already holds a seeded replay buffer; give a new folder")
        if replay_dir.exists():
            shutil.rmtree(replay_dir)
        buffer = ReplayBuffer.create(replay_dir, encoder=_encoder(encoder))
        try:
            buffer.add_trajectories(trajectories)
            buffer.save()
            retrieve = None
            if top_k > 0:
                retrieve = functools.partial(ReplayRetriever(buffer, exclude_self=True).for_step, k=top_k)
            tokenizer = source.tokenizer()
            examples = examples_from_trajectories(
                trajectories, RuleBasedAnnotator(), options=self.options, retrieve=retrieve, tokenizer=tokenizer
            )
            val_examples = examples_from_trajectories(
                held_out, RuleBasedAnnotator(), options=self.options, retrieve=retrieve, tokenizer=tokenizer
            )
        finally:
            buffer.close()
        self.network, self.tokenizer = source.build([e.prompt + e.response for e in examples], max_length, seed)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.features = tokenize_examples(examples, self.tokenizer, max_length=max_length)
        if not self.features:
            raise ConfigError(f"data.max_length: no example fits {max_length} tokens")
        self.dropped = len(examples) - len(self.features)
        self.val_features = tokenize_examples(val_examples, self.tokenizer, max_length=max_length)
        self.batch_size = batch_size
        self.seed = seed
        self._dtype = getattr(source, "dtype", "auto")

    def train_dataloader(self) -> Batches:
        """The examples in length-grouped batches, reshuffled every epoch."""
        return Batches(self.features, self.batch_size, self.tokenizer.pad_token_id, seed=self.seed, shuffle=True)

    def val_dataloader(self) -> Batches:
        """The held-out examples (empty without ``val_data``: the CLI then switches validation off)."""
        return Batches(self.val_features, self.batch_size, self.tokenizer.pad_token_id, seed=self.seed, shuffle=False)

    def write_run(self, model: Any) -> Path:
        """Write ``model/`` (``model``: the trained LM; LoRA merged) and ``expmodel.json`` into the run directory."""
        save_hf_directory(model, self.tokenizer, self.run_dir / "model")
        settings = {
            "options": self.options.model_dump(mode="json"),
            "chat": self.chat,
            "dtype": self._dtype,
            **asdict(self.inference),
            "vllm": self.inference.vllm or {},
        }
        (self.run_dir / RUN_SETTINGS).write_text(json.dumps(settings, indent=2))
        return self.run_dir


class ExperienceModelFit(ExperienceModelSFT):
    """:class:`~dg_expmodel.ExperienceModelSFT` whose learning-rate decay spans the trainer's run.

    Args:
        model: Linked from the data module (not configured).
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up in optimiser steps (at most half the run).
        total_steps: Optimiser steps of the linear decay to 0; ``None``: the trainer's whole run
            (``estimated_stepping_batches``), as ``dg expmodel fit`` does.
    """

    def __init__(
        self,
        model: Any,
        *,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 10,
        total_steps: int | None = None,
    ) -> None:
        super().__init__(model, learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps)
        self.total_steps_setting = total_steps

    def configure_optimizers(self) -> Any:
        steps = self.total_steps_setting
        if steps is None:
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            self.warmup_steps = min(self.warmup_steps, steps // 2)
        self.total_steps = steps
        return super().configure_optimizers()


def _cli_classes() -> tuple[type[Any], type[Any]]:
    try:
        from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
    except ImportError as error:  # jsonargparse missing
        raise ImportError(f'{error}; the dg-expmodel command line needs: pip install "dg-expmodel[cli]"') from error
    return LightningCLI, SaveConfigCallback


def _build_cli(args: list[str] | None, run: bool = True) -> Any:
    lightning_cli, save_config_callback = _cli_classes()

    class ExperienceCLI(lightning_cli):  # type: ignore[misc, valid-type]
        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.run_dir", "trainer.default_root_dir")
            parser.link_arguments("data.network", "model.model", apply_on="instantiate")

        def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
            trainer_config = self._get(self.config_init, "trainer") or {}
            if trainer_config.get("logger") in (None, True):  # Lightning would look for TensorBoard, and warn
                kwargs.setdefault("logger", CSVLogger(save_dir=trainer_config["default_root_dir"]))
            if not self.datamodule.val_features:
                kwargs["limit_val_batches"] = 0  # no held-out data: no validation loop
            trainer: L.Trainer = super().instantiate_trainer(**kwargs)
            return trainer

        def after_fit(self) -> None:
            if self.trainer.is_global_zero:
                self.datamodule.write_run(self.model.model)

    return ExperienceCLI(
        model_class=ExperienceModelFit,
        datamodule_class=ExperienceData,
        save_config_callback=save_config_callback,
        auto_configure_optimizers=False,  # AdamW with warm-up and linear decay, as `dg expmodel fit`
        seed_everything_default=0,
        trainer_defaults={
            "max_epochs": 6,
            "gradient_clip_val": 1.0,
            "deterministic": True,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
        },
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Run the command line (``args``: the arguments after ``python -m dg_expmodel``; default ``sys.argv[1:]``).

    A dg error (a missing trajectory file, a model that cannot load, a used run directory) exits with status 2
    and one ``dg_expmodel: error:`` line; jsonargparse reports config errors the same way.
    """
    try:
        _build_cli(args)
    except DGError as error:
        print(f"dg_expmodel: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
