"""Experience-model benchmarks, in one run:

1. SFT throughput: tokens/s of ``ExperienceModelSFT`` under a Lightning ``Trainer`` vs a plain torch loop on the
   same model, data, batches and optimizer (target: Lightning >= 95% of the plain loop).
2. SyntheticEnv transitions/s at batch 1, 8 and 32 (tiny SFT'd model on CPU) next to the step rates of the real
   environments measured in the same run: dg-core's scripted world always, TextWorld and BrowserGym when
   dg-envs provides them (they are skipped with a note otherwise).

    python benchmarks/expmodel/run.py [--quick]

Prints tables and writes benchmarks/results/expmodel.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dg_core import RandomPolicy, Trajectory, play_episode
from dg_core.testing import ITEMS, ScriptedEnv, ScriptedPolicy, scripted_task
from dg_expmodel import (
    BatchedSyntheticEnv,
    ExperienceModelSFT,
    LLMExperienceModel,
    PromptOptions,
    RuleBasedAnnotator,
    Sampling,
    TransformersBackend,
    examples_from_trajectories,
    fit_experience_model,
    tiny_causal_lm,
    tokenize_examples,
    train_tokenizer,
    with_initial_state,
)
from dg_expmodel._sft import Batches

RESULTS = Path(__file__).resolve().parents[1] / "results"
OPTIONS = PromptOptions(history_window=2, max_retrieved=0)


def collect(count: int) -> list[Trajectory]:
    env = ScriptedEnv(max_steps=10)
    out = []
    for i in range(count):
        task = scripted_task(f"t{i}", rooms=2 + i % 3, goal_item=ITEMS[i % 4], seed=i)
        policy = ScriptedPolicy(lambda _r: env.expert_action()) if i % 2 == 0 else RandomPolicy(seed=i)
        out.append(play_episode(env, policy, task))
    return out


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seconds = 0.0
        self.tokens = 0
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx >= self.warmup:
            self.seconds += time.perf_counter() - self._start
            self.tokens += int(batch["attention_mask"].sum())


class _Replay:
    """The same pre-collated batches, as one iterable (a bare list would be read as several loaders)."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        return iter(self.batches)


def lightning_tokens_per_s(model: Any, batches: list[dict[str, Any]], warmup: int) -> float:
    timer = _StepTimer(warmup)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(ExperienceModelSFT(model, learning_rate=1e-3), train_dataloaders=_Replay(batches))
    return timer.tokens / timer.seconds


