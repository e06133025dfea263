"""Serving benchmark: the daemon over HTTPS vs sequential `model.generate`, same model, prompts, tokens.

    .venv/bin/python benchmarks/serving.py                       # tiny DeepSeek-V3 model (step engine)
    .venv/bin/python benchmarks/serving.py --arch llama          # tiny Llama (transformers CB backend)
    .venv/bin/python benchmarks/serving.py --model-dir DIR       # any local model directory

What it prints (see benchmarks/README.md for how to read it):
* tokens/s at 1, 16 and 64 concurrent streams through the daemon (a separate process, TLS, API key,
  streaming SSE), and the ratio to sequential greedy `model.generate` in one process;
* TTFT p50/p99 per concurrency level;
* the per-request HTTP/TLS/auth overhead: p50 latency of a 1-token request over a kept-alive HTTPS
  connection (and over a fresh connection) minus p50 of the same call into an in-process engine;
* the same levels against `transformers serve --continuous-batching` when it starts here.

Outputs are greedy so both sides produce the same tokens (the tests check they are identical); token
counts are what each side actually produced. Traffic goes to 127.0.0.1 only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import yaml
from _load import free_port, jobs_for, make_cert, pct, run_level

REPO = Path(__file__).resolve().parents[1]
KEY = "dsn-bench-key"
# ------------------------------------------------------------------------------------- baseline


def sequential_generate(
    model_dir: Path, jobs: list[tuple[str, int]], threads: int
) -> tuple[float, int, float]:
    """Greedy model.generate, one request after another: (tokens/s, tokens, seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)  # the same intra-op threads the daemon's engine gets
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    encoded = [
        (
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            ),
            n,
        )
        for p, n in jobs
    ]
    with torch.inference_mode():
        model.generate(torch.tensor([encoded[0][0]]), max_new_tokens=4, do_sample=False)  # warm-up
        tokens = 0
        t0 = time.perf_counter()
        for ids, n in encoded:
            out = model.generate(torch.tensor([list(ids)]), max_new_tokens=n, do_sample=False)
            tokens += out.shape[1] - len(ids)
        dt_ = time.perf_counter() - t0
    return tokens / dt_, tokens, dt_


# ------------------------------------------------------------------------------------- overhead


def overhead(
    base: str, model: str, verify: Any, model_dir: Path, threads: int, n: int = 200
) -> dict[str, float]:
    """p50 of a 1-token chat request over HTTPS (kept-alive and fresh connection) vs in-process."""
    from deepseek_node.daemon.engines.builtin.assemble import build_engine
    from deepseek_node.daemon.runtime import prepare
    from deepseek_node.daemon.testing import config_for

    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 1,
        "temperature": 0,
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    keep: list[float] = []
    with httpx.Client(base_url=base, verify=verify, timeout=30) as c:
        for i in range(n + 10):
            t0 = time.perf_counter()
            r = c.post("/v1/chat/completions", headers=headers, json=body)
            if i >= 10:
                keep.append(time.perf_counter() - t0)
            r.raise_for_status()
    fresh: list[float] = []
    for _ in range(min(n, 50)):
        with httpx.Client(base_url=base, verify=verify, timeout=30) as c:
            t0 = time.perf_counter()
            c.post("/v1/chat/completions", headers=headers, json=body).raise_for_status()
            fresh.append(time.perf_counter() - t0)

    cfg = config_for(model_dir, KEY, engine={"cpu_threads": threads, "warmup": True})
    engine = build_engine(cfg, prepare(cfg))

    async def inproc() -> list[float]:
        from deepseek_node.daemon.engines.builtin.engine import SamplingParams

        await engine.start()
        while not engine.ready:
            if engine.state.value == "failed":
                raise RuntimeError(engine.load_error)
            await asyncio.sleep(0.05)
        out = []
        for i in range(n + 10):
            t0 = time.perf_counter()
            # What the route does besides HTTP/TLS/auth/validation: template, tokenize, generate.
            ids = engine.encode_chat([{"role": "user", "content": "Hello"}])
            h = engine.submit(ids, SamplingParams(max_tokens=1, temperature=0.0), f"o{i}")
            async for _ in h:
                pass
            if i >= 10:
                out.append(time.perf_counter() - t0)
        await engine.shutdown()
        return out

    inp = asyncio.run(inproc())
    return {
        "http_keepalive_p50_ms": statistics.median(keep) * 1000,
        "http_fresh_conn_p50_ms": statistics.median(fresh) * 1000,
        "inprocess_p50_ms": statistics.median(inp) * 1000,
        "overhead_keepalive_p50_ms": (statistics.median(keep) - statistics.median(inp)) * 1000,
        "overhead_fresh_conn_p50_ms": (statistics.median(fresh) - statistics.median(inp)) * 1000,
    }


