"""The prepared GPU check (``benchmarks/gpu/check.py``, issue 19 item 6) at its tiny CPU size.

The device machine runs the full size through ``benchmarks/gpu/run.sh``; here every phase runs on two tiny
llama shapes, and the JSON it writes must hold every phase with sane values. The two real shapes are built on
the meta device and must have the published parameter counts of the models they stand for.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "check.py"
COMMAND = [
    sys.executable,
    str(CHECK),
    "--device",
    "cpu",
    "--size",
    "tiny",
    "--precision",
    "bf16-mixed",
    "--threads",
    "1",
]
pytestmark = pytest.mark.skipif(not CHECK.exists(), reason="needs the repository's benchmarks/ folder")


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dg_gpu_check", CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def llama_parameters(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> int:
    """Parameters of a llama decoder with tied embeddings, from its shape."""
    head_dim = hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden
    return vocab * hidden + layers * per_layer + hidden


def test_the_real_shapes_have_the_published_sizes() -> None:
    check = _load_check()
    tokenizer = check.train_bpe_tokenizer(["go east", "take the gold coin"] * 4, vocab_size=300)
    counts = {
        name: check.parameter_count(check.build_model(check.SHAPES[name], tokenizer, torch.device("meta")))
        for name in ("smollm2-135m", "llama-3.2-1b")
    }
    # SmolLM2-135M and Llama-3.2-1B (tied embeddings) as published.
    assert counts == {"smollm2-135m": 134_515_008, "llama-3.2-1b": 1_235_814_400}


def test_tiny_cpu_run_writes_every_phase(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DG_COMMIT": "test"}
    done = subprocess.run(
        # bf16-mixed as on the GPU (Lightning autocasts to bf16 on CPU too), so the same precision path runs here.
        [*COMMAND, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["complete"] is True and data["size"] == "tiny" and data["commit"] == "test"
    assert data["device"]["kind"] == "cpu" and data["precision"] == "bf16-mixed"
    assert set(data["versions"]) >= {"python", "torch", "transformers", "lightning", "peft"}

    rows = {(row["phase"], row["model"], row["dtype"]): row for row in data["phases"]}
    expected = {
        ("generate", "tiny-a", "bf16 weights"),
        ("generate", "tiny-a", "fp32 weights"),
        ("grpo", "tiny-a", "bf16-mixed"),
        ("sft", "tiny-a", "bf16-mixed"),
        ("synthetic_grpo_step", "tiny-a", "bf16-mixed"),
        ("generate", "tiny-b", "bf16 weights"),
        ("generate", "tiny-b", "fp32 weights"),
        ("grpo", "tiny-b", "bf16-mixed"),
        ("sft", "tiny-b", "bf16-mixed"),
    }
    assert set(rows) == expected and len(data["phases"]) == len(expected)
    plan = data["plan"]
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row.get("error"), row.get("traceback"))
        assert row["device"] == "cpu"
        assert row["tokens"] > 0 and row["seconds"] > 0, key
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"]), key
        assert row["peak_memory_gib"] > 0 and row["memory_kind"], key
        shape = row["shape"]
        assert row["parameters"] == llama_parameters(
            shape["vocab"],
            shape["hidden"],
            shape["layers"],
            shape["heads"],
            shape["kv_heads"],
            shape["intermediate"],
        ), key

    for model in ("tiny-a", "tiny-b"):
        for dtype in ("bf16 weights", "fp32 weights"):
            generate = rows[("generate", model, dtype)]
            assert generate["batch"] == 64 and generate["sampler"] == "TransformersSampler"
            assert 0 < generate["max_new_tokens"] <= plan["gen_tokens"] == generate["planned_new_tokens"]
            assert 0 < generate["tokens"] <= 64 * generate["max_new_tokens"]
            assert generate["seconds_per_step"] > 0 and generate["cpu_draw_s_per_step"] > 0
            assert generate["device_draw_s_per_step"] > 0
        grpo = rows[("grpo", model, "bf16-mixed")]
        assert grpo["batch"] == plan["grpo_tasks"] * plan["grpo_group"]
        assert grpo["updates_measured"] == plan["grpo_steps"]
        assert math.isfinite(grpo["loss"]) and grpo["rollout_generation_tokens_per_s"] > 0
        sft = rows[("sft", model, "bf16-mixed")]
        assert sft["steps_measured"] == plan["sft_steps"] and sft["batch"] == plan["sft_batch"]
        assert sft["deterministic"] is True and 0 < sft["loss"] < 20  # cross-entropy of an untrained model
    assert (
        rows[("generate", "tiny-b", "fp32 weights")]["parameters"]
        > rows[("generate", "tiny-a", "fp32 weights")]["parameters"]
    )

    step: dict[str, Any] = rows[("synthetic_grpo_step", "tiny-a", "bf16-mixed")]
    assert math.isfinite(step["loss"]) and step["policy_on"] == "cpu"
    assert step["episodes"] == step["batch"] == plan["synthetic_tasks"] * plan["synthetic_group"]
    assert step["replay_real_transitions"] > 0
    assert step["expmodel_queries"] == step["synthetic_steps"] > 0
    assert step["expmodel_matched"] + step["expmodel_fallbacks"] == step["expmodel_queries"]
    assert step["expmodel_matched"] > 0  # the buffer's real transitions ground some synthetic steps
    if step["groups_with_reward_spread"] > 0:  # a non-zero advantage moves the weights
        assert step["weights_changed"] is True

    table = (tmp_path / "gpu_check.md").read_text()
    assert "(tiny size, complete)" in table
    assert sum(1 for line in table.splitlines() if line.startswith("| ") and "| ok |" in line) == len(expected)