def plain_tokens_per_s(model: Any, batches: list[dict[str, Any]], warmup: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seconds, tokens = 0.0, 0
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            seconds += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
    return tokens / seconds


def sft_throughput(tokenizer: Any, examples: list, steps: int, repeats: int) -> dict[str, float]:  # type: ignore[type-arg]
    features = tokenize_examples(examples, tokenizer, max_length=1024)
    batches = list(Batches(features, 16, tokenizer.pad_token_id, seed=0, shuffle=True))[:steps]
    base = tiny_causal_lm(tokenizer, hidden_size=128, num_layers=2, num_heads=4, max_positions=1024)
    lightning_runs, plain_runs = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        lightning_runs.append(lightning_tokens_per_s(copy.deepcopy(base), batches, warmup=2))
        plain_runs.append(plain_tokens_per_s(copy.deepcopy(base), batches, warmup=2))
    lightning_best, plain_best = max(lightning_runs), max(plain_runs)
    return {
        "steps": len(batches),
        "lightning_tokens_per_s": lightning_best,
        "plain_torch_tokens_per_s": plain_best,
        "lightning_vs_plain": lightning_best / plain_best,
    }


def synthetic_rates(
    model: LLMExperienceModel, real: list[Trajectory], batch_sizes: list[int], rounds: int
) -> dict[str, float]:
    rates = {}
    tasks = [with_initial_state(t.task, t.steps[0].state) for t in real]
    for batch in batch_sizes:
        env = BatchedSyntheticEnv(model, max_steps=rounds)
        chosen = [tasks[i % len(tasks)] for i in range(batch)]
        env.reset(chosen)
        policy = RandomPolicy(seed=batch)
        transitions = 0
        start = time.perf_counter()
        while not env.all_done:
            from dg_core import PolicyRequest

            requests = [PolicyRequest(task=t, state=s) for t, s in zip(chosen, env.states, strict=True)]
            actions = [a if not done else None for a, done in zip(policy.act(requests), env.dones, strict=True)]
            transitions += sum(a is not None for a in actions)
            env.step(actions)
        rates[f"synthetic_batch_{batch}"] = transitions / (time.perf_counter() - start)
    return rates


def _timed_random_play(env: Any, tasks: list[Any], seconds: float) -> float:
    policy = RandomPolicy(seed=0, policy_id="random")
    steps, start, index = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        steps += play_episode(env, policy, tasks[index % len(tasks)]).num_steps
        index += 1
    return steps / (time.perf_counter() - start)


def _browsergym_steps_per_s(rounds: int) -> float:
    """Steps/s of WebArenaEnv (BrowserGym, default pacing) searching dg-envs' local demo shop."""
    import re

    from dg_envs.web import DemoShop, WebArenaEnv, site_task

    def element(text: str, role: str, name: str) -> str:
        match = re.search(rf"\[(\w+)\] {role} '{re.escape(name)}'", text)
        if match is None:
            raise RuntimeError(f"no {role} {name!r} on the page")
        return match.group(1)

    seconds, steps = 0.0, 0
    with DemoShop() as shop:
        env = WebArenaEnv(max_steps=3)
        task = site_task("bench", "Search the shop.", shop.url, {"url_contains": "/never"})
        try:
            for episode in range(rounds):  # each round: from the home page, fill the search box and submit
                state = env.reset(task, seed=episode)
                for role, name in (("textbox", "Search"), ("button", "Go")):
                    target = element(state.text, role, name)
                    command = f'fill("{target}", "kettle")' if role == "textbox" else f'click("{target}")'
                    started = time.perf_counter()
                    state = env.step(command).state
                    seconds += time.perf_counter() - started
                    steps += 1
        finally:
            env.close()
    return steps / seconds


def real_rates(seconds: float) -> dict[str, Any]:
    """Step rates of the real environments, measured in this run (those dg-envs provides here)."""
    rates: dict[str, Any] = {}
    scripted = [scripted_task(f"r{i}", rooms=5, seed=i) for i in range(16)]
    rates["real_scripted"] = _timed_random_play(ScriptedEnv(max_steps=20), scripted, seconds)
    try:
        from dg_envs.textworld import TextWorldEnv, textworld_tasks
    except ImportError:
        rates["real_textworld"] = "dg-envs[textworld] not installed"
    else:
        games = textworld_tasks(
            "custom", count=4, seed=1, settings={"world_size": 3, "nb_objects": 4, "quest_length": 2}
        )
        rates["real_textworld"] = _timed_random_play(TextWorldEnv(max_steps=20, expert=False), games, seconds)
    try:
        rates["real_browsergym"] = _browsergym_steps_per_s(rounds=4)
    except ImportError:
        rates["real_browsergym"] = "dg-envs[web] not installed"
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    real = collect(60 if args.quick else 160)
    examples = examples_from_trajectories(real, RuleBasedAnnotator(), options=OPTIONS)
    tokenizer = train_tokenizer([e.prompt + e.response for e in examples], vocab_size=1024)
    print(f"{len(examples)} SFT examples from {len(real)} real episodes", flush=True)

    sft = sft_throughput(tokenizer, examples, steps=8 if args.quick else 30, repeats=1 if args.quick else 2)
    print("\n| SFT loop | tokens/s |\n| --- | --- |")
    print(f"| Lightning (ExperienceModelSFT) | {sft['lightning_tokens_per_s']:,.0f} |")
    print(f"| plain torch loop | {sft['plain_torch_tokens_per_s']:,.0f} |")
    print(f"\nLightning / plain: {sft['lightning_vs_plain']:.3f} (target >= 0.95)", flush=True)

    model = tiny_causal_lm(tokenizer, hidden_size=128, num_layers=2, num_heads=4, max_positions=1024)
    fit = fit_experience_model(
        model,
        tokenizer,
        examples,
        output_dir=RESULTS / ".expmodel-run",
        max_epochs=2 if args.quick else 8,
        batch_size=16,
        learning_rate=3e-3,
        progress=False,
        resume=False,
    )
    backend = TransformersBackend.from_pretrained(fit.model_dir, batch_size=32)
    experience_model = LLMExperienceModel(backend, options=OPTIONS, sampling=Sampling(max_new_tokens=160), retries=0)
    batch_sizes = [1, 8] if args.quick else [1, 8, 32]
    synthetic = synthetic_rates(experience_model, real, batch_sizes, rounds=2 if args.quick else 3)
    real_measured = real_rates(5.0)
    print("\n| environment | transitions/s |\n| --- | --- |")
    for name, value in {**synthetic, **real_measured}.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else value
        print(f"| {name} | {shown} |")
    browsergym = real_measured.get("real_browsergym")
    if isinstance(browsergym, float):
        best = max(v for k, v in synthetic.items())
        print(f"\nbest synthetic / BrowserGym: {best / browsergym:.1f}x (target >= 5x)")
    report = {
        "sft": sft,
        "fit_metrics": fit.metrics,
        "transitions_per_s": {**synthetic, **real_measured},
        "parse_failure_rate": experience_model.stats.parse_failure_rate,
        "mean_completion_tokens": experience_model.stats.completion_tokens / max(1, experience_model.stats.generations),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "expmodel-quick.json" if args.quick else "expmodel.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nparse failure rate {report['parse_failure_rate']:.2f}; results in {RESULTS / name}")


if __name__ == "__main__":
    main()
