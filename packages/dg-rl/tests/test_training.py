"""Lightning modules under a real Trainer: GRPO and PPO steps, logged metrics, checkpoints and resume."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dg_core import ConfigError, EnvPool, Task
from dg_core.testing import ScriptedEnv
from dg_rl import (
    GRPOLoss,
    GRPOModule,
    LMPolicy,
    PPOModule,
    RolloutDataModule,
    RolloutEngine,
    TaskSource,
    load_causal_lm,
    load_tokenizer,
    save_model,
)
from tests.conftest import corridor_tasks


def data_for(policy: LMPolicy, *, updates_per_batch: int = 1, seed: int = 0) -> RolloutDataModule:
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=4, max_episode_tokens=64)
    return RolloutDataModule(
        engine, corridor_tasks(6), tasks_per_step=2, updates_per_batch=updates_per_batch, seed=seed
    )


def trainer(max_steps: int, **kwargs: object) -> L.Trainer:
    options: dict[str, object] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    options.update(kwargs)
    return L.Trainer(**options)  # type: ignore[arg-type]


def params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("mode", ["choose", "generate"])
def test_grpo_module_trains_and_logs(make_policy: Callable[..., LMPolicy], mode: str) -> None:
    policy = make_policy(mode, max_turn_tokens=6)
    module = GRPOModule(policy, loss=GRPOLoss(kl_coef=0.05), learning_rate=1e-2)
    before = params(policy.model)
    run = trainer(4)
    run.fit(module, datamodule=data_for(policy, updates_per_batch=2))
    assert run.global_step == 4
    metrics = run.callback_metrics
    # Without any success in the group there is no advantage, hence (KL at 0) no update at all.
    signal = float(metrics["train/advantage_abs_max"]) > 0 or float(metrics["train/kl"]) > 0
    assert signal != torch.equal(before, params(policy.model))
    for key in (
        "rollout/success_rate",
        "rollout/mean_return",
        "rollout/tokens_per_s",
        "rollout/turn_truncations",
        "rollout/episode_budget_truncations",
        "train/kl",
        "train/entropy",
        "train/clip_fraction",
        "train/advantage_mean",
        "train/advantage_std",
        "train/tokens_per_s",
        "train/loss_policy",
        "train/loss_kl",
    ):
        assert key in metrics, key
    assert 0.0 <= float(metrics["rollout/success_rate"]) <= 1.0
    assert float(metrics["train/kl"]) >= 0.0
    assert float(metrics["train/tokens_per_s"]) > 0.0
    # The reference model is frozen and kept out of the checkpointed state.
    assert not any(key.startswith("_reference") for key in module.state_dict())


def test_ppo_module_trains_value_head(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    module = PPOModule(policy, learning_rate=1e-2)
    run = trainer(4)
    run.fit(module, datamodule=data_for(policy, updates_per_batch=2))
    assert run.global_step == 4
    assert float(module.value_head.weight.detach().abs().sum()) > 0.0
    for key in ("train/loss_policy", "train/loss_value", "train/loss_entropy", "train/entropy", "train/clip_fraction"):
        assert key in run.callback_metrics, key


# Resuming into the run's own checkpoint folder is the normal workflow; Lightning advises against it.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_checkpoint_and_resume(make_policy: Callable[..., LMPolicy], tmp_path: Path) -> None:
    policy = make_policy("choose")
    data = data_for(policy)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True)
    first = trainer(2, enable_checkpointing=True, callbacks=[checkpoints])
    first.fit(GRPOModule(policy, learning_rate=1e-2), datamodule=data)
    saved = params(policy.model)
    assert data.consumed == 2

    # A fresh process would rebuild everything from config: a new (differently initialised) policy.
    resumed_policy = make_policy("choose", seed=1)
    assert not torch.equal(saved, params(resumed_policy.model))
    resumed_data = data_for(resumed_policy)
    module = GRPOModule(resumed_policy, learning_rate=1e-2)
    restored: dict[str, object] = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            restored["params"] = params(resumed_policy.model)
            restored["data_step"] = resumed_data.consumed

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, idx: int) -> None:
            restored.setdefault("batches", []).append(int(batch["batch_id"]))  # type: ignore[attr-defined]

    again = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True)
    second = trainer(3, enable_checkpointing=True, callbacks=[again, Probe()])
    second.fit(module, datamodule=resumed_data, ckpt_path=str(tmp_path / "last.ckpt"))
    assert torch.equal(restored["params"], saved)  # type: ignore[arg-type]
    assert restored["data_step"] == 2  # the task sequence continues where it stopped
    assert second.global_step == 3
    assert restored["batches"] == [2]


def test_save_and_load_policy_model(make_policy: Callable[..., LMPolicy], tmp_path: Path) -> None:
    policy = make_policy("choose")
    path = save_model(policy.model, policy.tokenizer, tmp_path / "policy")  # type: ignore[arg-type]
    assert (path / "model.safetensors").exists()
    model = load_causal_lm(path)
    tokenizer = load_tokenizer(path)
    text = "Task: Find the red key and take it."
    assert tokenizer(text)["input_ids"] == policy.tokenizer(text)["input_ids"]
    assert torch.equal(params(model), params(policy.model))


class RecordingSource:
    """A minimal curriculum: hands out fixed task pairs in turn and records what it hears back."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks
        self.asked: list[int] = []
        self.reports: dict[str, list[list[float]]] = {}

    def next_batch(self, size: int) -> list[Task]:
        start = (len(self.asked) * size) % len(self.tasks)
        self.asked.append(size)
        return [self.tasks[(start + i) % len(self.tasks)] for i in range(size)]

    def report(self, task_id: str, group_rewards: Sequence[float]) -> float:
        self.reports.setdefault(task_id, []).append(list(group_rewards))
        return 0.0


