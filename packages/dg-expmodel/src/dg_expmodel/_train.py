"""The SFT LightningModule and :func:`fit_experience_model` (``pip install "dg-expmodel[train]"``)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dg_core import ConfigError, require
from dg_expmodel._sft import Batches, SFTExample, tokenize_examples


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters instead of full fine-tuning (``pip install "dg-expmodel[lora]"``).

    Attributes:
        rank: Adapter rank r.
        alpha: Scaling numerator (effective scale alpha / r).
        dropout: Dropout on the adapter input.
        target_modules: Names of the linear layers to adapt.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class ExperienceModelSFT(L.LightningModule):
    """Fine-tunes a causal LM on the joint reasoning + next-state loss (prompt tokens masked).

    Args:
        model: An ``AutoModelForCausalLM`` (or a peft wrapper of one).
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up, in optimizer steps.
        total_steps: Optimizer steps of the run for a linear decay to 0 (0: constant after warm-up).
    """

    def __init__(
        self,
        model: Any,
        *,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        total_steps: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self._started = time.perf_counter()
        self._tokens = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the response tokens of the batch."""
        output = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        loss: torch.Tensor = output.loss
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One step: logs ``train/loss`` and ``train/tokens_per_s`` (all tokens processed)."""
        loss: torch.Tensor = self(batch)
        size = batch["input_ids"].shape[0]
        self._tokens += int(batch["attention_mask"].sum())
        elapsed = max(1e-9, time.perf_counter() - self._started)
        self.log("train/loss", loss, prog_bar=True, batch_size=size, sync_dist=True)  # the mean over ranks
        self.log("train/tokens_per_s", self._tokens / elapsed, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Held-out loss ``val/loss``."""
        loss: torch.Tensor = self(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW with linear warm-up and optional linear decay."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate, weight_decay=self.weight_decay)
        warmup, total = self.warmup_steps, self.total_steps

        def scale(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if total > warmup:
                return max(0.0, (total - step) / (total - warmup))
            return 1.0

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scale)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def save_hf_directory(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Save model (safetensors) and tokenizer as a Hugging Face directory, replacing it atomically."""
    if hasattr(model, "merge_and_unload"):  # a peft model: ship plain weights
        model = model.merge_and_unload()
    staging = directory.with_name(directory.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    previous = directory.with_name(directory.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


class _SaveHFEachEpoch(L.Callback):
    def __init__(self, tokenizer: Any, directory: Path, lora: bool) -> None:
        self.tokenizer = tokenizer
        self.directory = directory
        self.lora = lora

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not self.lora:  # peft models are merged once, at the end
            save_hf_directory(pl_module.model, self.tokenizer, self.directory)


@dataclass
class FitResult:
    """What :func:`fit_experience_model` produced."""

    model_dir: Path
    """Hugging Face directory of the final model and tokenizer."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Last logged metrics (``train/loss``, ``val/loss``, ``train/tokens_per_s``)."""
    examples: int = 0
    dropped: int = 0
    """Examples whose response did not fit ``max_length``."""
    resumed_from: str | None = None


def _default_precision(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def fit_experience_model(
    model: Any,
    tokenizer: Any,
    train_examples: Sequence[SFTExample],
    *,
    output_dir: str | Path,
    val_examples: Sequence[SFTExample] = (),
    max_epochs: int = 3,
    batch_size: int = 8,
    accumulate_grad_batches: int = 1,
    learning_rate: float = 1e-3,
    warmup_steps: int = 10,
    max_length: int = 1024,
    precision: str | None = None,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    lora: LoraSettings | None = None,
    seed: int = 0,
    progress: bool = True,
    resume: bool = True,
) -> FitResult:
    """Fine-tune ``model`` on experience-model examples; resumable from ``output_dir``.

    Writes ``output_dir/checkpoints/last.ckpt`` (Lightning, with optimizer state) every epoch and
    ``output_dir/model`` (Hugging Face: safetensors + tokenizer). Called again with the same
    ``output_dir`` it resumes from ``last.ckpt`` (``resume=False`` starts over).
    """
    if not train_examples:
        raise ConfigError("fit_experience_model needs at least one training example")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    if lora is not None:
        peft = require("peft", distribution="dg-expmodel", extra="lora", purpose="LoRA fine-tuning")
        config = peft.LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, config)
    train_features = tokenize_examples(train_examples, tokenizer, max_length=max_length)
    if not train_features:
        raise ConfigError(f"no training example fits max_length={max_length}")
    val_features = tokenize_examples(val_examples, tokenizer, max_length=max_length)
    pad = tokenizer.pad_token_id
    train_batches = Batches(train_features, batch_size, pad, seed=seed, shuffle=True)
    # An empty validation set is passed as an empty loader with validation switched off (not as None,
    # which makes Lightning warn about the module's validation_step).
    val_batches = Batches(val_features, batch_size, pad, seed=seed, shuffle=False)
    optimizer_steps = max(1, len(train_batches) // accumulate_grad_batches) * max_epochs
    module = ExperienceModelSFT(
        model,
        learning_rate=learning_rate,
        warmup_steps=min(warmup_steps, optimizer_steps // 2),
        total_steps=optimizer_steps,
    )
    checkpoints = output / "checkpoints"
    trainer = L.Trainer(
        default_root_dir=str(output),
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision or _default_precision(accelerator),  # type: ignore[arg-type]
        accumulate_grad_batches=accumulate_grad_batches,
        gradient_clip_val=1.0,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(str(output), name="logs"),
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(dirpath=str(checkpoints), save_last=True, save_top_k=0),
            _SaveHFEachEpoch(tokenizer, output / "model", lora is not None),
        ],
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_features else 0,
        deterministic=True,
    )
    last = checkpoints / "last.ckpt"
    resumed = str(last) if resume and last.exists() else None
    trainer.fit(
        module, train_dataloaders=train_batches, val_dataloaders=val_batches, ckpt_path=resumed, weights_only=True
    )
    model_dir = output / "model"
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    if trainer.is_global_zero:  # under DDP every rank holds the same weights: rank 0 writes them
        save_hf_directory(module.model, tokenizer, model_dir)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    trainer.strategy.barrier("dg-expmodel-saved")  # no rank returns before the model is on disk
    return FitResult(
        model_dir=model_dir,
        metrics=metrics,
        examples=len(train_features),
        dropped=len(train_examples) - len(train_features),
        resumed_from=resumed,
    )
