"""The generate-mode token sampler's two hot spots, before and after, side by side in one run.

1. **The draw** of one token step at batch 64: the former ``torch.multinomial`` on the CPU over the whole
   ``rows x vocab`` probability matrix (``log_dist.exp().cpu()``, as ``sample_completions`` drew until issue 19's
   fix) vs ``dg_rl._scoring.draw_tokens`` (one seeded CPU uniform per row, inverse CDF on the logits' device:
   float64 cumulative sum and ``searchsorted``). Both start from the same float32 log-softmax matrix and include
   its ``exp``; on this machine both run on the CPU (on a GPU the new draw runs there: ``benchmarks/gpu/check.py``
   reports both). Seconds per step: median over ``--repeats`` calls, the two draws alternating.
2. **The prefill's memory**: the first forward of ``sample_completions`` over a left-padded prompt batch, on a
   tiny llama built from a config with a real vocabulary (hidden 64, 2 layers, vocab 49,152 by default), with
   logits at every prompt position (the former prefill) vs ``logits_to_keep=1`` (what the sampler asks for now).
   Each variant runs in a process of its own; the number is the rise of its peak RSS over the call (the peak is
   reset first through Linux's ``/proc/self/clear_refs``; tracemalloc does not see torch's CPU allocations),
   after a warm-up forward. Also
   run: the whole ``sample_completions`` for one new token, with the model made to ignore ``logits_to_keep``
   (what the loop did before) and as it is now.

    python benchmarks/rl/sampler.py [--vocabs 49152 128256] [--repeats 7] [--prefill-batch 16]
        [--prompt-tokens 512] [--prefill-vocab 49152] [--threads 1]

Writes ``benchmarks/results/rl_sampler.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from dg_rl import sample_completions
from dg_rl._scoring import draw_tokens

RESULTS = Path(__file__).resolve().parents[1] / "results"
BATCH = 64
PREFILL_VARIANTS = ("forward_full_logits", "forward_logits_to_keep_1", "sample_full_logits", "sample_logits_to_keep_1")


# -- 1. the draw ----------------------------------------------------------------------------------------------


def old_draw(log_dist: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The former draw: the probability matrix to the CPU, ``torch.multinomial`` there."""
    return torch.multinomial(log_dist.exp().cpu(), 1, generator=generator).squeeze(1).to(log_dist.device)


def time_draws(vocab: int, repeats: int) -> dict[str, Any]:
    logits = torch.randn((BATCH, vocab), generator=torch.Generator().manual_seed(vocab)) * 2.0
    log_dist = torch.log_softmax(logits, dim=-1)
    draws = {"cpu_multinomial": old_draw, "device_inverse_cdf": draw_tokens}
    generators = {name: torch.Generator().manual_seed(0) for name in draws}
    seconds: dict[str, list[float]] = {name: [] for name in draws}
    drawn_logprob: dict[str, list[float]] = {name: [] for name in draws}
    for name, draw in draws.items():  # warm-up
        draw(log_dist, generators[name])
    for _ in range(repeats):
        for name, draw in draws.items():
            started = time.perf_counter()
            ids = draw(log_dist, generators[name])
            seconds[name].append(time.perf_counter() - started)
            drawn_logprob[name].append(float(log_dist.gather(1, ids.unsqueeze(1)).mean()))
    entropy = float(-(log_dist.exp() * log_dist).sum(-1).mean())
    out: dict[str, Any] = {"vocab": vocab, "batch": BATCH, "repeats": repeats, "entropy_nats": entropy}
    for name in draws:
        out[name] = {
            "seconds_per_step_median": statistics.median(seconds[name]),
            "seconds_per_step_min": min(seconds[name]),
            "seconds_per_step_max": max(seconds[name]),
            # Both draw from the same distribution: the mean log-prob of what they drew estimates -entropy.
            "mean_drawn_logprob": statistics.fmean(drawn_logprob[name]),
        }
    out["speedup"] = (
        out["cpu_multinomial"]["seconds_per_step_median"] / out["device_inverse_cdf"]["seconds_per_step_median"]
    )
    return out


