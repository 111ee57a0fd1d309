"""dg-envs: real environments behind the dg Env contract: TextWorld (embedded default), ALFWorld,
WebShop, WebArena via BrowserGym, MiniWoB++; experts and offline collection.

This distribution is installable now and is filled in by issues 3 (text environments) and 4 (web environments).
"""

from dg_envs._collect import CollectionSummary, collect
from dg_envs._collect_worker import NAMED_POLICIES, named_policy
from dg_envs._expert import ExpertPolicy, NoisyExpertPolicy, SupportsExpert

__version__ = "0.1.0"

__all__ = [
    "NAMED_POLICIES",
    "CollectionSummary",
    "ExpertPolicy",
    "NoisyExpertPolicy",
    "SupportsExpert",
    "__version__",
    "collect",
    "named_policy",
]
