"""FSDP2 with two CPU processes on gloo trains exactly what DDP trains, and rollouts sample from the full weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from safetensors.torch import load_file
from torch import nn

from dg_core import ConfigError
from dg_rl import FSDP2Strategy, full_parameters, full_state_dict
from dg_rl._sharding import reduce_gradients, refuse_unsupported_strategy

SCRIPT = Path(__file__).with_name("fsdp_train.py")


def _train(out: Path, strategy: str, variant: str, port: int, *more: str) -> dict[str, Any]:
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(port)}
    command = [sys.executable, str(SCRIPT), str(out), strategy, variant, *more]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return {
        "ranks": ranks,
        "initial": load_file(str(out / "initial.safetensors")),
        "final": load_file(str(out / "weights.safetensors")),
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("variant", ["grpo", "grpo-lora", "ppo"])
def test_fsdp_trains_the_weights_ddp_trains(tmp_path: Path, variant: str) -> None:
    port = 31_000 + (os.getpid() % 300) * 6 + 2 * ["grpo", "grpo-lora", "ppo"].index(variant)
    fsdp = _train(tmp_path / "fsdp", "fsdp", variant, port)
    ddp = _train(tmp_path / "ddp", "ddp", variant, port + 1)
    for run, strategy in ((fsdp, "FSDP2Strategy"), (ddp, "DDPStrategy")):
        assert [r["rank"] for r in run["ranks"]] == [0, 1]
        assert all(r["strategy"] == strategy and r["world_size"] == 2 and r["backend"] == "gloo" for r in run["ranks"])
        assert all(r["global_step"] == 3 and len(r["steps"]) == 3 for r in run["ranks"])
    # FSDP holds only shards between steps (the parameters are DTensors when each batch starts training); DDP not.
    assert all(step["sharded"] for rank in fsdp["ranks"] for step in rank["steps"])
    assert not any(step["sharded"] for rank in ddp["ranks"] for step in rank["steps"])
    for rank in fsdp["ranks"]:
        for step in rank["steps"]:
            # Collection sampled from the full weights: a plain copy of the gathered weights gives every behaviour
            # log-prob the rollouts recorded.
            assert step["rescored"] == pytest.approx(step["old_logprobs"], abs=1e-5)
    # The ranks played different episodes, with different numbers of policy forwards in some collection (choose
    # mode: episodes end at different turns; in generate mode here every turn runs to the token budget) and, with
    # PPO's micro-batches, in some update: the cases a sharded forward would deadlock on.
    collection, update = (
        [[step[what] for step in rank["steps"]] for rank in fsdp["ranks"]]
        for what in ("collection_forwards", "update_forwards")
    )
    if variant != "grpo-lora":
        assert collection[0] != collection[1], collection
    if variant == "ppo":
        assert update[0] != update[1], update
    # Same seeds, same episodes: the behaviour log-probs of every batch on every rank equal DDP's ...
    for fsdp_rank, ddp_rank in zip(fsdp["ranks"], ddp["ranks"], strict=True):
        for fsdp_step, ddp_step in zip(fsdp_rank["steps"], ddp_rank["steps"], strict=True):
            assert fsdp_step["old_logprobs"] == pytest.approx(ddp_step["old_logprobs"], abs=1e-6)
    # ... the runs start from the same weights (rank 0's: LoRA adapters were initialised differently per rank) ...
    assert fsdp["initial"].keys() == ddp["initial"].keys() == fsdp["final"].keys() == ddp["final"].keys()
    for name, tensor in fsdp["initial"].items():
        torch.testing.assert_close(tensor, ddp["initial"][name], rtol=0, atol=0)
    # ... and after three updates the weights are DDP's.
    moved = 0
    for name, tensor in fsdp["final"].items():
        torch.testing.assert_close(tensor, ddp["final"][name], rtol=1e-5, atol=1e-6, msg=name)
        change = float((tensor - fsdp["initial"][name]).abs().max())
        moved += change > 1e-4
        if variant == "grpo-lora" and "lora_" not in name:
            assert change == 0.0, f"{name}: a frozen base weight moved"
    assert moved >= 10  # training did change the weights


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_fsdp_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    port = 31_000 + (os.getpid() % 300) * 6 + 5
    first = _train(tmp_path / "first", "fsdp", "grpo", port, "2")
    resumed = _train(tmp_path / "resumed", "fsdp", "grpo", port + 1, "3", str(tmp_path / "first" / "last.ckpt"))
    # The checkpoint (one file, gathered from both ranks' shards) gives back the weights of step 2 exactly ...
    for name, tensor in first["final"].items():
        torch.testing.assert_close(resumed["initial"][name], tensor, rtol=0, atol=0)
    # ... and AdamW's state of two steps on both ranks; the resumed run trains step 3 and moves the weights.
    assert [r["adam_steps_at_start"] for r in first["ranks"]] == [[], []]
    assert [r["adam_steps_at_start"] for r in resumed["ranks"]] == [[2], [2]]
    assert [(r["global_step"], len(r["steps"])) for r in resumed["ranks"]] == [(3, 1), (3, 1)]
    assert max(float((resumed["final"][n] - t).abs().max()) for n, t in first["final"].items()) > 1e-4


def test_full_parameters_and_state_do_nothing_to_a_plain_module() -> None:
    model = nn.Linear(3, 2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with full_parameters(model, accumulate=True) as sharded:
        assert sharded is False
        model(torch.ones(1, 3)).sum().backward()
    state = full_state_dict(model)
    assert state.keys() == before.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, before[name]) and tensor.data_ptr() != model.state_dict()[name].data_ptr()
    assert model.weight.grad is not None and torch.equal(model.weight.grad, torch.ones(2, 3))
    with pytest.raises(ConfigError, match="nothing in these modules is sharded"):
        reduce_gradients([model], model(torch.ones(1, 3)).sum() * 0)


def test_lightnings_fsdp1_is_refused_by_the_policy_modules() -> None:
    with pytest.raises(ConfigError, match=r"GRPOModule: Lightning's FSDPStrategy is not supported: rollouts run the "
                       r"policy outside the training forward.*dg_rl\.FSDP2Strategy\(\)"):  # fmt: skip
        refuse_unsupported_strategy(FSDPStrategy(), "GRPOModule")
    for fine in (FSDP2Strategy(), DDPStrategy()):
        refuse_unsupported_strategy(fine, "GRPOModule")


def test_lightning_takes_fsdp2_on_cpu_where_its_fsdp_strategy_refuses() -> None:
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        L.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=FSDP2Strategy(), logger=False)
    assert isinstance(trainer.strategy, FSDP2Strategy) and trainer.num_devices == 2
