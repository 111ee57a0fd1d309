"""dg-expmodel: the reasoning experience model of DreamGym (paper section 4.1).

The versioned prompt / response format and its strict parser, reasoning annotators, inference backends
(transformers, vLLM, OpenAI-compatible HTTP, plus a small OpenAI-compatible server), the LLM experience
model with retries and failure states, SFT (``dg-expmodel[train]``, imported on first use), tiny models
for offline machines, the synthetic environment, and the controlled-error simulator (``PerturbedEnv``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dg_expmodel._annotate import (
    ANNOTATION_SYSTEM_PROMPT,
    AnnotationRecord,
    Annotator,
    LLMAnnotator,
    RuleBasedAnnotator,
    annotation_request,
    step_key,
)
from dg_expmodel._audit import (
    ABLATIONS,
    FAILURE_TYPES,
    Ablation,
    OpenLoop,
    SimulatorScale,
    TeacherForced,
    hallucinated_entities,
    transition_error,
)
from dg_expmodel._audit_metrics import BinaryStats, TagStats, content_words, mmd_permutation_test, set_f1, token_f1
from dg_expmodel._audit_report import AuditReport, AuditRow, audit_experience_model, write_report
from dg_expmodel._backends import (
    STOP,
    BackendHTTPError,
    Completion,
    GenerationBackend,
    OpenAICompatibleBackend,
    Prompt,
    Sampling,
    TransformersBackend,
    VLLMBackend,
)
from dg_expmodel._fields import (
    DETERMINED_SPLITS,
    FIELD_TARGETS,
    NEXT_STATE_FIELDS,
    TRANSITION_CLASSES,
    FieldFidelity,
    FieldScores,
    StepFields,
    revealed_fields,
    state_fields,
    transition_class,
)
from dg_expmodel._format import (
    EMPTY_REASONING,
    FORMAT_VERSION,
    FREE_TEXT,
    OPTIONAL_TAGS,
    RESPONSE_TAGS,
    SYSTEM_PROMPT,
    PromptOptions,
    build_messages,
    format_reward,
    render_prompt,
    render_prompt_body,
    render_response,
    target_of,
)
from dg_expmodel._model import ExperienceModelStats, LLMExperienceModel
from dg_expmodel._nearest import ExactFirstModel, NearestExperienceModel, exact_match
from dg_expmodel._outcome_head import OutcomeHead, OutcomeHeadModel
from dg_expmodel._parse import (
    BINARY_REWARDS,
    DEFAULT_REWARD_RANGE,
    PARSE_ERRORS,
    ParseResult,
    RewardRange,
    check_reward_range,
    failure_prediction,
    parse_response,
)
from dg_expmodel._perturbed import (
    REWARD_ERRORS,
    TRANSITION_ERRORS,
    PerturbationStats,
    PerturbedEnv,
    action_objects,
    drop_object,
    state_objects,
)
from dg_expmodel._policy_fidelity import (
    SUCCESS_GAP_TARGET,
    EpisodeOutcomes,
    Interval,
    PolicyComparison,
    PolicyFidelity,
    PolicyFidelitySetup,
    PolicyMaker,
    mean_interval,
    policy_fidelity,
    student_t_quantile,
)
from dg_expmodel._replay import ReplayRetriever, ReplayWriteBack
from dg_expmodel._run import (
    RUN_SETTINGS,
    ExperienceRun,
    RunSyntheticEnv,
    copy_replay,
    load_experience_run,
    synthetic_env,
)
from dg_expmodel._serve import ModelServer
from dg_expmodel._sft import SFTExample, examples_from_trajectories, tokenize_examples
from dg_expmodel._synthetic import (
    INITIAL_STATE_KEY,
    IRREVERSIBLE_MODES,
    NO_ACTIONS,
    BatchedSyntheticEnv,
    IrreversibleMode,
    IrreversibleStats,
    SyntheticEnv,
    initial_state_from_metadata,
    with_initial_state,
)
from dg_expmodel._tiny import load_tokenizer, tiny_causal_lm, train_tokenizer
from dg_expmodel._trace_check import CAUSAL_CONNECTIVES, COPY_SHARE, REJECT_REASONS, check_trace, copies_outcome

if TYPE_CHECKING:
    from dg_expmodel._train import ExperienceModelSFT, FitResult, LoraSettings, fit_experience_model, save_hf_directory

__version__ = "0.1.0"

_TRAINING = ("ExperienceModelSFT", "FitResult", "LoraSettings", "fit_experience_model", "save_hf_directory")

__all__ = [
    "ABLATIONS",
    "ANNOTATION_SYSTEM_PROMPT",
    "BINARY_REWARDS",
    "CAUSAL_CONNECTIVES",
    "COPY_SHARE",
    "DEFAULT_REWARD_RANGE",
    "DETERMINED_SPLITS",
    "EMPTY_REASONING",
    "FAILURE_TYPES",
    "FIELD_TARGETS",
    "FORMAT_VERSION",
    "FREE_TEXT",
    "INITIAL_STATE_KEY",
    "IRREVERSIBLE_MODES",
    "NEXT_STATE_FIELDS",
    "NO_ACTIONS",
    "OPTIONAL_TAGS",
    "PARSE_ERRORS",
    "REJECT_REASONS",
    "RESPONSE_TAGS",
    "REWARD_ERRORS",
    "RUN_SETTINGS",
    "STOP",
    "SUCCESS_GAP_TARGET",
    "SYSTEM_PROMPT",
    "TRANSITION_CLASSES",
    "TRANSITION_ERRORS",
    "Ablation",
    "AnnotationRecord",
    "Annotator",
    "AuditReport",
    "AuditRow",
    "BackendHTTPError",
    "BatchedSyntheticEnv",
    "BinaryStats",
    "Completion",
    "EpisodeOutcomes",
    "ExactFirstModel",
    "ExperienceModelSFT",
    "ExperienceModelStats",
    "ExperienceRun",
    "FieldFidelity",
    "FieldScores",
    "FitResult",
    "GenerationBackend",
    "Interval",
    "IrreversibleMode",
    "IrreversibleStats",
    "LLMAnnotator",
    "LLMExperienceModel",
    "LoraSettings",
    "ModelServer",
    "NearestExperienceModel",
    "OpenAICompatibleBackend",
    "OpenLoop",
    "OutcomeHead",
    "OutcomeHeadModel",
    "ParseResult",
    "PerturbationStats",
    "PerturbedEnv",
    "PolicyComparison",
    "PolicyFidelity",
    "PolicyFidelitySetup",
    "PolicyMaker",
    "Prompt",
    "PromptOptions",
    "ReplayRetriever",
    "ReplayWriteBack",
    "RewardRange",
    "RuleBasedAnnotator",
    "RunSyntheticEnv",
    "SFTExample",
    "Sampling",
    "SimulatorScale",
    "StepFields",
    "SyntheticEnv",
    "TagStats",
    "TeacherForced",
    "TransformersBackend",
    "VLLMBackend",
    "__version__",
    "action_objects",
    "annotation_request",
    "audit_experience_model",
    "build_messages",
    "check_reward_range",
    "check_trace",
    "content_words",
    "copies_outcome",
    "copy_replay",
    "drop_object",
    "exact_match",
    "examples_from_trajectories",
    "failure_prediction",
    "fit_experience_model",
    "format_reward",
    "hallucinated_entities",
    "initial_state_from_metadata",
    "load_experience_run",
    "load_tokenizer",
    "mean_interval",
    "mmd_permutation_test",
    "parse_response",
    "policy_fidelity",
    "render_prompt",
    "render_prompt_body",
    "render_response",
    "revealed_fields",
    "save_hf_directory",
    "set_f1",
    "state_fields",
    "state_objects",
    "step_key",
    "student_t_quantile",
    "synthetic_env",
    "target_of",
    "tiny_causal_lm",
    "token_f1",
    "tokenize_examples",
    "train_tokenizer",
    "transition_class",
    "transition_error",
    "with_initial_state",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        from dg_core import require

        require("lightning", distribution="dg-expmodel", extra="train", purpose="Experience-model SFT")
        from dg_expmodel import _train

        return getattr(_train, name)
    raise AttributeError(f"module 'dg_expmodel' has no attribute {name!r}")
