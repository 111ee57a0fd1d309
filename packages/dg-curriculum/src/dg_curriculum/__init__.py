"""dg-curriculum: task variations from the experience model, selected by group reward variance.

Paper section 4.2: a :class:`TaskPool` of seed tasks and generated variations with lineage; an
:class:`LLMTaskGenerator` that asks any dg-expmodel backend for variations and validates them; selection
by group reward variance (:func:`select_batch`, Eq. 7) with a temperature, a top fraction, a cap lambda on
the share of generated tasks and a minimum of seed tasks; and the :class:`Curriculum` the RL loop calls.
"""

from dg_curriculum._curriculum import Curriculum, CurriculumStats
from dg_curriculum._generator import (
    GENERATOR_FORMAT_VERSION,
    GENERATOR_LIST_SYSTEM_PROMPT,
    GENERATOR_SYSTEM_PROMPT,
    REJECT_REASONS,
    STOPWORDS,
    LLMTaskGenerator,
    PromptStyle,
    parse_candidates,
    render_generation_prompt,
    render_list_messages,
    render_list_prompt,
    vocabulary_of,
    worked_examples,
)
from dg_curriculum._pool import PoolFileError, TaskPool, TaskRecord, normalize_instruction, world_key
from dg_curriculum._selection import SelectionConfig, group_reward_variance, select_batch, weighted_sample
from dg_curriculum._study import SelectionStudy, compare_to_uniform

__version__ = "0.1.0"

__all__ = [
    "GENERATOR_FORMAT_VERSION",
    "GENERATOR_LIST_SYSTEM_PROMPT",
    "GENERATOR_SYSTEM_PROMPT",
    "REJECT_REASONS",
    "STOPWORDS",
    "Curriculum",
    "CurriculumStats",
    "LLMTaskGenerator",
    "PoolFileError",
    "PromptStyle",
    "SelectionConfig",
    "SelectionStudy",
    "TaskPool",
    "TaskRecord",
    "__version__",
    "compare_to_uniform",
    "group_reward_variance",
    "normalize_instruction",
    "parse_candidates",
    "render_generation_prompt",
    "render_list_messages",
    "render_list_prompt",
    "select_batch",
    "vocabulary_of",
    "weighted_sample",
    "worked_examples",
    "world_key",
]
