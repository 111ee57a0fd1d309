"""Named construction of environments: ``make_env("textworld", **config)``.

Environments register in code with :func:`register_env`, or from any installed distribution through
the ``dg.envs`` entry-point group (``name = "package.module:factory"``), which is loaded on the first
lookup of a name that is not yet registered.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from dg_core._env import BatchedEnv, Env
from dg_core._errors import ConfigError

ENTRY_POINT_GROUP = "dg.envs"

EnvFactory = Callable[..., Env | BatchedEnv]

_registry: dict[str, EnvFactory] = {}
_lock = threading.Lock()


def register_env(name: str, factory: EnvFactory, *, overwrite: bool = False) -> None:
    """Make ``factory`` constructible as ``make_env(name, **config)``.

    Args:
        name: Registry name (``"textworld"``).
        factory: Class or function taking keyword configuration and returning an env.
        overwrite: Replace an existing registration instead of refusing it.
    """
    if not name or not name.strip():
        raise ConfigError("an environment name must be a non-empty string")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} is not callable")
    with _lock:
        if name in _registry and not overwrite and _registry[name] is not factory:
            raise ConfigError(f"environment {name!r} is already registered; pass overwrite=True to replace it")
        _registry[name] = factory


def unregister_env(name: str) -> None:
    """Remove a registration (mostly for tests)."""
    with _lock:
        _registry.pop(name, None)


def _entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def list_envs() -> list[str]:
    """Names constructible with :func:`make_env`: registered ones and installed entry points."""
    return sorted(set(_registry) | set(_entry_points()))


def _lookup(name: str) -> EnvFactory:
    with _lock:
        registered = _registry.get(name)
    if registered is not None:
        return registered
    point = _entry_points().get(name)
    if point is None:
        known = ", ".join(list_envs()) or "none"
        raise ConfigError(f"unknown environment {name!r}; available: {known}")
    loaded = point.load()
    if not callable(loaded):
        raise ConfigError(f"entry point {point.value!r} for environment {name!r} is not callable")
    register_env(name, loaded)
    return loaded  # type: ignore[no-any-return]  # checked callable above; entry points are untyped


def _check_config(name: str, factory: EnvFactory, config: dict[str, Any]) -> None:
    """Reject unknown keys with the allowed ones, before the factory runs."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    allowed = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ConfigError(
            f"environment {name!r} does not take {', '.join(map(repr, unknown))}; allowed keys: {', '.join(allowed)}"
        )


def make_env(name: str, /, **config: Any) -> Env | BatchedEnv:
    """Construct the environment registered as ``name`` with keyword ``config``."""
    factory = _lookup(name)
    _check_config(name, factory, config)
    env = factory(**config)
    if not isinstance(env, Env | BatchedEnv):
        raise TypeError(f"factory for {name!r} returned {type(env).__name__}, not an Env or BatchedEnv")
    return env
