"""The strategies of the shipped configs: each one this machine can run is run (tiny sizes, the strategy and its
settings kept, on the CPU); what the machine lacks, and what dg does not support, is refused before anything runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dg_apps.cli import COMMANDS, main, shipped_configs
from dg_apps.config import (
    FIT_STRATEGIES,
    POLICY_STRATEGIES,
    DemoConfig,
    FitConfig,
    S2RConfig,
    TrainConfig,
    check_machine,
    load_config,
)
from dg_core import ConfigError
from tests.conftest import SCRIPTED_ENV, TINY_EXPMODEL, TINY_POLICY
from tests.test_config import _command_of

NO_CUDA = not torch.cuda.is_available()


def _trainer_of(config: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(config, S2RConfig):
        return "train.trainer", config.train.trainer
    return "trainer", config.trainer


def _shipped_trainers() -> dict[str, tuple[str, Any, str, dict[str, Any]]]:
    """Every shipped config with a Trainer section: name -> (command, config, key, trainer options)."""
    found = {}
    for name, path in shipped_configs().items():
        command = _command_of(name)
        config = load_config(COMMANDS[command][0], path)
        if isinstance(config, TrainConfig | S2RConfig | FitConfig | DemoConfig):
            key, trainer = _trainer_of(config)
            found[name] = (command, config, key, trainer)
    return found


def test_shipped_configs_name_only_strategies_dg_supports() -> None:
    shipped = _shipped_trainers()
    assert {"gpu/train-synthetic", "gpu/s2r", "gpu/expmodel-fit"} <= set(shipped)
    for name, (command, _, _, trainer) in shipped.items():
        allowed = POLICY_STRATEGIES if command in ("train", "s2r") else FIT_STRATEGIES
        assert trainer.get("strategy", "auto") in allowed, name
    assert shipped["gpu/train-synthetic"][3]["strategy"] == "fsdp"


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: the GPU configs are not refused here")
def test_gpu_configs_are_refused_where_there_is_no_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused = 0
    for name, (_, config, key, trainer) in _shipped_trainers().items():
        if trainer.get("accelerator") not in ("gpu", "cuda"):
            check_machine(config)  # the CPU configs run here
            continue
        with pytest.raises(ConfigError) as error:
            check_machine(config)
        message = str(error.value)
        assert message.startswith(f"{key}.accelerator: 'gpu', but this machine has no CUDA device"), name
        assert f"set {key}.accelerator=cpu" in message
        refused += 1
    assert refused == 3
    # Through the CLI: one `dg: error:` line, exit 2, and no run directory left behind.
    out = tmp_path / "run"
    assert main(["train", "--config", "gpu/train-synthetic", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dg: error: trainer.accelerator: 'gpu', but this machine has no CUDA device")
    assert not out.exists()


def test_unsupported_strategies_and_missing_hardware_are_refused_with_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.strategy: 'deepspeed' is not supported by dg train: .*use one "
                       r"of auto, ddp, fsdp"):  # fmt: skip
        load_config(TrainConfig, overrides=["trainer.strategy=deepspeed"])
    with pytest.raises(ConfigError, match=r"train\.trainer\.strategy: 'fsdp_cpu_offload' is not supported by dg s2r"):
        load_config(S2RConfig, overrides=["train.trainer.strategy=fsdp_cpu_offload"])
    with pytest.raises(ConfigError, match=r"trainer\.strategy: 'fsdp' is not supported by dg expmodel fit: the "
                       r"experience model's fine-tuning is not sharded; use ddp"):  # fmt: skip
        load_config(FitConfig, overrides=["trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match=r"trainer\.strategy: 'fsdp' is not supported by dg demo"):
        load_config(DemoConfig, overrides=["trainer.strategy=fsdp"])
    with pytest.raises(ConfigError, match=r"trainer\.accelerator: 'tpu' is not supported by dg; use one of auto, cpu"):
        load_config(TrainConfig, overrides=["trainer.accelerator=tpu"])
    cores = os.cpu_count() or 1
    too_many = load_config(TrainConfig, overrides=["trainer.strategy=ddp", f"trainer.devices={cores + 1}"])
    with pytest.raises(ConfigError, match=rf"trainer\.devices: {cores + 1} CPU processes asked for, but this machine "
                       rf"has {cores} cores; set trainer\.devices to at most {cores}"):  # fmt: skip
        check_machine(too_many)
    with pytest.raises(ConfigError, match=r"trainer\.devices: expected a number of devices"):
        check_machine(load_config(TrainConfig, overrides=["trainer.devices=many"]))
    if NO_CUDA:
        asked = load_config(TrainConfig, overrides=["trainer.accelerator=cuda", "trainer.devices=[0, 1]"])
        with pytest.raises(ConfigError, match=r"trainer\.accelerator: 'cuda', but this machine has no CUDA device"):
            check_machine(asked)
    else:
        gpus = torch.cuda.device_count()
        asked = load_config(TrainConfig, overrides=["trainer.accelerator=gpu", f"trainer.devices={gpus + 1}"])
        with pytest.raises(ConfigError, match=rf"trainer\.devices: {gpus + 1} GPUs asked for, but this machine has"):
            check_machine(asked)
    for fine in (["trainer.strategy=fsdp", "trainer.devices=1"], ["trainer.strategy=ddp", "trainer.devices=auto"]):
        check_machine(load_config(TrainConfig, overrides=fine))


def _dg(args: list[str], port: int, output: Path | None = None) -> dict[str, Any]:
    """Run ``dg`` in a process of its own (a distributed strategy's process group must not outlive the command)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dg_apps.cli", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output = output or Path(args[args.index("--output") + 1])
    metrics: dict[str, Any] = json.loads((output / "metrics.json").read_text())
    return metrics


PROCESSES = min(2, os.cpu_count() or 1)
"""CPU processes a multi-process run gets here: two where the machine has the cores (CI's has two)."""


def _cpu_trainer(key: str, trainer: dict[str, Any]) -> list[str]:
    """The shipped trainer with every setting kept but the machine's: CPU, :data:`PROCESSES` processes (gloo)."""
    kept = [f"{key}.{name}={value}" for name, value in trainer.items() if name not in ("accelerator", "devices")]
    machine = [f"{key}.accelerator=cpu", f"{key}.devices={PROCESSES}"]
    return [arg for setting in [*kept, *machine] for arg in ("--set", setting)]


def _finished(run: Path) -> None:
    """Rank 0 finished the run and released it; no rank left a partial file or a private buffer behind."""
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert not list(run.rglob("*.partial")) and not (run / "replay.partial").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_shipped_strategy_runs_here_at_tiny_size(workspace: Path, expert_data: Path) -> None:
    """Each shipped strategy with its settings, on the CPU in two processes (Lightning starts rank 1, which runs the
    same dg command in rank 0's run directory): trained, saved whole, counted over both ranks, and resumable."""
    runs: dict[tuple[str, str], tuple[Any, str, dict[str, Any]]] = {}
    for command, config, key, trainer in _shipped_trainers().values():
        strategy = trainer.get("strategy", "auto")
        if strategy == "auto" or command not in ("train", "s2r", "expmodel fit"):
            continue  # one process: what every other command test runs
        kind = "policy" if command in ("train", "s2r") else command
        runs.setdefault((kind, strategy), (config, key, trainer))
    assert set(runs) == {("policy", "fsdp"), ("policy", "ddp"), ("expmodel fit", "ddp")}
    port = 32_000 + (os.getpid() % 500) * 8
    for index, ((kind, strategy), (config, key, trainer)) in enumerate(sorted(runs.items())):
        out = workspace / f"shipped-{kind.replace(' ', '-')}-{strategy}"
        if kind == "expmodel fit":
            fit = _dg(
                ["expmodel", "fit", *TINY_EXPMODEL, *_cpu_trainer(key, trainer),
                 "--set", f"data=[{expert_data}]", "--output", str(out)],
                port + index,
            )  # fmt: skip
            assert fit["examples"] > 0 and (out / "model").is_dir() and (out / "expmodel.json").is_file()
            _finished(out)
            continue
        train = config.train if isinstance(config, S2RConfig) else config
        # Choose mode and 16 episodes a batch: some succeed (a tiny policy that generates never does, every
        # advantage would be 0 and no weight would move).
        metrics = _dg(
            [
                "train", *SCRIPTED_ENV, *TINY_POLICY, *_cpu_trainer("trainer", trainer),
                "--set", "where=real", "--set", f"data=[{expert_data}]", "--set", "curriculum.enabled=false",
                "--set", f"policy.lora={train.policy.lora}", "--set", "policy.mode=choose",
                "--set", "policy.max_turn_tokens=6", "--set", f"algorithm.name={train.algorithm.name}",
                "--set", "algorithm.steps=2", "--set", "algorithm.tasks_per_step=4", "--set", "algorithm.group_size=4",
                "--set", "algorithm.updates_per_batch=1", "--set", "algorithm.learning_rate=0.01",
                "--output", str(out),
            ],
            port + index,
        )  # fmt: skip
        assert metrics["optimizer_steps"] == 2 and metrics["rollout_batches"] == 2, strategy
        assert metrics["episodes"] == PROCESSES * 2 * 4 * 4  # every rank plays its groups; rank 0 counts them all
        _finished(out)
        initial = load_file(str(out / "policy-initial" / "model.safetensors"))
        trained = load_file(str(out / "policy" / "model.safetensors"))
        assert initial.keys() == trained.keys()  # saved whole (LoRA merged, FSDP's shards gathered)
        assert any(not torch.equal(initial[name], trained[name]) for name in initial), f"{strategy}: nothing trained"
        # A run stopped after its last checkpoint resumes under the same strategy (LoRA adapters put back on the
        # saved initial policy, FSDP's checkpoint loaded into the sharded model) and saves the same policy.
        resumed = out.with_name(out.name + "-resumed")
        shutil.copytree(out, resumed)
        shutil.rmtree(resumed / "policy")
        meta = json.loads((resumed / "run.json").read_text())
        (resumed / "run.json").write_text(json.dumps({**meta, "status": "running"}))
        assert _dg(["resume", str(resumed)], port + 4 + index, resumed)["optimizer_steps"] == 2
        again = load_file(str(resumed / "policy" / "model.safetensors"))
        assert all(torch.equal(again[name], trained[name]) for name in trained), strategy


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_s2r_runs_its_two_phases_in_two_processes(workspace: Path, expert_data: Path, nearest_run: Path) -> None:
    """``dg s2r`` under DDP: the ranks Lightning starts for the synthetic phase live on into the real phase and join
    the directory rank 0 makes for it; each rank writes its synthetic transitions back into a buffer of its own, and
    rank 0's is the one kept; the real budget is spent once over both ranks."""
    out = workspace / "s2r-ddp"
    train = [arg.replace("env.", "train.env.", 1) for arg in SCRIPTED_ENV]
    policy = [arg.replace("policy.", "train.policy.", 1) for arg in TINY_POLICY]
    metrics = _dg(
        [
            "s2r", *train, *policy, *_cpu_trainer("train.trainer", {"strategy": "ddp"}),
            "--set", f"train.expmodel={nearest_run}", "--set", f"train.data=[{expert_data}]",
            "--set", "train.policy.mode=choose", "--set", "train.policy.max_turn_tokens=6",
            "--set", "train.algorithm.steps=2", "--set", "train.algorithm.tasks_per_step=4",
            "--set", "train.algorithm.group_size=4", "--set", "train.algorithm.updates_per_batch=1",
            "--set", "real_steps=3", "--set", "real_budget=30", "--output", str(out),
        ],
        33_000 + (os.getpid() % 500) * 2,
    )  # fmt: skip
    _finished(out)
    _finished(out / "synthetic")
    _finished(out / "real")
    synthetic = json.loads((out / "synthetic" / "metrics.json").read_text())
    assert synthetic["episodes"] == PROCESSES * 2 * 4 * 4 and synthetic["real_transitions"] == 0
    # rank 0's buffer: the real seed transitions plus what rank 0 wrote back (rank 1's copy is gone with it)
    by_source = synthetic["replay"]["by_source"]
    assert (
        by_source.get("synthetic", 0) + synthetic["replay"]["placeholders_withheld"]
        <= synthetic["synthetic_transitions"]
    )
    assert metrics["synthetic"]["optimizer_steps"] == 2
    # the real phase stops once the ranks together used the budget: one batch of 2 x 16 episodes (each at least a
    # step long) is enough for two processes
    real = metrics["real"]
    assert real["real_transitions"] >= 30 or real["optimizer_steps"] == 3
    if PROCESSES == 2:
        assert real["optimizer_steps"] == 1
    assert (out / "real" / "policy" / "model.safetensors").is_file()


def test_ranks_and_launchers_dg_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dg_apps.rundir import follower_rank

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert follower_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 0 after Lightning started the others
    monkeypatch.setenv("NODE_RANK", "0")
    assert follower_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning started
    assert follower_rank() == 1
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 of the second node
    assert follower_rank() == 1
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("NODE_RANK")
    # A follower whose rank 0 made no run directory is refused, naming it.
    monkeypatch.setenv("LOCAL_RANK", "1")
    from dg_apps.rundir import RunDir

    with pytest.raises(ConfigError, match=r"rank 1 found no run started there by rank 0"):
        RunDir.start(tmp_path / "nothing", "train", load_config(TrainConfig))
    monkeypatch.delenv("LOCAL_RANK")
    # dg under torchrun: one dg: error line, nothing made.
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    out = tmp_path / "run"
    assert main(["train", "--output", str(out)]) == 2
    assert "dg: error: dg runs under torchrun are not supported" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    # dg demo runs in one process.
    if (os.cpu_count() or 1) >= 2:
        with pytest.raises(ConfigError, match=r"trainer\.devices: dg demo runs in one process \(2 asked for"):
            check_machine(load_config(DemoConfig, overrides=["trainer.accelerator=cpu", "trainer.devices=2"]))
