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
```

Starting a command on a directory that already holds a run of the same command and config resumes it
(finished stages are kept, training continues from ``checkpoints/last.ckpt``); a different config there is
refused, naming the first key that differs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from dg_apps.config import dump_config
from dg_core import ConfigError

__all__ = ["RunDir", "default_run_dir"]


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


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


class RunDir:
    """A run's directory. ``RunDir.start`` creates it or resumes the run already in it."""

    def __init__(self, path: Path, command: str, resumed: bool) -> None:
        self.path = path
        self.command = command
        self.resumed = resumed

    @classmethod
    def start(cls, path: str | Path, command: str, config: BaseModel) -> RunDir:
        """Create ``path`` for a new run, or resume the run of the same command and config in it."""
        path = Path(path)
        config_file = path / "config.yaml"
        resumed = False
        if config_file.exists():
            meta = cls.read_meta(path)
            if meta.get("command") != command:
                raise ConfigError(f"{path} holds a `dg {meta.get('command')}` run; choose another --output")
            old = yaml.safe_load(config_file.read_text())
            new = config.model_dump(mode="json")
            difference = _first_difference(old, new)
            if difference is not None:
                raise ConfigError(
                    f"{path} holds a run with a different config (first difference: {difference}); "
                    f"choose another --output, or `dg resume {path}` to continue the run as it was"
                )
            resumed = True
        elif path.exists() and any(path.iterdir()):
            raise ConfigError(f"{path} exists and is not a dg run directory; choose another --output")
        path.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "checkpoints", "plots"):
            (path / sub).mkdir(exist_ok=True)
        run = cls(path, command, resumed)
        if not resumed:
            _write_atomic(config_file, dump_config(config))
        meta = cls.read_meta(path) if resumed else {"command": command, "started": _now(), "resumes": 0}
        if meta.get("status") == "done":
            return run  # finished before: kept as it is (callers read its metrics)
        if resumed:
            meta["resumes"] = int(meta.get("resumes", 0)) + 1
        meta.update({"status": "running", "updated": _now()})
        run._write_meta(meta)
        return run

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
        """Mark the run finished (or ``failed``)."""
        meta = self.read_meta(self.path)
        meta.update({"status": status, "updated": _now()})
        if status == "done":
            meta["finished"] = _now()
        self._write_meta(meta)

    @property
    def done(self) -> bool:
        """Whether this directory's run already finished."""
        return bool(self.read_meta(self.path).get("status") == "done")

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (atomic)."""
        file = self.path / "metrics.json"
        _write_atomic(file, json.dumps(metrics, indent=2, default=str))
        return file

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` of a finished run."""
        data: dict[str, Any] = json.loads((self.path / "metrics.json").read_text())
        return data

    def write_summary(self, text: str) -> Path:
        """Write ``summary.md``."""
        file = self.path / "summary.md"
        _write_atomic(file, text.rstrip() + "\n")
        return file

    def loggers(self) -> list[Any]:
        """CSV and TensorBoard loggers writing under ``logs/``."""
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        return [
            CSVLogger(self.path / "logs", name="csv", version=0),
            TensorBoardLogger(self.path / "logs", name="tensorboard", version=0, default_hp_metric=False),
        ]

    def csv_metrics(self) -> Path:
        """The CSV logger's metrics file."""
        return self.path / "logs" / "csv" / "version_0" / "metrics.csv"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
