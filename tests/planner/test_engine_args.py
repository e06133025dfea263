"""Plan -> vLLM arguments: every catalog box x model, the checkpoint rules, the engine choice, the memory
model per engine, and vLLM's own argument parser over every rendered command line.

vLLM lives in its own virtualenv (its transformers pin differs from the daemon's): the parser test runs
there in one subprocess for all command lines (DEEPSEEK_NODE_VLLM_PYTHON, default
`<repo>/.venv-vllm/bin/python`) and is skipped, saying so, where that interpreter is absent.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from deepseek_node.planner import (
    HARDWARE_PROFILES,
    MODELS,
    Device,
    Engine,
    EngineUnavailableError,
    NoFitError,
    Plan,
    PlanRequest,
    Precision,
    Workload,
    choose_engine,
    plan,
)
from deepseek_node.planner import engine_args as ea
from deepseek_node.planner import memory as mem
from deepseek_node.planner.memory import GIB

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example"
H = HARDWARE_PROFILES
GPU_ONLY_FLAGS = ("--gpu-memory-utilization", "--kv-cache-dtype", "--enable-expert-parallel")
NEVER = ("--trust-remote-code", "--api-key", "--disable-log-requests", "--device")


def _flags(argv: list[str]) -> dict[str, str | bool]:
    """`--flag value` and bare `--flag` pairs; a flag given twice fails the test."""
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        assert flag.startswith("--") and flag not in flags, argv
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            flags[flag], i = argv[i + 1], i + 2
        else:
            flags[flag], i = True, i + 1
    return flags


def _render(p: Plan, checkpoint_quant: str | None, models: Path = Path("/srv/models")) -> list[str]:
    return ea.vllm_args(
        p, model_path=str(models / p.model.name), served_name=p.model.name, port=8001,
        checkpoint_quant=checkpoint_quant,
    )  # fmt: skip


@cache
def _catalog_plans() -> tuple[Plan, ...]:
    """Every fitting plan for every hardware profile x catalog model."""
    plans = (plan(PlanRequest(m, p), suggest=False) for p in H.values() for m in MODELS.values())
    return tuple(p for p in plans if p.fits)


def test_every_profile_and_model_renders_args_that_match_the_plan() -> None:
    plans = _catalog_plans()
    assert len(plans) > 300
    for p in plans:
        where = (p.model.name, p.profile.name)
        assert p.engine is Engine.VLLM, where  # every catalog GPU is 7.0+, a CPU node is assumed AVX2
        quant = ea.preview_checkpoint(p)
        assert ea.check_checkpoint(p, quant) is None, where
        argv = _render(p, quant)
        f = _flags(argv)
        assert int(f["--tensor-parallel-size"]) * int(f["--pipeline-parallel-size"]) == p.tp * p.pp, where
        assert (int(f["--tensor-parallel-size"]), int(f["--pipeline-parallel-size"])) == (p.tp, p.pp), where
        assert int(f["--max-model-len"]) == p.max_context and int(f["--max-num-seqs"]) == p.max_running
        assert int(f["--max-num-batched-tokens"]) >= p.max_running, where
        assert f["--dtype"] == p.dtype and f["--host"] == "127.0.0.1", where
        assert f["--no-enable-log-requests"] is True and f["--enable-chunked-prefill"] is True
        assert not any(flag in f for flag in NEVER), where
        if quant == "fp8" or p.precision is not Precision.FP8:
            assert "--quantization" not in f, where
        else:
            assert f["--quantization"] == ea.ONLINE_FP8, where
        env = ea.vllm_env(p)
        assert (
            env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
        )
        assert "VLLM_API_KEY" not in env
        if p.device is Device.CPU:
            assert not any(flag in f for flag in GPU_ONLY_FLAGS), where
            assert (p.tp, p.pp) == (1, 1)
            assert p.memory is not None
            assert int(env["VLLM_CPU_KVCACHE_SPACE"]) * GIB >= p.memory.kv_cache, where
        else:
            assert f["--gpu-memory-utilization"] == "0.90" and "VLLM_CPU_KVCACHE_SPACE" not in env
            assert f["--kv-cache-dtype"] == ("fp8" if p.precision is Precision.FP8 else "auto"), where
            assert ("--enable-expert-parallel" in f) == (p.model.is_moe and p.tp > 1), where


@pytest.mark.parametrize("model", ["deepseek-v3", "deepseek-r1"])
def test_native_fp8_checkpoint_gets_no_quantization_flag(model: str) -> None:
    p = plan(PlanRequest(MODELS[model], H["h200-sxm-141g-x8"]))
    assert (p.precision, p.model.quant_method) == (Precision.FP8, "fp8")
    assert "--quantization" not in _render(p, "fp8")
    assert "--quantization" not in _render(p, "FP8")
    # Unquantized weights of the same model are quantized to DeepSeek's 128x128 block format as they load.
    assert _flags(_render(p, None))["--quantization"] == "fp8_per_block"


def test_int4_plan_of_the_fp8_moe_names_the_checkpoint_it_needs() -> None:
    p = plan(PlanRequest(MODELS["deepseek-v3"], H["h100-sxm-80g-x8"]))
    assert p.precision is Precision.INT4
    problem = ea.check_checkpoint(p, "fp8")
    assert problem and "int4" in problem and "AWQ" in problem and "the checkpoint is fp8" in problem
    with pytest.raises(ea.CheckpointMismatchError, match="pre-quantized int4 checkpoint"):
        _render(p, "fp8")
    with pytest.raises(ea.CheckpointMismatchError):
        _render(p, None)  # vLLM does not quantize to int4 while loading
    for quant in ("awq", "gptq", "compressed-tensors"):
        assert ea.check_checkpoint(p, quant) is None
        assert "--quantization" not in _render(p, quant)  # vLLM reads the method and picks its kernel


def test_16_bit_plan_of_an_fp8_model_needs_dequantized_weights() -> None:
    p = plan(PlanRequest(MODELS["deepseek-v2"], H["h200-sxm-141g-x8"]))  # a bf16 model, for the contrast
    assert ea.check_checkpoint(p, None) is None
    v3 = replace(p, model=MODELS["deepseek-v3"], precision=Precision.BF16)
    problem = ea.check_checkpoint(v3, "fp8")
    assert problem and "fp8_cast_bf16.py" in problem
    assert ea.check_checkpoint(v3, "none") is None


def test_int8_plan_needs_a_pre_quantized_checkpoint() -> None:
    p = plan(PlanRequest(MODELS["deepseek-r1-distill-qwen-7b"], H["t4-16g-x1"], max_context=4096))
    assert p.precision is Precision.INT8
    assert "int8" in (ea.check_checkpoint(p, None) or "")
    assert ea.check_checkpoint(p, "compressed-tensors") is None
    assert _flags(_render(p, "gptq"))["--dtype"] == "float16"  # T4: no bf16


def test_no_args_for_a_plan_that_does_not_fit_or_another_engine() -> None:
    no_fit = plan(PlanRequest(MODELS["deepseek-v3"], H["t4-16g-x1"]), suggest=False)
    with pytest.raises(NoFitError):
        _render(no_fit, "fp8")
    assert (ea.check_checkpoint(no_fit, "fp8") or "").startswith("no plan")
    builtin = plan(PlanRequest(MODELS["deepseek-llm-7b"], H["a100-pcie-80g-x1"], engine=Engine.BUILTIN))
    with pytest.raises(ValueError, match="builtin engine"):
        _render(builtin, None)
    ok = plan(PlanRequest(MODELS["deepseek-llm-7b"], H["a100-pcie-80g-x1"]))
    with pytest.raises(ValueError, match="port"):
        ea.vllm_args(ok, model_path="/m", served_name="m", port=0)


def test_api_key_never_reaches_argv_and_the_docstring_says_where_it_goes() -> None:
    assert "VLLM_API_KEY" in (ea.vllm_args.__doc__ or "")
    p = plan(PlanRequest(MODELS["deepseek-llm-7b"], H["a100-pcie-80g-x1"]))
    assert not any("key" in a.lower() for a in _render(p, None))


# --- engine choice ---


@pytest.mark.parametrize(
    "kwargs, engine, words",
    [
        ({"device": "cuda", "gpu_compute_capability": "9.0"}, Engine.VLLM, "9.0"),
        ({"device": "cuda", "gpu_compute_capability": (7, 0)}, Engine.VLLM, "7.0+"),
        ({"device": "cuda", "gpu_compute_capability": "6.1"}, Engine.BUILTIN, "below the 7.0"),
        ({"device": "cuda"}, Engine.BUILTIN, "unknown"),
        ({"device": "cpu"}, Engine.VLLM, "assuming x86_64 with AVX2"),
        ({"device": "cpu", "cpu_arch": "x86_64"}, Engine.VLLM, "not probed"),
        ({"device": "cpu", "cpu_arch": "x86_64", "cpu_flags": "fpu sse4_2 avx"}, Engine.BUILTIN, "AVX2"),
        ({"device": "cpu", "cpu_arch": "AMD64", "cpu_flags": ["AVX2"]}, Engine.VLLM, "with AVX2"),
        ({"device": "cpu", "cpu_arch": "x86_64", "cpu_flags": "avx2 avx512f"}, Engine.VLLM, "AVX-512"),
        ({"device": "cpu", "cpu_arch": "aarch64", "cpu_flags": "neon"}, Engine.BUILTIN, "aarch64"),
    ],
)
def test_auto_takes_vllm_wherever_a_build_runs(kwargs: dict[str, Any], engine: Engine, words: str) -> None:
    chosen, reason = choose_engine("auto", **kwargs)
    assert chosen is engine and words in reason


def test_explicit_engine_requests() -> None:
    assert (
        choose_engine(Engine.BUILTIN, device=Device.CUDA, gpu_compute_capability="9.0")[0] is Engine.BUILTIN
    )
    assert choose_engine("vllm", device="cuda", gpu_compute_capability="8.0")[0] is Engine.VLLM
    with pytest.raises(EngineUnavailableError, match=r"compute capability 6\.0"):
        choose_engine("vllm", device="cuda", gpu_compute_capability="6.0")
    with pytest.raises(ValueError, match="auto, vllm, builtin"):
        choose_engine("tensorrt", device="cpu")


# --- the memory model follows the engine ---

V3 = MODELS["deepseek-v3"]
LLM_7B = MODELS["deepseek-llm-7b"]


def test_builtin_activations_are_not_divided_by_tp() -> None:
    work = Workload.serving(8192, 8)
    one = mem.activation_bytes(V3, Precision.BF16, 1, work, Device.CUDA)
    assert mem.activation_bytes(V3, Precision.BF16, 8, work, Device.CUDA, Engine.BUILTIN) == one
    assert mem.activation_bytes(V3, Precision.BF16, 8, work, Device.CUDA, Engine.VLLM) < one / 4


def test_builtin_holds_a_share_of_layers_per_gpu() -> None:
    # Four GPUs of a layer split are four stages, whatever the plan calls them.
    stages = mem.device_weight_bytes(LLM_7B, Precision.BF16, 1, 4)
    assert mem.device_weight_bytes(LLM_7B, Precision.BF16, 4, 1, Engine.BUILTIN) == stages
    assert mem.kv_bytes_per_token(LLM_7B, Precision.BF16, 4, 1, Engine.BUILTIN) == mem.kv_bytes_per_token(
        LLM_7B, Precision.BF16, 1, 4
    )
    # One process moving activations itself needs no NCCL buffers.
    box = H["a100-sxm-80g-x4"]
    assert mem.overhead_bytes(box, 4, 1, Engine.BUILTIN) == mem.GPU_CONTEXT_BYTES
    assert mem.overhead_bytes(box, 4, 1) == mem.GPU_CONTEXT_BYTES + mem.GPU_COMM_BYTES


def test_builtin_plans_split_layers_never_tensors() -> None:
    for profile in ("h100-sxm-80g-x8", "a100-sxm-80g-x4", "l40s-48g-x4"):
        p = plan(PlanRequest(MODELS["deepseek-r1-distill-qwen-32b"], H[profile], engine=Engine.BUILTIN))
        assert p.fits and p.tp == 1 and p.pp > 1 and p.engine is Engine.BUILTIN, profile
        assert "accelerate splits layers" in " ".join(p.reasons)
        assert all(c.name.startswith("transformers-") for c in p.candidates)
    vllm = plan(PlanRequest(MODELS["deepseek-r1-distill-qwen-32b"], H["h100-sxm-80g-x8"]))
    assert (vllm.engine, vllm.tp) == (Engine.VLLM, 8) and vllm.candidates[0].name.startswith("vllm-")


def test_vllm_fp8_plans_size_an_fp8_cache() -> None:
    p = plan(PlanRequest(V3, H["h200-sxm-141g-x8"]))
    assert p.memory is not None
    per_token = mem.kv_bytes_per_token(V3, Precision.FP8, p.tp, p.pp)
    assert per_token == 61 * (512 + 64) and p.memory.kv_cache == per_token * p.max_context * p.max_running
    assert ea.kv_cache_dtype(p) == "fp8"


def test_cpu_kv_budget_rounds_up_to_whole_gib() -> None:
    p = plan(PlanRequest(MODELS["deepseek-r1-distill-qwen-1.5b"], H["cpu-only"]))
    assert p.memory is not None
    assert ea.vllm_env(p)["VLLM_CPU_KVCACHE_SPACE"] == str(math.ceil(p.memory.kv_cache / GIB))


# --- vLLM's own parser over every rendered command line ---


def _vllm_python() -> Path:
    return Path(os.environ.get("DEEPSEEK_NODE_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")


# Parses each argv as `python -m vllm.entrypoints.openai.api_server` does (vLLM 0.32 moved the parser from
# entrypoints/openai/cli_args.py to entrypoints/launchers/cli_args.py), validates it and builds the engine
# arguments; also checks the values argparse takes as free strings against vLLM's own lists.
DRIVER = r"""
import contextlib, io, json, sys, typing
from vllm.config.cache import CacheDType
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.config.parallel import ParallelConfig
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = make_arg_parser(FlexibleArgumentParser(prog="api_server"))
# `vllm serve`, as `python -m vllm.entrypoints.cli.main serve` builds it: how a serving group's headless
# ranks start.
cli = FlexibleArgumentParser(prog="vllm")
ServeSubcommand().subparser_init(cli.add_subparsers(dest="subparser"))
results = []
for argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli.parse_args(argv) if argv[:1] == ["serve"] else parser.parse_args(argv)
        if getattr(args, "model_tag", None):
            args.model = args.model_tag  # what `vllm serve` does with its positional model
        validate_parsed_serve_args(args)
        e = AsyncEngineArgs.from_cli_args(args)
        multi = None
        if e.nnodes > 1:
            # create_engine_config's multi-node checks (it needs the real model to run whole), and the
            # parallel config each rank builds: a rank past 0 runs the headless multiprocessing executor.
            world = e.tensor_parallel_size * e.pipeline_parallel_size * e.data_parallel_size
            if world % e.nnodes or not 0 <= e.node_rank < e.nnodes or e.data_parallel_backend != "mp":
                raise ValueError(f"vLLM refuses --nnodes {e.nnodes} --node-rank {e.node_rank} for {world} ranks")
            pc = ParallelConfig(
                tensor_parallel_size=e.tensor_parallel_size, pipeline_parallel_size=e.pipeline_parallel_size,
                nnodes=e.nnodes, node_rank=e.node_rank, master_addr=e.master_addr, master_port=e.master_port,
                distributed_executor_backend=e.distributed_executor_backend)
            multi = {"nnodes": pc.nnodes, "node_rank": pc.node_rank, "master_addr": pc.master_addr,
                     "master_port": pc.master_port, "backend": pc.distributed_executor_backend,
                     "local_world_size": pc.local_world_size, "node_rank_within_dp": pc.node_rank_within_dp,
                     "headless": args.headless, "subcommand": getattr(args, "subparser", None)}
        if e.quantization is not None and e.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"--quantization {e.quantization} is not one of vLLM's methods")
        if e.kv_cache_dtype not in typing.get_args(CacheDType):
            raise ValueError(f"--kv-cache-dtype {e.kv_cache_dtype} is not one of vLLM's")
        results.append({"ok": True, "engine": {
            k: getattr(e, k) for k in ("model", "tensor_parallel_size", "pipeline_parallel_size",
            "enable_expert_parallel", "dtype", "quantization", "kv_cache_dtype", "max_model_len",
            "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "enable_chunked_prefill",
            "enable_prefix_caching", "trust_remote_code", "enable_log_requests")},
            "host": args.host, "port": args.port, "api_key": args.api_key, "multi_node": multi})
    except SystemExit:
        lines = [l for l in err.getvalue().splitlines() if "error:" in l]
        results.append({"ok": False, "error": (lines or [err.getvalue()[-300:]])[-1]})
    except Exception as exc:
        results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
