"""``dg export-cli``: a ``dg train`` config as the LightningCLI config of ``python -m dg_rl fit`` (the same run).

``dg`` composes the packages; ``python -m dg_rl fit`` is dg-rl alone. Both describe a run with the same settings,
and this module maps one onto the other: the task panel becomes a task file (for a synthetic run, each task with
its real initial state), ``policy`` becomes ``data.policy`` (a ``dg_rl.cli.TinyModel`` or
``dg_rl.cli.PretrainedModel``), ``algorithm`` becomes ``data`` (batch shape), ``model`` (``dg_rl.GRPOModule`` /
``dg_rl.PPOModule`` with its loss) and ``trainer.max_steps``; ``synthetic`` becomes the ``synthetic`` env's
options. A test trains from both and finds the same weights.

What only ``dg train`` does is refused with the reason: the curriculum (dg-rl does not import dg-curriculum), a
real-transition budget, the perturbed simulator; so is a resumable replay cut (``dg train`` removes the synthetic
transitions written after its last checkpoint when it resumes; ``python -m dg_rl fit`` does not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dg_apps.config import TrainConfig
from dg_apps.models import read_data
from dg_apps.tasks import task_panel, write_tasks
from dg_core import ConfigError

__all__ = ["LARGE_POLICY_MICRO_BATCH_TOKENS", "export_train_config", "lightning_cli_config"]

LARGE_POLICY_MICRO_BATCH_TOKENS = 1024
"""``algorithm.micro_batch_tokens: null`` for a policy that is not tiny (``dg train`` decides by parameter count
when the model is loaded; a config is written before that, and every non-tiny source dg knows is over 20M)."""


def _refuse(config: TrainConfig) -> None:
    problems = []
    if config.curriculum.enabled:
        problems.append(
            "curriculum.enabled: python -m dg_rl fit draws tasks uniformly (dg-rl does not import dg-curriculum); "
            "set curriculum.enabled=false, or train with dg train"
        )
    if config.real_budget is not None:
        problems.append("real_budget: python -m dg_rl fit has no real-transition budget (dg train counts it)")
    if config.where == "synthetic" and config.synthetic.simulator == "perturbed":
        problems.append("synthetic.simulator: the perturbed simulator is a dg train option only")
    if config.policy.sampler != "transformers":
        problems.append(f"policy.sampler: python -m dg_rl fit samples with transformers, not {config.policy.sampler!r}")
    if config.where == "synthetic" and not config.expmodel:
        problems.append("expmodel: training in the synthetic environment needs a `dg expmodel fit` run directory")
    if problems:
        raise ConfigError("this dg train config has no python -m dg_rl fit equivalent:\n  " + "\n  ".join(problems))


def _policy(config: TrainConfig) -> dict[str, Any]:
    policy = config.policy
    model: dict[str, Any]
    if policy.model == "tiny":
        if not config.data:
            raise ConfigError("policy.model: 'tiny' trains its tokenizer on real trajectories; give data: [files]")
        model = {
            "class_path": "dg_rl.cli.TinyModel",
            "init_args": {
                "data": [str(Path(path).resolve()) for path in config.data],
                "hidden_size": policy.hidden_size,
                "num_layers": policy.num_layers,
                "num_heads": policy.num_heads,
                "vocab_size": policy.vocab_size,
            },
        }
    else:
        local = Path(policy.model)
        source = str(local.resolve()) if local.exists() else policy.model
        if (local / "policy").is_dir():  # a dg train run directory: its policy
            source = str((local / "policy").resolve())
        model = {"class_path": "dg_rl.cli.PretrainedModel", "init_args": {"source": source, "dtype": policy.dtype}}
    return {
        "model": model,
        "mode": policy.mode,
        "temperature": policy.temperature,
        "history_turns": policy.history_turns,
        "max_turn_tokens": policy.max_turn_tokens,
        "max_prompt_tokens": policy.max_prompt_tokens,
        "chat": policy.chat,
        "lora": policy.lora,
    }


def _algorithm(config: TrainConfig) -> dict[str, Any]:
    algo = config.algorithm
    micro_batch_tokens = algo.micro_batch_tokens
    if micro_batch_tokens is None and config.policy.model != "tiny":
        micro_batch_tokens = LARGE_POLICY_MICRO_BATCH_TOKENS
    if algo.name == "grpo":
        return {
            "class_path": "dg_rl.GRPOModule",
            "init_args": {
                "loss": {"class_path": "dg_rl.GRPOLoss", "init_args": {"kl_coef": algo.kl_coef}},
                "learning_rate": algo.learning_rate,
                "micro_batch_tokens": micro_batch_tokens,
            },
        }
    return {
        "class_path": "dg_rl.PPOModule",
        "init_args": {
            "loss": {"class_path": "dg_rl.PPOLoss", "init_args": {"entropy_coef": algo.entropy_coef}},
            "learning_rate": algo.learning_rate,
            "micro_batch_tokens": micro_batch_tokens,
        },
    }


def lightning_cli_config(config: TrainConfig, tasks_file: Path, root_dir: Path) -> dict[str, Any]:
    """The ``python -m dg_rl fit`` config of the run ``config`` describes, reading its tasks from ``tasks_file``
    and writing under ``root_dir`` (a synthetic run's copy of the replay buffer goes to ``root_dir/replay``)."""
    _refuse(config)
    algo = config.algorithm
    env = config.env
    if config.where == "synthetic":
        syn = config.synthetic
        name = "synthetic"
        options: dict[str, Any] = {
            "run": str(Path(str(config.expmodel)).resolve()),
            "replay": str((root_dir / "replay").resolve()),
            "write_back": syn.write_back,
            "env_ids": [env.name],
            "max_steps": syn.max_steps or env.max_steps,
            "batch_size": syn.batch_size,
            "max_new_tokens": syn.max_new_tokens,
            "top_k": syn.top_k,
            "history_window": syn.history_window,
            "irreversible": syn.irreversible,
            "irreversible_penalty": syn.irreversible_penalty,
        }
    else:
        name = env.name
        options = {"max_steps": env.max_steps, **env.options}
    trainer = {
        "max_steps": algo.steps * algo.updates_per_batch,
        "default_root_dir": str(root_dir.resolve()),
        "log_every_n_steps": 1,
        "enable_model_summary": False,
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": algo.checkpoint_every},
            }
        ],
        **config.trainer,
    }
    if trainer.get("strategy") == "fsdp":  # dg's fsdp is FSDP2 with the weights gathered for rollouts, as dg train
        trainer["strategy"] = {"class_path": "dg_rl.FSDP2Strategy"}
    return {
        "seed_everything": config.seed,
        "trainer": trainer,
        "data": {
            "env": name,
            "env_options": options,
            "tasks": str(tasks_file.resolve()),
            "policy": _policy(config),
            "group_size": algo.group_size,
            "tasks_per_step": algo.tasks_per_step,
            "updates_per_batch": algo.updates_per_batch,
            "max_episode_tokens": algo.max_episode_tokens,
            "seed": config.seed,
        },
        "model": _algorithm(config),
    }


def export_train_config(config: TrainConfig, output: Path) -> dict[str, Any]:
    """``dg export-cli``: write ``output/fit.yaml`` (the LightningCLI config) and ``output/tasks.jsonl``
    (the panel; a synthetic run's tasks carry their real initial states); the run writes under ``output/``."""
    from dg_apps.training import _initial_states

    _refuse(config)
    fit = output / "fit.yaml"
    if fit.exists():
        raise ConfigError(f"--output {output}: it already holds a fit.yaml; choose another folder")
    tasks = task_panel(config.env, config.tasks)
    if config.where == "synthetic":
        tasks = _initial_states(tasks, read_data(config.data), config)
    output.mkdir(parents=True, exist_ok=True)
    tasks_file = write_tasks(output / "tasks.jsonl", tasks)
    cli = lightning_cli_config(config, tasks_file, output)
    header = (
        f"# python -m dg_rl fit --config {fit}\n"
        "# Written by `dg export-cli` from a dg train config: the same run as dg train, through LightningCLI.\n"
    )
    fit.write_text(header + yaml.safe_dump(cli, sort_keys=False))
    print(f"dg export-cli: {fit} and {tasks_file} ({len(tasks)} tasks); run: python -m dg_rl fit --config {fit}")
    return cli
