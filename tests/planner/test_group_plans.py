"""Serving groups: DeepSeek-V3/R1 across several servers (TP inside a server, PP across them), the smallest
group that holds a model, the size rule, the interconnect cost and each rank's vLLM command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from deepseek_node.planner import HARDWARE_PROFILES, MODELS, Engine, Fit, Goal, PlanRequest, Precision, plan
from deepseek_node.planner import engine_args as ea
from deepseek_node.planner.group import (
    MAX_STAGE_IMBALANCE,
    GroupRequest,
    plan_group,
    size_problem,
    smallest_group,
    stage_imbalance,
)
from deepseek_node.planner.hardware import apply_network
from deepseek_node.planner.models import _V3, spec_from_config
from deepseek_node.planner.problems import PlannerInputError

H = HARDWARE_PROFILES
BIG = ("deepseek-r1", "deepseek-v3")


def _group(model: str, profile: str, servers: int = 2, **kw):
    return plan_group(GroupRequest(MODELS[model], H[profile], servers, **kw))


@pytest.mark.parametrize("model", BIG)
def test_two_h100_servers_serve_the_published_fp8_checkpoint(model: str) -> None:
    g = _group(model, "h100-sxm-80g-x8", hosts=("gpu-a", "gpu-b"), name="pair")
    p = g.plan
    assert (p.fit, p.precision, p.tp, p.pp, g.stages_per_server) == (Fit.COMPATIBLE, Precision.FP8, 8, 2, 1)
    assert (p.max_context, p.engine) == (32768, Engine.VLLM)
    assert 60 <= p.expected_gpu_memory_gib <= 71.7 and p.memory and p.memory.fits
    assert p.max_running >= 16  # a useful batch of 32k-token sequences
    # DeepSeek's fp8 checkpoint serves the plan as published: no checkpoint to name.
    assert ea.check_checkpoint(p, MODELS[model].quant_method) is None
    assert not any(r.startswith("checkpoint:") for r in g.reasons)
    assert g.head == "gpu-a" and g.workers == ("gpu-b",)
    assert any("never across servers" in r for r in g.reasons)
    json.dumps(g.to_dict())


@pytest.mark.parametrize("model", BIG)
def test_two_a100_servers_need_a_pre_quantized_int8_checkpoint(model: str) -> None:
    g = _group(model, "a100-sxm-80g-x8")
    p = g.plan
    assert (p.fit, p.precision, p.tp, p.pp) == (Fit.COMPATIBLE, Precision.INT8, 8, 2)
    assert 60 <= p.expected_gpu_memory_gib <= 72.0
    why = "\n".join(g.reasons)
    assert "not fp8: native, but needs compute capability 8.9+" in why
    # bf16 is ~1.25 TiB of weights: more than two servers' 16 GPUs hold.
    assert "not bf16: weights" in why
    assert "checkpoint: a pre-quantized int8 checkpoint (compressed-tensors W8A8/W8A16 or 8-bit GPTQ)" in why
    assert "the checkpoint is fp8" in (ea.check_checkpoint(p, "fp8") or "")
    assert ea.check_checkpoint(p, "compressed-tensors") is None


def test_smallest_group() -> None:
    r1 = GroupRequest(MODELS["deepseek-r1"], H["h100-sxm-80g-x8"], 2)
    assert smallest_group(r1).servers == 2  # type: ignore[union-attr]
    assert smallest_group(r1, Precision.FP8).servers == 2  # type: ignore[union-attr]
    # On A100 the best the ladder offers is the dequantized 16-bit model: three servers hold it.
    a100 = replace(r1, profile=H["a100-sxm-80g-x8"])
    g = smallest_group(a100, Precision.BF16)
    assert g and (g.servers, g.plan.precision, g.plan.pp) == (3, Precision.BF16, 3)
    assert smallest_group(a100).plan.precision is Precision.INT8  # type: ignore[union-attr]
    # 4-GPU H100 servers: three of them hold fp8 (12 GPUs).
    x4 = smallest_group(replace(r1, profile=H["h100-sxm-80g-x4"]), Precision.FP8)
    assert x4 and (x4.servers, x4.plan.tp, x4.plan.pp) == (3, 4, 3)


def test_single_server_plan_names_the_group_that_serves_native_precision() -> None:
    # One 8x H100 holds R1 only at int4; the plan says what native fp8 takes.
    p = plan(PlanRequest(MODELS["deepseek-r1"], H["h100-sxm-80g-x8"]))
    assert p.precision is Precision.INT4
    assert (
        "serving group: at fp8 (the model's native precision) it needs 2 x h100-sxm-80g-x8 servers (fp8 tp8 pp2"
        in "\n".join(p.reasons)
    )
    # Where the box serves the native precision, there is nothing to say.
    h200 = plan(PlanRequest(MODELS["deepseek-r1"], H["h200-sxm-141g-x8"]))
    assert h200.precision is Precision.FP8 and not any("serving group" in r for r in h200.reasons)


def test_wont_fit_on_any_server_names_the_smallest_group() -> None:
    # A DeepSeek-V3-shaped model with four times the layers: ~1.3 TiB even at int4, more than any one
    # catalog server holds.
    huge = spec_from_config({**_V3, "num_hidden_layers": 244}, "v3-x4", "local/v3-x4")
    p = plan(PlanRequest(huge, H["h200-sxm-141g-x8"]))
    assert not p.fits
    assert p.suggestion and p.suggestion.startswith("needs ")
    assert "x h200-sxm-141g-x8 servers as a serving group (" in p.suggestion


def test_group_that_does_not_fit_names_the_size_that_would() -> None:
    g = _group("deepseek-r1", "l4-24g-x8", 2)
    assert not g.fits and g.plan.suggestion
    assert g.plan.suggestion.startswith("needs ") and "x l4-24g-x8 servers" in g.plan.suggestion
    assert "does not fit on 2 x l4-24g-x8" in g.summary()


def test_slow_network_is_warned_about() -> None:
    fast = _group("deepseek-v3", "h100-sxm-80g-x8")
    h = fast.handoff
    assert h and not h.too_slow and not fast.warnings
    # 2 tensors (hidden state + residual) x 7168 x bf16 per token, over one server boundary.
    assert (h.bytes_per_token, h.boundaries, h.network_gbps) == (2 * 7168 * 2, 1, 100.0)
    assert h.step_tokens == 2048 + fast.plan.max_running - 1
    assert 20 <= h.needed_gbps <= 30  # ~25 Gb/s for V3's hidden size at the planned batch
    assert any(r.startswith("interconnect: each step hands 28.0 KiB per token") for r in fast.reasons)
    slow_profile = apply_network(H["h100-sxm-80g-x8"], 10)
    slow = plan_group(GroupRequest(MODELS["deepseek-v3"], slow_profile, 2))
    assert slow.handoff and slow.handoff.too_slow and slow.fits
    assert "the network between the servers (10 Gb/s) is too slow for this plan" in slow.warnings[0]
    assert any(r.startswith("WARNING: the network") for r in slow.reasons)
    # 25 Gb/s is enough, 20 is not.
    for gbps, too_slow in ((25, False), (20, True)):
        g = plan_group(GroupRequest(MODELS["deepseek-v3"], apply_network(H["h100-sxm-80g-x8"], gbps), 2))
        assert g.handoff and g.handoff.too_slow is too_slow, gbps
    with pytest.raises(PlannerInputError, match="deepseek_network_gbps: 0 is not a bandwidth"):
        apply_network(H["h100-sxm-80g-x8"], 0)


def test_tp_never_crosses_a_server() -> None:
    checked = 0
    for profile in H.values():
        if profile.is_cpu_only:
            continue
        for model in ("deepseek-r1", "deepseek-v3", "deepseek-r1-distill-llama-70b"):
            for servers in (2, 3, 4):
                if size_problem(MODELS[model], profile, servers):
                    continue
                g = plan_group(GroupRequest(MODELS[model], profile, servers), suggest=False)
                if not g.fits:
                    continue
                p = g.plan
                assert p.tp <= profile.nvlink_domain and MODELS[model].heads % p.tp == 0, profile.name
                # Every GPU of every server holds a stage; PP covers the servers.
                assert p.tp * g.stages_per_server == profile.gpu_count, profile.name
                assert p.pp == servers * g.stages_per_server
                checked += 1
    assert checked > 50


def test_size_rule() -> None:
    v3, hgx = MODELS["deepseek-v3"], H["h100-sxm-80g-x8"]
    assert [n for n in range(2, 9) if size_problem(v3, hgx, n) is None] == [2, 3, 4, 7, 8]
    assert "2 or more servers" in (size_problem(v3, hgx, 1) or "")
    five = size_problem(v3, hgx, 5) or ""
    assert "61 layers in 5 pipeline stages give a largest stage of 13 layers" in five
    assert "usable sizes: 2, 3, 4, 7, 8" in five
    assert stage_imbalance(61, 5) > MAX_STAGE_IMBALANCE >= stage_imbalance(61, 4)
    with pytest.raises(PlannerInputError, match="serving group size: 61 layers in 6 pipeline stages"):
        plan_group(GroupRequest(v3, hgx, 6))
    # PCIe servers run a stage per GPU: 16 L40S servers would leave stages without layers.
    assert "leave a stage without a layer" in (size_problem(v3, H["l40s-48g-x8"], 16) or "")


def test_groups_need_vllm() -> None:
    with pytest.raises(PlannerInputError, match="runs vLLM's multi-node mode, not the builtin engine"):
        _group("deepseek-r1", "h100-sxm-80g-x8", engine=Engine.BUILTIN)
    with pytest.raises(PlannerInputError, match="runs vLLM's multi-node mode, not the builtin engine"):
        _group("deepseek-r1-distill-qwen-1.5b", "cpu-only", engine=Engine.BUILTIN)


def test_cpu_servers_form_a_group_only_when_named() -> None:
    """vLLM's CPU build runs across servers (PP over gloo, one process each): a named group of CPU-only
    servers is planned; it is never what the planner suggests for a model that does not fit."""
    g = _group("deepseek-r1-distill-qwen-1.5b", "cpu-only", hosts=("cpu-a", "cpu-b"), name="pair")
    assert (g.plan.engine, g.plan.tp, g.plan.pp) == (Engine.VLLM, 1, 2)
    text = "\n".join(g.reasons)
    assert (
        "CPUs only (vLLM's CPU build)" in text and "every server used" in text and "GPU of every" not in text
    )
    req = GroupRequest(MODELS["deepseek-r1"], H["cpu-only"], 2)
    assert smallest_group(req) is None


def test_latency_goal_plans_the_same_layout() -> None:
    g = _group("deepseek-r1", "h100-sxm-80g-x8", goal=Goal.LATENCY)
    assert (g.plan.precision, g.plan.tp, g.plan.pp) == (Precision.FP8, 8, 2) and g.plan.max_running <= 16


def test_rank_command_lines() -> None:
    g = _group("deepseek-r1", "h100-sxm-80g-x8", hosts=("gpu-a", "gpu-b"))
    head, worker = ea.group_vllm_args(
        g, model_path="/srv/models/deepseek-r1", served_name="deepseek-r1", port=8001, master_addr="10.0.0.1",
        checkpoint_quant="fp8",
    )  # fmt: skip
    for rank, cmd in enumerate((head, worker)):
        argv = cmd.argv
        flag = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
        assert flag["--tensor-parallel-size"] == "8" and flag["--pipeline-parallel-size"] == "2"
        assert (flag["--nnodes"], flag["--node-rank"]) == ("2", str(rank))
        assert (flag["--master-addr"], flag["--master-port"]) == ("10.0.0.1", "29501")
        assert flag["--distributed-executor-backend"] == "mp" and "--quantization" not in argv
        assert cmd.env == ea.vllm_env(g.plan)
    assert (head.host, head.role, head.module) == ("gpu-a", "head", ea.VLLM_MODULE)
    assert "--headless" not in head.argv and head.argv[head.argv.index("--host") + 1] == "127.0.0.1"
    assert (worker.host, worker.role, worker.module, worker.argv[0]) == (
        "gpu-b",
        "worker",
        ea.VLLM_CLI_MODULE,
        "serve",
    )
    assert "--headless" in worker.argv and "--port" not in worker.argv and "--host" not in worker.argv
    assert worker.argv[1] == "/srv/models/deepseek-r1" and "--model" not in worker.argv
    # What-if groups without hosts name their ranks.
    ranks = ea.group_vllm_args(
        _group("deepseek-r1", "h100-sxm-80g-x4", 4), model_path="/m", served_name="r1", port=8001,
        master_addr="head",
    )  # fmt: skip
    assert [r.host for r in ranks] == ["rank-0", "rank-1", "rank-2", "rank-3"]
    bad = ea.MultiNode(3, 0, "10.0.0.1")
    with pytest.raises(ValueError, match="3 nodes do not evenly divide tp8 x pp2"):
        ea.vllm_args(g.plan, model_path="/m", served_name="r1", port=8001, multi_node=bad)
    with pytest.raises(ValueError, match="node rank 2 is not between 0 and 1"):
        ea.vllm_args(g.plan, model_path="/m", served_name="r1", port=8001, multi_node=ea.MultiNode(2, 2, "h"))


# --- the Ansible filter: the same plan for a role ---

PLUGINS = Path(__file__).resolve().parents[2] / "plugins" / "filter"
GROUP_INVENTORY = """\
all:
  children:
    inference_nodes:
      children:
        pair: {hosts: {gpu-a: {ansible_host: 10.9.0.1}, gpu-b: {ansible_host: 10.9.0.2}}}
    serving_groups:
      children:
        pair:
