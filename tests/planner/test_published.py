"""The memory model against numbers DeepSeek published themselves.

DeepSeek-LLM's README profiles peak GPU memory of inference for 7B (one A100-PCIE-40GB) and 67B (eight of
them) over batch sizes and sequence lengths. Those runs used 2023 transformers: eager attention and fp32
logits for every prompt position, both growing with batch x length (the 67B 4k cell grows from 17 to 33 GiB).
A serving engine keeps neither, so the model must match where they are small and stay below elsewhere.
"""

from __future__ import annotations

import pytest

from deepseek_node.planner import HARDWARE_PROFILES, MODELS, Fit, Precision, Workload, estimate
from deepseek_node.planner.memory import GIB
from deepseek_node.planner.plan import PlanRequest, best_layout, plan

SEQ = (256, 512, 1024, 2048, 4096)
# GB in the README are GiB (torch.cuda.max_memory_allocated / 2**30); None is OOM.
LLM_7B_1X_A100_40 = {
    1: (13.29, 13.63, 14.47, 16.37, 21.25),
    2: (13.63, 14.39, 15.98, 19.82, 29.59),
    4: (14.47, 15.82, 19.04, 26.65, None),
    8: (15.99, 18.71, 25.14, 35.19, None),
    16: (19.06, 24.52, 37.28, None, None),
}
LLM_67B_8X_A100_40 = {
    1: (16.92, 17.11, 17.66, 20.01, 33.23),
    2: (17.04, 17.28, 18.55, 25.27, None),
    4: (17.20, 17.80, 21.28, 33.71, None),
    8: (17.59, 19.25, 25.69, None, None),
    16: (18.17, 21.69, 34.54, None, None),
}


def _cells(table: dict[int, tuple[float | None, ...]]) -> list[tuple[int, int, float]]:
    return [(b, s, gib) for b, row in table.items() for s, gib in zip(SEQ, row, strict=True) if gib]


def _allocated_gib(model: str, profile: str, pp: int, batch: int, seq: int) -> float:
    """Weights + KV cache + activations of a whole-prompt prefill, without the CUDA context (which
    max_memory_allocated does not see)."""
    work = Workload(seq, batch, batch * seq, batch, seq)
    e = estimate(MODELS[model], HARDWARE_PROFILES[profile], Precision.BF16, 1, pp, work)
    return (e.total - e.overhead) / GIB


@pytest.mark.parametrize(
    "model, profile, pp, table",
    [
        ("deepseek-llm-7b", "a100-pcie-40g-x1", 1, LLM_7B_1X_A100_40),
        ("deepseek-llm-67b", "a100-pcie-40g-x8", 8, LLM_67B_8X_A100_40),
    ],
)
def test_deepseek_llm_memory_profile(model: str, profile: str, pp: int, table: dict) -> None:
    for batch, seq, published in _cells(table):
        predicted = _allocated_gib(model, profile, pp, batch, seq)
        if batch * seq <= 1024:
            assert predicted == pytest.approx(published, rel=0.10), (batch, seq)
        assert predicted <= published * 1.02, (batch, seq)


def test_67b_on_eight_a100_40g_is_pipelined_bf16() -> None:
    """The README's 67B setup, planned: bf16 fits eight 40 GB PCIe cards, as stages (no NVLink)."""
    p = plan(PlanRequest(MODELS["deepseek-llm-67b"], HARDWARE_PROFILES["a100-pcie-40g-x8"]))
    assert (p.fit, p.precision, p.tp, p.pp) == (Fit.COMPATIBLE, Precision.BF16, 1, 8)


@pytest.mark.parametrize("model", ["deepseek-v2", "deepseek-coder-v2"])
def test_v2_bf16_needs_eight_80gb_gpus(model: str) -> None:
    """Model cards: "To utilize DeepSeek-V2 in BF16 format for inference, 80GB*8 GPUs are required."."""
    spec = MODELS[model]
    checked = 0
    for name, profile in HARDWARE_PROFILES.items():
        if profile.is_cpu_only or profile.gpu_memory_gib > 80:
            continue  # the claim is about 80 GB (and smaller) GPUs
        candidate = best_layout(PlanRequest(spec, profile), Precision.BF16)
        big_enough = profile.gpu_count == 8 and profile.gpu_memory_gib >= 79
        assert candidate.fit is (Fit.COMPATIBLE if big_enough else Fit.INCOMPATIBLE), name
        checked += 1
    assert checked > 30