# --------------------------------------------------------------------------------------- servers


def start_daemon(
    model_dir: Path, work: Path, threads: int, max_running: int
) -> tuple[subprocess.Popen, str, Any]:
    cert, key = make_cert(work)
    port = free_port()
    cfg = {
        "model": {"path": str(model_dir), "served_name": "bench", "max_context": 2048},
        "server": {"host": "127.0.0.1", "port": port, "tls_cert": str(cert), "tls_key": str(key)},
        "engine": {
            "max_running": max_running,
            "max_queue": 1024,
            "default_max_tokens": 256,
            "shutdown_grace_s": 10,
            "cpu_threads": threads,
        },
        "auth": {
            "api_keys": [
                {
                    "id": "bench",
                    "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                    "scopes": ["inference", "metrics"],
                    "models": [],
                }
            ]
        },
        "audit": {"path": str(work / "audit.jsonl"), "log_content": False, "redact": True},
        "plan": {"source": "benchmark"},
    }
    path = work / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with open(work / "daemon.log", "wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepseek_node.daemon", "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    base = f"https://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=str(cert))
    wait_ready(base + "/health/ready", verify, {"Authorization": f"Bearer {KEY}"}, proc)
    return proc, base, verify


def wait_ready(
    url: str, verify: Any, headers: dict[str, str], proc: subprocess.Popen, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, verify=verify, headers=headers, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def start_transformers_serve(
    model_dir: Path, work: Path, threads: int, cb: bool
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    args = [str(exe), "serve", str(model_dir), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"]
    if cb:
        args += [
            "--continuous-batching",
            "--cb-num-blocks",
            "512",
            "--cb-block-size",
            "32",
            "--cb-max-batch-tokens",
            "2048",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(work / "tserve.log", "wb") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("transformers serve did not answer /health")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="model directory (default: build a tiny one)")
    ap.add_argument("--arch", choices=["deepseek_v3", "llama"], default="deepseek_v3")
    ap.add_argument("--levels", default="1,16,64", help="concurrent streams to measure")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-stream", type=int, default=4)
    ap.add_argument("--baseline-requests", type=int, default=24)
    ap.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="torch intra-op threads for the engine and the baseline",
    )
    ap.add_argument("--skip-transformers-serve", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory(prefix="dsn-bench-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir
        if model_dir is None:
            from deepseek_node.tiny_model import TinyModelSpec, make_tiny_model

            model_dir = make_tiny_model(work / "model", TinyModelSpec(arch=args.arch))
        results: dict[str, Any] = {
            "model": str(args.model_dir or f"tiny {args.arch}"),
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "max_tokens": args.max_tokens,
        }

        base_tps, base_tokens, base_s = sequential_generate(
            model_dir, jobs_for(args.baseline_requests, args.max_tokens), args.threads
        )
        results["sequential_generate"] = {"tokens_per_s": base_tps, "tokens": base_tokens, "seconds": base_s}
        print(f"sequential model.generate: {base_tps:8.1f} tok/s ({base_tokens} tokens in {base_s:.2f}s)")

        proc, base, verify = start_daemon(model_dir, work, args.threads, max(levels))
        headers = {"Authorization": f"Bearer {KEY}"}
        try:
            asyncio.run(run_level(base, "bench", verify, 4, jobs_for(8, 8), headers))  # warm-up
            results["daemon"] = []
            print(
                f"{'streams':>8} {'requests':>8} {'tokens':>7} {'tok/s':>9} {'vs generate':>11} "
                f"{'TTFT p50':>9} {'TTFT p99':>9}"
            )
            for c in levels:
                lv = asyncio.run(
                    run_level(
                        base,
                        "bench",
                        verify,
                        c,
                        jobs_for(c * args.requests_per_stream, args.max_tokens),
                        headers,
                    )
                )
                ratio = lv.tps / base_tps
                results["daemon"].append(
                    {
                        "streams": c,
                        "requests": lv.requests,
                        "tokens": lv.tokens,
                        "tokens_per_s": lv.tps,
                        "ratio_vs_generate": ratio,
                        "ttft_p50_ms": pct(lv.ttft, 50) * 1000,
                        "ttft_p99_ms": pct(lv.ttft, 99) * 1000,
                    }
                )
                print(
                    f"{c:>8} {lv.requests:>8} {lv.tokens:>7} {lv.tps:>9.1f} {ratio:>10.1f}x "
                    f"{pct(lv.ttft, 50) * 1000:>7.1f}ms {pct(lv.ttft, 99) * 1000:>7.1f}ms"
                )
            ov = overhead(base, "bench", verify, model_dir, args.threads)
            results["overhead"] = ov
            print(
                f"1-token request p50: HTTPS keep-alive {ov['http_keepalive_p50_ms']:.2f} ms, fresh TLS "
                f"connection {ov['http_fresh_conn_p50_ms']:.2f} ms, in-process engine "
                f"{ov['inprocess_p50_ms']:.2f} ms"
            )
            print(
                f"HTTP/TLS/auth overhead p50: {ov['overhead_keepalive_p50_ms']:.2f} ms (keep-alive), "
                f"{ov['overhead_fresh_conn_p50_ms']:.2f} ms (new connection each request)"
            )
        finally:
            stop(proc)

        if not args.skip_transformers_serve:
            cb = args.arch == "llama" or (args.model_dir is not None)
            try:
                tproc, tbase = start_transformers_serve(model_dir, work, args.threads, cb=cb)
            except Exception as exc:  # optional peer: report, do not fail the benchmark
                results["transformers_serve"] = {"error": str(exc)}
                print(f"transformers serve: not measured ({exc}; log in its stderr)")
            else:
                try:
                    tname = str(model_dir)
                    results["transformers_serve"] = {"continuous_batching": cb, "levels": []}
                    asyncio.run(run_level(tbase, tname, None, 2, jobs_for(2, 8), {}))
                    for c in levels:
                        lv = asyncio.run(
                            run_level(
                                tbase,
                                tname,
                                None,
                                c,
                                jobs_for(c * args.requests_per_stream, args.max_tokens),
                                {},
                            )
                        )
                        results["transformers_serve"]["levels"].append(
                            {
                                "streams": c,
                                "tokens_per_s": lv.tps,
                                "ratio_vs_generate": lv.tps / base_tps,
                                "ttft_p50_ms": pct(lv.ttft, 50) * 1000,
                                "ttft_p99_ms": pct(lv.ttft, 99) * 1000,
                            }
                        )
                        print(
                            f"transformers serve{' (CB)' if cb else ''} {c:>3} streams: {lv.tps:8.1f} tok/s "
                            f"({lv.tps / base_tps:.1f}x generate), TTFT p50 {pct(lv.ttft, 50) * 1000:.1f}ms"
                        )
                except Exception as exc:
                    results["transformers_serve"]["error"] = str(exc)
                    print(f"transformers serve: failed during the run: {exc}")
                finally:
                    stop(tproc)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
