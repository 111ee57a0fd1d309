"""A step whose loss or gradients are not finite stops training: no optimiser step, weights kept finite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dg_core import DGError, EnvPool
from dg_core.testing import ScriptedEnv
from dg_rl import GRPOLoss, GRPOModule, LMPolicy, NonFiniteUpdateError, PPOModule, RolloutDataModule, RolloutEngine
from tests.conftest import corridor_tasks


def data_for(policy: LMPolicy, *, updates_per_batch: int) -> RolloutDataModule:
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=4, max_episode_tokens=64)
    return RolloutDataModule(engine, corridor_tasks(6), tasks_per_step=2, updates_per_batch=updates_per_batch, seed=0)


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p.detach()).all()) for p in module.parameters())


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_huge_learning_rate_stops_at_the_first_non_finite_loss_with_finite_weights(
    make_policy: Callable[..., LMPolicy], tmp_path: Path, algorithm: str
) -> None:
    policy = make_policy("choose")
    # A learning rate of 1e30: AdamW moves every weight by about 1e30 at step 1 (still finite in float32); the
    # forward pass of step 2 then overflows (squares of 1e30 in the norms) and its loss is NaN.
    module: L.LightningModule
    if algorithm == "ppo":
        module = PPOModule(policy, learning_rate=1e30)
    else:
        module = GRPOModule(policy, loss=GRPOLoss(kl_coef=0.05), learning_rate=1e30)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=6,
        logger=False,
        callbacks=[checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(NonFiniteUpdateError, match=r"optimiser step \d+: the loss is nan") as raised:
        trainer.fit(module, datamodule=data_for(policy, updates_per_batch=3))
    error = raised.value
    assert isinstance(error, DGError) and not error.weights_broken
    assert "the step was not taken" in str(error) and "learning rate (it is 1e+30)" in str(error)
    assert trainer.global_step == error.step - 1  # the failed step was never taken
    assert all_finite(module)
    # The last checkpoint is that of the last good step, not of the failed one.
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == error.step - 1
    assert all(bool(torch.isfinite(v).all()) for v in saved["state_dict"].values() if v.is_floating_point())
