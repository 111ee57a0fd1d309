"""``python -m dg_rl fit``: LightningCLI over the rollout data module and the GRPO / PPO modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dg_rl.cli import main, read_task_file

PACKAGE = Path(__file__).resolve().parents[1]
CONFIGS = PACKAGE / "configs"
TASKS = CONFIGS / "scripted-tasks.jsonl"


@pytest.fixture(autouse=True)
def _command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main(args)`` runs as ``python -m dg_rl args`` would (LightningCLI warns when pytest's own arguments are
    in ``sys.argv`` beside them)."""
    monkeypatch.setattr(sys, "argv", ["dg_rl"])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """In-process runs use one intra-op thread, as the ``OMP_NUM_THREADS=1`` subprocesses beside them do: tests here
    compare an in-process run with a subprocess run bit for bit, and a float sum split over two threads rounds
    differently (on a 2-core CI machine torch otherwise takes 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(root: Path, **changes: Any) -> dict[str, Any]:
    """Two GRPO steps of a very small policy on the scripted corridor."""
    config: dict[str, Any] = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "default_root_dir": str(root),
            "enable_progress_bar": False,
        },
        "data": {
            "env": "scripted",
            "env_options": {"max_steps": 5},
            "tasks": str(TASKS),
            "split": "train",
            "policy": {
                "model": {
                    "class_path": "dg_rl.cli.TinyModel",
                    "init_args": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 400},
                },
            },
            "group_size": 2,
            "tasks_per_step": 2,
            "updates_per_batch": 1,
        },
        "model": {
            "class_path": "dg_rl.GRPOModule",
            "init_args": {
                "loss": {"class_path": "dg_rl.GRPOLoss", "init_args": {"kl_coef": 0.01}},
                "learning_rate": 0.01,
            },
        },
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_dir(root: Path) -> Path:
    versions = sorted((root / "lightning_logs").glob("version_*"))
    assert len(versions) == 1, versions
    return versions[0]


def printed(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_fit_as_a_module_trains_and_saves_the_config_beside_the_checkpoints(tmp_path: Path) -> None:
    config = write(tmp_path / "fit.yaml", tiny_config(tmp_path / "run"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dg_rl", "fit", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = run_dir(tmp_path / "run")
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [path.name for path in checkpoints] == ["epoch=0-step=2.ckpt"]
    saved = yaml.safe_load((run / "config.yaml").read_text())  # beside checkpoints/
    assert saved["data"]["tasks"] == str(TASKS)
    assert saved["data"]["policy"]["model"]["init_args"]["hidden_size"] == 32
    assert saved["model"]["init_args"]["loss"]["init_args"]["kl_coef"] == 0.01
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    # both batches were collected and trained on: 2 tasks x 2 episodes each
    metrics = (run / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    episodes = [float(row.split(",")[header.index("rollout/episodes")]) for row in metrics[1:]]
    assert episodes == [4.0, 4.0]
    # the trained policy, a Hugging Face directory, holds the checkpoint's weights
    weights = load_file(run / "policy" / "model.safetensors")
    trained = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    assert weights.keys() <= trained.keys()
    assert all(torch.equal(weights[name], trained[name]) for name in weights)

    # The saved config reproduces the run: same seed, same episodes, the same weights bit for bit.
    again = tmp_path / "again"
    rerun = yaml.safe_load((run / "config.yaml").read_text())
    rerun["trainer"]["default_root_dir"] = str(again)
    main(["fit", "--config", str(write(tmp_path / "rerun.yaml", rerun))])
    repeated = load_file(run_dir(again) / "policy" / "model.safetensors")
    assert all(torch.equal(weights[name], repeated[name]) for name in weights)

    # The saved policy/ is a model source: training continues from it (dg_models loads it; LoRA on top).
    source = {"class_path": "dg_rl.cli.PretrainedModel", "init_args": {"source": str(run / "policy")}}
    more = tiny_config(tmp_path / "more", **{"data.policy": {"model": source, "lora": True}, "trainer.max_steps": 1})
    main(["fit", "--config", str(write(tmp_path / "more.yaml", more))])
    continued = load_file(run_dir(tmp_path / "more") / "policy" / "model.safetensors")  # adapters merged
    assert continued.keys() == weights.keys()
    assert continued["model.embed_tokens.weight"].shape == weights["model.embed_tokens.weight"].shape


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "fit.yaml", tiny_config(tmp_path / "run"))
    first = printed(capsys, ["fit", "--config", str(config), "--print_config"])
    resolved = yaml.safe_load(first)
    assert resolved["model"]["class_path"] == "dg_rl.GRPOModule"
    assert resolved["data"]["policy"]["model"]["class_path"] == "dg_rl.cli.TinyModel"
    assert resolved["data"]["group_size"] == 2
    assert "max_batches" not in resolved["data"]  # linked from trainer.max_steps, not a setting
    assert "policy" not in resolved["model"]["init_args"]  # the data module's policy, linked at instantiation
    second = printed(capsys, ["fit", "--config", str(write(tmp_path / "printed.yaml", resolved)), "--print_config"])
    assert second == first


def test_ppo_and_string_sources_by_class_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    changes = {
        "model": {"class_path": "dg_rl.PPOModule", "init_args": {"gamma": 0.9, "learning_rate": 0.001}},
        "data.policy": {"model": "tiny", "mode": "generate", "max_turn_tokens": 4},
    }
    config = write(tmp_path / "ppo.yaml", tiny_config(tmp_path / "run", **changes))
    resolved = yaml.safe_load(printed(capsys, ["fit", "--config", str(config), "--print_config"]))
    assert resolved["model"]["class_path"] == "dg_rl.PPOModule"
    assert resolved["model"]["init_args"]["gamma"] == 0.9
    assert resolved["data"]["policy"]["model"] == "tiny"
    own_folder = tmp_path / "ckpts"  # a ModelCheckpoint with its own folder gets the config too
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(own_folder)}}
    main(["fit", "--config", str(config), "--trainer.max_steps=1", f"--trainer.callbacks=[{json.dumps(callback)}]"])
    state = torch.load(next(own_folder.glob("*.ckpt")), weights_only=True)
    assert state["global_step"] == 1
    beside = yaml.safe_load((own_folder / "config.yaml").read_text())
    assert beside == yaml.safe_load((run_dir(tmp_path / "run") / "config.yaml").read_text())
    assert beside["model"]["class_path"] == "dg_rl.PPOModule"
    assert "value_head.weight" in state["state_dict"]  # PPO's value head was trained with the policy


def test_the_shipped_scripted_config_trains_the_demo_sized_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", str(CONFIGS / "fit-scripted.yaml"), f"--data.tasks={TASKS}"]
    resolved = yaml.safe_load(printed(capsys, [*args, "--print_config"]))
    assert resolved["data"]["policy"]["model"]["init_args"]["hidden_size"] == 64  # apps/configs/demo.yaml's policy
    assert resolved["trainer"]["max_steps"] == 24
    # One rollout batch of it (8 tasks x 4 episodes, two updates), as shipped otherwise.
    main([*args, f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    run = run_dir(tmp_path)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert state["state_dict"]["model.model.embed_tokens.weight"].shape[1] == 64
    # Their envs live in other packages (dg-envs, dg-expmodel): validated here, not run.
    for name, env in (("fit-textworld.yaml", "textworld"), ("fit-synthetic.yaml", "synthetic")):
        other = yaml.safe_load(printed(capsys, ["fit", "--config", str(CONFIGS / name), "--print_config"]))
        assert other["data"]["env"] == env and other["model"]["class_path"] == "dg_rl.GRPOModule"
        assert other["data"]["policy"]["model"]["init_args"]["hidden_size"] == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data.group_sise": 2}, "group_sise"),
        ({"data.env": "no-such-env"}, "unknown environment 'no-such-env'"),
        ({"data.tasks": "/nonexistent/tasks.jsonl"}, "task file /nonexistent/tasks.jsonl not found"),
        ({"data.split": "validation"}, "has no 'validation' tasks (its splits: test, train)"),
        ({"data.env_options": {"max_stepz": 3}}, "does not take 'max_stepz'"),
        ({"model.init_args.learning_rat": 0.1}, "learning_rat"),
    ],
)
def test_bad_configs_fail_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    config = write(tmp_path / "bad.yaml", tiny_config(tmp_path / "run", **change))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_task_file_errors_name_the_line(tmp_path: Path) -> None:
    lines = TASKS.read_text().splitlines()
    broken = tmp_path / "tasks.jsonl"
    broken.write_text(lines[0] + "\n" + '{"id": "x"}\n')
    with pytest.raises(Exception, match=r"tasks.jsonl:2: field env_id"):
        read_task_file(broken)
    assert [task.id for task in read_task_file(TASKS, split="test")] == ["corridor-8", "corridor-9"]


def test_a_run_resumed_from_its_checkpoint_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    checkpoint_every_step = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1},
        }
    ]
    config = write(
        tmp_path / "fit.yaml",
        tiny_config(tmp_path / "full", **{"trainer.max_steps": 3, "trainer.callbacks": checkpoint_every_step}),
    )
    main(["fit", "--config", str(config)])
    part = tmp_path / "part"
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={part}", "--trainer.max_steps=1"])
    last = part / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.warns(UserWarning, match="dirpath has changed"):  # Lightning: the new version has new checkpoints
        main(["fit", "--config", str(config), f"--trainer.default_root_dir={part}", f"--ckpt_path={last}"])
    resumed = part / "lightning_logs" / "version_1"  # a new version folder: its own config.yaml and checkpoints
    assert yaml.safe_load((resumed / "config.yaml").read_text())["ckpt_path"] == str(last)
    uninterrupted = load_file(run_dir(tmp_path / "full") / "policy" / "model.safetensors")
    continued = load_file(resumed / "policy" / "model.safetensors")
    assert all(torch.equal(uninterrupted[name], continued[name]) for name in uninterrupted)


@pytest.mark.slow
def test_fit_under_ddp_with_two_processes(tmp_path: Path) -> None:
    """Lightning launches the second rank by running the same command line again; the config is written and the
    policy saved by rank 0 only, without a collective call that rank 1 would not join (that would hang)."""
    config = write(tmp_path / "fit.yaml", tiny_config(tmp_path / "run"))
    port = str(29_500 + (os.getpid() * 13) % 1000)
    result = subprocess.run(
        [sys.executable, "-m", "dg_rl", "fit", "--config", str(config), "--trainer.strategy=ddp",
         "--trainer.devices=2"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port, "PYTHONWARNINGS": "ignore"},
        timeout=170,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stderr + result.stdout
    run = run_dir(tmp_path / "run")
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text()) == yaml.safe_load(
        (run / "checkpoints" / "config.yaml").read_text()
    )
    weights = load_file(run / "policy" / "model.safetensors")
    trained = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(weights[name], trained[name]) for name in weights)


@pytest.mark.slow
def test_fit_under_fsdp2_saves_the_gathered_policy(tmp_path: Path) -> None:
    """``trainer.strategy: dg_rl.FSDP2Strategy`` (one CPU process): the policy saved at the end is gathered from the
    shards and equals, weight for weight, the policy of the same run without sharding."""
    config = write(tmp_path / "fit.yaml", tiny_config(tmp_path / "plain"))
    main(["fit", "--config", str(config)])
    strategy = json.dumps({"class_path": "dg_rl.FSDP2Strategy"})
    result = subprocess.run(
        [sys.executable, "-m", "dg_rl", "fit", "--config", str(config), f"--trainer.strategy={strategy}",
         f"--trainer.default_root_dir={tmp_path / 'fsdp'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29_500 + (os.getpid() * 17) % 1000)},
        timeout=170,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    plain = load_file(run_dir(tmp_path / "plain") / "policy" / "model.safetensors")
    sharded = load_file(run_dir(tmp_path / "fsdp") / "policy" / "model.safetensors")
    assert sharded.keys() == plain.keys()
    assert all(torch.equal(plain[name], sharded[name]) for name in plain)
