"""Episode metrics as torchmetrics objects: accumulated by ``update``, read by ``compute``, reduced across ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SuccessRate"]


class SuccessRate(Metric):
    """The share of episodes that succeeded, over every ``update`` since the last ``reset``.

    The states are integer counts that torchmetrics sums across ranks when ``compute`` runs under
    ``torch.distributed`` (so each rank may play a share of the episodes and every rank reads the whole rate), and
    the share is divided in float64: it is exactly ``successes / episodes`` as Python divides two integers
    (torchmetrics' ``MeanMetric`` would average in float32). No episode gives NaN. Inside a LightningModule it is
    logged as Lightning logs any metric (``self.log("success", metric)``).

    Args:
        kwargs: torchmetrics' metric options (``sync_on_compute``, ``process_group``, ``dist_sync_on_step``...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    successes: Tensor
    episodes: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("successes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("episodes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, successes: Tensor | Sequence[bool]) -> None:
        """Count episodes and their successes (one boolean per episode)."""
        flags = torch.as_tensor([bool(s) for s in successes] if not isinstance(successes, Tensor) else successes)
        flags = flags.to(device=self.successes.device, dtype=torch.bool).flatten()
        self.successes += flags.sum()
        self.episodes += flags.numel()

    def compute(self) -> Tensor:
        """``successes / episodes`` in float64 (NaN before any episode)."""
        if int(self.episodes) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.successes.double() / self.episodes.double()
