"""dg-apps: the ``dg`` command that composes dg's packages into runs (collect, expmodel fit / audit, train,
s2r, eval, demo). Everything here is also callable from Python: ``dg_apps.cli.run_command([...])`` or the
``run_*`` functions with a config model and a :class:`RunDir`."""

from dg_apps.config import (
    AlgorithmConfig,
    AuditConfig,
    CollectConfig,
    CurriculumConfig,
    DemoConfig,
    EnvConfig,
    EvalConfig,
    ExpModelConfig,
    FitConfig,
    PolicyConfig,
    S2RConfig,
    SyntheticConfig,
    TrainConfig,
    load_config,
)
from dg_apps.rundir import RunDir

__version__ = "0.1.0"

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
    "RunDir",
    "S2RConfig",
    "SyntheticConfig",
    "TrainConfig",
    "__version__",
    "load_config",
]
