"""The audit on a real TextWorld held-out split, at quick size.

``benchmarks/expmodel/textworld_fidelity.py`` runs it in full.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_core import RandomPolicy, Trajectory, play_episode
from dg_core.testing import ScriptedPolicy
from dg_expmodel import (
    ABLATIONS,
    LLMExperienceModel,
    PromptOptions,
    ReplayRetriever,
    RuleBasedAnnotator,
    Sampling,
    TransformersBackend,
    audit_experience_model,
    examples_from_trajectories,
    fit_experience_model,
    tiny_causal_lm,
    train_tokenizer,
)
from dg_replay import HashingEncoder, ReplayBuffer

textworld = pytest.importorskip("dg_envs.textworld")


def play(tasks: list, seed: int) -> list[Trajectory]:  # type: ignore[type-arg]
    env = textworld.TextWorldEnv(max_steps=8)
    expert = ScriptedPolicy(lambda _request: env.expert_action(), policy_id="expert")
    out = []
    for index, task in enumerate(tasks):
        out.append(play_episode(env, expert, task))
        out.append(play_episode(env, RandomPolicy(seed=seed + index, policy_id="random"), task))
    env.close()
    return out


@pytest.mark.slow
def test_quick_textworld_audit(tmp_path: Path) -> None:
    settings = {"world_size": 2, "nb_objects": 3, "quest_length": 1}
    suite = textworld.textworld_tasks("custom", count=10, seed=3, settings=settings, cache_dir=tmp_path / "games")
    train_tasks = [t for t in suite if t.split == "train"]
    held_out_tasks = [t for t in suite if t.split != "train"] or train_tasks[-1:]
    train, held_out = play(train_tasks, 0), play(held_out_tasks, 100)[:2]
    assert all(t.steps for t in train + held_out)

    buffer = ReplayBuffer.create(encoder=HashingEncoder(dim=128))
    buffer.add_trajectories(train)
    options = PromptOptions(history_window=1, max_retrieved=1)
    examples = examples_from_trajectories(
        train,
        RuleBasedAnnotator(),
        options=options,
        retrieve=lambda task, step: ReplayRetriever(buffer, exclude_self=True).for_step(task, step, 1),
    )
    tokenizer = train_tokenizer([e.prompt + e.response for e in examples], vocab_size=512)
    model = tiny_causal_lm(tokenizer, hidden_size=64, num_layers=1, num_heads=2, max_positions=2048)
    fit = fit_experience_model(
        model,
        tokenizer,
        examples,
        output_dir=tmp_path / "expmodel",
        max_epochs=1,
        batch_size=8,
        max_length=2048,
        progress=False,
    )
    experience_model = LLMExperienceModel(
        TransformersBackend.from_pretrained(fit.model_dir),
        options=options,
        sampling=Sampling(max_new_tokens=24),
        retries=0,
    )
    report = audit_experience_model(
        experience_model,
        held_out,
        retriever=ReplayRetriever(buffer),
        encoder=HashingEncoder(dim=128),
        options=options,
        open_loop_episodes=1,
        output_dir=tmp_path / "audit",
        permutations=20,
        progress=False,
    )
    steps = sum(t.num_steps for t in held_out)
    assert [row.ablation.name for row in report.rows] == [a.name for a in ABLATIONS]
    for row in report.rows:
        forced = row.teacher_forced
        assert row.applied and forced.steps == steps
        assert forced.eps_r == pytest.approx(1 - forced.reward_accuracy)
        assert 0.0 <= forced.parse_failure_rate <= 1.0 and 0.0 <= forced.exact_match <= 1.0
        assert forced.per_group.keys() == {"textworld"}
        assert row.open_loop is not None and row.open_loop.episodes == 1
        assert row.open_loop.faithful_episodes + sum(row.open_loop.first_failure.values()) == 1
        # Every parse failure is a transition error on the simulator's scale; parsed steps are counted by kind.
        scale = forced.simulator
        assert scale.steps == steps and scale.transition_errors.get("parse_failure", 0) == round(
            forced.parse_failure_rate * steps
        )
        assert scale.eps_p is not None and scale.eps_p >= forced.parse_failure_rate - 1e-12
        fields = forced.fields
        assert fields.all.steps == steps == fields.determined.steps + fields.revealing.steps
    lines = (tmp_path / "audit" / "audit.md").read_text().splitlines()
    table = lines[: lines.index("")]  # the ablation table; the per-field table follows below
    assert sum(line.startswith("|") for line in table) == len(ABLATIONS) + 2
    assert lines[len(table) + 1].startswith(
        "On the controlled-error simulator's scale (the tolerance map's axes; full)"
    )
    assert lines[-1].startswith("Targets on determined transitions (full): field F1 ")
