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
    assert fit.global_step == 6 and len(collected) == 3  # collected when training reaches them: none ahead
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


def test_stop_when_with_one_update_per_batch(make_policy: Callable[..., LMPolicy]) -> None:
    """The loader fetched the next ticket before the budget was spent: its batch is never collected."""
    policy = make_policy("choose")
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2, max_episode_tokens=64)
    turns: list[int] = []
    data = RolloutDataModule(
        engine,
        corridor_tasks(4),
        tasks_per_step=2,
        on_batch=lambda r: turns.append(r.stats.turns),
        stop_when=lambda: len(turns) >= 2,
    )
    fit = trainer(20)
    fit.fit(GRPOModule(policy, learning_rate=1e-3), datamodule=data)
    assert len(turns) == 2 and fit.global_step == 2 and data.consumed == 2


def test_every_batch_is_collected_with_the_latest_weights(make_policy: Callable[..., LMPolicy]) -> None:
    """On-policy: batch k is played by the weights after k updates (the loader's read-ahead collects nothing)."""
    policy = make_policy("choose")
    engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=2, max_episode_tokens=64)
    at_collection: list[torch.Tensor] = []
    after_update: list[torch.Tensor] = [params(policy.model)]

    class AfterUpdate(L.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            after_update.append(params(policy.model))

    data = RolloutDataModule(
        engine, corridor_tasks(4), tasks_per_step=2, on_batch=lambda r: at_collection.append(params(policy.model))
    )
    fit = trainer(4, callbacks=[AfterUpdate()])
    fit.fit(GRPOModule(policy, learning_rate=1e-2), datamodule=data)
    assert len(at_collection) == 4 and len(after_update) == 5
    assert not torch.equal(after_update[0], after_update[1])  # the updates change the weights
    for k, weights in enumerate(at_collection):
        assert torch.equal(weights, after_update[k]), k


class StatefulSource(RecordingSource):
    """A task source whose draws depend on its own random state (as a curriculum's do), with state_dict."""

    def __init__(self, tasks: list[Task], seed: int = 0) -> None:
        super().__init__(tasks)
        import random

        self.rng = random.Random(seed)

    def next_batch(self, size: int) -> list[Task]:
        self.asked.append(size)
        return self.rng.sample(self.tasks, size)

    def state_dict(self) -> dict[str, object]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "asked": list(self.asked), "reports": self.reports}

    def load_state_dict(self, state: dict[str, object]) -> None:
        version, internal, gauss = state["rng"]  # type: ignore[misc]
        self.rng.setstate((version, tuple(internal), gauss))
        self.asked = list(state["asked"])  # type: ignore[call-overload]
        self.reports = dict(state["reports"])  # type: ignore[call-overload]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_resume_collects_exactly_what_the_uninterrupted_run_did(
    make_policy: Callable[..., LMPolicy], tmp_path: Path
) -> None:
    """A checkpoint is one cut: step, task source and random state. Resumed at step 2 of 4, the run collects
    the same episodes (same tasks, same sampled actions) and ends with the same weights and source state."""
    tasks = corridor_tasks(6)

    Played = list[list[str]]

    def run(steps: int, folder: Path, resume: bool, policy_seed: int) -> tuple[Played, StatefulSource, LMPolicy]:
        torch.manual_seed(1234)  # what seeding a fresh process does; the checkpoint's state must win over it
        policy = make_policy("choose", seed=policy_seed)
        engine = RolloutEngine(policy, EnvPool(lambda: ScriptedEnv(max_steps=4)), group_size=3, max_episode_tokens=64)
        played: list[list[str]] = []
        source = StatefulSource(tasks)
        data = RolloutDataModule(
            engine,
            tasks_per_step=2,
            task_source=source,
            on_batch=lambda r: played.append([f"{e.task.id}:{[s.action.text for s in e.steps]}" for e in r.episodes]),
        )
        checkpoints = ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_last=True, save_top_k=0)
        fit = trainer(steps, enable_checkpointing=True, callbacks=[checkpoints])
        ckpt = str(folder / "last.ckpt") if resume else None
        fit.fit(GRPOModule(policy, learning_rate=5e-2), datamodule=data, ckpt_path=ckpt, weights_only=False)
        return played, source, policy

    # One thread: with several, CPU kernels such as the embedding's backward may sum in another order from one call
    # to the next, and the weights would differ in their last bits for reasons that have nothing to do with resume.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole, whole_source, whole_policy = run(4, tmp_path / "whole", False, 0)
        head, _, _ = run(2, tmp_path / "cut", False, 0)
        # A fresh process rebuilds the initial policy (dg train reloads policy-initial/: the KL reference is made
        # from it), then the checkpoint's weights replace the trained ones.
        tail, tail_source, tail_policy = run(4, tmp_path / "cut", True, 0)
    finally:
        torch.set_num_threads(threads)
    assert len(whole) == 4 and head + tail == whole
    assert tail_source.state_dict() == whole_source.state_dict()
    assert torch.equal(params(tail_policy.model), params(whole_policy.model))
