"""Truth for the planner's memory model: predicted vs measured peak memory of a real model.

Builds two small random-weight models in the shapes the catalog cares about (a dense MHA model like
deepseek-llm, and a DeepSeek-V3-architecture model with MLA and routed experts), loads each with
`from_pretrained` like the daemon does, fills a preallocated KV cache (like the engine's paged cache) with
`batch` prompts of `context` tokens prefilled in chunks, decodes two tokens, and compares the peak with
`deepseek_node.planner.memory.estimate` for the same workload.

Every point runs in a fresh process, so one point's allocator state cannot flatter the next. On the CPU the
measure is the process's peak resident set (VmHWM) over serving, everything included (Python, torch,
transformers, weights, cache, activations); the peak is reset after loading, since loading transients are
the loader's business and not what a node must hold while it serves. On a GPU it is
`torch.cuda.max_memory_allocated` against the model's weights + KV cache + activations, and the CUDA
context's size against the planner's per-GPU overhead.

    .venv/bin/python benchmarks/planner_memory.py            # CPU points (and GPU points if CUDA is there)
    .venv/bin/python benchmarks/planner_memory.py --quick    # two points per model
    .venv/bin/python benchmarks/planner_memory.py --json out.json

It prints ratios; it is not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CHUNK = 256  # prompt tokens per sequence per prefill step
DECODE_STEPS = 2
# (context tokens, concurrent sequences)
POINTS = [(512, 1), (2048, 4), (4096, 2), (2048, 8)]
QUICK_POINTS = [(512, 1), (2048, 4)]


def _dense_config() -> Any:
    from transformers import LlamaConfig

    # deepseek-llm-7b's shape (MHA, SwiGLU, untied head), scaled down: KV cache 48 KiB/token in fp32.
    return LlamaConfig(
        vocab_size=8192,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )


def _mla_moe_config() -> Any:
    from transformers import DeepseekV3Config

    # DeepSeek-V3's shape scaled down: MLA latent + rope key, a dense first layer, routed + shared experts.
    return DeepseekV3Config(
        vocab_size=8192,
        hidden_size=768,
        intermediate_size=2048,
        moe_intermediate_size=384,
        num_hidden_layers=8,
        num_attention_heads=12,
        num_key_value_heads=12,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=384,
        kv_lora_rank=256,
        qk_rope_head_dim=32,
        qk_nope_head_dim=64,
        v_head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )


def _gqa_config() -> Any:
    from transformers import Qwen2Config

    # The R1-Distill-Qwen shape (GQA with 4 query heads per KV head, q/k/v biases), other sizes than the two
    # above: the CPU constants were fitted on those two, this one checks them.
    return Qwen2Config(
        vocab_size=16384,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=6,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )


MODELS = {"dense-mha": _dense_config, "mla-moe": _mla_moe_config, "gqa": _gqa_config}


def build_models(workdir: Path) -> dict[str, Path]:
    """Random-weight checkpoints on disk (safetensors + config.json), made once per run."""
    import torch
    from transformers import AutoModelForCausalLM

    paths = {}
    for name, make_config in MODELS.items():
        path = workdir / name
        if not (path / "config.json").is_file():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(make_config(), dtype=torch.float32)
            model.save_pretrained(path)
            del model
        paths[name] = path
    return paths


# --- One measurement, in its own process. ---


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def measure(path: str, context: int, batch: int, device: str) -> dict[str, Any]:
    import ctypes

    import torch
    from transformers import AutoModelForCausalLM, StaticCache

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, disable_mmap=True).eval()
    if device == "cpu":
        # Loading leaves freed fragments in glibc's heaps; a serving node would not hold them either.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        loaded = _status_kib("VmRSS") * 1024
        _reset_peak()
    else:
        model = model.to(device)
        torch.cuda.synchronize()
        free_before, total = torch.cuda.mem_get_info()
        allocated_before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator().manual_seed(0)
    cache = StaticCache(config=model.config, max_cache_len=context + DECODE_STEPS)
    with torch.no_grad():
        out = None
        for start in range(0, context, CHUNK):
            n = min(CHUNK, context - start)
            ids = torch.randint(10, 8000, (batch, n), generator=gen).to(device)
            positions = torch.arange(start, start + n, device=device).unsqueeze(0).expand(batch, -1)
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, position_ids=positions)
        for step in range(DECODE_STEPS):
            assert out is not None
            ids = out.logits[:, -1:].argmax(-1)
            positions = torch.full((batch, 1), context + step, device=device)
            out = model(input_ids=ids, cache=cache, use_cache=True, position_ids=positions)
    result: dict[str, Any] = {"context": context, "batch": batch, "device": device}
    if device == "cpu":
        result["measured_bytes"] = _status_kib("VmHWM") * 1024
        result["loaded_bytes"] = loaded
    else:
        torch.cuda.synchronize()
        result["measured_bytes"] = torch.cuda.max_memory_allocated()
        # What the process holds on the GPU beyond its tensors: CUDA context, cuBLAS workspace, caching slack.
        result["gpu_context_bytes"] = (total - free_before) - allocated_before
    return result


# --- Prediction and report. ---


def predict(path: Path, context: int, batch: int, device: str) -> dict[str, int]:
    from deepseek_node.planner import HARDWARE_PROFILES, Precision, Workload, estimate, load_model_dir

    model = load_model_dir(path)
    profile = HARDWARE_PROFILES["cpu-only" if device == "cpu" else "h100-pcie-80g-x1"]
    profile = replace(profile, host_memory_gib=1024.0)  # capacity does not enter the prediction
    work = replace(Workload.prefill(context + DECODE_STEPS, batch, CHUNK), attended=context + DECODE_STEPS)
    est = estimate(model, profile, Precision.FP32, 1, 1, work)
    return {
        "weights": est.weights,
        "kv_cache": est.kv_cache,
        "activations": est.activations,
        "overhead": est.overhead,
        "total": est.total if device == "cpu" else est.total - est.overhead,
    }


def run_point(path: Path, context: int, batch: int, device: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", str(path), str(context), str(batch), device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["predicted"] = predict(path, context, batch, device)
    result["ratio"] = result["predicted"]["total"] / result["measured_bytes"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--measure", nargs=4, metavar=("PATH", "CONTEXT", "BATCH", "DEVICE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--quick", action="store_true", help="two points per model")
    parser.add_argument("--workdir", type=Path, help="keep the built models here (default: a temp dir)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.measure:
        path, context, batch, device = args.measure
        print(json.dumps(measure(path, int(context), int(batch), device)))
        return 0

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "auto":
        devices = [args.device]
    points = QUICK_POINTS if args.quick else POINTS
    mib = 1024**2
    results = []
    with tempfile.TemporaryDirectory(prefix="planner-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        paths = build_models(workdir)
        print(f"{'device':6} {'model':10} {'context':>7} {'batch':>5} {'predicted MiB':>13} {'measured MiB':>12} "
              f"{'ratio':>6}   prediction = weights + KV + activations + overhead (MiB)")  # fmt: skip
        for device in devices:
            for name, path in paths.items():
                for context, batch in points:
                    r = run_point(path, context, batch, device)
                    r["model"] = name
                    results.append(r)
                    p = r["predicted"]
                    parts = " + ".join(
                        f"{p[k] / mib:.0f}" for k in ("weights", "kv_cache", "activations", "overhead")
                    )
                    print(f"{device:6} {name:10} {context:>7} {batch:>5} {p['total'] / mib:>13.0f} "
                          f"{r['measured_bytes'] / mib:>12.0f} {r['ratio']:>6.3f}   {parts}", flush=True)  # fmt: skip
                    if device == "cuda":
                        print(f"{'':6} CUDA context measured {r['gpu_context_bytes'] / mib:.0f} MiB")
    worst = max(abs(r["ratio"] - 1) for r in results if r["device"] == "cpu")
    print(f"worst CPU deviation: {worst:.1%} (target: within 10%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
