"""dg-rl: dg reinforcement learning: policies, rollout engine, GRPO / PPO losses and Lightning modules.

This distribution is installable now and is filled in by issue 9.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
