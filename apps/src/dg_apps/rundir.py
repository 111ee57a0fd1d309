"""One directory per run: resolved config, logs, checkpoints, metrics, plots and a human summary.

```
RUN/
  run.json          command, dg version, start / finish times, status (running | done | failed)
  config.yaml       the resolved config: `dg <command> --config RUN/config.yaml` repeats the run
  logs/             CSV (logs/csv/.../metrics.csv) and TensorBoard (logs/tensorboard) of training runs
  checkpoints/      Lightning checkpoints (last.ckpt resumes an interrupted run)
  metrics.json      the numbers of the run
  plots/            PNG figures
  summary.md        what happened, in a few lines and a table
  .lock             held by the process running it: a second process on the same directory is refused
```

Under a trainer with several processes (``trainer.devices`` above 1) Lightning starts the other ranks when training
begins, each running the same ``dg`` command again. Rank 0 owns the directory (lock, ``run.json``, metrics, summary,
saved policy and buffer); every other rank opens it as a *follower* (:func:`follower_rank`): it finds the run rank 0
started, takes no lock and writes nothing but what Lightning itself writes on rank 0's behalf.

Starting a command on a directory that already holds a run of the same command and config resumes it
(finished stages are kept, training continues from ``checkpoints/last.ckpt``); a different config there is
refused, naming the first key that differs. A config field added to dg since the run started compares as its
default, so upgrading dg does not orphan a run directory.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from dg_apps.config import dump_config
from dg_core import ConfigError

__all__ = [
    "RUN_DIR_VARIABLE",
    "RunDir",
    "default_run_dir",
    "follower_rank",
    "rank_barrier",
    "refuse_external_launcher",
]

RUN_DIR_VARIABLE = "DG_RUN_DIR"
"""Set by rank 0 for the ranks Lightning starts: the run directory they join (a default ``--output`` is a time)."""


def follower_rank() -> int:
    """Non-zero when this process is not rank 0 of a multi-process run (its rank where the launcher says it).

    Lightning's launcher gives the processes it starts ``LOCAL_RANK`` and ``NODE_RANK`` (rank 0 sets its own to 0
    when it starts them); ``RANK`` is the global rank where a launcher sets it.
    """
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        value = (os.environ.get(name) or "0").strip()
        if value != "0":
            return int(value)
    return 0


def rank_barrier() -> None:
    """Wait here for every rank, where their process group is up: in a command's stages after its first training
    (the group lives on), rank 0 makes what the others then read; before it, the others start only then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def refuse_external_launcher() -> None:
    """``dg`` under torchrun (or another launcher that starts every rank itself) is refused: a dg command starts its
    own processes from ``trainer.devices`` and its ranks > 0 join the run directory rank 0 made before training."""
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        raise ConfigError(
            "dg runs under torchrun are not supported: a dg command starts its own processes from trainer.devices "
            "(run it without torchrun); to launch ranks yourself (torchrun, several nodes), train with "
            "`python -m dg_rl fit` or `python -m dg_expmodel fit` (`dg export-cli` writes the config)"
        )


