from __future__ import annotations

import pytest

from dg_core import ConfigError, list_envs, make_env, register_env, unregister_env
from dg_core.testing import ScriptedEnv


def test_scripted_env_comes_from_the_entry_point() -> None:
    assert "scripted" in list_envs()
    env = make_env("scripted", max_steps=7)
    assert isinstance(env, ScriptedEnv) and env.max_steps == 7


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(ConfigError, match=r"unknown environment 'nope'; available: .*scripted"):
        make_env("nope")


def test_unknown_config_key_names_allowed_keys() -> None:
    with pytest.raises(ConfigError, match=r"'scripted' does not take 'max_step'; allowed keys: max_steps"):
        make_env("scripted", max_step=3)


def test_register_and_overwrite() -> None:
    def factory(*, max_steps: int = 5) -> ScriptedEnv:
        return ScriptedEnv(max_steps=max_steps)

    register_env("test-corridor", factory)
    try:
        register_env("test-corridor", factory)  # same factory again is fine
        with pytest.raises(ConfigError, match="already registered"):
            register_env("test-corridor", ScriptedEnv)
        register_env("test-corridor", ScriptedEnv, overwrite=True)
        assert "test-corridor" in list_envs()
        assert isinstance(make_env("test-corridor"), ScriptedEnv)
    finally:
        unregister_env("test-corridor")
    assert "test-corridor" not in list_envs()


def test_factory_must_return_an_env() -> None:
    register_env("test-bad", lambda: object())
    try:
        with pytest.raises(TypeError, match="returned object, not an Env"):
            make_env("test-bad")
    finally:
        unregister_env("test-bad")
    with pytest.raises(ConfigError, match="non-empty"):
        register_env(" ", ScriptedEnv)
