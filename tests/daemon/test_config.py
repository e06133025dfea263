"""The config file the Ansible role renders, and the start-time rules for precision and placement."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.daemon.config import (
    ConfigError,
    Device,
    DType,
    Quantization,
    Scope,
    load_config,
    parse_config,
)
from deepseek_node.daemon.engines.builtin.loading import GpuInfo, plan_load

ROLE_YAML = """\
model:
  path: /var/lib/deepseek-node/models/deepseek-tiny
  served_name: deepseek-tiny
  dtype: auto            # auto|float32|bfloat16|float16
  quantization: none     # none|int8|int4|fp8
  device: auto           # auto|cpu|cuda
  tensor_parallel: 1
  pipeline_parallel: 1
  max_context: 2048      # prompt + completion tokens
server:
  host: 0.0.0.0
  port: 8443
  tls_cert: /etc/deepseek-node/tls/server.crt   # both or neither
  tls_key: /etc/deepseek-node/tls/server.key
engine:
  max_running: 16
  max_queue: 64
  default_max_tokens: 256
  shutdown_grace_s: 30
auth:
  api_keys:
    - id: ops
      sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      scopes: [inference, metrics, admin]
      models: []
audit:
  path: null
  log_content: false
  redact: true
plan: {}
"""


def _load(tmp_path: Path, text: str):
    p = tmp_path / "daemon.yaml"
    p.write_text(text)
    return load_config(p)


def test_accepts_exactly_what_the_role_renders(tmp_path: Path) -> None:
    cfg = _load(tmp_path, ROLE_YAML)
    assert cfg.model.dtype is DType.AUTO and cfg.model.quantization is Quantization.NONE
    assert cfg.model.device is Device.AUTO and cfg.server.tls and cfg.server.port == 8443
    assert cfg.auth.api_keys[0].scopes == [Scope.INFERENCE, Scope.METRICS, Scope.ADMIN]
    assert cfg.engine.shutdown_grace_s == 30.0 and cfg.audit.path is None


def test_plan_section_is_free_form(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path, ROLE_YAML.replace("plan: {}", "plan:\n  goal: latency\n  reasons: [a, b]\n  x: {y: 1}")
    )
    assert cfg.plan["reasons"] == ["a", "b"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "  max_context: 2048",
            "  max_context: 2048\n  max_ctx: 1",
            "model.max_ctx: unknown key (allowed here: ",
        ),
        ("  max_queue: 64", "  max_queue: 64\n  maxqueue: 1", "engine.maxqueue: unknown key"),
        ("      models: []", "      models: []\n      scope: [x]", "auth.api_keys[0].scope: unknown key"),
        ("plan: {}", "plan: {}\nextra: 1", "extra: unknown key"),
        (
            "  dtype: auto ",
            "  dtype: fp64 ",
            "model.dtype: 'fp64' is not one of auto|float32|bfloat16|float16",
        ),
        ("  quantization: none", "  quantization: awq", "model.quantization: 'awq' is not one of"),
        ("  port: 8443", "  port: '8443'", "server.port"),
        ("  tls_key: /etc/deepseek-node/tls/server.key", "", "tls_cert and tls_key go together"),
        ('"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"', "nothex", "64-hex-digit"),
        ("scopes: [inference, metrics, admin]", "scopes: [root]", "'root' is not a scope"),
        ("      models: []", "      models: [gpt-4]", "serves only 'deepseek-tiny'"),
        ("  default_max_tokens: 256", "  default_max_tokens: 4096", "must be below model.max_context"),
        ("  max_running: 16", "  max_running: 0", "engine.max_running"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in ROLE_YAML
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, ROLE_YAML.replace(old, new))
    assert message in str(exc.value)


def test_unreadable_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        _load(tmp_path, "model: [unclosed")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["a"])


# ---------------------------------------------------------------------------------------- load plan

H100 = GpuInfo(0, "NVIDIA H100", (9, 0), 80 << 30)
A100 = GpuInfo(0, "NVIDIA A100", (8, 0), 80 << 30)
V100 = GpuInfo(0, "Tesla V100", (7, 0), 32 << 30)


def _model(**kw: object):
    base = {"path": "/m", "served_name": "m"}
    return parse_config(
        {
            "model": {**base, **kw},
            "auth": {"api_keys": [{"id": "a", "sha256": "0" * 64, "scopes": ["inference"]}]},
        }
    ).model


def _gpus(kind: GpuInfo, n: int) -> list[GpuInfo]:
    return [GpuInfo(i, kind.name, kind.capability, kind.total_memory) for i in range(n)]


def test_auto_precision_per_device() -> None:
    assert plan_load(_model(), []).dtype == "float32"
    assert plan_load(_model(), [H100]).dtype == "bfloat16"
    assert plan_load(_model(), [V100]).dtype == "float16"
    p = plan_load(_model(), [H100])
    assert p.device == "cuda" and p.device_map == {"": 0}


def test_placement_across_gpus() -> None:
    p = plan_load(_model(tensor_parallel=2, pipeline_parallel=2), _gpus(H100, 8))
    assert p.device_map == "auto" and p.gpus == [0, 1, 2, 3]
    assert any("tensor_parallel=2" in n for n in p.notes)


@pytest.mark.parametrize(
    ("kw", "gpus", "message"),
    [
        ({"device": "cuda"}, [], "no CUDA GPU is visible"),
        ({"tensor_parallel": 2}, [], "needs that many GPUs"),
        ({"tensor_parallel": 4}, [H100, H100], "only 2 are visible"),
        ({"dtype": "float16"}, [], "float16 is not supported on CPU"),
        ({"dtype": "bfloat16"}, [V100], "bfloat16 needs compute capability >= 8.0"),
        ({"quantization": "fp8"}, [], "fp8 needs an Ada or Hopper GPU"),
        ({"quantization": "fp8"}, [A100], "fp8 needs compute capability >= 8.9"),
        ({"quantization": "fp8", "dtype": "float32"}, [H100], "computes in bfloat16"),
        ({"quantization": "int4"}, [], "needs bitsandbytes"),
    ],
)
def test_invalid_combinations_fail_clearly(kw: dict, gpus: list[GpuInfo], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_load(_model(**kw), gpus, has_module=lambda name: False)


def test_quantization_libraries() -> None:
    assert plan_load(_model(quantization="fp8"), [H100], has_module=lambda n: True).quant_library == (
        "transformers-fp8"
    )
    assert (
        plan_load(_model(quantization="int8"), [], has_module=lambda n: n == "torchao").quant_library
        == "torchao"
    )
    assert (
        plan_load(_model(quantization="int4"), [A100], has_module=lambda n: True).quant_library
        == "bitsandbytes"
    )
    with pytest.raises(ConfigError, match="already quantized"):
        plan_load(_model(quantization="int8"), [H100], has_module=lambda n: True, checkpoint_quant="fp8")


def test_native_fp8_checkpoint_loads_as_it_is() -> None:
    """DeepSeek-V3/R1 ship fp8: an fp8 plan on an fp8 checkpoint is the checkpoint's own precision."""
    kernels = {"has_module": lambda n: n == "kernels"}  # a node where the fp8 kernel was staged
    lp = plan_load(_model(quantization="fp8"), [H100], checkpoint_quant="fp8", **kernels)
    assert lp.quantization.value == "none" and lp.quant_library == "transformers-fp8"
    assert any("own precision" in n for n in lp.notes)
    lp = plan_load(_model(quantization="none"), [H100], checkpoint_quant="fp8", **kernels)
    assert lp.quant_library == "transformers-fp8"
    with pytest.raises(ConfigError, match="Hugging Face Hub"):  # the air-gapped default
        plan_load(_model(quantization="fp8"), [H100], checkpoint_quant="fp8", has_module=lambda n: False)
    with pytest.raises(ConfigError, match="vLLM engine"):
        plan_load(_model(quantization="fp8", device="cpu"), [], checkpoint_quant="fp8")
    with pytest.raises(ConfigError, match="compute capability"):
        plan_load(_model(quantization="fp8"), [A100], checkpoint_quant="fp8", **kernels)
    with pytest.raises(ConfigError, match="plan asks for int4"):
        plan_load(_model(quantization="int4"), [H100], has_module=lambda n: True, checkpoint_quant="fp8")
