"""Optional LoRA adapters through peft (``pip install "dg-rl[lora]"``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dg_core import require

__all__ = ["apply_lora"]


def apply_lora(
    model: nn.Module,
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters; only the adapters train.

    With a LoRA policy, :class:`~dg_rl.GRPOModule` uses the same model with adapters disabled as the
    KL reference, so no second copy of the weights is kept.
    """
    peft = require("peft", distribution="dg-rl", extra="lora", purpose="LoRA adapters")
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    wrapped: nn.Module = peft.get_peft_model(model, config)
    return wrapped
