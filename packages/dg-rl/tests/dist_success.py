"""Two gloo processes (``torchrun --standalone --nproc_per_node 2``) each count their share of episodes in a
``SuccessRate``; each rank writes its local and its computed (reduced) rate to ``OUT/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from dg_rl import SuccessRate

SUCCESSES = [True, False, False, True, False, False, False, True, False, False, True]


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = SUCCESSES[rank::world]
    local = SuccessRate(sync_on_compute=False)
    reduced = SuccessRate()
    for success in mine:  # one update per episode: the counts accumulate
        local.update([success])
        reduced.update([success])
    record = {"world": world, "local": float(local.compute()), "reduced": float(reduced.compute())}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
