"""``policy.sampler``: the transformers sampler by default; vLLM refused, naming why, where it cannot run."""

from __future__ import annotations

import importlib.util

import pytest

from dg_apps.config import DemoConfig, S2RConfig, TrainConfig, load_config
from dg_apps.models import rollout_sampler
from dg_core import ConfigError


def test_the_default_sampler_is_transformers() -> None:
    config = load_config(TrainConfig)
    assert config.policy.sampler == "transformers"
    assert rollout_sampler(object(), config.policy, seed=0) is None  # LMPolicy builds its TransformersSampler


def test_vllm_on_a_cpu_trainer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"policy.sampler=vllm runs a vLLM engine on the GPU.*accelerator is 'cpu'"):
        load_config(TrainConfig, overrides=["policy.sampler=vllm"])
    with pytest.raises(ConfigError, match=r"accelerator is 'cpu'"):
        load_config(DemoConfig, overrides=["policy.sampler=vllm"])
    with pytest.raises(ConfigError, match=r"accelerator is 'cpu'"):
        load_config(S2RConfig, overrides=["train.policy.sampler=vllm"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_installed_is_refused_with_the_install_command() -> None:
    with pytest.raises(ConfigError, match=r'needs vLLM, which is not installed: pip install "dg-apps\[gpu\]"'):
        load_config(TrainConfig, overrides=["policy.sampler=vllm", "trainer.accelerator=gpu"])


def test_vllm_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"policy\.vllm\.gpu_memory_utilization: Input should be less than"):
        load_config(TrainConfig, overrides=["policy.vllm.gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match=r"policy\.vllm\.sleep_level: Input should be 1 or 2"):
        load_config(TrainConfig, overrides=["policy.vllm.sleep_level=3"])
    with pytest.raises(ConfigError, match=r"policy\.vllm\.max_model_len: Input should be greater than"):
        load_config(TrainConfig, overrides=["policy.vllm.max_model_len=0"])
