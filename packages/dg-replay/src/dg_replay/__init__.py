"""dg-replay: experience replay for dg: encoders, USearch vector index, durable storage, top-k
retrieval of real transitions.

This distribution is installable now and is filled in by issue 5.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
