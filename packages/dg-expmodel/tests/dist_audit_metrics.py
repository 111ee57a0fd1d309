"""Two gloo processes (``torchrun --standalone --nproc_per_node 2``) each count half of a set of predictions in the
audit's torchmetrics objects; each rank writes what ``compute`` gave it to ``OUT/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from dg_expmodel import BinaryStats
from dg_expmodel._audit_metrics import binary_stat_scores, exact_mean, update_binary

PREDICTED = [True, True, False, True, False, False, True, False, True, True, False]
ACTUAL = [True, False, True, True, True, False, False, False, True, False, False]
SCORES = [0.1, 0.7, 1 / 3, 2 / 7, 0.9, 0.25, 1.0, 0.0, 0.6, 0.55, 1 / 9]


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = slice(rank, None, world)  # every other item: the ranks hold 6 and 5
    confusion = binary_stat_scores()
    update_binary(confusion, PREDICTED[mine], ACTUAL[mine])
    accuracy = exact_mean()
    accuracy.update(torch.tensor([p == a for p, a in zip(PREDICTED[mine], ACTUAL[mine], strict=True)]).double())
    score = exact_mean()
    score.update(torch.tensor(SCORES[mine], dtype=torch.float64))
    local = BinaryStats.of(PREDICTED[mine], ACTUAL[mine])
    record = {
        "world": world,
        "local": local.as_dict(),
        "reduced": BinaryStats.from_metric(confusion).as_dict(),
        "accuracy": float(accuracy.compute()),
        "score": float(score.compute()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
