"""dg-core: the types and contracts every DreamGym package shares.

Pydantic models for tasks, abstract states, actions, steps and trajectories; streaming trajectory
files; the template-method :class:`Env` and :class:`BatchedEnv`; the :class:`Policy`,
:class:`ExperienceModel` and :class:`TaskGenerator` protocols; and the environment registry.
Depends on pydantic and the standard library only.
"""

from dg_core._env import BatchedEnv, Env, EnvPool
from dg_core._episode import INVALID_ACTION_FEEDBACK, StepResult
from dg_core._errors import (
    ConfigError,
    DGError,
    EnvClosedError,
    EnvError,
    MissingExtraError,
    ResetNeededError,
    TornTailError,
    TrajectoryFormatError,
    UnsupportedSchemaVersionError,
)
from dg_core._imports import require
from dg_core._io import TrajectoryWriter, parse_trajectory, read_trajectories, repair_jsonl, write_trajectories
from dg_core._policies import RandomPolicy, play_episode
from dg_core._protocols import (
    ExperienceModel,
    ExperiencePrediction,
    ExperienceQuery,
    Policy,
    PolicyRequest,
    TaskGenerationRequest,
    TaskGenerator,
)
from dg_core._registry import ENTRY_POINT_GROUP, list_envs, make_env, register_env, unregister_env
from dg_core._types import (
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    Action,
    Source,
    Split,
    State,
    Step,
    Task,
    Trajectory,
)

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "INVALID_ACTION_FEEDBACK",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "Action",
    "BatchedEnv",
    "ConfigError",
    "DGError",
    "Env",
    "EnvClosedError",
    "EnvError",
    "EnvPool",
    "ExperienceModel",
    "ExperiencePrediction",
    "ExperienceQuery",
    "MissingExtraError",
    "Policy",
    "PolicyRequest",
    "RandomPolicy",
    "ResetNeededError",
    "Source",
    "Split",
    "State",
    "Step",
    "StepResult",
    "Task",
    "TaskGenerationRequest",
    "TaskGenerator",
    "TornTailError",
    "Trajectory",
    "TrajectoryFormatError",
    "TrajectoryWriter",
    "UnsupportedSchemaVersionError",
    "__version__",
    "list_envs",
    "make_env",
    "parse_trajectory",
    "play_episode",
    "read_trajectories",
    "register_env",
    "repair_jsonl",
    "require",
    "unregister_env",
    "write_trajectories",
]