# -- 2. the prefill's memory (one variant per process) --------------------------------------------------------


class Prefill(nn.Module):
    """The model, optionally with ``logits_to_keep`` dropped (logits at every position, as the sampler's prefill
    had them); records the shape of the first call's logits."""

    def __init__(self, model: nn.Module, *, keep: bool) -> None:
        super().__init__()
        self.model = model
        self.keep = keep
        self.logits_shape: list[int] | None = None

    def forward(self, **kwargs: Any) -> Any:
        if not self.keep:
            kwargs.pop("logits_to_keep", None)
        outputs = self.model(**kwargs)
        if self.logits_shape is None:
            self.logits_shape = list(outputs.logits.shape)
        return outputs


def tiny_llama(vocab: int) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model: nn.Module = transformers.AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    return model.eval()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> float:
    """Reset the process's peak RSS (Linux: ``5`` to ``/proc/self/clear_refs``); the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        message = f"the prefill memory needs Linux's /proc/self/clear_refs to reset the peak RSS: {error}"
        raise SystemExit(message) from error
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def measure_prefill(variant: str, batch: int, prompt_tokens: int, vocab: int) -> dict[str, Any]:
    """Peak-RSS rise of one prefill variant (run in a process of its own)."""
    model = tiny_llama(vocab)
    ids = torch.Generator().manual_seed(1)
    # Left-padded prompts of 3/4 to all of ``prompt_tokens``, as the sampler pads them.
    prompts = [
        torch.randint(1, vocab, (prompt_tokens - (row % 4) * prompt_tokens // 16,), generator=ids).tolist()
        for row in range(batch)
    ]
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros((batch, width), dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention[row, width - len(prompt) :] = 1
    with torch.no_grad():  # warm-up on a small batch: lazy initialisation outside the measured call
        model(input_ids=input_ids[:1, :8], attention_mask=attention[:1, :8], logits_to_keep=1)
    gc.collect()
    before = reset_peak_rss()
    started = time.perf_counter()
    with torch.no_grad():
        if variant.startswith("forward"):
            keep = {"logits_to_keep": 1} if variant.endswith("keep_1") else {}
            outputs = model(input_ids=input_ids, attention_mask=attention, use_cache=True, **keep)
            logits_shape = list(outputs.logits.shape)
            del outputs
        else:
            prefill = Prefill(model, keep=variant.endswith("keep_1"))
            sample_completions(prefill, prompts, [1] * batch, pad_id=0, generator=torch.Generator().manual_seed(0))
            assert prefill.logits_shape is not None
            logits_shape = prefill.logits_shape
    seconds = time.perf_counter() - started
    after = peak_rss_mib()
    return {
        "variant": variant,
        "batch": batch,
        "prompt_width": width,
        "vocab": vocab,
        "logits_shape": logits_shape,
        "logits_mib": batch * logits_shape[1] * vocab * 4 / 2**20,
        "rss_before_mib": before,
        "peak_rss_mib": after,
        "peak_rise_mib": after - before,
        "seconds": seconds,
    }


def prefill_variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each variant in a fresh process: memory freed by one variant and kept by the allocator would hide the next
    one's needs."""
    rows = []
    for variant in PREFILL_VARIANTS:
        command = [sys.executable, __file__, "--prefill-variant", variant, "--threads", str(args.threads)]
        command += ["--prefill-batch", str(args.prefill_batch), "--prompt-tokens", str(args.prompt_tokens)]
        command += ["--prefill-vocab", str(args.prefill_vocab)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"prefill variant {variant} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"prefill {variant}: peak RSS +{rows[-1]['peak_rise_mib']:.1f} MiB", flush=True)
    return rows


# -- report ---------------------------------------------------------------------------------------------------


def rise_below_one(report: dict[str, Any], kind: str) -> bool:
    return any(row["variant"] == f"{kind}_logits_to_keep_1" and row["peak_rise_mib"] < 1.0 for row in report["prefill"])


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"Generate-mode sampler, before / after (issue 19), {machine['threads']} CPU thread(s), torch "
        f"{machine['torch']}, transformers {machine['transformers']}; `{report['command']}`.",
        "",
        f"Draw of one token step, batch {BATCH}, both on the CPU (median over {report['config']['repeats']} calls, "
        "min-max):",
        "",
        "| vocab | CPU multinomial (before) s/step | inverse CDF (now) s/step | speedup | mean drawn log-prob "
        "before / now | -entropy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["draw"]:
        old, new = row["cpu_multinomial"], row["device_inverse_cdf"]
        lines.append(
            f"| {row['vocab']:,} | {old['seconds_per_step_median']:.4f} ({old['seconds_per_step_min']:.4f}-"
            f"{old['seconds_per_step_max']:.4f}) | {new['seconds_per_step_median']:.4f} "
            f"({new['seconds_per_step_min']:.4f}-{new['seconds_per_step_max']:.4f}) | {row['speedup']:.1f}x | "
            f"{old['mean_drawn_logprob']:.3f} / {new['mean_drawn_logprob']:.3f} | {-row['entropy_nats']:.3f} |"
        )
    prefill = {row["variant"]: row for row in report["prefill"]}
    first = report["prefill"][0]
    lines += [
        "",
        f"Prefill peak memory, tiny llama (hidden 64, 2 layers, vocab {first['vocab']:,}), batch {first['batch']} x "
        f"{first['prompt_width']} prompt tokens (left-padded), float32; rise of the process's peak RSS over the call "
        "(peak reset before it), each variant in a process of its own:",
        "",
        "| call | logits | logits MiB | peak RSS rise MiB | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant in PREFILL_VARIANTS:
        row = prefill[variant]
        lines.append(
            f"| {variant} | {'x'.join(str(n) for n in row['logits_shape'])} | {row['logits_mib']:.1f} | "
            f"{row['peak_rise_mib']:.1f} | {row['seconds']:.2f} |"
        )
    lines.append("")
    for kind in ("forward", "sample"):
        floored = " (at least: the smaller rise is below 1 MiB, counted as 1)" if rise_below_one(report, kind) else ""
        ratio = report["prefill_ratio"][kind]
        lines.append(f"- {kind}: peak rise with full logits / with logits_to_keep=1 = {ratio:.0f}x{floored}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--vocabs", type=int, nargs="+", default=[49152, 128256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--prefill-batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--prefill-vocab", type=int, default=49152)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--prefill-variant", choices=PREFILL_VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prefill_variant is not None:  # a child process: one prefill variant, printed as one JSON line
        row = measure_prefill(args.prefill_variant, args.prefill_batch, args.prompt_tokens, args.prefill_vocab)
        print(json.dumps(row))
        return
    draw = []
    for vocab in args.vocabs:
        draw.append(time_draws(vocab, args.repeats))
        row = draw[-1]
        print(
            f"vocab {vocab}: CPU multinomial {row['cpu_multinomial']['seconds_per_step_median']:.4f} s/step, "
            f"inverse CDF {row['device_inverse_cdf']['seconds_per_step_median']:.4f} s/step "
            f"({row['speedup']:.1f}x)",
            flush=True,
        )
    prefill = prefill_variants(args)
    rise = {row["variant"]: row["peak_rise_mib"] for row in prefill}
    report = {
        "command": " ".join(["python benchmarks/rl/sampler.py", *sys.argv[1:]]),
        "config": {key: value for key, value in vars(args).items() if key not in ("out", "prefill_variant")},
        "draw": draw,
        "prefill": prefill,
        # The denominator floored at 1 MiB: a rise below it is the allocator's noise (pages it already held).
        "prefill_ratio": {
            kind: rise[f"{kind}_full_logits"] / max(rise[f"{kind}_logits_to_keep_1"], 1.0)
            for kind in ("forward", "sample")
        },
        "machine": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rl_sampler.json").write_text(json.dumps(report, indent=1))
    (args.out / "rl_sampler.md").write_text(table + "\n")
    print("\n" + table + f"\n\nresults in {args.out / 'rl_sampler'}.{{json,md}}")


if __name__ == "__main__":
    main()
