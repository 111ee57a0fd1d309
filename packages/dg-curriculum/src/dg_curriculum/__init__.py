"""dg-curriculum: dg curriculum: task variations from the experience model, selected by group reward variance.

This distribution is installable now and is filled in by issue 8.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
