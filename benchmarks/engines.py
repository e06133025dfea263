"""Engines side by side: bare vLLM, the daemon's gateway in front of it, the builtin engine, `transformers serve`.

    .venv/bin/python benchmarks/engines.py                          # tiny and small Llama, 1/16/64 streams
    .venv/bin/python benchmarks/engines.py --models tiny --levels 1,4
    .venv/bin/python benchmarks/engines.py --models DIR             # any local model directory
    .venv/bin/python benchmarks/engines.py --json out.json          # keep the numbers

Per model, in one run, with the same prompts and the same load (streamed greedy chat completions of
`--max-tokens` tokens, `--requests-per-stream` requests per stream, at each level of concurrent streams):

(a) bare vLLM: its OpenAI server on loopback, plain HTTP, its internal key;
(b) the gateway: `python -m deepseek_node.daemon --config FILE` in its own process (HTTPS, an API key,
    audit to a file) in front of THE SAME vLLM instance, in the external mode a node runs under systemd
    (`vllm: {url, api_key_file}`); its overhead is the p50 latency of a 1-token request through it minus
    the p50 straight to vLLM (kept-alive connections, the two interleaved), and its throughput relative
    to bare vLLM at every level;
(c) the builtin engine: the same daemon with `engine.kind: builtin` (the default) on the same model;
(d) `transformers serve --continuous-batching`, when it starts here.

vLLM columns send `ignore_eos: true`, so every request yields exactly `--max-tokens` tokens; the builtin
engine and `transformers serve` have no such parameter, so their columns count the tokens each request
actually produced (the mean per request is printed and kept, to show when a request stopped early).
Every process is started in its own process group and stopped at the end, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import math
import os
import resource
import secrets
import signal
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx
import yaml
from _load import LeanClient, Level, free_port, jobs_for, make_cert, pct, run_level

REPO = Path(__file__).resolve().parents[1]
KEY = "dsn-bench-key"
SERVED = "bench"
COLUMNS = ("vllm", "gateway", "builtin", "transformers_serve")
TITLES = {
    "vllm": "bare vLLM",
    "gateway": "gateway -> vLLM",
    "builtin": "builtin engine",
    "transformers_serve": "transformers serve",
}
# Built-in model shapes (Llama: vLLM's CPU attention needs a head size of at least 32; these have 64).
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"arch": "llama", "hidden_size": 256, "layers": 2, "heads": 4},
    "small": {"arch": "llama", "hidden_size": 1024, "layers": 6, "heads": 16},
}


def default_vllm_python() -> Path:
    local = REPO / ".venv-vllm/bin/python"
    return local if local.exists() else Path("/work/vllm-venv/bin/python")


# ------------------------------------------------------------------------------------ processes


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """The servers this run started, each in its own process group; `stop_all` ends them all."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # vLLM spawns engine-core processes: stop the whole group
                preexec_fn=_die_with_parent,
            )
        self.running[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.work / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str, grace: float = 20.0) -> None:
        proc = self.running.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # Children (vLLM's engine core) may outlive their parent's exit: the group goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by the live processes of each running server's group."""
        groups = {proc.pid: name for name, proc in self.running.items()}
        used = dict.fromkeys(self.running, 0.0)
        tick = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            name = groups.get(int(fields[2]))  # pgrp
            if name is not None:
                used[name] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return used

    def affinity(self, name: str) -> dict[str, list[int]]:
        """The CPUs each process of a server's group may run on (vLLM's CPU build pins its worker)."""
        proc = self.running[name]
        out: dict[str, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    head, rest = fh.read().rsplit(")", 1)
                if int(rest.split()[2]) == proc.pid:
                    out[f"{entry} {head.split('(', 1)[1]}"] = sorted(os.sched_getaffinity(int(entry)))
            except (OSError, ValueError):
                continue
        return out

    def stop_all(self) -> None:
        # A second Ctrl-C must not cut the cleanup short and leave a server behind.
        old = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            for name in list(self.running)[::-1]:
                self.stop(name)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    verify: Any = True,
    headers: dict[str, str] | None = None,
) -> float:
    """Poll until `url` answers 200; seconds it took. RuntimeError if the process exits or time runs out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before {url} answered")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, verify=verify, headers=headers, timeout=5).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------------- servers


@dataclass
class Peer:
    """One server under load: where to send, how, and what to add to each request."""

    base: str
    ssl_ctx: ssl.SSLContext | None
    headers: dict[str, str]
    model: str
    extra: dict[str, Any]


def start_vllm(
    procs: Procs, model_dir: Path, python: Path, key: str, max_seqs: int, timeout: float, dtype: str
) -> Peer:
    port = free_port()
    argv = [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        "2048",
        "--max-num-seqs",
        str(max_seqs),
    ]
    env = {
        "VLLM_API_KEY": key,  # as the engine unit gets it: from its environment file, never the argv
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    proc = procs.start("vllm", argv, env)
    base = f"http://127.0.0.1:{port}"
    took = wait_http(base + "/health", proc, timeout)
    print(f"  vLLM ready after {took:.0f}s", flush=True)
    return Peer(base, None, {"Authorization": f"Bearer {key}"}, SERVED, {"ignore_eos": True})


def write_daemon_config(
    work: Path,
    name: str,
    model_dir: Path,
    max_running: int,
    engine: dict[str, Any],
    vllm: dict[str, Any] | None,
) -> tuple[Path, Path, int]:
    """A config as the Ansible role renders one: (config path, CA file to trust, port)."""
    cert, key = make_cert(work)
    port = free_port()
    cfg: dict[str, Any] = {
        "model": {"path": str(model_dir), "served_name": SERVED, "max_context": 2048},
        "server": {"host": "127.0.0.1", "port": port, "tls_cert": str(cert), "tls_key": str(key)},
        "engine": {
            "max_running": max_running,
            "max_queue": 1024,
            "default_max_tokens": 256,
            "shutdown_grace_s": 5,
            **engine,
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
        "audit": {"path": str(work / f"{name}-audit.jsonl"), "log_content": False, "redact": True},
        "plan": {"source": "benchmark"},
    }
    if vllm is not None:
        cfg["vllm"] = vllm
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cert, port


def start_daemon(procs: Procs, name: str, config: Path, cert: Path, port: int, timeout: float) -> Peer:
    proc = procs.start(name, [sys.executable, "-m", "deepseek_node.daemon", "--config", str(config)])
    base = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(cert))
    headers = {"Authorization": f"Bearer {KEY}"}
    took = wait_http(base + "/health/ready", proc, timeout, verify=ctx, headers=headers)
    print(f"  {name} ready after {took:.0f}s", flush=True)
    return Peer(base, ctx, headers, SERVED, {})


def start_gateway(
    procs: Procs, work: Path, model_dir: Path, vllm: Peer, vllm_key: str, max_running: int
) -> Peer:
    key_file = work / "vllm.env"  # the engine unit's environment file: one key, read by both units
    key_file.touch(mode=0o600)
    key_file.write_text(f"VLLM_API_KEY={vllm_key}\n")
    config, cert, port = write_daemon_config(
        work,
        "gateway",
        model_dir,
        max_running,
        {"kind": "vllm"},
        {"url": vllm.base, "api_key_file": str(key_file)},
    )
    return start_daemon(procs, "gateway", config, cert, port, 120)


def start_builtin(procs: Procs, work: Path, model_dir: Path, max_running: int) -> Peer:
    config, cert, port = write_daemon_config(work, "builtin", model_dir, max_running, {}, None)
    return start_daemon(procs, "builtin", config, cert, port, 600)


def start_transformers_serve(procs: Procs, model_dir: Path, threads: int) -> Peer:
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    argv = [str(exe), "serve", str(model_dir), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"]
    argv += ["--continuous-batching", "--cb-num-blocks", "512", "--cb-block-size", "32"]
    argv += ["--cb-max-batch-tokens", "2048"]
    proc = procs.start("transformers_serve", argv, {"OMP_NUM_THREADS": str(threads)})
    base = f"http://127.0.0.1:{port}"
    took = wait_http(base + "/health", proc, 300)
    print(f"  transformers serve ready after {took:.0f}s", flush=True)
    return Peer(base, None, {}, str(model_dir), {})


# --------------------------------------------------------------------------------------- load


def measure(peer: Peer, streams: int, requests: int, max_tokens: int, max_errors: int = 0) -> Level:
    jobs = jobs_for(requests, max_tokens)
    return asyncio.run(
        run_level(peer.base, peer.model, peer.ssl_ctx, streams, jobs, peer.headers, peer.extra, max_errors)
    )


def warm_up(peer: Peer, max_tokens: int) -> None:
    measure(peer, 4, 8, max_tokens, max_errors=8)


def level_record(lv: Level) -> dict[str, Any]:
    return {
        "streams": lv.concurrency,
        "requests": lv.requests,
        "tokens": lv.tokens,
        "seconds": lv.seconds,
        "tokens_per_s": lv.tps,
        "failed_requests": len(lv.errors),
        "errors": sorted(set(lv.errors))[:5],
        "tokens_per_request": lv.tokens / max(1, len(lv.per_request)),
        "min_tokens_per_request": min(lv.per_request, default=0),
        "ttft_p50_ms": pct(lv.ttft, 50) * 1000,
        "ttft_p99_ms": pct(lv.ttft, 99) * 1000,
    }


def gateway_overhead(bare: Peer, gateway: Peer, n: int) -> dict[str, Any]:
    """p50 of a 1-token chat request through the gateway minus straight to vLLM, kept-alive connections.

    The two are interleaved request by request, so load from elsewhere on the machine hits both alike.
    """
    failed: list[str] = []

    async def run() -> tuple[list[float], list[float]]:
        direct = LeanClient.for_url(bare.base, bare.ssl_ctx, bare.headers)
        relayed = LeanClient.for_url(gateway.base, gateway.ssl_ctx, gateway.headers)
        body = {
            "model": SERVED,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1,
            "temperature": 0,
        }
        a: list[float] = []
        b: list[float] = []
        try:
            for i in range(n + 20):
                first, second = (direct, relayed) if i % 2 == 0 else (relayed, direct)
                try:
                    r1 = await first.post("/v1/chat/completions", body)
                    r2 = await second.post("/v1/chat/completions", body)
                except (RuntimeError, OSError, ValueError, EOFError) as exc:
                    failed.append(f"{type(exc).__name__}: {exc}"[:300])
                    first.close()
                    second.close()
                    if len(failed) > n // 10:
                        raise
                    continue
                if i >= 20:  # warm-up: connections, caches, the first TLS records
                    d, g = (r1, r2) if first is direct else (r2, r1)
                    a.append(d.seconds)
                    b.append(g.seconds)
        finally:
            direct.close()
            relayed.close()
        return a, b

    direct, relayed = asyncio.run(run())
    return {
        "requests": len(direct),
        "sent": n + 20,  # on each side, warm-up included
        "vllm_p50_ms": statistics.median(direct) * 1000,
        "gateway_p50_ms": statistics.median(relayed) * 1000,
        "overhead_p50_ms": (statistics.median(relayed) - statistics.median(direct)) * 1000,
        "paired_diff_p50_ms": statistics.median(g - d for d, g in zip(direct, relayed, strict=True)) * 1000,
        "vllm_p99_ms": pct(direct, 99) * 1000,
        "gateway_p99_ms": pct(relayed, 99) * 1000,
        "failed_pairs": len(failed),
        "errors": sorted(set(failed))[:5],
    }


# ---------------------------------------------------------------------------------------- model


def model_params(model_dir: Path) -> int:
    """Parameter count from the safetensors headers (no tensor is loaded)."""
    total = 0
    for f in model_dir.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def resolve_model(name: str, work: Path, cache: Path | None) -> Path:
    if name not in MODELS:
        path = Path(name)
        if not (path / "config.json").exists():
            raise SystemExit(f"--models: {name!r} is neither {' nor '.join(MODELS)} nor a model directory")
        return path.absolute()
    from deepseek_node.tiny_model import TinyModelSpec, make_tiny_model

    spec = MODELS[name]
    label = f"{spec['arch']}-l{spec['layers']}-h{spec['hidden_size']}-a{spec['heads']}"
    out = (cache or work) / label
    if (out / "config.json").exists():
        return out
    print(f"building the {name} model ({label})...", flush=True)
    return make_tiny_model(out, TinyModelSpec(**spec))


# ---------------------------------------------------------------------------------------- runs


def merge(runs: list[Level]) -> Level:
    """Rounds of one level on one peer as one measurement: all tokens over all the time."""
    return Level(
        runs[0].concurrency,
        sum(r.requests for r in runs),
        sum(r.tokens for r in runs),
        sum(r.seconds for r in runs),
        [t for r in runs for t in r.ttft],
        [n for r in runs for n in r.per_request],
        [e for r in runs for e in r.errors],
    )


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_levels(
    procs: Procs,
    peers: dict[str, Peer],
    levels: list[int],
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
) -> None:
    """Each level `--rounds` times on each peer; with two peers the order alternates (A B, B A, ...), so
    load from elsewhere on the machine that comes and goes hits both alike."""
    for i, streams in enumerate(levels):
        requests = max(args.min_requests, streams * args.requests_per_stream)
        runs: dict[str, list[Level]] = {col: [] for col in peers}
        cpu: dict[str, dict[str, float]] = {col: {} for col in peers}
        for r in range(args.rounds):
            order = list(peers) if (i + r) % 2 == 0 else list(peers)[::-1]
            for col in order:
                before, client0 = procs.cpu(), client_cpu()
                runs[col].append(measure(peers[col], streams, requests, args.max_tokens, requests // 2))
                after = procs.cpu()
                for name, t in after.items():
                    cpu[col][name] = cpu[col].get(name, 0.0) + t - before.get(name, 0.0)
                cpu[col]["client"] = cpu[col].get("client", 0.0) + client_cpu() - client0
        for col, lvs in runs.items():
            lv = merge(lvs)
            rec = level_record(lv)
            rec["rounds_tokens_per_s"] = [x.tps for x in lvs]
            rec["cpu_s"] = cpu[col]
            results.setdefault(col, []).append(rec)
            spread = "/".join(f"{x:.0f}" for x in rec["rounds_tokens_per_s"])
            failed = f", {len(lv.errors)} FAILED ({lv.errors[0]})" if lv.errors else ""
            used = ", ".join(f"{k} {v:.1f}" for k, v in cpu[col].items() if v >= 0.05)
            print(
                f"  {TITLES[col]:<20} {streams:>3} streams: {lv.tps:9.1f} tok/s (rounds {spread}), "
                f"{rec['tokens_per_request']:.1f} tok/request, TTFT p50 {rec['ttft_p50_ms']:.1f} ms "
                f"p99 {rec['ttft_p99_ms']:.1f} ms ({lv.requests} requests, {lv.seconds:.1f}s; CPU s: {used}){failed}",
                flush=True,
            )


def bench_model(
    name: str, model_dir: Path, work: Path, procs: Procs, args: argparse.Namespace, levels: list[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name, "path": str(model_dir), "params": model_params(model_dir)}
    cols: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, str] = {}
    out["levels"], out["errors"] = cols, errors
    print(f"\n== {name}: {out['params'] / 1e6:.1f}M parameters ({model_dir})", flush=True)

    def attempt(col: str, names: list[str], body: Callable[[], None]) -> None:
        try:
            body()
        except Exception as exc:  # a peer that fails is reported and the run goes on with the next
            tails = "\n".join(f"--- {n}.log:\n{procs.log_tail(n)}" for n in names if procs.log_tail(n))
            errors[col] = f"{type(exc).__name__}: {exc}"
            print(f"  {TITLES[col]}: not measured: {errors[col]}\n{tails}", flush=True)
        finally:
            for n in names:
                procs.stop(n)

    def vllm_pair() -> None:
        vkey = "dsn-internal-" + secrets.token_urlsafe(24)
        bare = start_vllm(
            procs, model_dir, args.vllm_python, vkey, max(64, *levels), args.vllm_timeout, args.vllm_dtype
        )
        gateway = start_gateway(procs, work, model_dir, bare, vkey, max(levels))
        warm_up(bare, args.max_tokens)
        warm_up(gateway, args.max_tokens)
        out["vllm_affinity"] = procs.affinity("vllm")
        print(f"  vLLM processes and the CPUs they may use: {out['vllm_affinity']}", flush=True)
        before = procs.cpu()
        ov = gateway_overhead(bare, gateway, args.overhead_requests)
        ov["gateway_cpu_ms_per_request"] = (procs.cpu()["gateway"] - before["gateway"]) * 1000 / ov["sent"]
        out["overhead"] = ov
        print(
            f"  1-token request p50: vLLM {ov['vllm_p50_ms']:.2f} ms, gateway {ov['gateway_p50_ms']:.2f} ms: "
            f"overhead {ov['overhead_p50_ms']:.2f} ms (paired p50 {ov['paired_diff_p50_ms']:.2f} ms); gateway CPU "
            f"{ov['gateway_cpu_ms_per_request']:.2f} ms per request",
            flush=True,
        )
        run_levels(procs, {"vllm": bare, "gateway": gateway}, levels, args, cols)

    def builtin() -> None:
        peer = start_builtin(procs, work, model_dir, max(levels))
        warm_up(peer, args.max_tokens)
        run_levels(procs, {"builtin": peer}, levels, args, cols)

    def tserve() -> None:
        peer = start_transformers_serve(procs, model_dir, args.threads)
        warm_up(peer, args.max_tokens)
        run_levels(procs, {"transformers_serve": peer}, levels, args, cols)

    # One server (pair) at a time, so an idle one does not share the cores with the one measured.
    attempt("vllm", ["gateway", "vllm"], vllm_pair)
    attempt("builtin", ["builtin"], builtin)
    if args.skip_transformers_serve:
        errors["transformers_serve"] = "skipped (--skip-transformers-serve)"
    else:
        attempt("transformers_serve", ["transformers_serve"], tserve)
    return out


# -------------------------------------------------------------------------------------- report


def _cell(rec: dict[str, Any] | None, ref: dict[str, Any] | None, max_tokens: int) -> str:
    if rec is None:
        return "-"
    text = f"{rec['tokens_per_s']:,.0f}"
    if ref is not None:
        text += f" ({rec['tokens_per_s'] / ref['tokens_per_s']:.2f}x)"
    if rec["tokens_per_request"] < max_tokens - 0.05:
        text += f" [{rec['tokens_per_request']:.1f} tok/req]"
    if rec["failed_requests"]:
        text += f" [{rec['failed_requests']} failed]"
    return text


def report(res: dict[str, Any], levels: list[int], max_tokens: int) -> list[str]:
    cols = res["levels"]

    def at(col: str, streams: int) -> dict[str, Any] | None:
        return next((r for r in cols.get(col, []) if r["streams"] == streams), None)

    lines = [
        f"{res['model']} ({res['params'] / 1e6:.1f}M parameters), max_tokens {max_tokens}: tokens/s",
        f"{'streams':>7} | {'bare vLLM':>10} | {'gateway (x vLLM)':>18} | {'builtin (x vLLM)':>18} | "
        f"{'transformers serve':>18}",
    ]
    for s in levels:
        v = at("vllm", s)
        lines.append(
            f"{s:>7} | {_cell(v, None, max_tokens):>10} | {_cell(at('gateway', s), v, max_tokens):>18} | "
            f"{_cell(at('builtin', s), v, max_tokens):>18} | "
            f"{_cell(at('transformers_serve', s), None, max_tokens):>18}"
        )
    lines.append("TTFT p50 / p99 (ms)")
    for s in levels:
        cells = []
        for col in COLUMNS:
            r = at(col, s)
            cells.append("-" if r is None else f"{r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f}")
        lines.append(f"{s:>7} | " + " | ".join(f"{c:>18}" for c in cells))
    ov = res.get("overhead")
    if ov is not None:
        ratios = [
            (s, g["tokens_per_s"] / v["tokens_per_s"])
            for s in levels
            if (g := at("gateway", s)) is not None and (v := at("vllm", s)) is not None
        ]
        worst = min(ratios, key=lambda x: x[1]) if ratios else None
        lines.append(
            f"gateway overhead, 1-token request p50 (kept-alive): {ov['overhead_p50_ms']:.2f} ms "
            f"({ov['gateway_p50_ms']:.2f} vs {ov['vllm_p50_ms']:.2f} ms, {ov['requests']} each; goal < 2 ms: "
            f"{'met' if ov['overhead_p50_ms'] < 2 else 'NOT met'})"
        )
        lines.append(f"gateway process CPU per 1-token request: {ov['gateway_cpu_ms_per_request']:.2f} ms")
        for s in levels:
            g = at("gateway", s)
            if g is not None and g["tokens"] and "gateway" in g.get("cpu_s", {}):
                lines.append(
                    f"  {s:>3} streams: gateway CPU {g['cpu_s']['gateway'] * 1e6 / g['tokens']:.0f} us per relayed token, "
                    f"vLLM's processes {g['cpu_s'].get('vllm', 0) * 1e6 / g['tokens']:.0f} us per token "
                    "(its CPU worker spins on its core)"
                )
        if worst is not None:
            lines.append(
                f"gateway/bare throughput: lowest {worst[1]:.3f}x at {worst[0]} streams (goal >= 0.95x at every "
                f"level: {'met' if worst[1] >= 0.95 else 'NOT met'})"
            )
    for col, err in res["errors"].items():
        lines.append(f"{TITLES[col]}: not measured: {err}")
    return lines


# ---------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,small", help="tiny, small and/or model directories")
    ap.add_argument("--levels", default="1,16,64", help="concurrent streams to measure")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=4, help="at least this many requests per level")
    ap.add_argument(
        "--rounds", type=int, default=2, help="times each level is run on each peer (alternating)"
    )
    ap.add_argument("--overhead-requests", type=int, default=200, help="1-token requests on each side")
    ap.add_argument("--vllm-python", type=Path, default=default_vllm_python())
    ap.add_argument("--vllm-dtype", default="float32", help="vLLM's --dtype (auto on GPU nodes)")
    ap.add_argument("--vllm-timeout", type=float, default=900, help="seconds vLLM may take to start")
    ap.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="OMP threads for transformers serve (the builtin engine and vLLM's CPU build leave one core free)",
    )
    ap.add_argument("--skip-transformers-serve", action="store_true")
    ap.add_argument("--model-cache", type=Path, help="keep the built models here and reuse them")
    ap.add_argument("--work-dir", type=Path, help="keep configs and server logs here (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.vllm_python.exists():
        print(f"note: no vLLM interpreter at {args.vllm_python}: the vLLM columns will be empty", flush=True)

    # Ctrl-C too when started in the background (where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "max_tokens": args.max_tokens,
        "requests_per_stream": args.requests_per_stream,
        "min_requests": args.min_requests,
        "rounds": args.rounds,
        "levels": levels,
        "models": [],
    }
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dsn-engines-")))
        else:
            work = args.work_dir.absolute()
            work.mkdir(parents=True, exist_ok=True)
        procs = Procs(work)
        try:
            for name in models:
                model_dir = resolve_model(name, work, args.model_cache)
                mwork = work / Path(name).name
                mwork.mkdir(exist_ok=True)
                procs.work = mwork
                results["models"].append(bench_model(name, model_dir, mwork, procs, args, levels))
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the servers", file=sys.stderr, flush=True)
            return 130
        finally:
            procs.stop_all()
        results["seconds"] = time.monotonic() - t_start
        results["load_average_end"] = os.getloadavg()
    print()
    for res in results["models"]:
        print("\n".join(report(res, levels, args.max_tokens)) + "\n")
    print(
        f"total {results['seconds'] / 60:.1f} min; load average at the end {results['load_average_end'][0]:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