def test_task_source_picks_tasks_and_hears_group_returns(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    tasks = corridor_tasks(4)
    source = RecordingSource(tasks)
    assert isinstance(source, TaskSource)
    seen: list[int] = []
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=3, max_episode_tokens=64)
    data = RolloutDataModule(
        engine, tasks_per_step=2, task_source=source, on_batch=lambda r: seen.append(len(r.episodes))
    )
    first = data.next_batch()
    second = data.next_batch()
    assert source.asked == [2, 2]
    assert seen == [6, 6]  # 2 tasks x 3 episodes per batch
    assert sorted(source.reports) == sorted(t.id for t in tasks)  # batch 1: t0, t1; batch 2: t2, t3
    for groups in source.reports.values():
        assert len(groups) == 1 and len(groups[0]) == 3
        assert all(value in (0.0, 1.0) for value in groups[0])
    assert int(first["batch_id"]) == 0 and int(second["batch_id"]) == 1


def test_data_module_without_tasks_or_source_is_refused(make_policy: Callable[..., LMPolicy]) -> None:
    engine = RolloutEngine(make_policy("choose"), EnvPool(lambda: ScriptedEnv(max_steps=4)))
    with pytest.raises(ConfigError, match="task_source"):
        RolloutDataModule(engine)


def test_max_batches_collects_only_what_training_uses(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2, max_episode_tokens=64)
    collected: list[int] = []

    def data(**limits: object) -> RolloutDataModule:
        return RolloutDataModule(
            engine,
            corridor_tasks(4),
            tasks_per_step=2,
            updates_per_batch=2,
            on_batch=lambda r: collected.append(len(r.episodes)),
            **limits,  # type: ignore[arg-type]
        )

    fit = trainer(6)
    fit.fit(GRPOModule(policy, learning_rate=1e-3), datamodule=data())
    assert fit.global_step == 6 and len(collected) == 4  # 3 batches trained on, one collected ahead
    collected.clear()
    fit = trainer(6)
    fit.fit(GRPOModule(policy, learning_rate=1e-3), datamodule=data(max_batches=3))
    assert fit.global_step == 6 and collected == [4, 4, 4]
    with pytest.raises(ConfigError, match="max_batches"):
        data(max_batches=0)


def test_stop_when_ends_collection_and_training(make_policy: Callable[..., LMPolicy]) -> None:
    policy = make_policy("choose")
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2, max_episode_tokens=64)
    turns: list[int] = []
    data = RolloutDataModule(
        engine,
        corridor_tasks(4),
        tasks_per_step=2,
        updates_per_batch=2,
        on_batch=lambda r: turns.append(r.stats.turns),
        stop_when=lambda: sum(turns) >= 1,  # a budget the first batch spends
    )
    fit = trainer(20)
    fit.fit(GRPOModule(policy, learning_rate=1e-3), datamodule=data)
    assert len(turns) == 1  # nothing collected past the budget
    assert fit.global_step == 2  # the batch that spent it is still trained on, updates_per_batch times
