from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from dg_core import ConfigError, State, Task, TaskGenerationRequest, TaskGenerator
from dg_core.testing import ITEMS, ScriptedEnv, scripted_task
from dg_curriculum import (
    GENERATOR_LIST_SYSTEM_PROMPT,
    REJECT_REASONS,
    STOPWORDS,
    Curriculum,
    LLMTaskGenerator,
    TaskPool,
    parse_candidates,
    render_generation_prompt,
    render_list_prompt,
    vocabulary_of,
    worked_examples,
)
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

TEXTWORLD_SEEDS = Path(__file__).parent / "data" / "textworld_seeds.json"
"""Three real TextWorld seed tasks (coin collector, two cooking games) with the initial states ``env.reset``
gave: ``textworld_tasks(kind, count=12, seed=0)`` games 0 (coin_collector), 0 and 5 (cooking), played by
``dg_envs.textworld.TextWorldEnv`` (this package's tests do not install TextWorld)."""


class ScriptedBackend:
    """A generation backend answering from a function of the prompt (the scripted model)."""

    def __init__(self, answer: Callable[[str], str], *, chat: bool = False, finished: bool = True) -> None:
        self.answer = answer
        self.prompts: list[Prompt] = []
        self._chat = chat
        self.finished = finished
        self.samplings: list[Sampling] = []

    @property
    def chat(self) -> bool:
        return self._chat

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Completion]:
        self.prompts.extend(prompts)
        self.samplings.append(sampling)
        return [Completion(text=self.answer(str(p)), finished=self.finished) for p in prompts]


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
    generator = LLMTaskGenerator(backend, prompt="tags")
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
    generator = LLMTaskGenerator(backend, prompt="tags")
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
    assert generator.candidates == 7 == generator.accepted + sum(generator.rejects.values())
    assert ("Fly the spaceship to Mars.", "out_of_vocabulary") in generator.recent_rejects


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
    generator = LLMTaskGenerator(backend, prompt="tags", sampling=Sampling(max_new_tokens=48, temperature=0.0, stop=()))
    requests = [request_for(grounded(f"h{i}", goal=ITEMS[i], seed=100 + i), 2) for i in range(4)]
    results = generator.generate(requests)
    outcomes = generator.accepted + sum(generator.rejects.values())
    assert outcomes >= len(requests)  # every request produced either a task or a counted reject
    for request, variations in zip(requests, results, strict=True):
        assert len(variations) <= 2
        for task in variations:  # whatever the tiny model wrote, what passed is grounded and new
            assert task.parent_id == request.seed_task.id
            assert task.instruction != request.seed_task.instruction
    assert set(generator.rejects) <= set(REJECT_REASONS)


def test_worked_examples_come_from_the_seed_actions() -> None:
    seed = grounded("s0", seed=1)  # actions: look | go east | take blue gem
    request = request_for(seed)
    assert worked_examples(request) == ["Go east.", "Take blue gem, then go east."]
    assert worked_examples(request, 1) == ["Go east."]
    assert worked_examples(request, 3) == ["Go east.", "Take blue gem.", "Take blue gem, then go east."]
    assert worked_examples(request, 0) == []
    one_way = State(text="A dark room.", available_actions=("inventory", "look", "go south"))
    alone = TaskGenerationRequest(seed_task=seed, initial_state=one_way)
    assert worked_examples(alone) == ["Go south.", "Go south, then look."]
    assert worked_examples(TaskGenerationRequest(seed_task=seed)) == []
    assert render_list_prompt(request, worked_examples(request)).endswith(
        "Available actions: look | go east | take blue gem\n"
        "# New tasks (one short task per line, using only words above)\n"
        "1. Go east.\n2. Take blue gem, then go east.\n3."
    )


def test_parse_candidates_tags_first_then_the_first_list() -> None:
    assert parse_candidates("1. Go east.\n<task> Look  around </task>") == ["Look around"]
    text = "Here are three tasks:\n\n## 1. **Go east.**\n2) <task>Take the gem.\n- 'Look.'\n\nNote: 4. no\n5. Fly."
    assert parse_candidates(text) == ["Go east.", "Take the gem.", "Look."]
    assert parse_candidates(text, line_fallback=False) == []
    assert parse_candidates("Sure! Go east and take the gem.") == []