"""
EXPR = (
    "{{ groups[deepseek_serving_group] | deepseek_group_plan(hostvars, deepseek_serving_group, "
    "model_path='/m', port=8001, inference_nodes=groups['inference_nodes']) }}"
)


def _ansible(tmp_path: Path, head: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "group_vars").mkdir(parents=True, exist_ok=True)
    (tmp_path / "hosts.yml").write_text(GROUP_INVENTORY)
    (tmp_path / "group_vars" / "pair.yml").write_text(
        "deepseek_hardware_profile: h100-sxm-80g-x8\ndeepseek_model: deepseek-r1\n"
        f"deepseek_serving_group: pair\ndeepseek_serving_group_head: {head}\n"
    )
    env = {
        **os.environ, "ANSIBLE_FILTER_PLUGINS": str(PLUGINS), "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }  # fmt: skip
    return subprocess.run(
        [str(Path(sys.executable).with_name("ansible")), "gpu-b", "-i", "hosts.yml", "-c", "local",
         "-m", "ansible.builtin.debug", "-a", f"msg={EXPR}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_group_plan_filter_through_ansible(tmp_path: Path) -> None:
    proc = _ansible(tmp_path / "good", "gpu-a")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    msg = json.loads(proc.stdout.split("=>", 1)[1])["msg"]
    assert (msg["group"], msg["head"], msg["hosts"]) == ("pair", "gpu-a", ["gpu-a", "gpu-b"])
    assert msg["config"]["plan"]["precision"] == "fp8" and msg["config"]["model"]["pipeline_parallel"] == 2
    worker = msg["ranks"]["gpu-b"]
    assert (worker["rank"], worker["role"], worker["module"]) == (1, "worker", ea.VLLM_CLI_MODULE)
    assert msg["addresses"] == {"gpu-a": "10.9.0.1", "gpu-b": "10.9.0.2"}
    assert (msg["master_addr"], msg["master_port"]) == ("10.9.0.1", 29501)
    assert (
        worker["env"]["VLLM_HOST_IP"] == "10.9.0.2"
        and msg["ranks"]["gpu-a"]["env"]["VLLM_HOST_IP"] == "10.9.0.1"
    )
    assert worker["argv"][worker["argv"].index("--master-addr") + 1] == "10.9.0.1"
    assert "--headless" in worker["argv"] and "--headless" not in msg["ranks"]["gpu-a"]["argv"]
    bad = _ansible(tmp_path / "bad", "gpu-q")
    assert bad.returncode != 0
    assert (
        "serving group pair: deepseek_serving_group_head 'gpu-q' is not a member of the group" in bad.stdout
    )
