"""Configs: every error names its key and what is allowed; every shipped config validates without running."""

from __future__ import annotations

from pathlib import Path

import pytest

from dg_apps.cli import COMMANDS, config_path, shipped_configs
from dg_apps.config import DemoConfig, EvalConfig, FitConfig, TrainConfig, apply_overrides, load_config
from dg_core import ConfigError


def test_unknown_key_names_the_key_and_the_allowed_keys(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("algorithm:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, file)
    message = str(error.value)
    assert "algorithm.stepz: unknown key" in message
    assert "steps" in message and "group_size" in message and str(file) in message


def test_bad_value_names_the_key_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.name: Input should be 'grpo' or 'ppo'"):
        load_config(TrainConfig, overrides=["algorithm.name=dpo"])
    with pytest.raises(ConfigError, match=r"where: Input should be 'synthetic' or 'real'"):
        load_config(TrainConfig, overrides=["where=sim"])
    with pytest.raises(ConfigError, match=r"algorithm\.group_size: Input should be greater than or equal to 1"):
        load_config(TrainConfig, overrides=["algorithm.group_size=0"])
    with pytest.raises(ConfigError, match="seeds: Value error, give at least one seed"):
        load_config(EvalConfig, overrides=["seeds=[]"])


def test_unknown_trainer_argument_is_refused_with_lightnings_arguments() -> None:
    with pytest.raises(
        ConfigError, match=r"trainer\.acelerator: not a lightning.Trainer argument; allowed: .*accelerator"
    ):
        load_config(TrainConfig, overrides=["trainer.acelerator=gpu"])


def test_overrides_parse_yaml_values_and_nest() -> None:
    data = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=true", "e=text", "f.g={x: 1}"])
    assert data == {"a": {"b": 3, "c": [1, 2]}, "d": True, "e": "text", "f": {"g": {"x": 1}}}
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["novalue"])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(TrainConfig, bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="a config is a mapping"):
        load_config(TrainConfig, listed)
    with pytest.raises(ConfigError, match="no shipped config of that name"):
        config_path("no-such-config")


# Which command each shipped config is for (by file name prefix).
CONFIG_COMMANDS = {
    "demo": "demo",
    "collect": "collect",
    "expmodel-fit": "expmodel fit",
    "expmodel-audit": "expmodel audit",
    "train": "train",
    "s2r": "s2r",
    "eval": "eval",
}


def _command_of(name: str) -> str:
    stem = name.split("/")[-1]
    for prefix, command in sorted(CONFIG_COMMANDS.items(), key=lambda item: -len(item[0])):
        if stem.startswith(prefix):
            return command
    raise AssertionError(f"shipped config {name} has no command prefix")


def test_every_shipped_config_builds_and_validates() -> None:
    shipped = shipped_configs()
    assert {"demo", "demo-quick"} <= set(shipped)
    assert any(name.startswith("gpu/") for name in shipped), "the GPU configs ship with dg"
    for name, path in shipped.items():
        model = COMMANDS[_command_of(name)][0]
        config = load_config(model, path)  # validates keys, values and lightning.Trainer arguments
        assert isinstance(config, model)


def test_gpu_configs_name_hub_models_a_gpu_strategy_and_vllm() -> None:
    shipped = shipped_configs()
    train = load_config(TrainConfig, shipped["gpu/train-synthetic"])
    assert train.trainer["accelerator"] == "gpu" and train.trainer["strategy"] in ("ddp", "fsdp")
    assert "/" in train.policy.model  # a hub id such as Qwen/Qwen2.5-...
    fit = load_config(COMMANDS["expmodel fit"][0], shipped["gpu/expmodel-fit"])
    assert fit.expmodel.backend == "vllm" and "/" in fit.expmodel.model  # type: ignore[attr-defined]


def test_quick_demo_is_smaller_than_the_demo() -> None:
    shipped = shipped_configs()
    full = load_config(DemoConfig, shipped["demo"])
    quick = load_config(DemoConfig, shipped["demo-quick"])
    assert quick.algorithm.steps < full.algorithm.steps
    assert quick.expmodel.epochs < full.expmodel.epochs
    assert quick.env.games < full.env.games


def test_s2r_real_phase_trains_the_synthetic_policy_in_the_real_env_within_budget(tmp_path: Path) -> None:
    from dg_apps.commands import s2r_real_phase

    synthetic = load_config(
        TrainConfig,
        overrides=["where=synthetic", "expmodel=runs/em", "algorithm.steps=8", "algorithm.group_size=3",
                   "policy.lora=true", "curriculum.enabled=false", "seed=4"],
    )  # fmt: skip
    real = s2r_real_phase(synthetic, tmp_path / "policy", real_steps=2, real_budget=50)
    assert (real.where, real.expmodel, real.real_budget) == ("real", None, 50)
    assert (real.algorithm.steps, real.algorithm.group_size) == (2, 3)
    # The real phase trains the synthetic phase's (merged) policy the same way: new LoRA adapters on top of it.
    assert (real.policy.model, real.policy.lora) == (str(tmp_path / "policy"), True)
    assert (real.curriculum.enabled, real.seed) == (False, 4)
    assert (synthetic.where, synthetic.algorithm.steps, synthetic.policy.lora) == ("synthetic", 8, True)


def test_llm_annotator_is_selectable_and_its_model_defaults_sensibly() -> None:
    fit = load_config(FitConfig, overrides=["expmodel.annotator=llm"])
    assert (fit.expmodel.annotator, fit.expmodel.annotator_model) == ("llm", None)
    assert fit.expmodel.annotator_max_new_tokens == 96
    assert fit.expmodel.annotator_source == "smollm2"  # the tiny experience model cannot explain anything
    own = load_config(FitConfig, overrides=["expmodel.annotator=llm", "expmodel.model=smollm2"])
    assert own.expmodel.annotator_source == "smollm2"
    other = load_config(FitConfig, overrides=["expmodel.model=smollm2", "expmodel.annotator_model=/models/teacher"])
    assert other.expmodel.annotator_source == "/models/teacher"
    assert load_config(FitConfig).expmodel.annotator == "rule"
    with pytest.raises(ConfigError, match=r"expmodel\.annotator: Input should be 'rule' or 'llm' \(got 'gpt'\)"):
        load_config(FitConfig, overrides=["expmodel.annotator=gpt"])
    with pytest.raises(
        ConfigError, match=r"expmodel\.annotator_model: Value error, the LLM annotator needs a pretrained"
    ):
        load_config(FitConfig, overrides=["expmodel.annotator=llm", "expmodel.annotator_model=tiny"])
    with pytest.raises(
        ConfigError, match=r"expmodel\.annotator_max_new_tokens: Input should be greater than or equal to 8"
    ):
        load_config(FitConfig, overrides=["expmodel.annotator_max_new_tokens=2"])
