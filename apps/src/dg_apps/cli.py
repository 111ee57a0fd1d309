"""The ``dg`` command.

    dg collect         [--config FILE] [--set KEY=VALUE ...] [--output DIR]
    dg expmodel fit    ...
    dg expmodel audit  ...
    dg train           ...
    dg s2r             ...
    dg eval            ...
    dg tasks           [--config FILE] [--set KEY=VALUE ...] [--output FILE]   a task panel as an editable task file
    dg demo            [--quick] [--output DIR]
    dg export-cli      [--config FILE] [--set KEY=VALUE ...] --output DIR     a dg train config for python -m dg_rl fit
    dg resume DIR      continue (or repeat) the run in DIR with the config it was started with
    dg configs         list the configs shipped with dg (usable by name: --config demo-quick)
    dg envs            list the registered environments

Every command writes one run directory (see ``dg_apps.rundir``). Config errors name the key and what is allowed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dg_apps.config import (
    AuditConfig,
    CollectConfig,
    DemoConfig,
    EvalConfig,
    FitConfig,
    S2RConfig,
    TasksConfig,
    TrainConfig,
    check_machine,
    load_config,
)
from dg_apps.rundir import RUN_DIR_VARIABLE, RunDir, default_run_dir, follower_rank, refuse_external_launcher
from dg_core import ConfigError, DGError

__all__ = ["COMMANDS", "check_checkpoints", "check_output", "config_path", "main", "shipped_configs"]


Runner = Callable[[Any, RunDir, bool], dict[str, Any]]


def _lazy(module: str, function: str) -> Runner:
    """``module.function(config, run, progress=...)``, imported on first use (torch and friends load slowly)."""

    def run(config: Any, run_dir: RunDir, progress: bool) -> dict[str, Any]:
        runner = getattr(importlib.import_module(module), function)
        result: dict[str, Any] = runner(config, run_dir, progress=progress)
        return result

    return run


COMMANDS: dict[str, tuple[type[BaseModel], Runner, str]] = {
    "collect": (
        CollectConfig,
        _lazy("dg_apps.commands", "run_collect"),
        "offline trajectories from a real env (expert / random / noisy / checkpoint)",
    ),
    "expmodel fit": (
        FitConfig,
        _lazy("dg_apps.commands", "run_fit"),
        "seed the replay buffer, annotate, fine-tune the experience model",
    ),
    "expmodel audit": (
        AuditConfig,
        _lazy("dg_apps.commands", "run_audit"),
        "fidelity report: eps_R, eps_P, hallucination, open loop, ablations",
    ),
    "train": (
        TrainConfig,
        _lazy("dg_apps.training", "run_train"),
        "GRPO / PPO in the synthetic env (or the real one: where=real)",
    ),
    "s2r": (
        S2RConfig,
        _lazy("dg_apps.commands", "run_s2r"),
        "synthetic phase, then a real phase with a budget of real transitions",
    ),
    "eval": (
        EvalConfig,
        _lazy("dg_apps.evaluation", "run_eval"),
        "a checkpoint or baseline on a panel of real tasks, several seeds",
    ),
    "demo": (
        DemoConfig,
        _lazy("dg_apps.demo", "run_demo"),
        "the DreamGym loop on TextWorld end to end (tiny models, CPU)",
    ),
}


def _configs_root() -> Path:
    packaged = resources.files("dg_apps") / "configs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "configs"  # a source checkout


def shipped_configs() -> dict[str, Path]:
    """Configs shipped with dg, by name (``demo``, ``demo-quick``, ``gpu/train-synthetic``...)."""
    root = _configs_root()
    return {str(path.relative_to(root).with_suffix("")): path for path in sorted(root.rglob("*.yaml"))}


def config_path(value: str) -> Path:
    """A config file path, or the path of a shipped config named ``value``."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if value in shipped:
        return shipped[value]
    raise ConfigError(f"--config {value!r}: no such file, and no shipped config of that name ({', '.join(shipped)})")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file, or the name of a shipped config (see `dg configs`)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override one key"
    )
    parser.add_argument("--output", type=Path, help="run directory (default runs/<command>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dg``."""
    parser = argparse.ArgumentParser(
        prog="dg", description="dg (DreamGym): RL for LLM agents on synthesized experience."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("collect", "train", "s2r", "eval"):
        _add_run_options(sub.add_parser(name, help=COMMANDS[name][2], description=COMMANDS[name][2]))
    expmodel = sub.add_parser("expmodel", help="experience model: fit | audit")
    expmodel_sub = expmodel.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("fit", "audit"):
        help_text = COMMANDS[f"expmodel {action}"][2]
        _add_run_options(expmodel_sub.add_parser(action, help=help_text, description=help_text))
    demo = sub.add_parser("demo", help=COMMANDS["demo"][2], description=COMMANDS["demo"][2])
    _add_run_options(demo)
    demo.add_argument("--quick", action="store_true", help="a small, fast variant (a couple of minutes)")
    demo.add_argument(
        "--model",
        help="the policy's model: a pretrained short name (smollm2), a .gguf file or a Hugging Face directory, "
        "fine-tuned with LoRA; without --config or --quick the shipped demo-pretrained config (about 40 minutes)",
    )
    tasks_help = "write a task panel (a split, a task file, a folder of games) as a task file (JSONL) to read and edit"
    tasks = sub.add_parser("tasks", help=tasks_help, description=tasks_help)
    tasks.add_argument("--config", help="YAML config file, or the name of a shipped config (see `dg configs`)")
    tasks.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tasks.add_argument("--output", type=Path, default=Path("tasks.jsonl"), help="the task file (default tasks.jsonl)")
    export_help = "a dg train config as the LightningCLI config of `python -m dg_rl fit` (the same run)"
    export = sub.add_parser("export-cli", help=export_help, description=export_help)
    export.add_argument("--config", help="a dg train config (YAML file or shipped name)")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    export.add_argument("--output", type=Path, required=True, help="folder for fit.yaml, tasks.jsonl and the run")
    resume = sub.add_parser("resume", help="continue the run in a directory with its own config")
    resume.add_argument("directory", type=Path)
    resume.add_argument("--no-progress", action="store_true")
    sub.add_parser("configs", help="list the shipped configs")
    sub.add_parser("envs", help="list the registered environments")
    return parser


def check_output(output: Path, option: str = "--output") -> None:
    """Refuse a run directory that is a file, or lies under one, naming it."""
    for path in (output, *output.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == output else f"lies under {path}, which is a file"
                raise ConfigError(f"{option} {output}: {what}, not a directory; give a new or a run directory")
            return


def check_checkpoints(run: Path) -> None:
    """Refuse to resume a run whose Lightning checkpoints (``*.ckpt`` anywhere under ``run``) cannot be read.

    A checkpoint is a zip archive (``torch.save``); one cut short by a killed save or a full disk has lost its
    central directory, which is read here without loading any weight.
    """
    for checkpoint in sorted(run.rglob("*.ckpt")):
        try:
            with zipfile.ZipFile(checkpoint) as archive:
                names = archive.namelist()
            problem = None if any(name.endswith("data.pkl") for name in names) else "not a torch checkpoint"
        except (zipfile.BadZipFile, OSError) as error:
            problem = f"truncated or corrupt: {error}"
        if problem is not None:
            aside = checkpoint.with_name(checkpoint.name + ".bad")
            raise ConfigError(
                f"{checkpoint}: the checkpoint cannot be read ({problem}), so the run cannot continue from it. "
                f"Move it aside (mv {checkpoint} {aside}) and run the command again: that stage restarts from its "
                f"beginning, keeping the run's other files; or start a new run with another --output"
            )


def _execute(command: str, config: BaseModel, output: Path, progress: bool) -> dict[str, Any]:
    _, runner, _ = COMMANDS[command]
    refuse_external_launcher()
    check_machine(config)  # a GPU trainer on a machine without one is refused before the run directory exists
    if follower_rank():  # started by Lightning from rank 0's command line: the run directory is rank 0's
        output = Path(os.environ.get(RUN_DIR_VARIABLE) or output)
        return _follow(command, config, output, runner, progress)
    check_output(output)
    run = RunDir.start(output, command, config)
    os.environ[RUN_DIR_VARIABLE] = str(output)  # for the ranks training starts, if any (they start in this cwd)
    if run.done:
        print(f"dg {command}: {output} already holds this finished run; its summary:\n")
        print((output / "summary.md").read_text())
        return run.metrics()
    print(f"dg {command}: run directory {output}" + (" (resuming)" if run.resumed else ""), flush=True)
    try:
        if run.resumed:
            check_checkpoints(output)
        metrics = runner(config, run, progress)
    except BaseException:
        run.finish("failed")
        raise
    run.finish()
    print()
    print((output / "summary.md").read_text())
    return metrics


def _follow(command: str, config: BaseModel, output: Path, runner: Any, progress: bool) -> dict[str, Any]:
    """A rank > 0 of a multi-process run: the same command, in rank 0's run directory, writing nothing of its own
    (rank 0 reports the run)."""
    run = RunDir.start(output, command, config)
    if run.done:
        return {}
    result: dict[str, Any] = runner(config, run, False)
    return result


def run_command(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Parse ``argv`` and run the command; raises dg errors (``main`` turns them into messages)."""
    args = build_parser().parse_args(argv)
    progress = not getattr(args, "no_progress", False)
    if args.command == "configs":
        for name, path in shipped_configs().items():
            print(f"{name:28} {path}")
        return None
    if args.command == "envs":
        from dg_core import list_envs

        print("\n".join(list_envs()))
        return None
    if args.command == "tasks":
        return write_task_file(
            load_config(TasksConfig, config_path(args.config) if args.config else None, list(args.overrides)),
            args.output,
        )
    if args.command == "export-cli":
        from dg_apps.export import export_train_config

        check_output(args.output)
        train = load_config(TrainConfig, config_path(args.config) if args.config else None, list(args.overrides))
        return export_train_config(train, args.output)
    if args.command == "resume":
        check_output(args.directory, "dg resume")
        meta = RunDir.read_meta(args.directory)
        command = str(meta["command"])
        if command not in COMMANDS:
            raise ConfigError(f"{args.directory}: unknown command {command!r} in run.json")
        model = COMMANDS[command][0]
        config = load_config(model, args.directory / "config.yaml")
        return _execute(command, config, args.directory, progress)
    command = f"expmodel {args.action}" if args.command == "expmodel" else args.command
    model = COMMANDS[command][0]
    source = args.config
    overrides = list(args.overrides)
    if command == "demo":
        source, overrides = demo_source(source, args.quick, args.model, overrides)
    config = load_config(model, config_path(source) if source else None, overrides)
    output = args.output
    if output is None:
        output = demo_output(args.quick, args.model) if command == "demo" else default_run_dir(command)
    return _execute(command, config, output, progress)


def write_task_file(config: TasksConfig, output: Path) -> dict[str, Any]:
    """``dg tasks``: the panel ``config`` names, written to ``output`` (never over an existing file)."""
    from dg_apps.tasks import read_game_folder, task_panel, write_tasks

    if output.exists():
        raise ConfigError(f"--output {output} exists; choose another file (dg tasks never overwrites one)")
    skipped: dict[str, str] = {}
    if Path(config.tasks).is_dir():
        panel, skipped = read_game_folder(config.env, config.tasks)
    else:
        panel = task_panel(config.env, config.tasks)
    write_tasks(output, panel)
    print(
        f"dg tasks: {len(panel)} {config.env.name} tasks from {config.tasks} written to {output}"
        + (f" ({len(skipped)} skipped, named above)" if skipped else "")
        + f"; use it with --set tasks={output}"
    )
    return {"tasks": len(panel), "skipped": skipped, "output": str(output)}


def demo_source(config: str | None, quick: bool, model: str | None, overrides: list[str]) -> tuple[str, list[str]]:
    """The config of ``dg demo`` and its overrides: ``--model`` picks the pretrained demo's config (unless a config
    or ``--quick`` is given) and sets the policy's model, fine-tuned with LoRA, before the user's ``--set``."""
    if config is None:
        config = "demo-quick" if quick else ("demo-pretrained" if model else "demo")
    if model:
        overrides = [f"policy.model={model}", "policy.lora=true", *overrides]
    return config, overrides


def demo_output(quick: bool, model: str | None) -> Path:
    """Where ``dg demo`` writes by default: ``runs/demo``, ``runs/demo-quick``, ``runs/demo-<model>``..."""
    name = "demo-quick" if quick else "demo"
    if model:
        name += "-" + (Path(model).stem if Path(model).suffix == ".gguf" else Path(model).name)
    return Path("runs") / name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dg``: exit 0 on success, 2 with a one-paragraph message on a dg error."""
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # per-file load/save bars: noise
    try:
        run_command(argv)
    except (DGError, ConfigError) as error:
        print(f"dg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dg: interrupted; run the same command again (or `dg resume DIR`) to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