def test_plain_list_prompt_prefills_the_next_item_and_counts_every_candidate() -> None:
    seed = grounded("s0", seed=1)  # worked examples: "Go east." / "Take blue gem, then go east."
    answer = (
        " Take blue gem.\n"  # item 3 (the prompt ended with "3.")
        "4. Go east.\n"  # repeats a worked example
        "5. Fly the spaceship to Mars.\n"
        "6. take blue gem\n"  # repeats item 3
        "7. Go east, then go east, then look.\n"
        "8. Go east, th"  # cut off by the token limit
    )
    backend = ScriptedBackend(lambda _p: answer, finished=False)
    generator = LLMTaskGenerator(backend)
    (variations,) = generator.generate([request_for(seed, 5)])
    assert str(backend.prompts[0]).endswith("\n3.")
    assert backend.samplings[0] == Sampling(max_new_tokens=96, temperature=0.4, top_p=0.95, stop=("\n\n", "\n#"))
    assert [v.instruction for v in variations] == ["Take blue gem.", "Go east, then go east, then look."]
    assert all(v.parent_id == "s0" and v.generation == 1 for v in variations)
    assert dict(generator.rejects) == {"duplicate": 2, "out_of_vocabulary": 1, "truncated": 1}
    assert generator.candidates == 6 == generator.accepted + sum(generator.rejects.values())
    assert ("Go east, th", "truncated") in generator.recent_rejects
    # the same answer from a finished completion: the last line is whole, and only grounding judges it
    finished = LLMTaskGenerator(ScriptedBackend(lambda _p: answer + "e\n"))
    (variations,) = finished.generate([request_for(seed, 5)])
    assert [v.instruction for v in variations][-1] == "Go east, the"
    # a quota of 1: the first valid candidate is kept, the rest is not examined
    quota = LLMTaskGenerator(ScriptedBackend(lambda _p: answer))
    (variations,) = quota.generate([request_for(seed, 1)])
    assert [v.instruction for v in variations] == ["Take blue gem."]
    assert quota.candidates == 1 and not quota.rejects


def test_chat_list_prompt_shows_the_examples_as_an_earlier_answer() -> None:
    seed = grounded("s0", seed=1)
    answer = "Here are three new tasks:\n1. Go east.\n2. Take blue gem, then look.\n3. Look.\n\nEnjoy the game!"
    backend = ScriptedBackend(lambda _p: answer, chat=True)
    generator = LLMTaskGenerator(backend)
    (variations,) = generator.generate([request_for(seed)])
    messages = backend.prompts[0]
    assert isinstance(messages, list)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == GENERATOR_LIST_SYSTEM_PROMPT
    assert messages[1]["content"].startswith("# Seed task\nFind the gold coin and take it.\n# Initial state\n")
    assert messages[2]["content"] == "1. Go east.\n2. Take blue gem, then go east."
    assert messages[3]["content"].startswith("Continue the list with 3 new tasks")
    assert backend.samplings[0].stop == ()
    assert [v.instruction for v in variations] == ["Take blue gem, then look.", "Look."]
    assert dict(generator.rejects) == {"duplicate": 1}
    # the zero-shot chat prompt, parsed strictly (tags only), finds nothing in the same answer
    strict = LLMTaskGenerator(ScriptedBackend(lambda _p: answer, chat=True), prompt="tags", line_fallback=False)
    assert strict.generate([request_for(seed)]) == [[]]
    assert dict(strict.rejects) == {"unparseable": 1} and strict.candidates == 1


def test_bad_generator_options_are_refused() -> None:
    backend = ScriptedBackend(lambda _p: "")
    with pytest.raises(ConfigError, match="prompt must be"):
        LLMTaskGenerator(backend, prompt="json")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_examples"):
        LLMTaskGenerator(backend, num_examples=-1)


@pytest.mark.slow
@pytest.mark.pretrained
def test_smollm2_writes_grounded_variations_of_real_textworld_seeds() -> None:
    from dg_models import load_model

    seeds = [Task.model_validate(raw) for raw in json.loads(TEXTWORLD_SEEDS.read_text())]
    loaded = load_model("smollm2", padding_side="left")
    backend = TransformersBackend(loaded.model, loaded.tokenizer, chat=True)
    generator = LLMTaskGenerator(backend)
    generator.sampling = dataclasses.replace(generator.sampling, seed=0)
    requests = [request_for(seed, 3) for seed in seeds]
    results = generator.generate(requests)
    assert generator.candidates >= len(requests)
    assert generator.candidates == generator.accepted + sum(generator.rejects.values())
    assert generator.accepted == sum(len(variations) for variations in results)
    assert set(generator.rejects) <= set(REJECT_REASONS)
    for request, variations in zip(requests, results, strict=True):
        seed = request.seed_task
        vocabulary = vocabulary_of(seed, request.initial_state)
        known = {normalized(seed.instruction)} | {normalized(e) for e in worked_examples(request)}
        assert len(variations) <= 3
        assert len({normalized(v.instruction) for v in variations}) == len(variations)
        for task in variations:
            assert normalized(task.instruction) not in known
            content = [w for w in normalized(task.instruction).split() if w not in STOPWORDS]
            assert content and sum(w in vocabulary for w in content) >= 0.8 * len(content)
            assert (task.parent_id, task.generation, task.env_id) == (seed.id, 1, "textworld")
            assert task.metadata["initial_state"] == seed.metadata["initial_state"]
            assert task.metadata["generated"] is True and task.config == seed.config


def normalized(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))
