"""dg-rl: policies, rollout engine, GRPO / PPO losses and Lightning modules for multi-turn LLM agents.

Trains against any dg-core :class:`~dg_core.Env` or :class:`~dg_core.BatchedEnv`, real or synthetic;
never imports dg-expmodel. Models come from :mod:`dg_models` (re-exported here: ``tiny_causal_lm``,
``train_bpe_tokenizer``, ``load_causal_lm``, ``load_tokenizer``, ``save_model``).
"""

from dg_models import (
    EOS_TOKEN,
    PAD_TOKEN,
    load_causal_lm,
    load_tokenizer,
    save_model,
    tiny_causal_lm,
    train_bpe_tokenizer,
)
from dg_rl._batch import RolloutBatch, build_batch, packed_rows, scatter_units, stats_keys
from dg_rl._data import RolloutDataModule, TaskSource
from dg_rl._lightning import GRPOModule, NonFiniteUpdateError, PPOModule, frozen_reference
from dg_rl._lora import apply_lora
from dg_rl._losses import Aggregation, GRPOLoss, PPOLoss, aggregate, gae, group_advantages, kl_k3
from dg_rl._metrics import SuccessRate
from dg_rl._policy import ActionMode, Decision, LMPolicy, ScoreReduction
from dg_rl._prompt import PromptFormat, parse_action
from dg_rl._rollout import EpisodeRecord, RolloutEngine, Rollouts, RolloutStats, TurnRecord
from dg_rl._sampler import RolloutSampler, Sample, TransformersSampler
from dg_rl._scoring import (
    CompletionScores,
    PackedRows,
    pack_rows,
    reduce_scores,
    sample_completions,
    score_candidates,
    score_completions,
    score_completions_chunked,
)
from dg_rl._sft import behaviour_cloning, demonstrations
from dg_rl._sharding import FSDP2Strategy, full_parameters, full_state_dict, sharded_modules
from dg_rl._units import UnitScores, score_units
from dg_rl._vllm import VLLM_VERSION, VLLMOutputError, VLLMSampler

__version__ = "0.1.0"

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "VLLM_VERSION",
    "ActionMode",
    "Aggregation",
    "CompletionScores",
    "Decision",
    "EpisodeRecord",
    "FSDP2Strategy",
    "GRPOLoss",
    "GRPOModule",
    "LMPolicy",
    "NonFiniteUpdateError",
    "PPOLoss",
    "PPOModule",
    "PackedRows",
    "PromptFormat",
    "RolloutBatch",
    "RolloutDataModule",
    "RolloutEngine",
    "RolloutSampler",
    "RolloutStats",
    "Rollouts",
    "Sample",
    "ScoreReduction",
    "SuccessRate",
    "TaskSource",
    "TransformersSampler",
    "TurnRecord",
    "UnitScores",
    "VLLMOutputError",
    "VLLMSampler",
    "__version__",
    "aggregate",
    "apply_lora",
    "behaviour_cloning",
    "build_batch",
    "demonstrations",
    "frozen_reference",
    "full_parameters",
    "full_state_dict",
    "gae",
    "group_advantages",
    "kl_k3",
    "load_causal_lm",
    "load_tokenizer",
    "pack_rows",
    "packed_rows",
    "parse_action",
    "reduce_scores",
    "sample_completions",
    "save_model",
    "scatter_units",
    "score_candidates",
    "score_completions",
    "score_completions_chunked",
    "score_units",
    "sharded_modules",
    "stats_keys",
    "tiny_causal_lm",
    "train_bpe_tokenizer",
]
