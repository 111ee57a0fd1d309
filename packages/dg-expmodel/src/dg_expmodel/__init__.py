"""dg-expmodel: the dg reasoning experience model: prompt format, SFT, inference backends,
SyntheticEnv and fidelity audits.

This distribution is installable now and is filled in by issues 6 and 7.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