print("RESULTS " + json.dumps(results))
"""


def _inventory_plans() -> list[Plan]:
    """The example inventory's hosts, planned as `provision plan -i` plans them."""
    from deepseek_node.inventory import load_inventory, validate_inventory

    return [plan(s.request()) for s in validate_inventory(load_inventory(EXAMPLE))]


def test_vllm_accepts_every_rendered_command_line(tmp_path: Path) -> None:
    python = _vllm_python()
    if not python.is_file():
        pytest.skip(
            f"no vLLM interpreter at {python} (set DEEPSEEK_NODE_VLLM_PYTHON, or run scripts/setup.sh)"
        )
    hosts = _inventory_plans()
    assert {p.host for p in hosts} >= {"ds-h200-01", "ds-edge-01", "ds-l40s-02"}
    for name in MODELS:
        (tmp_path / name).mkdir()  # vLLM takes a --model that is not a directory for a Hub id
    cases: list[tuple[str, Plan, list[str]]] = []
    for p in [*hosts, *_catalog_plans()]:
        label = f"{p.host or 'catalog'}: {p.model.name} on {p.profile.label}"
        cases.append((label, p, _render(p, ea.preview_checkpoint(p), tmp_path)))
        if p.precision is Precision.FP8 and p.model.quant_method == "fp8":
            cases.append((f"{label} (unquantized weights)", p, _render(p, None, tmp_path)))
    ranks = _group_ranks(tmp_path)
    env = {**os.environ, **ea.vllm_env(hosts[0]), "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run(
        [str(python), "-c", DRIVER], input=json.dumps([argv for _, _, argv in cases] + [r.argv for _, r in ranks]),
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    marker = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert proc.returncode == 0 and marker, proc.stderr[-3000:]
    results = json.loads(marker[-1].removeprefix("RESULTS "))
    assert len(results) == len(cases) + len(ranks)
    _check_group_ranks(ranks, results[len(cases) :])
    results = results[: len(cases)]
    errors = [
        f"{label}: {r['error']}" for (label, _, _), r in zip(cases, results, strict=True) if not r["ok"]
    ]
    assert not errors, "vLLM refused:\n" + "\n".join(errors)
    for (label, p, argv), r in zip(cases, results, strict=True):
        e = r["engine"]
        assert e["model"] == str(tmp_path / p.model.name), label
        assert (e["tensor_parallel_size"], e["pipeline_parallel_size"]) == (p.tp, p.pp), label
        assert (e["max_model_len"], e["max_num_seqs"]) == (p.max_context, p.max_running), label
        assert e["dtype"] == p.dtype and e["enable_expert_parallel"] == ("--enable-expert-parallel" in argv)
        assert e["quantization"] in (None, ea.ONLINE_FP8), label
        assert e["kv_cache_dtype"] == _flags(argv).get("--kv-cache-dtype", "auto"), label
        assert e["enable_chunked_prefill"] is True and e["enable_prefix_caching"] is True, label
        assert e["trust_remote_code"] is False and e["enable_log_requests"] is False, label
        assert r["api_key"] is None and (r["host"], r["port"]) == ("127.0.0.1", 8001), label
        if p.device is Device.CUDA:
            assert e["gpu_memory_utilization"] == pytest.approx(1 - mem.GPU_MARGIN), label


def _group_ranks(models: Path) -> list[tuple[Any, ea.RankCommand]]:
    """Every rank of the example inventory's serving group and of what-if groups (two and four servers)."""
    from deepseek_node.inventory import load_inventory, validate_inventory
    from deepseek_node.planner.group import GroupRequest, plan_group
    from deepseek_node.serving_groups import find_serving_groups

    data = load_inventory(EXAMPLE)
    groups = [(g.plan(), g.master_addr) for g in find_serving_groups(data, validate_inventory(data))]
    assert groups, "the example inventory has a serving group"
    for model, profile, servers in (
        ("deepseek-v3", "a100-sxm-80g-x8", 2),
        ("deepseek-r1", "h100-sxm-80g-x4", 4),
        ("deepseek-r1", "l40s-48g-x8", 2),
    ):
        groups.append((plan_group(GroupRequest(MODELS[model], H[profile], servers)), "10.0.0.1"))
    ranks = []
    for g, addr in groups:
        commands = ea.group_vllm_args(
            g, model_path=str(models / g.plan.model.name), served_name=g.plan.model.name, port=8001,
            master_addr=addr, checkpoint_quant=ea.preview_checkpoint(g.plan),
        )  # fmt: skip
        ranks += [(g, c) for c in commands]
    return ranks


def _check_group_ranks(ranks: list[tuple[Any, ea.RankCommand]], results: list[dict[str, Any]]) -> None:
    """vLLM reads each rank's command line as a rank of the group: the head serves the API on loopback,
    the others start headless through `vllm serve`, all with the group's TP x PP and the head's address."""
    errors = [
        f"{g.summary()} rank {c.rank}: {r['error']}"
        for (g, c), r in zip(ranks, results, strict=True)
        if not r["ok"]
    ]
    assert not errors, "vLLM refused:\n" + "\n".join(errors)
    for (g, c), r in zip(ranks, results, strict=True):
        e, multi = r["engine"], r["multi_node"]
        assert (e["tensor_parallel_size"], e["pipeline_parallel_size"]) == (g.plan.tp, g.plan.pp)
        assert g.plan.tp <= g.plan.profile.nvlink_domain, "TP left the server"
        assert (multi["nnodes"], multi["node_rank"], multi["backend"]) == (g.servers, c.rank, "mp")
        assert multi["local_world_size"] == g.plan.tp * g.plan.pp // g.servers <= g.plan.profile.gpu_count
        assert (
            multi["master_port"] == ea.DEFAULT_MASTER_PORT
            and multi["master_addr"] == c.argv[c.argv.index("--master-addr") + 1]
        )
        assert e["max_model_len"] == g.plan.max_context and e["max_num_seqs"] == g.plan.max_running
        if c.rank == 0:
            assert (c.role, c.module, multi["headless"], multi["subcommand"]) == (
                "head",
                ea.VLLM_MODULE,
                False,
                None,
            )
            assert (r["host"], r["port"]) == ("127.0.0.1", 8001) and multi["node_rank_within_dp"] == 0
        else:
            assert (c.role, c.module, multi["headless"], multi["subcommand"]) == (
                "worker",
                ea.VLLM_CLI_MODULE,
                True,
                "serve",
            )
            assert multi["node_rank_within_dp"] == c.rank and "--port" not in c.argv
            assert c.argv[1] == e["model"] and "--model" not in c.argv


# --- the Ansible filter: the same function behind the role ---

PLUGIN = REPO / "plugins" / "filter" / "deepseek_plan.py"
# Importing Ansible patches the interpreter process-wide (see test_filter_plugin.py): a fresh one runs it.
FILTER_DRIVER = r"""
import importlib.util, json, sys
from ansible.errors import AnsibleFilterError
spec = importlib.util.spec_from_file_location("deepseek_plan_filter", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
results = {"registered": module.FilterModule().filters()["deepseek_vllm_args"] is module.deepseek_vllm_args}
for name, (subset, host, kwargs) in json.load(sys.stdin).items():
    try:
        results[name] = {"ok": True, "value": module.deepseek_vllm_args(subset, host, **kwargs)}
    except Exception as exc:
        results[name] = {"ok": False, "filter_error": isinstance(exc, AnsibleFilterError), "error": str(exc)}
print(json.dumps(results))
"""
R1_NODE = {"deepseek_hardware_profile": "h200-sxm-141g-x8", "deepseek_model": "deepseek-r1"}
EDGE = {
    "deepseek_hardware_profile": "cpu-only",
    "deepseek_hardware_overrides": {"host_memory_gib": 64},
    "deepseek_model": "deepseek-r1-distill-qwen-1.5b",
}
WHERE: dict[str, Any] = {"model_path": "/var/lib/deepseek-node/models/m", "port": 8001}


@pytest.fixture(scope="module")
def filter_calls() -> dict[str, Any]:
    cases = {
        "r1": (R1_NODE, "gpu-1", WHERE),
        "r1_unquantized": (R1_NODE, "gpu-1", {**WHERE, "checkpoint_quant": None}),
        "r1_awq": (R1_NODE, "gpu-1", {**WHERE, "checkpoint_quant": "awq"}),
        "edge_avx2": (EDGE, "edge-1", {**WHERE, "cpu_arch": "x86_64", "cpu_flags": "sse4_2 avx avx2"}),
        "edge_no_avx2": (EDGE, "edge-1", {**WHERE, "cpu_arch": "x86_64", "cpu_flags": "sse4_2 avx"}),
        "edge_vllm_on_arm": (EDGE, "edge-1", {**WHERE, "engine": "vllm", "cpu_arch": "aarch64"}),
        "invalid": ({"deepseek_hardware_profile": "h100-80g-x8"}, "gpu-3", WHERE),
    }
    proc = subprocess.run(
        [str(Path(sys.executable)), "-c", FILTER_DRIVER, str(PLUGIN)], input=json.dumps(cases),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


def test_filter_renders_what_the_function_renders(filter_calls: dict[str, Any]) -> None:
    assert filter_calls["registered"] is True
    value = filter_calls["r1"]["value"]
    p = plan(PlanRequest(MODELS["deepseek-r1"], H["h200-sxm-141g-x8"], host="gpu-1"))
    expected = ea.vllm_args(p, model_path=WHERE["model_path"], served_name="deepseek-r1", port=8001,
                            checkpoint_quant="fp8")  # fmt: skip
    assert (value["engine"], value["argv"], value["env"]) == ("vllm", expected, ea.vllm_env(p))
    assert value["module"] == ea.VLLM_MODULE and "--quantization" not in value["argv"]
    assert "fp8_per_block" in filter_calls["r1_unquantized"]["value"]["argv"]


def test_filter_fails_the_task_with_what_the_checkpoint_needs(filter_calls: dict[str, Any]) -> None:
    result = filter_calls["r1_awq"]
    assert result["filter_error"] and "host gpu-1: deepseek-r1 is planned at fp8" in result["error"]
    assert "the checkpoint is awq" in result["error"]
    assert (
        filter_calls["invalid"]["filter_error"] and "nothing was changed" in filter_calls["invalid"]["error"]
    )


def test_filter_lets_the_hosts_cpu_decide_the_engine(filter_calls: dict[str, Any]) -> None:
    avx2 = filter_calls["edge_avx2"]["value"]
    assert avx2["engine"] == "vllm" and "VLLM_CPU_KVCACHE_SPACE" in avx2["env"]
    assert not any(flag in avx2["argv"] for flag in GPU_ONLY_FLAGS)
    old = filter_calls["edge_no_avx2"]["value"]
    assert (old["engine"], old["argv"], old["env"]) == ("builtin", [], {})
    assert "without AVX2" in old["engine_reason"]
    arm = filter_calls["edge_vllm_on_arm"]
    assert arm["filter_error"] and "host edge-1: engine unavailable: vllm was requested" in arm["error"]


def test_filter_through_ansible(tmp_path: Path) -> None:
    (tmp_path / "vars.json").write_text(json.dumps({"subset": EDGE, "node": "edge-1"}))
    env = {
        **os.environ,
        "ANSIBLE_FILTER_PLUGINS": str(PLUGIN.parent),
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    expr = "{{ subset | deepseek_vllm_args(node, model_path='/m', port=8001, checkpoint_quant=none) }}"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "localhost", "-i", "localhost,", "-c", "local",
         "-e", "@vars.json", "-m", "ansible.builtin.debug", "-a", f"msg={expr}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    msg = json.loads(proc.stdout.split("=>", 1)[1])["msg"]
    assert msg["engine"] == "vllm" and msg["argv"][:2] == ["--model", "/m"]
    assert _flags(msg["argv"])["--dtype"] == "float32" and msg["env"]["HF_HUB_OFFLINE"] == "1"