def default_run_dir(command: str) -> Path:
    """``runs/<command>-<UTC timestamp>`` under the current directory."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command.replace(' ', '-')}-{stamp}"


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return prefix.rstrip(".") if old != new else None


def _as_current(config: BaseModel, old: Any) -> Any:
    """The stored config as this dg reads it (fields added since then take their defaults); as stored if it no
    longer validates (then the raw comparison names what changed)."""
    try:
        return type(config).model_validate(old).model_dump(mode="json")
    except ValueError:
        return old


def _lock(path: Path) -> Any:
    """Hold ``path/.lock`` for this process; refuse, naming the holder, if another process holds it."""
    handle = (path / ".lock").open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(
            f"{path} is in use by another dg process (pid {holder}); wait for it to finish, or choose another --output"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


class RunDir:
    """A run's directory. ``RunDir.start`` creates it or resumes the run already in it."""

    def __init__(self, path: Path, command: str, resumed: bool, lock: Any = None, follower: bool = False) -> None:
        self.path = path
        self.command = command
        self.resumed = resumed
        self._lock = lock
        self.follower = follower
        """A rank > 0 of a multi-process run: it reads the directory and writes nothing of its own."""

    def release(self) -> None:
        """Let other processes open this run directory (``finish`` does it; so does the process's exit)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @classmethod
    def start(cls, path: str | Path, command: str, config: BaseModel) -> RunDir:
        """Create ``path`` for a new run, or resume the run of the same command and config in it.

        A follower rank (:func:`follower_rank`) joins the run rank 0 started there instead (:meth:`follow`).
        """
        path = Path(path)
        if follower_rank():
            rank_barrier()  # rank 0 has made the directory
            return cls.follow(path, command, config)
        config_file = path / "config.yaml"
        resumed = False
        if config_file.exists():
            meta = cls.read_meta(path)
            if meta.get("command") != command:
                raise ConfigError(f"{path} holds a `dg {meta.get('command')}` run; choose another --output")
            old = _as_current(config, yaml.safe_load(config_file.read_text()))
            new = config.model_dump(mode="json")
            difference = _first_difference(old, new)
            if difference is not None:
                raise ConfigError(
                    f"{path} holds a run with a different config (first difference: {difference}); "
                    f"choose another --output, or `dg resume {path}` to continue the run as it was"
                )
            resumed = True
        elif path.exists() and any(entry.name != ".lock" for entry in path.iterdir()):
            raise ConfigError(f"{path} exists and is not a dg run directory; choose another --output")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, command, resumed, _lock(path))
        for sub in ("logs", "checkpoints", "plots"):
            (path / sub).mkdir(exist_ok=True)
        if not resumed:
            _write_atomic(config_file, dump_config(config))
        meta = cls.read_meta(path) if resumed else {"command": command, "started": _now(), "resumes": 0}
        if meta.get("status") == "done":
            run.release()
            rank_barrier()
            return run  # finished before: kept as it is (callers read its metrics)
        if resumed:
            meta["resumes"] = int(meta.get("resumes", 0)) + 1
        meta.update({"status": "running", "updated": _now()})
        run._write_meta(meta)
        rank_barrier()
        return run

    @classmethod
    def follow(cls, path: Path, command: str, config: BaseModel) -> RunDir:
        """Join, on a rank > 0, the run of ``command`` and ``config`` that rank 0 started in ``path``."""
        config_file = path / "config.yaml"
        if not config_file.exists():
            raise ConfigError(
                f"{path}: rank {follower_rank()} found no run started there by rank 0; a dg command's other ranks "
                "are started by Lightning once rank 0 has made its run directory"
            )
        meta = cls.read_meta(path)
        difference = _first_difference(
            _as_current(config, yaml.safe_load(config_file.read_text())), config.model_dump(mode="json")
        )
        if meta.get("command") != command or difference is not None:
            raise ConfigError(f"{path}: rank {follower_rank()} was started with another command or config than rank 0")
        return cls(path, command, resumed=True, follower=True)

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        """``run.json`` of a run directory."""
        file = Path(path) / "run.json"
        if not file.exists():
            raise ConfigError(f"{path} is not a dg run directory (no run.json)")
        data: dict[str, Any] = json.loads(file.read_text())
        return data

    def _write_meta(self, meta: dict[str, Any]) -> None:
        _write_atomic(self.path / "run.json", json.dumps(meta, indent=2))

    def finish(self, status: str = "done") -> None:
        """Mark the run finished (or ``failed``); a follower leaves that to rank 0."""
        if self.follower:
            return
        meta = self.read_meta(self.path)
        meta.update({"status": status, "updated": _now()})
        if status == "done":
            meta["finished"] = _now()
        self._write_meta(meta)
        self.release()

    @property
    def done(self) -> bool:
        """Whether this directory's run already finished."""
        return bool(self.read_meta(self.path).get("status") == "done")

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (atomic; rank 0's only)."""
        file = self.path / "metrics.json"
        if self.follower:
            return file
        _write_atomic(file, json.dumps(metrics, indent=2, default=str))
        return file

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` of a finished run."""
        data: dict[str, Any] = json.loads((self.path / "metrics.json").read_text())
        return data

    def write_summary(self, text: str) -> Path:
        """Write ``summary.md`` (rank 0's only)."""
        file = self.path / "summary.md"
        if self.follower:
            return file
        _write_atomic(file, text.rstrip() + "\n")
        return file

    def loggers(self) -> list[Any]:
        """CSV and TensorBoard loggers writing under ``logs/`` (the CSV file of a resumed run keeps its rows)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        return [
            _resumable_csv_logger(self.path / "logs"),
            TensorBoardLogger(self.path / "logs", name="tensorboard", version=0, default_hp_metric=False),
        ]

    def csv_metrics(self) -> Path:
        """The CSV logger's metrics file."""
        return self.path / "logs" / "csv" / "version_0" / "metrics.csv"


def _resumable_csv_logger(root: Path) -> Any:
    """Lightning's CSV logger, except that a resumed run appends to ``metrics.csv`` instead of deleting it.

    Rows the interrupted process logged after its last checkpoint are logged again by the resumed one: on its
    first write, the file's rows from the first step it logs onwards are dropped (rewritten atomically).
    """
    import csv

    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class Writer(ExperimentWriter):
        def __init__(self, log_dir: str) -> None:
            self._trimmed = False
            super().__init__(log_dir)

        def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
            file = Path(self.metrics_file_path)
            if file.is_file():
                with file.open(newline="") as handle:
                    self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

        def save(self) -> None:
            if not self._trimmed and self.metrics:
                self._trimmed = True
                self._drop_from(min(int(row["step"]) for row in self.metrics))
            super().save()

        def _drop_from(self, step: int) -> None:
            file = Path(self.metrics_file_path)
            if not file.is_file():
                return
            with file.open(newline="") as handle:
                reader = csv.DictReader(handle)
                fields = list(reader.fieldnames or [])
                rows = [row for row in reader if _row_step(row) < step]
            partial = file.with_name(file.name + ".partial")
            with partial.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(partial, file)

    class Logger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> Any:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = Writer(log_dir=self.log_dir)
            return self._experiment

    return Logger(root, name="csv", version=0)


def _row_step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
