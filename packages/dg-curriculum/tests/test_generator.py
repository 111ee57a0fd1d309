from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from dg_core import State, Task, TaskGenerationRequest, TaskGenerator
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_curriculum import Curriculum, LLMTaskGenerator, TaskPool, render_generation_prompt
from dg_expmodel import (
    Completion,
    Prompt,
    Sampling,
    SFTExample,
    TransformersBackend,
    fit_experience_model,
    tiny_causal_lm,
    train_tokenizer,
    with_initial_state,
)


class ScriptedBackend:
    """A generation backend answering from a function of the prompt (the scripted model)."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.prompts: list[Prompt] = []

    @property
    def chat(self) -> bool:
        return False

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Completion]:
        self.prompts.extend(prompts)
        return [Completion(text=self.answer(str(p))) for p in prompts]


def grounded(task_id: str, goal: str = "gold coin", seed: int = 0) -> Task:
    task = scripted_task(task_id, rooms=3, goal_item=goal, seed=seed)
    return with_initial_state(task, ScriptedEnv().reset(task))


def request_for(task: Task, count: int = 3) -> TaskGenerationRequest:
    return TaskGenerationRequest(
        seed_task=task, initial_state=State.model_validate(task.metadata["initial_state"]), num_variations=count
    )


def test_valid_variations_get_lineage() -> None:
    seed = grounded("s0")
    item = State.model_validate(seed.metadata["initial_state"]).text.split("You see: a ")[1].rstrip(".")
    backend = ScriptedBackend(
        lambda _p: f"<task>Take the {item} in the corridor.</task>\n<task>Find the gold coin, then look.</task>"
    )
    generator = LLMTaskGenerator(backend)
    assert isinstance(generator, TaskGenerator)
    (variations,) = generator.generate([request_for(seed)])
    assert [v.instruction for v in variations] == [
        f"Take the {item} in the corridor.",
        "Find the gold coin, then look.",
    ]
    assert all(v.parent_id == "s0" and v.generation == 1 and v.env_id == "scripted" for v in variations)
    assert all(v.metadata["initial_state"] == seed.metadata["initial_state"] for v in variations)
    assert len({v.id for v in variations}) == 2
    assert generator.accepted == 2 and sum(generator.rejects.values()) == 0
    assert "# Seed task\nFind the gold coin and take it." in render_generation_prompt(request_for(seed))


def test_malformed_and_invalid_candidates_are_counted() -> None:
    seed = grounded("s0")
    answers = {
        0: "Sure, here are some tasks: find the coin",  # no tags
        1: "<task>   </task><task>Find the gold coin and take it.</task>"  # empty, same as the seed
        "<task>Fly the spaceship to Mars.</task>"  # nothing of it exists here
        f"<task>{'look ' * 60}</task>"  # too long
        "<task>Find the gold coin, then go east.</task><task>find the gold coin then go EAST</task>",
    }
    calls = iter(range(2))
    backend = ScriptedBackend(lambda _p: answers[next(calls)])
    generator = LLMTaskGenerator(backend)
    results = generator.generate([request_for(seed), request_for(seed)])
    assert results[0] == []
    assert [t.instruction for t in results[1]] == ["Find the gold coin, then go east."]
    assert dict(generator.rejects) == {
        "unparseable": 1,
        "empty": 1,
        "duplicate": 2,
        "out_of_vocabulary": 1,
        "too_long": 1,
    }


def test_pool_duplicates_are_rejected_and_grow_adds_to_pool() -> None:
    pool = TaskPool()
    seeds = [grounded(f"s{i}", goal=ITEMS[i], seed=i) for i in range(3)]
    pool.add_many(seeds)
    earlier = Task.model_validate(
        {
            **seeds[2].model_dump(),
            "id": "s2~old",
            "instruction": "Find the blue gem, then look.",
            "parent_id": "s2",
            "generation": 1,
        }
    )
    pool.add(earlier)
    backend = ScriptedBackend(
        lambda p: "<task>Take the blue gem, then go east.</task><task>find the blue gem then LOOK</task>"
    )
    generator = LLMTaskGenerator(backend, is_duplicate=pool.duplicate_of)
    curriculum = Curriculum(pool, generator=generator)
    curriculum.report("s2", [1, 0])  # the most informative task is varied first
    for other in ("s0", "s1", "s2~old"):
        curriculum.report(other, [1, 1])
    added = curriculum.grow(num_parents=1, variations_per_parent=2)
    assert [(t.parent_id, t.instruction) for t in added] == [("s2", "Take the blue gem, then go east.")]
    assert generator.rejects["duplicate"] == 1  # already in the pool as s2~old
    assert "Find the blue gem and take it." in str(backend.prompts[0])
    assert pool.size_by_generation() == {0: 3, 1: 2}


def test_a_tiny_trained_generator(tmp_path: Path) -> None:
    seeds = [grounded(f"s{i}", goal=ITEMS[i % len(ITEMS)], seed=i) for i in range(48)]
    examples = []
    for seed in seeds:
        state = State.model_validate(seed.metadata["initial_state"])
        items = state.text.split("You see: ")[1].rstrip(".").split(", ")
        targets = [f"<task>Find the {item.removeprefix('a ')} and take it.</task>" for item in items]
        targets.append("<task>Walk east and look around.</task>")
        examples.append(SFTExample(prompt=render_generation_prompt(request_for(seed, 2)), response="\n".join(targets)))
    tokenizer = train_tokenizer([e.prompt + e.response for e in examples], vocab_size=512)
    model = tiny_causal_lm(tokenizer, hidden_size=64, num_layers=2, num_heads=2, max_positions=512)
    fit = fit_experience_model(
        model, tokenizer, examples, output_dir=tmp_path, max_epochs=6, batch_size=8, learning_rate=5e-3, progress=False
    )
    backend = TransformersBackend.from_pretrained(fit.model_dir)
    generator = LLMTaskGenerator(backend, sampling=Sampling(max_new_tokens=48, temperature=0.0, stop=()))
    requests = [request_for(grounded(f"h{i}", goal=ITEMS[i], seed=100 + i), 2) for i in range(4)]
    results = generator.generate(requests)
    outcomes = generator.accepted + sum(generator.rejects.values())
    assert outcomes >= len(requests)  # every request produced either a task or a counted reject
    for request, variations in zip(requests, results, strict=True):
        assert len(variations) <= 2
        for task in variations:  # whatever the tiny model wrote, what passed is grounded and new
            assert task.parent_id == request.seed_task.id
            assert task.instruction != request.seed_task.instruction
    assert set(generator.rejects) <= {"unparseable", "empty", "too_long", "out_of_vocabulary", "duplicate"}
