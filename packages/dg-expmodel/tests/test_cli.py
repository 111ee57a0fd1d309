"""``python -m dg_expmodel fit`` and the ``synthetic`` env a fitted run directory registers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dg_core import Action, BatchedEnv, make_env, write_trajectories
from dg_expmodel import INITIAL_STATE_KEY, with_initial_state
from dg_expmodel.cli import main
from dg_replay import ReplayBuffer
from tests.conftest import collect


@pytest.fixture(autouse=True)
def _command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main(args)`` runs as ``python -m dg_expmodel args`` would (LightningCLI warns about pytest's arguments)."""
    monkeypatch.setattr(sys, "argv", ["dg_expmodel"])


def fit_config(tmp_path: Path, run_dir: Path, **data: Any) -> Path:
    trajectories = tmp_path / "trajectories.jsonl"
    if not trajectories.exists():
        write_trajectories(trajectories, collect(10))
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False},
        "data": {
            "run_dir": str(run_dir),
            "data": [str(trajectories)],
            "model": {
                "class_path": "dg_expmodel.cli.TinyModel",
                "init_args": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 512},
            },
            "history_window": 1,
            "top_k": 1,
            "max_length": 1024,
            "inference": {"max_new_tokens": 200},
            **data,
        },
        "model": {"learning_rate": 0.005, "warmup_steps": 2},
    }
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_fit_writes_a_run_directory_the_synthetic_env_loads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "dg_expmodel", "fit", "--config", str(fit_config(tmp_path, run))],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version = run / "lightning_logs" / "version_0"
    saved = yaml.safe_load((version / "config.yaml").read_text())  # beside checkpoints/
    assert "default_root_dir" not in saved["trainer"]  # linked from data.run_dir: the logs are under it
    assert saved["data"]["top_k"] == 1
    (checkpoint,) = (version / "checkpoints").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] > 0
    settings = json.loads((run / "expmodel.json").read_text())
    assert settings["options"]["max_retrieved"] == 1
    assert settings["options"]["history_window"] == 1
    assert settings["max_new_tokens"] == 200
    assert settings["backend"] == "transformers"
    real = ReplayBuffer.open(run / "replay", read_only=True)
    seeded = len(real)
    real.close()
    assert seeded == sum(len(t.steps) for t in collect(10))

    # The run as a registered env: episodes from stored initial states, synthetic transitions written to a copy.
    copy = tmp_path / "replay-copy"
    env = make_env("synthetic", run=str(run), replay=str(copy), write_back=True, env_ids=["scripted"], max_steps=2)
    assert isinstance(env, BatchedEnv)
    first = collect(2)
    tasks = [with_initial_state(t.task, t.steps[0].state) for t in first]
    assert all(INITIAL_STATE_KEY in task.metadata for task in tasks)
    states = env.reset(tasks, [0, 1])
    assert [s.text for s in states] == [t.steps[0].state.text for t in first]
    # The first episode asks the model; the second takes an action outside the available set, which the env answers
    # itself (failure state, reward 0) and which is stored like any synthetic transition.
    assert states[0].available_actions
    results = env.step([Action(text=states[0].available_actions[0]), Action(text="juggle the moon")])
    assert results[1].reward == 0.0
    withheld = env.placeholders_withheld  # unparseable answers of a model trained for one epoch are not stored
    assert withheld in (0, 1)
    env.close()
    written = ReplayBuffer.open(copy, read_only=True)
    assert len(written) == seeded + 2 - withheld  # in the copy only
    assert written.stats().by_source.get("synthetic") == 2 - withheld
    written.close()
    original = ReplayBuffer.open(run / "replay", read_only=True)
    assert len(original) == seeded
    original.close()

    # The fitted model/ is a model source for another fit (dg_models loads it; its tokenizer renders the examples).
    source = {
        "class_path": "dg_expmodel.cli.PretrainedModel",
        "init_args": {"source": str(run / "model"), "lora": False},
    }
    again = tmp_path / "again"
    main(["fit", "--config", str(fit_config(tmp_path, again)), f"--data.run_dir={again}", f"--data.model={source}"])
    before = json.loads((run / "model" / "config.json").read_text())
    after = json.loads((again / "model" / "config.json").read_text())
    assert (after["hidden_size"], after["vocab_size"]) == (before["hidden_size"], before["vocab_size"])
    assert (again / "expmodel.json").is_file()


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = fit_config(tmp_path, tmp_path / "run")
    outputs = []
    for source in (config, tmp_path / "printed.yaml"):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(source), "--print_config"])
        assert exit_info.value.code in (0, None)
        outputs.append(capsys.readouterr().out)
        (tmp_path / "printed.yaml").write_text(outputs[-1])
    assert outputs[0] == outputs[1]
    resolved = yaml.safe_load(outputs[0])
    assert resolved["data"]["model"]["class_path"] == "dg_expmodel.cli.TinyModel"
    assert "model" not in resolved["model"]  # the data module's network, linked at instantiation
    assert not (tmp_path / "run").exists()  # printing builds nothing


def test_the_shipped_config_trains_the_demo_sized_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = Path(__file__).resolve().parents[1] / "configs" / "fit.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(shipped), "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["model"]["init_args"]["hidden_size"] == 128  # apps/configs/demo.yaml's expmodel
    assert resolved["trainer"]["max_epochs"] == 4
    trajectories = tmp_path / "trajectories.jsonl"
    write_trajectories(trajectories, collect(6))
    run = tmp_path / "run"
    main(["fit", "--config", str(shipped), f"--data.data=[{trajectories}]", f"--data.run_dir={run}",
          "--trainer.max_epochs=1"])  # fmt: skip
    settings = json.loads((run / "expmodel.json").read_text())
    assert settings["options"]["max_retrieved"] == 1 and settings["max_new_tokens"] == 320
    config = json.loads((run / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data": ["/nonexistent.jsonl"]}, "data.data: trajectory file /nonexistent.jsonl not found"),
        ({"top_kk": 1}, "top_kk"),
        ({"encoder": "word2vec"}, "encoder"),
    ],
)
def test_bad_configs_fail_with_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(fit_config(tmp_path, tmp_path / "run", **data))])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_synthetic_env_refuses_to_write_into_the_fitted_buffer(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="write_back stores synthetic transitions"):
        make_env("synthetic", run=str(tmp_path), write_back=True)
    with pytest.raises(Exception, match="not an experience-model run directory"):
        make_env("synthetic", run=str(tmp_path / "missing"))
