"""Runs a ``dg`` command in this process and SIGKILLs it at a chosen moment (used by test_kill_resume.py).

    python kill_driver.py PHASE N dg-args...

PHASE names the moment (see ``PHASES``), N which occurrence of it kills (1 = the first). ``none`` runs the
command to its end. A SIGKILL leaves no chance to clean up: what survives is what was on disk.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _patch(owner: Any, name: str, nth: int, *, after: bool) -> None:
    """Kill on the ``nth`` call of ``owner.name``: before it runs, or after it returned."""
    original: Callable[..., Any] = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth and not after:
            _kill()
        result = original(*args, **kwargs)
        if calls["n"] == nth and after:
            _kill()
        return result

    setattr(owner, name, wrapper)


def _install(phase: str, nth: int) -> None:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from dg_apps import training
    from dg_expmodel import ReplayWriteBack
    from dg_rl import GRPOModule

    if phase == "write-back":  # a synthetic step stored in the replay buffer, the batch not finished
        _patch(ReplayWriteBack, "__call__", nth, after=True)
    elif phase == "curriculum-report":  # a group's returns reported to the curriculum, the batch not counted
        _patch(training.CurriculumSource, "report", nth, after=True)
    elif phase == "batch-counted":  # a batch collected and counted, not trained on
        _patch(training.RunCounters, "on_batch", nth, after=True)
    elif phase == "training-step":  # during an update
        _patch(GRPOModule, "training_step", nth, after=False)
    elif phase == "run-state-saved":  # replay snapshot and curriculum.json written, the checkpoint not yet
        _patch(training.SaveRunState, "on_save_checkpoint", nth, after=True)
    elif phase == "checkpoint-written":  # the checkpoint's bytes written to the temporary file, not renamed
        _patch(TorchCheckpointIO, "save_checkpoint", nth, after=True)
    elif phase != "none":
        raise SystemExit(f"unknown phase {phase!r}")


PHASES = (
    "write-back",
    "curriculum-report",
    "batch-counted",
    "training-step",
    "run-state-saved",
    "checkpoint-written",
)


def main() -> int:
    phase, nth, *argv = sys.argv[1:]
    torch.set_num_threads(1)  # the same arithmetic in every process, so runs can be compared exactly
    _install(phase, int(nth))
    from dg_apps.cli import main as dg_main

    return dg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
